//! VibeMQ: a clustered MQTT 3.1.1 / 5.0 broker. This crate root starts and stops a node;
//! `codec` is the wire format, `topic` the filter rules and trie, `broker` the sessions and
//! routing, `mqtt` the client-facing listener, `config` the settings.

pub mod auth;
pub mod broker;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod limits;
pub mod mqtt;
pub mod ops;
pub mod topic;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use broker::Broker;
pub use config::Config;

/// Resolves once a shutdown signal is true (at once if it already is, or if its sender is
/// gone, which also means stop).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A running broker node.
pub struct Node {
    broker: Arc<Broker>,
    cluster: Option<Arc<cluster::Cluster>>,
    ops: Arc<ops::OpsState>,
    mqtt_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    listener: JoinHandle<()>,
    tls_addr: Option<SocketAddr>,
    /// The TLS listener's certificates, reloadable.
    tls: Option<Arc<mqtt::tls::Tls>>,
    tls_listener: Option<JoinHandle<()>>,
}

impl Node {
    /// Binds the listeners and starts serving. Port 0 in `server.bind` (or `http.bind`) picks
    /// a free port; `mqtt_addr` (and `http_addr`) tell which.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        let listener = TcpListener::bind(config.server.bind)
            .await
            .map_err(|e| anyhow::anyhow!("server.bind {}: {e}", config.server.bind))?;
        let mqtt_addr = listener.local_addr()?;
        let tls_addr = config
            .server
            .tls_addr()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let tls_listener = match tls_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("server.tls_bind {addr}: {e}"))?,
            ),
            None => None,
        };
        let tls = match &tls_listener {
            Some(_) => Some(Arc::new(
                mqtt::tls::Tls::load(&config.tls).map_err(|e| anyhow::anyhow!("{e}"))?,
            )),
            None => None,
        };
        let tls_addr = tls_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let http = match config.http.enabled {
            true => Some(
                TcpListener::bind(config.http.bind)
                    .await
                    .map_err(|e| anyhow::anyhow!("http.bind {}: {e}", config.http.bind))?,
            ),
            false => None,
        };
        let http_addr = http.as_ref().map(TcpListener::local_addr).transpose()?;
        let sys_interval = config.mqtt.sys_interval;
        let cluster_config = config.cluster.enabled.then(|| config.cluster.clone());
        let node_id = cluster_config
            .as_ref()
            .map_or_else(|| Arc::from(""), cluster::node_id);
        let broker = Broker::new(config, node_id);
        let cluster = match cluster_config {
            Some(c) => Some(cluster::Cluster::start(c, &broker).await?),
            None => None,
        };
        let (shutdown, rx) = watch::channel(false);
        let ops = Arc::new(ops::OpsState {
            broker: broker.clone(),
            cluster: cluster.clone(),
            mqtt_up: std::sync::atomic::AtomicBool::new(true),
            started: std::time::Instant::now(),
        });
        if let Some(http) = http {
            tokio::spawn(ops::http::serve(http, ops.clone(), rx.clone()));
        }
        if sys_interval > 0 {
            tokio::spawn(ops::sys::run(
                ops.clone(),
                Duration::from_secs(sys_interval),
                rx.clone(),
            ));
        }
        let tls_listener = tls_listener
            .map(|l| tokio::spawn(mqtt::serve(l, broker.clone(), rx.clone(), tls.clone())));
        let listener = tokio::spawn(mqtt::serve(listener, broker.clone(), rx, None));
        tracing::info!(%mqtt_addr, ?tls_addr, ?http_addr, version = env!("CARGO_PKG_VERSION"), "VibeMQ listening for MQTT");
        Ok(Node {
            broker,
            cluster,
            ops,
            mqtt_addr,
            tls_addr,
            tls,
            http_addr,
            shutdown,
            listener,
            tls_listener,
        })
    }

    /// The cluster this node is part of, when clustering is enabled.
    pub fn cluster(&self) -> Option<&Arc<cluster::Cluster>> {
        self.cluster.as_ref()
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// The MQTT-over-TLS listener's address, when one is set (`server.tls_bind`).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The TLS certificates in force, to reload (SIGHUP).
    pub fn tls(&self) -> Option<&Arc<mqtt::tls::Tls>> {
        self.tls.as_ref()
    }

    /// The HTTP endpoint's address, when it is enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Stops gracefully within `deadline`: readiness turns false, the listener stops
    /// accepting, connected clients are told the server is shutting down (v5 DISCONNECT 0x8B;
    /// wills are published as for any connection the server ends), then the node announces
    /// that it is leaving the cluster and flushes its relay queues.
    pub async fn shutdown(self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        self.ops
            .mqtt_up
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.shutdown.send_replace(true);
        let _ = self.listener.await;
        if let Some(l) = self.tls_listener {
            let _ = l.await;
        }
        let current = &self.broker.metrics.connections_current;
        let closed = async {
            while current.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout_at(until, closed).await.is_err() {
            tracing::warn!("shutdown deadline passed with client connections still open");
        }
        if let Some(cluster) = &self.cluster {
            cluster.leave(until).await;
        }
    }
}
