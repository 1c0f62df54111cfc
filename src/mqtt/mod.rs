//! The MQTT front end: the TCP listener and one task per client connection, which decodes
//! packets, runs the CONNECT handshake and the QoS handshakes, and writes what the session has
//! queued. It turns bytes into broker calls; routing and session state live in `broker`.

mod connect;
mod connection;
mod inbound;
mod listener;
mod outbound;

pub use listener::serve;
