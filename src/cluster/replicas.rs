//! Session replicas, the replicas' half: where a holder's sessions are copied
//! (`cluster.session_replicas` live nodes, picked by rendezvous hashing of the client id, so
//! a session's copies spread over the cluster and move little when members change), keeping
//! the copies this node holds for others (applying the holder's `ReplicaOp`s in order), and
//! bringing a copy forward when its holder died: a claim for the client id finds it, as it
//! finds a live node's session, and the copy is handed to the claimant the same way
//! (`handover`). A copy whose holder is gone and whose client does not come back is dropped
//! when the session would have expired. With persistence on, the copies are on disk too
//! (`replica_store`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::Cluster;
use super::handover::SessionMessage;
use crate::broker::Metrics;
use crate::broker::handover::{ClaimOrder, Holding, SessionImage};
use crate::broker::replica::{ReplicaNode, ReplicaOp, ReplicaSnapshot};
use crate::store::records::StoredDelivery;
use crate::store::{InflightMark, StoredSubscription};

/// How many resumed sessions are remembered for their old holders' return.
const MOVED_REMEMBERED: usize = 1_000_000;

/// How long a copy read back from the store waits, with its holder alive, for the holder to
/// send the session again (it does within about a second of seeing this node back); past
/// it, the holder no longer holds that session and the copy is stale.
const RESTORED_CONFIRM: std::time::Duration = std::time::Duration::from_secs(10);

/// How often copies whose holder is gone are checked against their session's expiry.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A copy of a session held on another node.
#[derive(Debug)]
pub(super) struct Replica {
    /// The run of the holder when it sent the whole session: a holder back as a new run
    /// (restarted) has lost what it held, so the copy counts as orphaned.
    pub(super) holder_generation: u64,
    pub(super) expiry_interval: u32,
    /// The verified identity that owns the session (None: made anonymously): a claim under
    /// another identity does not get the copy (`auth.clientid_ownership`).
    pub(super) owner: Option<String>,
    pub(super) subscriptions: BTreeMap<String, StoredSubscription>,
    pub(super) deliveries: BTreeMap<u64, (StoredDelivery, Option<InflightMark>)>,
    pub(super) inbound_qos2: BTreeSet<u16>,
    /// The claim it was promised to, once its holder died and a claim came for it.
    pub(super) claimed: Option<ClaimOrder>,
    /// Since when its holder is known to be gone (for the expiry sweep).
    pub(super) orphaned_at: Option<Instant>,
    /// Read back from the store and not sent again by its holder since: from when its
    /// holder was seen alive (None: not yet), for `RESTORED_CONFIRM`.
    pub(super) restored: Option<Option<Instant>>,
}

/// A session resumed from a copy here: (old holder, client id, the claim that resumed it,
/// until when its old holder needs telling).
type Moved = (Arc<str>, String, ClaimOrder, Option<Instant>);

/// A copy's key: (client id, holder node).
type CopyKey = (Arc<str>, Arc<str>);

/// The copies this node holds.
#[derive(Default)]
pub(crate) struct Replicas {
    held: Mutex<HashMap<CopyKey, Replica>>,
    /// Sessions brought back from a copy here, to tell their old holder when it is back (it
    /// may have kept, or read back from its store, a copy of its own): (holder, client, the
    /// claim that resumed it, until when it matters).
    moved: Mutex<VecDeque<Moved>>,
    /// A session held here missed a change to one of its replicas (see `broker::replica`).
    pub(crate) stale: std::sync::atomic::AtomicBool,
    /// This node has sent session changes to replicas: acknowledgements wait for copies
    /// from now on (`recovery`).
    pub(crate) replicating: std::sync::atomic::AtomicBool,
    /// The nodes this node has sent session changes to: acknowledgements wait for their
    /// confirmation (`recovery`).
    pub(crate) targets: parking_lot::RwLock<std::collections::HashSet<Arc<str>>>,
}

impl Replicas {
    /// Starting with the copies the store kept: (client, holder, copy).
    pub(super) fn with_copies(copies: Vec<(Arc<str>, Arc<str>, Replica)>) -> Replicas {
        let replicas = Replicas::default();
        replicas.held.lock().extend(
            copies
                .into_iter()
                .map(|(client, holder, r)| ((client, holder), r)),
        );
        replicas
    }

