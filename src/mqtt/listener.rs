//! Accepts connections on one MQTT listener (TCP, TLS, WebSocket or WebSocket over TLS) and
//! hands each to its own connection task until shutdown, after admission by source address
//! (the PROXY header's when there is one): connections open per IP
//! (`server.max_connections_per_ip`) and new connections per second per IP
//! (`server.max_connection_rate_per_ip`). A refused connection is still read up to its
//! CONNECT, so the client gets the spec's reason code.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::stream::ClientStream;
use super::tls::Tls;
use crate::broker::{Broker, Metrics};
use crate::config::ListenerKind;
use crate::limits::{Limit, TokenBucket};

/// What one source address has open, and its connection-rate bucket.
#[derive(Debug)]
struct PerIp {
    open: usize,
    rate: Option<TokenBucket>,
    last_seen: Instant,
}

/// Connections by source IP, shared by the listener and every connection's guard.
#[derive(Debug, Default)]
pub struct IpTable {
    by_ip: DashMap<IpAddr, PerIp>,
}

/// The listener's verdict on a new connection.
#[derive(Debug)]
pub enum Admission {
    /// Admitted; the guard counts it against its IP until dropped.
    Admitted(Option<IpGuard>),
    /// Refused by this limit: the connection is told at CONNECT and closed.
    Refused(Limit),
}

/// Holds one open connection against its IP's count.
#[derive(Debug)]
pub struct IpGuard {
    table: Arc<IpTable>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        if let Some(mut e) = self.table.by_ip.get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
        }
    }
}

impl IpTable {
    fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_open: usize,
        max_rate: u32,
        accepted: u64,
    ) -> Admission {
        if max_open == 0 && max_rate == 0 {
            return Admission::Admitted(None);
        }
        // Now and then forget addresses with nothing open whose bucket has refilled.
        if accepted.is_multiple_of(1024) {
            self.by_ip
                .retain(|_, e| e.open > 0 || e.last_seen.elapsed().as_secs() < 2);
        }
        let mut e = self.by_ip.entry(ip).or_insert_with(|| PerIp {
            open: 0,
            rate: (max_rate > 0).then(|| TokenBucket::new(f64::from(max_rate))),
            last_seen: Instant::now(),
        });
        e.last_seen = Instant::now();
        if let Some(bucket) = &mut e.rate
            && bucket.take(1.0).is_some()
        {
            // Refused connections do not spend the budget of admitted ones.
            bucket.take(-1.0);
            return Admission::Refused(Limit::ConnectionRatePerIp);
        }
        if max_open > 0 && e.open >= max_open {
            return Admission::Refused(Limit::ConnectionsPerIp);
        }
        e.open += 1;
        Admission::Admitted(Some(IpGuard {
            table: self.clone(),
            ip,
        }))
    }
}

