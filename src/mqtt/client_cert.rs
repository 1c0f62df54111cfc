//! What a client certificate must be on an mTLS listener (`tls.client_ca_file`): webpki's
//! verdict for X.509 v3 certificates, and X.509 v1 ones (what `openssl x509 -req` makes
//! without an extensions file, as mosquitto's TLS guide does) accepted only when signed
//! directly by a configured CA, checked as strictly otherwise (validity period, a signature
//! algorithm webpki allows, the handshake signature by the certificate's key); never as an
//! intermediate or a CA. A refusal is logged once per episode of its kind, in a line that says
//! what is wrong and how to re-issue the certificate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

/// webpki for v3 certificates, the checks above for v1 ones.
#[derive(Debug)]
pub(super) struct ClientCertificates {
    webpki: Arc<dyn ClientCertVerifier>,
    /// The CAs of `tls.client_ca_file`, DER.
    authorities: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertificates {
    pub(super) fn new(
        webpki: Arc<dyn ClientCertVerifier>,
        authorities: Vec<CertificateDer<'static>>,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> ClientCertificates {
        ClientCertificates {
            webpki,
            authorities,
            algorithms,
        }
    }

    /// A v1 certificate: signed directly by one of the CAs and within its validity period.
    fn verify_v1(&self, leaf: &CertificateDer<'_>, now: UnixTime) -> Result<(), Error> {
        let bad = |e: CertificateError| Error::InvalidCertificate(e);
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|_| bad(CertificateError::BadEncoding))?;
        let now_secs = now.as_secs() as i64;
        let validity = parsed.validity();
        if now_secs > validity.not_after.timestamp() {
            return Err(bad(CertificateError::Expired));
        }
        if now_secs < validity.not_before.timestamp() {
            return Err(bad(CertificateError::NotValidYet));
        }
        let signed = Signed::of(leaf.as_ref()).ok_or(bad(CertificateError::BadEncoding))?;
        // Every CA of that name is tried (old and new during a CA's rollover share it).
        let mut named = false;
        for authority in &self.authorities {
            let Ok((_, ca)) = x509_parser::parse_x509_certificate(authority.as_ref()) else {
                continue;
            };
            if ca.subject().as_raw() != parsed.issuer().as_raw() {
                continue;
            }
            let Some((key_algorithm, key)) = spki_parts(ca.public_key().raw) else {
                continue;
            };
            let verified = self.algorithms.all.iter().any(|alg| {
                alg.signature_alg_id().as_ref() == signed.algorithm
                    && alg.public_key_alg_id().as_ref() == key_algorithm
                    && alg
                        .verify_signature(key, signed.tbs, signed.signature)
                        .is_ok()
            });
            if verified {
                return Ok(());
            }
            named = true;
        }
        match named {
            // A CA of its issuer's name, whose key did not sign it.
            true => Err(bad(CertificateError::BadSignature)),
            // Not signed by a configured CA directly (v1 certificates have no extensions to
            // make a chain with).
            false => Err(bad(CertificateError::UnknownIssuer)),
        }
    }

