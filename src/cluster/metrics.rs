//! The cluster's counters for operators (exported by `ops::metrics`, listed in the README's
//! Operations section): membership events, relay traffic and drops, link faults, security
//! refusals, session claims and replicas.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// Counters for operators (see README, Operations).
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub nodes_joined: AtomicU64,
    pub nodes_left: AtomicU64,
    pub nodes_failed: AtomicU64,
    pub nodes_updated: AtomicU64,
    pub frames_forwarded: AtomicU64,
    pub frames_received: AtomicU64,
    /// Frames dropped: a link past `cluster.hold_bytes`, no link to a node that has routes,
    /// or a node given up on (failed past `cluster.hold_secs`, restarted, left) with frames
    /// queued for it.
    pub relay_dropped: AtomicU64,
    pub link_reconnects: AtomicU64,
    /// Connections closed for silence past `cluster.link_timeout_ms`.
    pub link_timeouts: AtomicU64,
    /// Peer connections closed because a sealed record failed to open (forged, altered,
    /// replayed, reordered).
    pub frames_rejected: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Peer connections closed because a reload took the secret they were made under out of
    /// force (they come back under a secret in force).
    pub links_closed_secret_withdrawn: AtomicU64,
    /// Peer connections closed at once because `cluster.max_pending_handshakes` others were
    /// still proving themselves.
    pub handshakes_refused: AtomicU64,
    /// Gossip datagrams refused for not being sealed with this cluster's secret.
    pub gossip_rejected: Arc<AtomicU64>,
    /// Sealed gossip datagrams replayed or stamped outside the replay window.
    pub gossip_replayed: Arc<AtomicU64>,
    /// SUBACKs sent before every live node acknowledged the new routes
    /// (`cluster.subscribe_ack_timeout_ms`).
    pub subscribe_ack_timeouts: Arc<crate::broker::SubscribeAckTimeouts>,
    /// Session claims or handovers a live peer did not answer within
    /// `cluster.takeover_timeout_ms`.
    pub takeover_timeouts: AtomicU64,
    /// Changes to replicated sessions not sent to a replica (no link, or its hold bound
    /// reached): that replica catches up from a whole copy when it is placed again.
    pub replica_ops_dropped: AtomicU64,
    /// Sessions brought back from a copy here after the node holding them died.
    pub replicas_promoted: AtomicU64,
    /// Shared-group messages queued for a failed node that went to a member elsewhere.
    pub group_messages_rescued: AtomicU64,
    /// Copies dropped because their holder stayed gone past the session's expiry.
    pub replicas_expired: AtomicU64,
    /// Copies read back from the store and dropped because their holder, alive, did not
    /// send them again (it no longer holds that session).
    pub replicas_stale_dropped: AtomicU64,
    /// Messages a dead holder had not taken yet, recovered from the links to it when its
    /// session came back from a copy here.
    pub recovered_messages: AtomicU64,
    /// Such messages past the bound of one recovery answer: dropped.
    pub recovery_dropped: AtomicU64,
    /// Batches acknowledged to a peer (or PUBACKs sent) before every session copy confirmed
    /// the changes they made: a replica's link stopped delivering.
    pub replication_unconfirmed: Arc<crate::broker::Unconfirmed>,
}
