//! TLS on peer links (`cluster.tls = true`), for sites whose policy asks for a PKI between
//! nodes: both ends present the `[tls]` certificate and verify the other's against
//! `cluster.ca_file`, the cluster's own CA (never the CA of MQTT clients' certificates: a
//! device's certificate must not make it a node). Nodes dial each other by address, so a
//! peer's certificate is not checked against a host name; with `cluster.tls_peer_name` set it
//! must carry that name (a DNS name or the Common Name; `*.` matches one label), so a CA that
//! signs more than nodes can still be used. The cluster secret, when set as well, still seals
//! the frames inside (and keeps authenticating the handshake); TLS adds the certificates.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{ClusterConfig, TlsConfig};

/// The name a dialer asks for; not verified (see the module documentation).
const PEER_NAME: &str = "vibemq-peer";

/// Both halves of peer TLS, loaded once at start-up.
#[derive(Clone)]
pub struct PeerTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

impl PeerTls {
    /// From `[tls]` (the certificate a node presents) and `cluster.ca_file` /
    /// `cluster.tls_peer_name` (what it accepts); the error names the key at fault.
    pub fn load(tls: &TlsConfig, cluster: &ClusterConfig) -> Result<PeerTls, String> {
        if cluster.ca_file.is_empty() {
            return Err(
                "cluster.ca_file: needed with cluster.tls: the CA that signs the nodes' certificates (not tls.client_ca_file: a client's certificate must not make it a node)"
                    .into(),
            );
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = || -> Result<Arc<rustls::RootCertStore>, String> {
            let mut roots = rustls::RootCertStore::empty();
            for ca in crate::mqtt::tls::certificates("cluster.ca_file", &cluster.ca_file)? {
                roots
                    .add(ca)
                    .map_err(|e| format!("cluster.ca_file: {}: {e}", cluster.ca_file))?;
            }
            Ok(Arc::new(roots))
        };
        let name = PeerName::parse(&cluster.tls_peer_name)?;
        let chain = crate::mqtt::tls::certificates("tls.cert_file", &tls.cert_file)?;
        let key = crate::mqtt::tls::private_key(tls)?;

        let client_check =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots()?, provider.clone())
                .build()
                .map_err(|e| format!("cluster.ca_file: {}: {e}", cluster.ca_file))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_client_cert_verifier(Arc::new(NamedPeer {
                chain: client_check,
                name: name.clone(),
            }))
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("tls.key_file: does not fit tls.cert_file: {e}"))?;

        let server_check =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots()?, provider.clone())
                .build()
                .map_err(|e| format!("cluster.ca_file: {}: {e}", cluster.ca_file))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyPeerAddress {
                chain: server_check,
                name,
            }))
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("tls.key_file: does not fit tls.cert_file: {e}"))?;
        Ok(PeerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The server name the connector is given.
    pub fn peer_name() -> ServerName<'static> {
        ServerName::try_from(PEER_NAME).expect("a valid DNS name")
    }
}

/// The name a peer's certificate must carry (`cluster.tls_peer_name`): exact, or `*.rest`
/// for exactly one label before `rest`; compared without regard to case.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PeerName {
    /// No name required: the CA's signature is membership.
    Any,
    Exact(String),
    /// `*.suffix`: one label, then `.suffix`.
    OneLabelUnder(String),
}

impl PeerName {
    fn parse(pattern: &str) -> Result<PeerName, String> {
        let pattern = pattern.trim().to_ascii_lowercase();
        if pattern.is_empty() {
            return Ok(PeerName::Any);
        }
        let bad = |why: &str| Err(format!("cluster.tls_peer_name: `{pattern}` {why}"));
        match pattern.strip_prefix("*.") {
            Some(rest) if rest.is_empty() || rest.contains('*') => {
                bad("may hold one `*`, as its first label")
            }
            Some(rest) => Ok(PeerName::OneLabelUnder(rest.to_string())),
            None if pattern.contains('*') => bad("may hold one `*`, as its first label"),
            None => Ok(PeerName::Exact(pattern)),
        }
    }

    fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match self {
            PeerName::Any => true,
            PeerName::Exact(exact) => name == *exact,
            PeerName::OneLabelUnder(rest) => name
                .split_once('.')
                .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        }
    }

    /// Whether the certificate carries the name: as one of its DNS subject alternative names,
    /// or, when it has none, as its Common Name (RFC 6125).
    fn carried_by(&self, certificate: &CertificateDer<'_>) -> bool {
        if *self == PeerName::Any {
            return true;
        }
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate.as_ref()) else {
            return false;
        };
        let dns_names = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let common_names = parsed
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_string))
            .collect::<Vec<_>>();
        let names = match dns_names.is_empty() {
            true => &common_names,
            false => &dns_names,
        };
        names.iter().any(|n| self.matches(n))
    }

    fn refusal(&self) -> rustls::Error {
        rustls::Error::General(format!(
            "the peer's certificate does not carry the name cluster.tls_peer_name requires ({self:?})"
        ))
    }
}

/// The acceptor's check of a dialing node: chained to `cluster.ca_file`, and named as
/// `cluster.tls_peer_name` says.
#[derive(Debug)]
struct NamedPeer {
    chain: Arc<dyn ClientCertVerifier>,
    name: PeerName,
}

impl ClientCertVerifier for NamedPeer {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.name.carried_by(end_entity) {
            return Err(self.name.refusal());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The dialer's check of the node it reached: the CA's verdict whatever address it was
/// dialed at, and the name `cluster.tls_peer_name` requires.
#[derive(Debug)]
struct AnyPeerAddress {
    chain: Arc<rustls::client::WebPkiServerVerifier>,
    name: PeerName,
}

impl ServerCertVerifier for AnyPeerAddress {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        let verified = match self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => ServerCertVerified::assertion(),
            other => other?,
        };
        if !self.name.carried_by(end_entity) {
            return Err(self.name.refusal());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_name_patterns() {
        let any = PeerName::parse("").unwrap();
        assert!(any.matches("whatever"));
        let exact = PeerName::parse("Node.Example").unwrap();
        assert!(exact.matches("node.example"));
        assert!(!exact.matches("other.example"));
        let under = PeerName::parse("*.vibemq-headless.default.svc").unwrap();
        assert!(under.matches("vibemq-0.vibemq-headless.default.svc"));
        assert!(
            !under.matches("vibemq-headless.default.svc"),
            "one label, not none"
        );
        assert!(
            !under.matches("a.b.vibemq-headless.default.svc"),
            "one label, not two"
        );
        assert!(!under.matches(".vibemq-headless.default.svc"));
        for bad in ["*", "a.*.b", "*.*.b", "x*.b"] {
            let e = PeerName::parse(bad).unwrap_err();
            assert!(e.starts_with("cluster.tls_peer_name"), "{bad}: {e}");
        }
    }
}
