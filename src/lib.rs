//! VibeMQ: a clustered MQTT 3.1.1 / 5.0 broker. This crate root starts and stops a node;
//! `codec` is the wire format, `topic` the filter rules and trie, `broker` the sessions and
//! routing, `mqtt` the client-facing listener, `config` the settings.

pub mod broker;
pub mod codec;
pub mod config;
pub mod mqtt;
pub mod topic;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use broker::Broker;
pub use config::Config;

/// A running broker node.
pub struct Node {
    broker: Arc<Broker>,
    mqtt_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    listener: JoinHandle<()>,
}

impl Node {
    /// Binds the listeners and starts serving. Port 0 in `server.bind` picks a free port;
    /// `mqtt_addr` tells which.
    pub async fn start(config: Config) -> std::io::Result<Node> {
        let listener = TcpListener::bind(config.server.bind).await?;
        let mqtt_addr = listener.local_addr()?;
        let broker = Broker::new(config, Arc::from(""));
        let (shutdown, rx) = watch::channel(false);
        let listener = tokio::spawn(mqtt::serve(listener, broker.clone(), rx));
        tracing::info!(%mqtt_addr, version = env!("CARGO_PKG_VERSION"), "VibeMQ listening for MQTT");
        Ok(Node {
            broker,
            mqtt_addr,
            shutdown,
            listener,
        })
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Stops accepting, tells connected clients the server is shutting down (v5 DISCONNECT
    /// 0x8B), and waits up to `deadline` for their connections to close.
    pub async fn shutdown(self, deadline: Duration) {
        self.shutdown.send_replace(true);
        let _ = self.listener.await;
        let current = &self.broker.metrics.connections_current;
        let closed = async {
            while current.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(deadline, closed).await.is_err() {
            tracing::warn!("shutdown deadline passed with connections still open");
        }
    }
}
