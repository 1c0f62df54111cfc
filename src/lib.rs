//! VibeMQ: a clustered MQTT 3.1.1 / 5.0 broker. This crate root starts and stops a node;
//! `codec` is the wire format, `topic` the filter rules and trie, `broker` the sessions and
//! routing, `mqtt` the client-facing listener, `config` the settings.

pub mod auth;
pub mod broker;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod fd_limit;
pub mod limits;
pub mod mqtt;
pub mod ops;
pub mod store;
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
    /// The MQTT listeners that are on, with their bound addresses.
    listeners: Vec<(config::ListenerKind, SocketAddr, JoinHandle<()>)>,
    http_addr: Option<SocketAddr>,
    /// Stops the MQTT listeners accepting (a stop's second phase begins).
    stop_accepting: watch::Sender<bool>,
    /// Closes every connection and stops the node's tasks.
    shutdown: watch::Sender<bool>,
    /// The TLS listeners' certificates, reloadable.
    tls: Option<Arc<mqtt::tls::Tls>>,
}

/// Says in one line what the listeners open: loopback only (and how to open beyond it), or
/// which listeners admit anonymous clients beyond loopback.
fn log_exposure(broker: &Broker, listeners: &[(config::ListenerKind, SocketAddr, JoinHandle<()>)]) {
    let beyond: Vec<String> = listeners
        .iter()
        .filter(|(_, addr, _)| !addr.ip().is_loopback())
        .map(|(_, addr, _)| addr.to_string())
        .collect();
    if beyond.is_empty() {
        tracing::info!(
            "listening on loopback only: to serve other hosts set server.bind = \"0.0.0.0:1883\" with auth.password_file (or auth.allow_anonymous = true)"
        );
    } else if broker.auth.anonymous() == auth::Anonymous::Allowed {
        tracing::warn!(
            listeners = %beyond.join(", "),
            "anonymous clients admitted beyond loopback (auth.allow_anonymous = true)"
        );
    }
}