    /// The handshake signature by a v1 certificate's key (webpki reads v3 certificates only).
    fn verify_v1_signature(
        &self,
        message: &[u8],
        leaf: &CertificateDer<'_>,
        (scheme, signature): (SignatureScheme, &[u8]),
        tls13: bool,
    ) -> Result<HandshakeSignatureValid, Error> {
        if tls13 && !tls13_scheme(scheme) {
            return Err(Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let (key_algorithm, key) = spki_parts(parsed.public_key().raw)
            .ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let mapped: &[&dyn SignatureVerificationAlgorithm] = self
            .algorithms
            .mapping
            .iter()
            .find(|(s, _)| *s == scheme)
            .map_or(&[], |(_, algs)| algs);
        // TLS 1.3 names the curve with the scheme: only its first algorithm, as webpki does.
        let candidates = match tls13 {
            true => &mapped[..mapped.len().min(1)],
            false => mapped,
        };
        let verified = candidates.iter().any(|alg| {
            alg.public_key_alg_id().as_ref() == key_algorithm
                && alg.verify_signature(key, message, signature).is_ok()
        });
        match verified {
            true => Ok(HandshakeSignatureValid::assertion()),
            false => Err(Error::InvalidCertificate(CertificateError::BadSignature)),
        }
    }
}

/// The signature schemes TLS 1.3 allows in a CertificateVerify (RFC 8446 4.4.3: no PKCS#1
/// v1.5, no SHA-1).
fn tls13_scheme(scheme: SignatureScheme) -> bool {
    use SignatureScheme::*;
    matches!(
        scheme,
        ECDSA_NISTP256_SHA256
            | ECDSA_NISTP384_SHA384
            | ECDSA_NISTP521_SHA512
            | RSA_PSS_SHA256
            | RSA_PSS_SHA384
            | RSA_PSS_SHA512
            | ED25519
            | ED448
    )
}

/// Whether a DER certificate says it is X.509 v1 (no version field, or version 0).
fn is_v1(certificate: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(certificate.as_ref())
        .is_ok_and(|(_, c)| c.version() == x509_parser::x509::X509Version::V1)
}

impl ClientCertVerifier for ClientCertificates {
    fn offer_client_auth(&self) -> bool {
        self.webpki.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.webpki.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if is_v1(end_entity) {
            return self
                .verify_v1(end_entity, now)
                .map(|()| ClientCertVerified::assertion());
        }
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if is_v1(cert) {
            return self.verify_v1_signature(message, cert, (dss.scheme, dss.signature()), false);
        }
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if is_v1(cert) {
            return self.verify_v1_signature(message, cert, (dss.scheme, dss.signature()), true);
        }
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A certificate's signed part, its signature algorithm (the AlgorithmIdentifier's contents)
/// and its signature, read off the DER.
struct Signed<'a> {
    tbs: &'a [u8],
    algorithm: &'a [u8],
    signature: &'a [u8],
}

impl<'a> Signed<'a> {
    fn of(der: &'a [u8]) -> Option<Signed<'a>> {
        let (certificate, _) = Tlv::read(der, 0x30)?;
        let (tbs, rest) = Tlv::read(certificate.contents, 0x30)?;
        let (algorithm, rest) = Tlv::read(rest, 0x30)?;
        let (signature, _) = Tlv::read(rest, 0x03)?;
        Some(Signed {
            tbs: tbs.whole,
            algorithm: algorithm.contents,
            signature: bit_string(signature.contents)?,
        })
    }
}

/// (AlgorithmIdentifier contents, key bits) of a SubjectPublicKeyInfo.
fn spki_parts(spki: &[u8]) -> Option<(&[u8], &[u8])> {
    let (info, _) = Tlv::read(spki, 0x30)?;
    let (algorithm, rest) = Tlv::read(info.contents, 0x30)?;
    let (key, _) = Tlv::read(rest, 0x03)?;
    Some((algorithm.contents, bit_string(key.contents)?))
}

/// A BIT STRING's bits, which must fill whole bytes.
fn bit_string(contents: &[u8]) -> Option<&[u8]> {
    match contents.split_first() {
        Some((0, bits)) => Some(bits),
        _ => None,
    }
}

/// One DER element: its whole encoding and its contents.
struct Tlv<'a> {
    whole: &'a [u8],
    contents: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// The element at the start of `der`, which must have tag `tag`, and what follows it.
    /// Definite lengths of up to four bytes; anything else is None (never a panic).
    fn read(der: &'a [u8], tag: u8) -> Option<(Tlv<'a>, &'a [u8])> {
        let (&first, rest) = der.split_first()?;
        if first != tag {
            return None;
        }
        let (&len0, rest) = rest.split_first()?;
        let (len, rest) = if len0 < 0x80 {
            (usize::from(len0), rest)
        } else {
            let n = usize::from(len0 & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |l, b| (l << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        let header = der.len() - rest.len();
        Some((
            Tlv {
                whole: &der[..header + len],
                contents: &rest[..len],
            },
            &rest[len..],
        ))
    }
}

/// How often one kind of certificate refusal is logged, at most.
const REFUSAL_EPISODE: Duration = Duration::from_secs(60);

/// The last time each kind of refusal was logged.
static LAST_LOGGED: Mutex<Vec<(&'static str, Instant)>> = Mutex::new(Vec::new());

/// Logs a failed TLS handshake of a client: at info every time, and, the first time in an
/// episode of its kind, at warn with what is wrong with the certificate and how to fix it.
pub(super) fn log_refusal(peer: std::net::SocketAddr, error: &std::io::Error) {
    tracing::info!(%peer, error = %error, "TLS handshake failed");
    let Some((kind, advice)) = advice(error) else {
        return;
    };
    {
        let mut last = LAST_LOGGED.lock();
        match last.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, at)) if at.elapsed() < REFUSAL_EPISODE => return,
            Some((_, at)) => *at = Instant::now(),
            None => last.push((kind, Instant::now())),
        }
    }
    tracing::warn!(%peer, refused = kind, "client certificate refused: {advice} (logged once a minute per kind; vibemq_tls_handshake_failures_total counts each)");
}

/// What a certificate refusal means to the person who made the certificate.
fn advice(error: &std::io::Error) -> Option<(&'static str, &'static str)> {
    let rustls_error = error.get_ref()?.downcast_ref::<Error>()?;
    let Error::InvalidCertificate(e) = rustls_error else {
        if matches!(rustls_error, Error::NoCertificatesPresented) {
            return Some((
                "no_certificate",
                "the client sent no certificate, which tls.client_ca_file requires: give it one (mosquitto clients: --cert and --key)",
            ));
        }
        return None;
    };
    Some(match e {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
            "expired",
            "the client certificate has expired: issue a new one (openssl x509 -req -days N ... -CA ca.crt -CAkey ca.key)",
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
            "not_valid_yet",
            "the client certificate is not valid yet: check the clocks, or issue it again with a start date in the past",
        ),
        CertificateError::UnknownIssuer => (
            "unknown_issuer",
            "the client certificate is not signed by a CA of tls.client_ca_file (an X.509 v1 certificate must be signed by one directly): sign it with that CA",
        ),
        CertificateError::BadSignature => (
            "bad_signature",
            "the client certificate's signature does not verify against tls.client_ca_file, or uses an algorithm refused as weak (SHA-1, MD5): sign it again with that CA and SHA-256",
        ),
        CertificateError::Revoked => (
            "revoked",
            "the client certificate was revoked: issue a new one",
        ),
        _ => (
            "invalid",
            "the client certificate is not acceptable (see the error at info): issue it again from tls.client_ca_file's CA with SHA-256, as an end-entity certificate",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{PrivateKeyDer, UnixTime};

    fn pem(text: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(text.as_bytes()).unwrap()
    }

    /// The checks over the CAs in `authorities` (a webpki verifier over the first of them
    /// behind, for v3 certificates).
    fn verifier(authorities: &[&str]) -> ClientCertificates {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let authorities: Vec<_> = authorities.iter().map(|a| pem(a)).collect();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(authorities[0].clone()).unwrap();
        let webpki = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        ClientCertificates::new(
            webpki,
            authorities,
            provider.signature_verification_algorithms,
        )
    }

    const CA: &str = include_str!("testdata/v1-ca.pem");
    const LEAF: &str = include_str!("testdata/v1-leaf.pem");
    const LEAF_KEY: &str = include_str!("testdata/v1-leaf.key");
    const IMPOSTOR: &str = include_str!("testdata/v1-impostor-ca.pem");

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    /// 2030-01-01, within the fixtures' validity; and 2200, past it.
    const IN_2030: u64 = 1_893_456_000;
    const IN_2200: u64 = 7_258_118_400;

    #[test]
    fn a_v1_leaf_is_checked_against_its_ca_and_its_dates() {
        let leaf = pem(LEAF);
        assert!(is_v1(&leaf) && !is_v1(&pem(CA)));
        let v = verifier(&[CA]);
        assert!(v.verify_client_cert(&leaf, &[], at(IN_2030)).is_ok());
        assert_eq!(
            v.verify_client_cert(&leaf, &[], at(IN_2200)).unwrap_err(),
            Error::InvalidCertificate(CertificateError::Expired)
        );
        // A CA of the same name with another key: the signature does not verify.
        let impostor = verifier(&[IMPOSTOR]);
        assert_eq!(
            impostor
                .verify_client_cert(&leaf, &[], at(IN_2030))
                .unwrap_err(),
            Error::InvalidCertificate(CertificateError::BadSignature)
        );
        // A rollover: the impostor (same name, another key) first, the real CA second.
        let rollover = verifier(&[IMPOSTOR, CA]);
        assert!(rollover.verify_client_cert(&leaf, &[], at(IN_2030)).is_ok());
        // Signed by no configured CA: unknown issuer (v1 certificates make no chains).
        let stranger = ClientCertificates {
            authorities: Vec::new(),
            ..verifier(&[CA])
        };
        assert_eq!(
            stranger
                .verify_client_cert(&leaf, &[], at(IN_2030))
                .unwrap_err(),
            Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
    }

    #[test]
    fn the_handshake_signature_of_a_v1_leaf_is_verified_with_its_key() {
        let key = PrivateKeyDer::from_pem_slice(LEAF_KEY.as_bytes()).unwrap();
        let signing = rustls::crypto::ring::sign::any_ecdsa_type(&key).unwrap();
        let scheme = SignatureScheme::ECDSA_NISTP256_SHA256;
        let signer = signing.choose_scheme(&[scheme]).unwrap();
        let message = b"the handshake transcript";
        let signature = signer.sign(message).unwrap();
        let v = verifier(&[CA]);
        let leaf = pem(LEAF);
        let check = |message: &[u8], signed: (SignatureScheme, &[u8]), tls13| {
            v.verify_v1_signature(message, &leaf, signed, tls13).is_ok()
        };
        assert!(check(message, (scheme, &signature), true));
        assert!(check(message, (scheme, &signature), false));
        // Another message, or a signature altered, is refused.
        assert!(!check(b"another", (scheme, &signature), true));
        let mut altered = signature.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(!check(message, (scheme, &altered), false));
        // A scheme TLS 1.3 does not allow is refused there.
        assert!(!check(
            message,
            (SignatureScheme::RSA_PKCS1_SHA256, &signature),
            true
        ));
    }

    #[test]
    fn der_reading_takes_what_it_knows_and_refuses_the_rest() {
        // SEQUENCE { INTEGER 5 } then a trailing byte.
        let der = [0x30, 0x03, 0x02, 0x01, 0x05, 0xff];
        let (seq, rest) = Tlv::read(&der, 0x30).unwrap();
        assert_eq!(seq.whole, &der[..5]);
        assert_eq!(seq.contents, &[0x02, 0x01, 0x05]);
        assert_eq!(rest, &[0xff]);
        assert!(Tlv::read(&der, 0x02).is_none(), "wrong tag");
        assert!(Tlv::read(&[0x30, 0x05, 0x00], 0x30).is_none(), "short");
        assert!(
            Tlv::read(&[0x30, 0x85, 1, 1, 1, 1, 1], 0x30).is_none(),
            "too long"
        );
        assert!(Tlv::read(&[0x30, 0x80], 0x30).is_none(), "indefinite");
        assert!(Tlv::read(&[], 0x30).is_none());
        let long = [&[0x04, 0x81, 0x80][..], &[7; 128]].concat();
        assert_eq!(Tlv::read(&long, 0x04).unwrap().0.contents.len(), 128);
        assert_eq!(bit_string(&[0, 1, 2]), Some(&[1u8, 2][..]));
        assert_eq!(bit_string(&[3, 1]), None, "partial bytes");
        assert!(Signed::of(&[0x30, 0x00]).is_none());
    }
}
