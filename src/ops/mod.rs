//! Operations: the HTTP endpoint (health, readiness, Prometheus metrics, admin API) and the
//! `$SYS` publisher. Reads broker and cluster state; changes nothing in them except publishing
//! `$SYS` messages to this node's own clients.

pub mod http;
pub mod metrics;
pub mod sys;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crate::broker::Broker;
use crate::cluster::Cluster;

/// What the endpoints and the `$SYS` publisher read.
pub struct OpsState {
    pub broker: Arc<Broker>,
    pub cluster: Option<Arc<Cluster>>,
    /// The MQTT listener is accepting.
    pub mqtt_up: AtomicBool,
    /// A graceful stop has begun: not ready, though still serving for `server.shutdown_delay`.
    pub stopping: AtomicBool,
    pub started: Instant,
}

impl OpsState {
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Why the node is not ready, or None when it is. Ready means "a client connecting now
    /// is served": the MQTT listener is up, the node is not stopping, it admits connects
    /// (`cluster.allow_connect_during_partition = false` refuses them while a known node is
    /// unreachable), and a node with seeds has linked another node once or waited
    /// `cluster.join_timeout_ms` for one. Links that fail later do not take a node out of
    /// service: in a partition, or for the last node after a scale-down, that would take
    /// every endpoint away at once; they show in /ready's body instead.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return Some("shutting down");
        }
        if !self.mqtt_up.load(std::sync::atomic::Ordering::Relaxed) {
            return Some("MQTT listener not accepting");
        }
        if let Some(cluster) = &self.cluster {
            if !cluster.admits_connect() {
                return Some(
                    "a cluster node is unreachable and cluster.allow_connect_during_partition = false",
                );
            }
            if !self.broker.config.cluster.seeds.is_empty() && !cluster.joined_or_gave_up() {
                return Some("waiting to link another node (cluster.join_timeout_ms)");
            }
        }
        None
    }
}