impl Node {
    /// Binds the listeners and starts serving. Port 0 in a listener's address (or `http.bind`)
    /// picks a free port; `listener_addr` (and `http_addr`) tell which.
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        let mut bound = Vec::new();
        for (kind, addr) in config
            .server
            .listeners()
            .map_err(|e| anyhow::anyhow!("{e}"))?
        {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("{} {addr}: {e}", kind.key()))?;
            bound.push((kind, listener.local_addr()?, listener));
        }
        if bound.is_empty() {
            anyhow::bail!("server.bind: every MQTT listener is off");
        }
        let tls = match bound.iter().any(|(kind, _, _)| kind.uses_tls()) {
            true => Some(Arc::new(
                mqtt::tls::Tls::load(&config.tls).map_err(|e| anyhow::anyhow!("{e}"))?,
            )),
            false => None,
        };
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
        let persistence = config
            .persistence
            .enabled
            .then(|| config.persistence.clone());
        let broker = Broker::new(config, node_id);
        let mut relay = store::RestoredRelay::default();
        if let Some(p) = persistence {
            // Reading a large store back takes a while: off the runtime's workers.
            let (store, mut restored) = tokio::task::spawn_blocking(move || store::Store::open(&p))
                .await
                .map_err(|e| anyhow::anyhow!("opening the store: {e}"))??;
            relay = std::mem::take(&mut restored.relay);
            broker.restore(store, restored);
        }
        let cluster = match cluster_config {
            Some(c) => Some(cluster::Cluster::start(c, &broker, relay).await?),
            None => None,
        };
        let (shutdown, rx) = watch::channel(false);
        let (stop_accepting, accepting_rx) = watch::channel(false);
        let ops = Arc::new(ops::OpsState {
            broker: broker.clone(),
            cluster: cluster.clone(),
            mqtt_up: std::sync::atomic::AtomicBool::new(true),
            stopping: std::sync::atomic::AtomicBool::new(false),
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
        let listeners: Vec<_> = bound
            .into_iter()
            .map(|(kind, addr, listener)| {
                let tls = kind.uses_tls().then(|| tls.clone()).flatten();
                let task = mqtt::serve(
                    listener,
                    broker.clone(),
                    accepting_rx.clone(),
                    rx.clone(),
                    kind,
                    tls,
                );
                (kind, addr, tokio::spawn(task))
            })
            .collect();
        for (kind, addr, _) in &listeners {
            tracing::info!(listener = kind.name(), %addr, "listening for MQTT");
        }
        log_exposure(&broker, &listeners);
        tracing::info!(
            ?http_addr,
            version = env!("CARGO_PKG_VERSION"),
            "VibeMQ started"
        );
        Ok(Node {
            broker,
            cluster,
            ops,
            listeners,
            tls,
            http_addr,
            stop_accepting,
            shutdown,
        })
    }

    /// The cluster this node is part of, when clustering is enabled.
    pub fn cluster(&self) -> Option<&Arc<cluster::Cluster>> {
        self.cluster.as_ref()
    }

    /// The MQTT-over-TCP listener's address (`server.bind`).
    ///
    /// # Panics
    /// When `server.bind` is off; `listener_addr` answers for any listener without panicking.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.listener_addr(config::ListenerKind::Tcp)
            .expect("server.bind is off on this node")
    }

    /// A listener's bound address, when it is on.
    pub fn listener_addr(&self, kind: config::ListenerKind) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(k, _, _)| *k == kind)
            .map(|(_, addr, _)| *addr)
    }

    /// The MQTT-over-TLS listener's address, when one is set (`server.tls_bind`).
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.listener_addr(config::ListenerKind::Tls)
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

    /// Stops gracefully within `deadline`, in phases with a budget each (`server.shutdown_*`),
    /// so that a slow one cannot eat the time of the next: readiness turns false while the
    /// node goes on serving (`shutdown_delay`); then the listeners stop accepting and
    /// connected clients are told to go (`shutdown_clients_timeout`): v5 DISCONNECT 0x9C "use
    /// another server" while other nodes serve (with `server.server_reference` when set),
    /// 0x8B "server shutting down" otherwise; wills are published as for any connection the
    /// server ends, and a session moves with its client to the node it reconnects to, this
    /// node still answering for it; then the node announces that it is leaving the cluster
    /// and flushes its relay queues (`shutdown_cluster_timeout`).
    pub async fn shutdown(self, deadline: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let until = tokio::time::Instant::now() + deadline;
        let server = &self.broker.config.server;
        let phase_end =
            |secs: u64| until.min(tokio::time::Instant::now() + Duration::from_secs(secs));
        self.ops.stopping.store(true, Relaxed);
        if server.shutdown_delay > 0 {
            tracing::info!(
                delay_secs = server.shutdown_delay,
                "stopping: not ready, serving on for server.shutdown_delay"
            );
            tokio::time::sleep_until(phase_end(server.shutdown_delay)).await;
        }
        let clients_end = phase_end(server.shutdown_clients_timeout);
        let others = self.cluster.as_ref().map_or(0, |c| c.live_members());
        self.broker.set_stop_reason(match others {
            0 => codec::reason::SERVER_SHUTTING_DOWN,
            _ => codec::reason::USE_ANOTHER_SERVER,
        });
        let current = &self.broker.metrics.connections_current;
        tracing::info!(
            clients = current.load(Relaxed),
            other_nodes = others,
            "stopping: telling clients to go"
        );
        self.ops.mqtt_up.store(false, Relaxed);
        self.stop_accepting.send_replace(true);
        for (_, _, task) in self.listeners {
            let _ = tokio::time::timeout_at(clients_end, task).await;
        }
        let online: Vec<(
            Arc<str>,
            Arc<broker::Session>,
            Arc<broker::ConnectionControl>,
        )> = self
            .broker
            .sessions
            .iter()
            .filter_map(|s| {
                let control = s.value().state.lock().connection.clone()?;
                Some((s.key().clone(), s.value().clone(), control))
            })
            .collect();
        // Told one after another over the first half of the phase rather than all at once,
        // so that the nodes they move to are not flooded with reconnects; then whatever is
        // left (connections still in their handshake) is closed.
        let start = tokio::time::Instant::now();
        let window = clients_end.saturating_duration_since(start) / 2;
        let code = self.broker.stop_reason();
        for (i, (_, _, control)) in online.iter().enumerate() {
            // Each at its place in the window; those whose time has come go together.
            let at = start + window.mul_f64(i as f64 / online.len() as f64);
            if at > tokio::time::Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            control.kick(code);
        }
        self.shutdown.send_replace(true);
        // With other nodes serving, the clients told to go reconnect there and claim their
        // sessions from this node, which must still be here to hand them over.
        let mut moving: Vec<(Arc<str>, Arc<broker::Session>)> = match others {
            0 => Vec::new(),
            _ => online.into_iter().map(|(id, s, _)| (id, s)).collect(),
        };
        let broker = &self.broker;
        let settled = async {
            loop {
                // Still here: not yet taken by another node (a clean session is gone at close).
                moving.retain(|(id, session)| {
                    broker
                        .sessions
                        .get(id)
                        .is_some_and(|now| Arc::ptr_eq(now.value(), session))
                });
                if current.load(Relaxed) == 0 && moving.is_empty() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout_at(clients_end, settled).await.is_err() {
            tracing::warn!(
                open = current.load(Relaxed),
                sessions_not_taken = moving.len(),
                "server.shutdown_clients_timeout passed with client connections open or sessions \
                 not yet taken by another node (those resume from their copies on other nodes)"
            );
        }
        if let Some(cluster) = &self.cluster {
            cluster
                .leave(phase_end(server.shutdown_cluster_timeout))
                .await;
        }
        if let Some(store) = self.broker.store().cloned() {
            // The last writes go to disk before the process ends.
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
    }
}
