//! MQTT over TLS (rustls, ring): the `[tls]` certificate and key (PEM), optionally a client CA
//! that every client must present a certificate from (mTLS; what a certificate must be is
//! `client_cert`'s), loaded at start-up (a bad file
//! stops it, naming the key) and again on SIGHUP (new connections use the new files, existing
//! ones stay up; a bad file keeps the old ones and says why). A TLS client stream is a
//! `ClientStream` like any other, so the connection code does not know it is encrypted.

use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::stream::{CertificateIdentity, ClientStream};
use crate::config::TlsConfig;

impl ClientStream for TlsStream<TcpStream> {
    type Reader = ReadHalf<TlsStream<TcpStream>>;
    type Writer = WriteHalf<TlsStream<TcpStream>>;
    fn into_halves(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
    fn certificate_identity(&self) -> CertificateIdentity {
        let (_, connection) = self.get_ref();
        match connection
            .peer_certificates()
            .and_then(|chain| chain.first())
        {
            Some(leaf) => common_name(leaf),
            None => CertificateIdentity::Unnamed,
        }
    }
}

/// The subject Common Name of a certificate (the first, should there be several).
fn common_name(certificate: &CertificateDer<'_>) -> CertificateIdentity {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate.as_ref()) else {
        return CertificateIdentity::Unnamed;
    };
    match parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        Some(name) if !name.is_empty() => CertificateIdentity::Named(name.to_string()),
        _ => CertificateIdentity::Unnamed,
    }
}

/// The acceptor in force, swapped whole on reload.
pub struct Tls {
    config: TlsConfig,
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Loads the files; the error names the key at fault.
    pub fn load(config: &TlsConfig) -> Result<Tls, String> {
        Ok(Tls {
            acceptor: RwLock::new(acceptor(config)?),
            config: config.clone(),
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().clone()
    }

    /// Loads the files again; on an error the ones in force stay.
    pub fn reload(&self) -> Result<(), String> {
        *self.acceptor.write() = acceptor(&self.config)?;
        Ok(())
    }
}

fn read(key: &str, path: &str) -> Result<Vec<u8>, String> {
    if path.is_empty() {
        return Err(format!("{key}: required for TLS listeners"));
    }
    std::fs::read(path).map_err(|e| format!("{key}: cannot read {path}: {e}"))
}

pub(crate) fn certificates(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(key, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{key}: {path}: not a PEM certificate chain: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{key}: {path} holds no certificate"));
    }
    Ok(certs)
}

/// The `[tls]` private key.
pub(crate) fn private_key(config: &TlsConfig) -> Result<PrivateKeyDer<'static>, String> {
    let key_pem = read("tls.key_file", &config.key_file)?;
    PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "tls.key_file: {}: not a PEM private key (PKCS#8, RSA or EC): {e}",
            config.key_file
        )
    })
}

/// A rustls server configuration from `[tls]`.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("tls.cert_file", &config.cert_file)?;
    let key = private_key(config)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = if config.client_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let authorities = certificates("tls.client_ca_file", &config.client_ca_file)?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in &authorities {
            roots
                .add(ca.clone())
                .map_err(|e| format!("tls.client_ca_file: {}: {e}", config.client_ca_file))?;
        }
        let algorithms = provider.signature_verification_algorithms;
        let webpki =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls.client_ca_file: {}: {e}", config.client_ca_file))?;
        builder.with_client_cert_verifier(Arc::new(super::client_cert::ClientCertificates::new(
            webpki,
            authorities,
            algorithms,
        )))
    };
    let server = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls.key_file: does not fit tls.cert_file: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}