/// Accepts connections on `listener` until `stop_accepting` turns true, each served in its
/// own task until `shutdown` closes it, as `kind` says: after the PROXY header
/// (`server.proxy_protocol`), the TLS handshake (with `tls`) and the WebSocket upgrade, all
/// within `server.connect_timeout`.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    stop_accepting: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    kind: ListenerKind,
    tls: Option<Arc<Tls>>,
) {
    let mut stop = stop_accepting;
    let table = Arc::new(IpTable::default());
    // Anonymous clients are welcome by default on a loopback listener only. Behind the PROXY
    // protocol the clients are remote whatever the listener's address; and a WebSocket
    // listener is where browsers (any page the user visits) and reverse proxies reach in, so
    // it is never "local" either.
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback())
        && !broker.config.server.proxy_protocol
        && !kind.uses_websocket();
    let mut accepted: u64 = 0;
    loop {
        tokio::select! {
            accepted_conn = listener.accept() => match accepted_conn {
                Ok((stream, socket)) => {
                    accepted += 1;
                    let _ = stream.set_nodelay(true);
                    let opening = Opening {
                        broker: broker.clone(),
                        shutdown: shutdown.clone(),
                        table: table.clone(),
                        kind,
                        tls: tls.clone(),
                        accepted,
                        loopback,
                    };
                    tokio::spawn(opening.open(stream, socket));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = crate::stopped(&mut stop) => break,
        }
    }
}

/// One accepted socket on its way to being an MQTT connection.
struct Opening {
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    table: Arc<IpTable>,
    kind: ListenerKind,
    tls: Option<Arc<Tls>>,
    /// This listener's count of accepted sockets so far.
    accepted: u64,
    /// The listener is bound to a loopback address (and not behind the PROXY protocol).
    loopback: bool,
}

impl Opening {
    async fn open(self, mut stream: TcpStream, socket: SocketAddr) {
        let broker = &self.broker;
        let server = &broker.config.server;
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_secs(server.connect_timeout);
        let peer = if server.proxy_protocol {
            match tokio::time::timeout_at(deadline, super::proxy::read_header(&mut stream, socket))
                .await
            {
                Ok(Ok(client)) => client,
                Ok(Err(why)) => {
                    Metrics::add(&broker.metrics.proxy_header_failures, 1);
                    tracing::info!(%socket, "closing connection: {why} (server.proxy_protocol is on)");
                    return;
                }
                Err(_) => {
                    Metrics::add(&broker.metrics.proxy_header_failures, 1);
                    tracing::debug!(%socket, "no PROXY header within server.connect_timeout");
                    return;
                }
            }
        } else {
            socket
        };
        let admission = self.table.admit(
            peer.ip(),
            server.max_connections_per_ip,
            server.max_connection_rate_per_ip,
            self.accepted,
        );
        match &self.tls {
            None => self.upgrade(stream, peer, deadline, admission).await,
            Some(tls) => {
                match tokio::time::timeout_at(deadline, tls.acceptor().accept(stream)).await {
                    Ok(Ok(stream)) => self.upgrade(stream, peer, deadline, admission).await,
                    Ok(Err(e)) => {
                        Metrics::add(&broker.metrics.tls_handshake_failures, 1);
                        super::client_cert::log_refusal(peer, &e);
                    }
                    Err(_) => {
                        Metrics::add(&broker.metrics.tls_handshake_failures, 1);
                        tracing::debug!(%peer, "no TLS handshake within server.connect_timeout");
                    }
                }
            }
        }
    }

    /// The WebSocket upgrade where the listener speaks it, then the MQTT connection.
    async fn upgrade<S: ClientStream>(
        self,
        stream: S,
        peer: SocketAddr,
        deadline: tokio::time::Instant,
        admission: Admission,
    ) {
        let broker = self.broker;
        // After CONNACK the connection gets a task of its own holding only its serving
        // future: served here, every connection's task would be as large as the largest path
        // through this one (the TLS handshake, the CONNECT handshake) for its whole life.
        if !self.kind.uses_websocket() {
            let entry = (admission, self.loopback);
            let opened = super::connection::open(stream, peer, broker, self.shutdown, entry);
            if let Some(serving) = opened.await {
                tokio::spawn(serving);
            }
            return;
        }
        let max_packet = broker.config.mqtt.max_packet_size as usize;
        let origins = &broker.config.server.ws_allowed_origins;
        match tokio::time::timeout_at(
            deadline,
            super::websocket::accept(stream, max_packet, origins),
        )
        .await
        {
            Ok(Ok(ws)) => {
                let entry = (admission, self.loopback);
                let opened = super::connection::open(ws, peer, broker, self.shutdown, entry);
                if let Some(serving) = opened.await {
                    tokio::spawn(serving);
                }
            }
            Ok(Err(why)) => {
                Metrics::add(&broker.metrics.websocket_upgrade_failures, 1);
                tracing::info!(%peer, listener = self.kind.name(), "WebSocket upgrade refused: {}", why.0);
            }
            Err(_) => {
                Metrics::add(&broker.metrics.websocket_upgrade_failures, 1);
                tracing::debug!(%peer, "no WebSocket upgrade within server.connect_timeout");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limits_count_open_connections_and_new_ones_per_second() {
        let table = Arc::new(IpTable::default());
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let other: IpAddr = "10.1.2.4".parse().unwrap();
        let a = table.admit(ip, 2, 0, 1);
        let b = table.admit(ip, 2, 0, 2);
        assert!(matches!(
            table.admit(ip, 2, 0, 3),
            Admission::Refused(Limit::ConnectionsPerIp)
        ));
        assert!(matches!(
            table.admit(other, 2, 0, 4),
            Admission::Admitted(Some(_))
        ));
        drop(a);
        assert!(matches!(
            table.admit(ip, 2, 0, 5),
            Admission::Admitted(Some(_))
        ));
        drop(b);
        // A burst of one second's worth, then refusals.
        let rated: IpAddr = "10.9.9.9".parse().unwrap();
        let mut kept = Vec::new();
        for i in 0..5 {
            kept.push(table.admit(rated, 0, 5, 10 + i));
            assert!(matches!(kept.last(), Some(Admission::Admitted(_))));
        }
        assert!(matches!(
            table.admit(rated, 0, 5, 20),
            Admission::Refused(Limit::ConnectionRatePerIp)
        ));
        assert!(matches!(
            table.admit(rated, 0, 0, 21),
            Admission::Admitted(None)
        ));
    }
}
