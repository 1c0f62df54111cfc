//! TLS on peer links (`cluster.tls = true`), for sites whose policy asks for a PKI between
//! nodes: both ends present the `[tls]` certificate and verify the other's against
//! `tls.client_ca_file`, the cluster's CA. Nodes dial each other by address, so a peer's
//! certificate must chain to that CA and be valid, but is not checked against a host name:
//! membership is what the CA signs. The cluster secret, when set as well, still seals the
//! frames inside (and keeps authenticating the handshake); TLS adds the certificates.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::TlsConfig;

/// The name a dialer asks for; not verified (see the module documentation).
const PEER_NAME: &str = "vibemq-peer";

/// Both halves of peer TLS, loaded once at start-up.
#[derive(Clone)]
pub struct PeerTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

impl PeerTls {
    /// From `[tls]`; the error names the key at fault.
    pub fn load(config: &TlsConfig) -> Result<PeerTls, String> {
        if config.client_ca_file.is_empty() {
            return Err(
                "cluster.tls: needs tls.client_ca_file, the CA peers' certificates come from"
                    .into(),
            );
        }
        let acceptor = crate::mqtt::tls_acceptor(config)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in crate::mqtt::tls::certificates("tls.client_ca_file", &config.client_ca_file)? {
            roots
                .add(ca)
                .map_err(|e| format!("tls.client_ca_file: {}: {e}", config.client_ca_file))?;
        }
        let chain_check = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("tls.client_ca_file: {}: {e}", config.client_ca_file))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyPeerName(chain_check)))
            .with_client_auth_cert(
                crate::mqtt::tls::certificates("tls.cert_file", &config.cert_file)?,
                crate::mqtt::tls::private_key(config)?,
            )
            .map_err(|e| format!("tls.key_file: does not fit tls.cert_file: {e}"))?;
        Ok(PeerTls {
            acceptor,
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The server name the connector is given.
    pub fn peer_name() -> ServerName<'static> {
        ServerName::try_from(PEER_NAME).expect("a valid DNS name")
    }
}

/// The CA's verdict on a peer's certificate, whatever name it was issued for.
#[derive(Debug)]
struct AnyPeerName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyPeerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
