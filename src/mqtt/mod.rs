//! The MQTT front end: the listeners (TCP, TLS, WebSocket, each optionally behind the PROXY
//! protocol) and one task per client connection, which decodes
//! packets, runs the CONNECT handshake and the QoS handshakes, and writes what the session has
//! queued. It turns bytes into broker calls; routing and session state live in `broker`.

mod client_cert;
mod connect;
mod connection;
mod durable;
mod inbound;
mod listener;
mod outbound;
mod proxy;
mod stream;
pub mod tls;
mod websocket;

pub use listener::serve;
pub use stream::{CertificateIdentity, ClientStream};
pub use tls::acceptor as tls_acceptor;

/// Serves one client connection over any byte stream to its end, as the listener does for
/// each accepted socket (admitted, with no per-IP accounting, and as local as a loopback
/// listener: in-process streams). For other transports and for driving a whole connection in
/// tests and fuzzing.
pub async fn serve_connection<S: ClientStream>(
    stream: S,
    peer: std::net::SocketAddr,
    broker: std::sync::Arc<crate::broker::Broker>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    connection::run(
        stream,
        peer,
        broker,
        shutdown,
        (listener::Admission::Admitted(None), true),
    )
    .await
}
