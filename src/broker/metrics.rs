//! Broker-wide counters, updated with relaxed atomics on the hot path and read by operators.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_current: AtomicU64,
    pub connections_total: AtomicU64,
    /// Messages published by clients of this node, by QoS.
    pub messages_received: [AtomicU64; 3],
    /// Messages relayed to this node by other nodes.
    pub messages_from_peers: AtomicU64,
    /// PUBLISH packets sent to clients, by QoS.
    pub messages_sent: [AtomicU64; 3],
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Deliveries dropped because the session queue was full (offline, stalled, its own
    /// publisher, or the hard cap).
    pub dropped_queue_full: AtomicU64,
    /// Deliveries dropped because the subscriber fell behind while others of the same
    /// message kept up (`mqtt.slow_subscriber`).
    pub dropped_slow_subscriber: AtomicU64,
    /// Deliveries still queued or in flight when their session ended.
    pub dropped_session_ended: AtomicU64,
    /// QoS 0 deliveries not queued for an offline session.
    pub dropped_qos0_offline: AtomicU64,
    /// Deliveries whose Message Expiry Interval ran out before sending.
    pub dropped_expired: AtomicU64,
    /// Deliveries larger than the client's Maximum Packet Size.
    pub dropped_too_large: AtomicU64,
    /// Connections closed for a protocol violation or malformed packet.
    pub protocol_errors: AtomicU64,
    /// Client PUBLISH packets refused because they target `$SYS`.
    pub publishes_refused_sys: AtomicU64,
    /// CONNECTs refused for a user name and password that do not match.
    pub auth_bad_credentials: AtomicU64,
    /// CONNECTs refused for coming without credentials where they are required.
    pub auth_required: AtomicU64,
    /// CONNECTs refused because their client id's session belongs to another identity
    /// (`auth.clientid_ownership`).
    pub auth_clientid_owned: AtomicU64,
    /// TLS handshakes that failed or did not finish in time (a wrong CA, no client
    /// certificate where one is required, an expired one, plain MQTT on the TLS port).
    pub tls_handshake_failures: AtomicU64,
    /// WebSocket upgrades refused or not finished in time (wrong path or subprotocol, not
    /// HTTP at all).
    pub websocket_upgrade_failures: AtomicU64,
    /// Connections closed for a missing or malformed PROXY protocol header.
    pub proxy_header_failures: AtomicU64,
    /// What the ACL refused: PUBLISHes (and wills), subscriptions, deliveries.
    pub acl_denied_publish: AtomicU64,
    pub acl_denied_subscribe: AtomicU64,
    pub acl_denied_receive: AtomicU64,
    /// QoS 1/2 publishes refused because the store could not keep them (v5 0x97; a 3.1.1
    /// client is disconnected without its acknowledgement).
    pub publishes_refused_store: AtomicU64,
    /// Shared-subscription deliveries a departing member did not receive, handed to a
    /// member connected at another node (no member here could take them).
    pub shared_handed_to_node: AtomicU64,
    /// Connections closed (0x8E) because their client id connected at another node.
    pub takeovers_remote: AtomicU64,
    /// Sessions handed over to another node where their client connected.
    pub sessions_handed_over: AtomicU64,
    /// Sessions taken in from another node for a client that connected here.
    pub sessions_adopted: AtomicU64,
    /// CONNECTs refused while a cluster node was unreachable
    /// (`cluster.allow_connect_during_partition = false`).
    pub connects_refused_partition: AtomicU64,
    /// Whole sessions sent to a node that became one of their replicas (catch-up).
    pub replica_snapshots: AtomicU64,
    /// Stale copies of sessions resumed elsewhere while this node was away, discarded.
    pub stale_sessions_discarded: AtomicU64,
    /// Clients told at a graceful stop to use another server (v5 DISCONNECT 0x9C) while
    /// other nodes served.
    pub clients_moved_at_stop: AtomicU64,
}

impl Metrics {
    /// The counter for drops of this kind.
    pub fn dropped(&self, reason: super::session::DropReason) -> &AtomicU64 {
        use super::session::DropReason;
        match reason {
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::SlowSubscriber => &self.dropped_slow_subscriber,
            DropReason::Qos0Offline => &self.dropped_qos0_offline,
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn sum(counters: &[AtomicU64]) -> u64 {
        counters.iter().map(Metrics::get).sum()
    }
}
