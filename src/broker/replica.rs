//! Session replicas, the holder's half: what a persistent session's journal tells the nodes
//! that keep a copy of it (`cluster.session_replicas`), and keeping that set of nodes right
//! as members come and go. Every change the journal records (a delivery queued, sent or
//! finished, a subscription, an inbound QoS 2 id, the expiry) goes to each replica as a
//! `ReplicaOp` over the reliable peer link, in the order it happened; a node that becomes a
//! replica, or comes back as a new run, first gets the whole session (`Snapshot`). The
//! replicas' half (keeping them, and bringing one forward when its holder died) is
//! `cluster::replicas`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::handover::Subscriptions;
use super::{Broker, ClusterHook, Metrics};
use crate::store::records::StoredDelivery;
use crate::store::{InflightMark, StoredSubscription};

/// A replica node: its id and the run (generation) it was told the whole session in.
pub type ReplicaNode = (Arc<str>, u64);

/// One change to a replicated session, as its holder sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReplicaOp {
    /// The whole session: the replica starts (again) from this.
    Snapshot(ReplicaSnapshot),
    Queued {
        seq: u64,
        delivery: Box<StoredDelivery>,
    },
    Sent {
        seq: u64,
        mark: InflightMark,
    },
    Done {
        seq: u64,
    },
    Subscribed {
        filter: String,
        subscription: StoredSubscription,
    },
    Unsubscribed {
        filter: String,
    },
    InboundQos2 {
        packet_id: u16,
        held: bool,
    },
    /// The session's expiry and the identity that owns it.
    Meta {
        expiry_interval: u32,
        owner: Option<String>,
    },
    /// The session ended, or moved to another node (which replicates it afresh).
    Gone,
}

/// A session as a replica starts from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaSnapshot {
    pub expiry_interval: u32,
    /// The verified identity that owns the session (None: made anonymously).
    pub owner: Option<String>,
    pub subscriptions: Subscriptions,
    /// By journal sequence number, with the packet id and state of those in flight.
    pub deliveries: Vec<(u64, StoredDelivery, Option<InflightMark>)>,
    pub inbound_qos2: Vec<u16>,
}

/// A journal's line to its session's replicas.
pub struct ReplicaLine {
    pub hook: Arc<dyn ClusterHook>,
    pub nodes: Vec<ReplicaNode>,
    /// This node's id: the origin a message that entered here travels with.
    pub node_id: Arc<str>,
    /// A change did not reach every replica (no link, or its hold bound): they get the whole
    /// session again at the next reconciliation.
    pub stale: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for ReplicaLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaLine")
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl ReplicaLine {
    pub fn send(&self, client: &str, op: ReplicaOp) {
        if !self.nodes.is_empty() && !self.hook.replicate(&self.nodes, client, op) {
            self.stale.store(true, Ordering::Relaxed);
            self.hook.note_stale_replica();
        }
    }
}

/// How often the holder checks that each session's replicas are on the right nodes.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);

impl Broker {
    /// The nodes a persistent session's journal replicates to from now on, when replication
    /// is on (`cluster.session_replicas` > 0 in a cluster).
    pub(super) fn replica_line(&self) -> Option<ReplicaLine> {
        let hook = self.cluster.get()?.clone();
        (hook.replica_count() > 0).then_some(ReplicaLine {
            hook,
            nodes: Vec::new(),
            node_id: self.node_id.clone(),
            stale: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Keeps every replicated session's replicas on the nodes it should have now: runs until
    /// the broker is gone. Nothing happens while the live members stay the same.
    pub fn keep_replicas(self: &Arc<Self>) {
        let Some(hook) = self.cluster.get().cloned() else {
            return;
        };
        if hook.replica_count() == 0 {
            return;
        }
        // Sessions read back from the store before the cluster started replicate from now on.
        for session in self.sessions.iter() {
            let mut st = session.state.lock();
            if let Some(j) = st.journal.as_mut()
                && j.replicas.is_none()
            {
                j.replicas = self.replica_line();
            }
        }
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen_members = Vec::new();
            loop {
                tokio::time::sleep(RECONCILE_EVERY).await;
                let Some(broker) = me.upgrade() else { return };
                let members = hook.live_runs();
                if members != seen_members || hook.take_stale_replicas() {
                    broker.reconcile_replicas(&*hook);
                    seen_members = members;
                }
            }
        });
    }

    /// Points every replicated session at the nodes it should be replicated to now.
    pub fn reconcile_replicas(&self, hook: &dyn ClusterHook) {
        let sessions: Vec<_> = self.sessions.iter().map(|s| s.clone()).collect();
        for session in sessions {
            let mut st = session.state.lock();
            if !st.ended {
                self.reconcile_session(hook, &session.client_id, &mut st);
            }
        }
    }

    /// Points one session's replicas at the nodes it should have now: the whole session to
    /// a node new to it, `Gone` to one that is not a replica any more.
    pub(super) fn reconcile_session(
        &self,
        hook: &dyn ClusterHook,
        client_id: &str,
        st: &mut super::session::SessionState,
    ) {
        let Some((current, stale)) = st
            .journal
            .as_ref()
            .and_then(|j| j.replicas.as_ref())
            .map(|l| (l.nodes.clone(), l.stale.swap(false, Ordering::Relaxed)))
        else {
            return;
        };
        // A replica that missed a change starts again from the whole session.
        let current = if stale { Vec::new() } else { current };
        let wanted = hook.replica_nodes(client_id);
        if wanted == current {
            return;
        }
        let gone: Vec<ReplicaNode> = current
            .iter()
            .filter(|n| !wanted.contains(n))
            .cloned()
            .collect();
        let new: Vec<ReplicaNode> = wanted
            .iter()
            .filter(|n| !current.contains(n))
            .cloned()
            .collect();
        if !gone.is_empty() {
            hook.replicate(&gone, client_id, ReplicaOp::Gone);
        }
        if !new.is_empty() {
            let snapshot = ReplicaSnapshot {
                expiry_interval: st.expiry_interval,
                owner: st.owner.as_deref().map(str::to_string),
                subscriptions: st
                    .subscriptions
                    .iter()
                    .map(|(f, r)| (f.clone(), StoredSubscription::from_record(r)))
                    .collect(),
                deliveries: snapshot_deliveries(&self.node_id, st),
                inbound_qos2: st.inbound_qos2.iter().copied().collect(),
            };
            hook.replicate(&new, client_id, ReplicaOp::Snapshot(snapshot));
            Metrics::add(&self.metrics.replica_snapshots, new.len() as u64);
        }
        if let Some(line) = st.journal.as_mut().and_then(|j| j.replicas.as_mut()) {
            line.nodes = wanted;
        }
    }
}

/// The session's journaled deliveries, in flight first, as a snapshot carries them.
fn snapshot_deliveries(
    node_id: &str,
    st: &super::session::SessionState,
) -> Vec<(u64, StoredDelivery, Option<InflightMark>)> {
    let inflight = st
        .inflight
        .iter()
        .map(|f| (&f.delivery, Some(InflightMark::new(f.packet_id, f.state))));
    let queued = st.queue.iter().map(|d| (d, None));
    inflight
        .chain(queued)
        .filter(|(d, _)| d.store_seq != 0)
        .map(|(d, mark)| (d.store_seq, stored_delivery(node_id, d), mark))
        .collect()
}

/// A delivery as it travels to another node: a message that entered here names this node.
pub fn stored_delivery(node_id: &str, d: &super::Delivery) -> StoredDelivery {
    let mut s = StoredDelivery::from_delivery(d);
    s.message.origin.get_or_insert_with(|| node_id.to_string());
    s
}