    /// (copies held, QoS 1/2 deliveries in them).
    pub(crate) fn counts(&self) -> (usize, usize) {
        let held = self.held.lock();
        (held.len(), held.values().map(|r| r.deliveries.len()).sum())
    }
}

fn rank(client: &str, node: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    client.hash(&mut h);
    node.hash(&mut h);
    h.finish()
}

impl Cluster {
    pub(crate) fn replica_count(&self) -> usize {
        self.config.session_replicas
    }

    /// Live peers (linked, not suspended) with their runs, by node id.
    pub(crate) fn live_runs(&self) -> Vec<ReplicaNode> {
        self.links
            .read()
            .iter()
            .filter(|(_, l)| l.is_connected() && l.suspended_since().is_none())
            .map(|(node, l)| (node.clone(), l.generation))
            .collect()
    }

    /// The `cluster.session_replicas` live peers ranked highest for `client` (rendezvous).
    pub(crate) fn replica_nodes(&self, client: &str) -> Vec<ReplicaNode> {
        let mut live = self.live_runs();
        live.sort_by_key(|(node, _)| std::cmp::Reverse(rank(client, node)));
        live.truncate(self.config.session_replicas);
        live.sort();
        live
    }

    /// Sends one change of a session held here to its replicas.
    pub(crate) fn replicate(&self, nodes: &[ReplicaNode], client: &str, op: ReplicaOp) -> bool {
        self.replicas.replicating.store(true, Ordering::Relaxed);
        if nodes
            .iter()
            .any(|(node, _)| !self.replicas.targets.read().contains(node))
        {
            let mut targets = self.replicas.targets.write();
            targets.extend(nodes.iter().map(|(node, _)| node.clone()));
        }
        let message = SessionMessage::Replica {
            client: client.to_string(),
            op,
        };
        let Some(body) = super::handover::encode(&message) else {
            return false;
        };
        let mut all = true;
        for (node, _) in nodes {
            let link = self.links.read().get(node).cloned();
            if !link.is_some_and(|l| l.send_session(body.clone())) {
                Metrics::add(&self.metrics.replica_ops_dropped, 1);
                all = false;
            }
        }
        all
    }

    /// Applies a change `holder` made to a session it holds.
    pub(crate) fn apply_replica_op(&self, holder: &Arc<str>, client: &str, op: ReplicaOp) {
        let key = (Arc::<str>::from(client), holder.clone());
        let mut held = self.replicas.held.lock();
        if let ReplicaOp::Snapshot(snapshot) = op {
            let holder_generation = self.links.read().get(holder).map_or(0, |l| l.generation);
            let replica = replica_from(snapshot, holder_generation);
            if let Some(old) = held
                .get(&key)
                .filter(|old| old.holder_generation != holder_generation)
            {
                self.forget_copy(holder, old.holder_generation, client);
            }
            self.store_copy(holder, client, &replica);
            held.insert(key, replica);
            return;
        }
        if matches!(op, ReplicaOp::Gone) {
            if let Some(old) = held.remove(&key) {
                self.forget_copy(holder, old.holder_generation, client);
            }
            return;
        }
        // Changes before a snapshot (a link made anew): the next snapshot brings them.
        let Some(r) = held.get_mut(&key) else { return };
        if r.holder_generation == 0 {
            // Made before this node had a link to the holder.
            r.holder_generation = self.links.read().get(holder).map_or(0, |l| l.generation);
            if r.holder_generation != 0 {
                self.forget_copy(holder, 0, client);
                self.store_copy(holder, client, r);
            }
        }
        self.store_copy_op(holder, r.holder_generation, client, &op);
        match op {
            ReplicaOp::Queued { seq, delivery } => {
                r.deliveries.insert(seq, (*delivery, None));
            }
            ReplicaOp::Sent { seq, mark } => {
                if let Some(d) = r.deliveries.get_mut(&seq) {
                    d.1 = Some(mark);
                }
            }
            ReplicaOp::Done { seq } => {
                r.deliveries.remove(&seq);
            }
            ReplicaOp::Subscribed {
                filter,
                subscription,
            } => {
                r.subscriptions.insert(filter, subscription);
            }
            ReplicaOp::Unsubscribed { filter } => {
                r.subscriptions.remove(&filter);
            }
            ReplicaOp::InboundQos2 { packet_id, held } => {
                if held {
                    r.inbound_qos2.insert(packet_id);
                } else {
                    r.inbound_qos2.remove(&packet_id);
                }
            }
            ReplicaOp::Meta {
                expiry_interval,
                owner,
            } => {
                r.expiry_interval = expiry_interval;
                r.owner = owner;
            }
            ReplicaOp::Snapshot(_) | ReplicaOp::Gone => {}
        }
    }

