//! The byte stream a client connection runs over. The connection task is written against this
//! trait, not against TCP, so every transport (TCP now; TLS and WebSocket to come) and the
//! in-memory pipes of the fuzz target drive the same code.

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A bidirectional client stream that splits into halves the connection reads and writes
/// independently.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Reader: AsyncRead + Unpin + Send + 'static;
    type Writer: AsyncWrite + Unpin + Send + 'static;
    fn into_halves(self) -> (Self::Reader, Self::Writer);
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
