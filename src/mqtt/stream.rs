//! The byte stream a client connection runs over. The connection task is written against this
//! trait, not against TCP, so every transport (TCP, TLS, WebSocket, WebSocket over TLS) and
//! the in-memory pipes of the fuzz target drive the same code.

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A bidirectional client stream that splits into halves the connection reads and writes
/// independently.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Reader: AsyncRead + Unpin + Send + 'static;
    type Writer: AsyncWrite + Unpin + Send + 'static;
    fn into_halves(self) -> (Self::Reader, Self::Writer);
    /// The name in the client's TLS certificate, for `tls.use_identity_as_username`.
    fn certificate_identity(&self) -> CertificateIdentity {
        CertificateIdentity::NotTls
    }
}

/// What a client's certificate says about who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateIdentity {
    /// Not a TLS connection: credentials come from CONNECT.
    NotTls,
    /// The certificate's subject Common Name.
    Named(String),
    /// TLS without a client certificate, or one without a Common Name.
    Unnamed,
}

impl ClientStream for TcpStream {
    type Reader = OwnedReadHalf;
    type Writer = OwnedWriteHalf;
    fn into_halves(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
}

/// In-memory pipes (tests and fuzzing).
impl ClientStream for DuplexStream {
    type Reader = ReadHalf<DuplexStream>;
    type Writer = WriteHalf<DuplexStream>;
    fn into_halves(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}