    /// Whether `holder`, as the run a copy was made from, is still live.
    fn holder_alive(&self, holder: &str, generation: u64) -> bool {
        self.links.read().get(holder).is_some_and(|l| {
            l.is_connected()
                && l.suspended_since().is_none()
                && (generation == 0 || l.generation == generation)
        })
    }

    /// A claim on `client` by a connection of `identity`: a copy here whose holder died (or
    /// did not answer the claim: `gone`) is promised to it (its subscriptions returned), or,
    /// for a clean start, dropped; `Owned` when the copy's session belongs to another
    /// identity (it is left as it is).
    pub(crate) fn claim_replica(
        &self,
        client: &str,
        order: &ClaimOrder,
        clean_start: bool,
        gone: &[String],
        identity: Option<&str>,
    ) -> Holding {
        let mut held = self.replicas.held.lock();
        let orphans: Vec<CopyKey> = held
            .iter()
            .filter(|((c, holder), r)| {
                &**c == client
                    && (gone.iter().any(|g| **g == **holder)
                        || !self.holder_alive(holder, r.holder_generation))
            })
            .map(|(k, _)| k.clone())
            .collect();
        let foreign = |r: &Replica| !crate::broker::session::may_take(r.owner.as_deref(), identity);
        if self.ownership_enforced() && orphans.iter().any(|k| held.get(k).is_some_and(foreign)) {
            return Holding::Owned;
        }
        if clean_start {
            let ended = !orphans.is_empty();
            for k in orphans {
                if let Some(r) = held.remove(&k) {
                    if let (Some(owner), Some(broker)) = (&r.owner, self.broker()) {
                        broker.note_ended_for_owner(client, Arc::from(owner.as_str()));
                    }
                    self.forget_copy(&k.1, r.holder_generation, client);
                }
            }
            return match ended {
                true => Holding::Ended,
                false => Holding::Nothing,
            };
        }
        let Some(r) = orphans.first().and_then(|k| held.get_mut(k)) else {
            return Holding::Nothing;
        };
        if r.claimed.as_ref().is_some_and(|c| c > order) {
            return Holding::Nothing;
        }
        r.claimed = Some(order.clone());
        let subscriptions = r
            .subscriptions
            .iter()
            .map(|(f, s)| (f.clone(), *s))
            .collect();
        Holding::Session(subscriptions, r.owner.clone())
    }

    /// Whether client ids belong to their sessions' identities here
    /// (`auth.clientid_ownership = "enforce"`).
    pub(crate) fn ownership_enforced(&self) -> bool {
        self.broker().is_some_and(|b| {
            b.config.auth.clientid_ownership == crate::config::ClientIdOwnership::Enforce
        })
    }

    /// The copy promised to claim `order`, as a session image, with what the other nodes
    /// still held for its dead holder (`recovery`); it leaves this node.
    pub(crate) async fn release_replica_recovered(
        &self,
        client: &str,
        order: &ClaimOrder,
    ) -> Option<SessionImage> {
        let (holder, mut image) = self.release_replica(client, order)?;
        self.recover_into(&holder, client, &mut image).await;
        Some(image)
    }

