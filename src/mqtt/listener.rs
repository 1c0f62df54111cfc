//! Accepts TCP connections and hands each to its own connection task until shutdown, after
//! admission by source address: connections open per IP (`server.max_connections_per_ip`)
//! and new connections per second per IP (`server.max_connection_rate_per_ip`). A refused
//! connection is still read up to its CONNECT, so the client gets the spec's reason code.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::broker::Broker;
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

/// Accepts connections on `listener` until `shutdown` turns true; with `tls`, each one is a
/// TLS connection (the handshake within `server.connect_timeout`, in the connection's task).
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    tls: Option<Arc<super::tls::Tls>>,
) {
    let mut stop = shutdown.clone();
    let table = Arc::new(IpTable::default());
    let server = &broker.config.server;
    let (max_open, max_rate) = (
        server.max_connections_per_ip,
        server.max_connection_rate_per_ip,
    );
    let mut accepted: u64 = 0;
    loop {
        tokio::select! {
            accepted_conn = listener.accept() => match accepted_conn {
                Ok((stream, peer)) => {
                    accepted += 1;
                    let _ = stream.set_nodelay(true);
                    let admission = table.admit(peer.ip(), max_open, max_rate, accepted);
                    let (broker, shutdown) = (broker.clone(), shutdown.clone());
                    match &tls {
                        None => {
                            tokio::spawn(super::connection::run(stream, peer, broker, shutdown, admission));
                        }
                        Some(tls) => {
                            let acceptor = tls.acceptor();
                            tokio::spawn(async move {
                                let limit = std::time::Duration::from_secs(broker.config.server.connect_timeout);
                                match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                                    Ok(Ok(stream)) => super::connection::run(stream, peer, broker, shutdown, admission).await,
                                    Ok(Err(e)) => {
                                        crate::broker::Metrics::add(&broker.metrics.tls_handshake_failures, 1);
                                        tracing::info!(%peer, error = %e, "TLS handshake failed");
                                    }
                                    Err(_) => {
                                        crate::broker::Metrics::add(&broker.metrics.tls_handshake_failures, 1);
                                        tracing::debug!(%peer, "no TLS handshake within server.connect_timeout");
                                    }
                                }
                            });
                        }
                    }
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
