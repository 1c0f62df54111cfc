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
    pub started: Instant,
}

impl OpsState {
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Why the node is not ready, or None when it is: the MQTT listener is up and, when seeds
    /// are configured, at least one other node is linked; and when other nodes are live, at
    /// least one link to them delivers. (One bad link does not take a node out of service:
    /// in a partition that would take every node out at once. It shows in /ready's body.)
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if !self.mqtt_up.load(std::sync::atomic::Ordering::Relaxed) {
            return Some("MQTT listener not accepting");
        }
        if let Some(cluster) = &self.cluster {
            let peers = cluster.peers();
            let delivering = peers.iter().any(|p| p.connected);
            if !self.broker.config.cluster.seeds.is_empty() && !delivering {
                return Some("cluster seeds configured but no peer linked yet");
            }
            if cluster.live_members() > 0 && !peers.is_empty() && !delivering {
                return Some("no link to another node delivers");
            }
        }
        None
    }
}