    /// The copy promised to claim `order`, as a session image, and its holder; it leaves this
    /// node.
    fn release_replica(
        &self,
        client: &str,
        order: &ClaimOrder,
    ) -> Option<(Arc<str>, SessionImage)> {
        let mut held = self.replicas.held.lock();
        let key = held
            .iter()
            .find(|((c, _), r)| &**c == client && r.claimed.as_ref() == Some(order))
            .map(|(k, _)| k.clone())?;
        let r = held.remove(&key)?;
        drop(held);
        self.forget_copy(&key.1, r.holder_generation, client);
        let until = (r.expiry_interval != u32::MAX)
            .then(|| Instant::now() + std::time::Duration::from_secs(u64::from(r.expiry_interval)));
        let mut moved = self.replicas.moved.lock();
        if moved.len() >= MOVED_REMEMBERED {
            moved.pop_front();
        }
        moved.push_back((key.1.clone(), client.to_string(), order.clone(), until));
        drop(moved);
        Metrics::add(&self.metrics.replicas_promoted, 1);
        tracing::info!(client_id = %crate::limits::printable(client), holder = %key.1, deliveries = r.deliveries.len(), "session brought back from its replica: its node is gone");
        let (inflight, queued): (Vec<_>, Vec<_>) = r
            .deliveries
            .into_values()
            .partition(|(_, mark)| mark.is_some());
        let image = SessionImage {
            subscriptions: r.subscriptions.into_iter().collect(),
            deliveries: inflight.into_iter().chain(queued).collect(),
            inbound_qos2: r.inbound_qos2.into_iter().collect(),
        };
        Some((key.1, image))
    }

    /// Sweeps the copies (`sweep_replicas`) every few seconds until the cluster stops.
    pub(crate) fn keep_sweeping_replicas(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                if *cluster.shutdown.borrow() {
                    return;
                }
                cluster.sweep_replicas();
            }
        });
    }

    /// Drops the copies whose holder has been gone longer than their session's expiry, and
    /// tells holders that are back which of their sessions were resumed elsewhere.
    pub(crate) fn sweep_replicas(&self) {
        let now = Instant::now();
        self.replicas
            .moved
            .lock()
            .retain(|(holder, client, order, until)| {
                if until.is_some_and(|u| u <= now) {
                    return false;
                }
                if !self.holder_alive(holder, 0) {
                    return true;
                }
                let moved = SessionMessage::Moved {
                    client: client.clone(),
                    order: order.clone(),
                };
                !self.tell(holder, &moved)
            });
        let mut held = self.replicas.held.lock();
        let before = held.len();
        let mut stale = 0;
        held.retain(|(client, holder), r| {
            if self.holder_alive(holder, r.holder_generation) {
                r.orphaned_at = None;
                let Some(alive_since) = r.restored.as_mut() else {
                    return true;
                };
                if now.duration_since(*alive_since.get_or_insert(now)) < RESTORED_CONFIRM {
                    return true;
                }
                tracing::info!(client_id = %crate::limits::printable(client), holder = %holder, "copy read back from the store dropped: its holder no longer holds the session");
                self.forget_copy(holder, r.holder_generation, client);
                stale += 1;
                return false;
            }
            if let Some(alive_since) = r.restored.as_mut() {
                *alive_since = None;
            }
            let since = *r.orphaned_at.get_or_insert(now);
            let keep = r.expiry_interval == u32::MAX
                || now.duration_since(since).as_secs() < u64::from(r.expiry_interval);
            if !keep {
                self.forget_copy(holder, r.holder_generation, client);
            }
            keep
        });
        self.metrics
            .replicas_stale_dropped
            .fetch_add(stale, Ordering::Relaxed);
        let expired = before - held.len() - stale as usize;
        if expired > 0 {
            self.metrics
                .replicas_expired
                .fetch_add(expired as u64, Ordering::Relaxed);
        }
    }
}

fn replica_from(s: ReplicaSnapshot, holder_generation: u64) -> Replica {
    Replica {
        holder_generation,
        expiry_interval: s.expiry_interval,
        owner: s.owner,
        subscriptions: s.subscriptions.into_iter().collect(),
        deliveries: s
            .deliveries
            .into_iter()
            .map(|(seq, d, mark)| (seq, (d, mark)))
            .collect(),
        inbound_qos2: s.inbound_qos2.into_iter().collect(),
        claimed: None,
        orphaned_at: None,
        restored: None,
    }
}
