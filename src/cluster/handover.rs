//! Sessions that follow their client between nodes, the cluster's half: the claim a node
//! makes on a client id when a connection for it arrives, the answers, and the session image
//! the holder hands over, carried as reliable `Frame::Session` records over the peer links
//! (each node's link to another carries its requests and its answers alike).
//!
//! The arbiter is the claim itself, not an owner node: a claim carries a `ClaimOrder` (the
//! hybrid logical clock stamp of the connect at the node it reached, then that node's id),
//! every node keeps the newest order it has seen per client id while claims are under way and
//! per session afterwards, and answers an older claim "superseded". So two connects racing on
//! two nodes end with the later one connected everywhere, without a leader or a quorum.
//!
//! A claim asks every live peer (linked and not suspended), bounded by
//! `cluster.takeover_timeout_ms`. During a partition the nodes on the other side are not
//! asked: with `cluster.allow_connect_during_partition = true` (the default) the client is
//! served with what this side has (availability; a session on the other side stays there
//! until its client returns to it or it expires), with `false` a connect while any known
//! peer is unreachable is refused with "server unavailable" (consistency).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::Cluster;
use crate::broker::Metrics;
use crate::broker::handover::{Claim, ClaimOrder, Holding, Released, SessionImage};
use crate::broker::replica::ReplicaOp;

/// How often a claimant waiting for an answer looks at the link it waits on.
const HEALTH_CHECK: Duration = Duration::from_millis(100);

/// What nodes tell each other about sessions (the body of `Frame::Session`, bincode).
#[derive(Debug, Serialize, Deserialize)]
pub enum SessionMessage {
    /// A connection for `client` arrived at the sender.
    Claim {
        request: u64,
        client: String,
        order: ClaimOrder,
        clean_start: bool,
        /// The verified identity of the connection (None: anonymous): a session held for
        /// another identity is not given up to it (`auth.clientid_ownership`).
        identity: Option<String>,
        /// Nodes that did not answer this claim's first round: the receiver takes them for
        /// gone (a copy it keeps of their sessions may be claimed).
        gone: Vec<String>,
    },
    /// What the receiver holds for the claim `request`.
    Answer { request: u64, holding: Holding },
    /// The claimant has made the session's subscriptions: hand the session over.
    Release {
        request: u64,
        client: String,
        order: ClaimOrder,
    },
    /// The session, or None (gone meanwhile, or a newer claim has it).
    Image {
        request: u64,
        image: Option<SessionImage>,
    },
    /// From the holder, before it hands a session over: answer over your link to me, behind
    /// everything you sent me before.
    Barrier { request: u64 },
    /// The answer to a `Barrier`: every frame this node sent before it has been processed.
    Passed { request: u64 },
    /// A change to a session the sender holds and the receiver keeps a copy of (`replicas`).
    Replica { client: String, op: ReplicaOp },
    /// To a node back after being taken for dead: the session of `client` was resumed
    /// elsewhere from its copy (claim `order`); the receiver's own copy is stale.
    Moved { client: String, order: ClaimOrder },
    /// From a node to its peers: it processed the frames `peer` sent it on link epoch `epoch`
    /// up to `last` (see `recovery`).
    Processed { peer: String, epoch: u64, last: u64 },
    /// The messages the receiver still holds for the dead node `holder` after its mark
    /// `after` (epoch, last) that one of `filters` matches.
    Recover {
        request: u64,
        holder: String,
        after: Option<(u64, u64)>,
        filters: Vec<String>,
    },
    /// The answer to a `Recover`.
    Recovered {
        request: u64,
        messages: Vec<super::wire::WireMessage>,
    },
}

/// A session record's body (bounded: everything in it is bounded by the session's limits).
pub(super) fn encode(message: &SessionMessage) -> Option<Bytes> {
    match bincode::serde::encode_to_vec(message, bincode::config::standard()) {
        Ok(body) => Some(Bytes::from(body)),
        Err(e) => {
            tracing::warn!(error = %e, "session record not encodable");
            None
        }
    }
}

/// The claims on one client id under way at this node, by the identity each is for (one key,
/// None, when ownership is off), with the newest order seen for it.
type ClaimsFor = HashMap<Option<Arc<str>>, ClaimOrder>;

/// Requests under way and claims this node made that are not settled yet.
#[derive(Default)]
pub(crate) struct Handover {
    next_request: AtomicU64,
    pub(super) waiting: Mutex<HashMap<u64, oneshot::Sender<SessionMessage>>>,
    /// Client id -> for each identity this node is claiming it for now, the newest claim seen
    /// for that identity (the claim's own order until a newer one arrives). With
    /// `auth.clientid_ownership = "enforce"` claims of different users are apart: neither
    /// supersedes the other, here or elsewhere; with it off every claim is under one key.
    pending: Mutex<HashMap<Arc<str>, ClaimsFor>>,
}

impl Cluster {
    pub(super) fn takeover_timeout(&self) -> Duration {
        Duration::from_millis(self.config.takeover_timeout_ms)
    }

    /// Whether a new connection may attach now: with
    /// `cluster.allow_connect_during_partition = false`, only while every known peer is live.
    pub(crate) fn admits_connect(&self) -> bool {
        self.config.allow_connect_during_partition
            || self
                .links
                .read()
                .values()
                .all(|l| l.is_connected() && l.suspended_since().is_none())
    }

    /// Sends `message` to `node` over this node's link to it. False: no link, or its hold
    /// bound is reached.
    pub(super) fn tell(&self, node: &str, message: &SessionMessage) -> bool {
        let Some(link) = self.links.read().get(node).cloned() else {
            return false;
        };
        encode(message).is_some_and(|body| link.send_session(body))
    }

    /// Answers `node` over this node's link to it. A node that just joined may ask before
    /// this node has a link to it (gossip has not told of it yet): the answer then waits for
    /// the link, bounded like a claim.
    pub(super) fn answer(self: &Arc<Self>, node: &Arc<str>, message: SessionMessage) {
        if self.links.read().contains_key(node) {
            self.tell(node, &message);
            return;
        }
        let (cluster, node) = (self.clone(), node.clone());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + cluster.takeover_timeout();
            while !cluster.links.read().contains_key(&node) {
                if tokio::time::Instant::now() >= deadline {
                    cluster.note_unanswered("-", &node, "no link to the asking node");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            cluster.tell(&node, &message);
        });
    }

    /// Sends a request made by `make` to `node`; the answer arrives on the receiver.
    pub(super) fn ask(
        &self,
        node: &str,
        make: impl FnOnce(u64) -> SessionMessage,
    ) -> Option<(u64, oneshot::Receiver<SessionMessage>)> {
        let request = self.handover.next_request.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.handover.waiting.lock().insert(request, tx);
        if self.tell(node, &make(request)) {
            Some((request, rx))
        } else {
            self.handover.waiting.lock().remove(&request);
            None
        }
    }

    /// Claims `client` for a connection attaching here: every live peer closes its
    /// connection for it and says what session it holds (ending it for a clean start).
    pub(crate) async fn claim_client(
        &self,
        client: &Arc<str>,
        clean_start: bool,
        identity: Option<&str>,
    ) -> Claim {
        let order = ClaimOrder {
            stamp: self.broker().map_or(0, |b| b.clock.now()),
            node: self.node_id.to_string(),
        };
        self.handover
            .pending
            .lock()
            .entry(client.clone())
            .or_default()
            .insert(self.claim_key(identity), order.clone());
        // The live peers are asked; the others, as this node sees them, are gone, and the
        // claim says so: a peer that has not seen one of them go yet still gives up the copy it
        // keeps of that node's session (a copy is otherwise promised only once its holder is
        // gone in the keeper's own view).
        let (peers, mut gone): (Vec<Arc<str>>, Vec<Arc<str>>) = {
            let links = self.links.read();
            let (live, down): (Vec<_>, Vec<_>) = links
                .iter()
                .partition(|(_, l)| l.is_connected() && l.suspended_since().is_none());
            (
                live.into_iter().map(|(n, _)| n.clone()).collect(),
                down.into_iter().map(|(n, _)| n.clone()).collect(),
            )
        };
        let deadline = tokio::time::Instant::now() + self.takeover_timeout();
        let mut claim = Claim {
            order,
            holders: Vec::new(),
            superseded: false,
            owned_elsewhere: false,
            contested: false,
            ended: false,
        };
        let names = |nodes: &[Arc<str>]| nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let answered = self
            .claim_round(
                client,
                (clean_start, identity),
                peers.clone(),
                &names(&gone),
                deadline,
                &mut claim,
            )
            .await;
        // A peer that went silent during the claim may have died holding the session: the
        // others are asked once more, told it is gone too.
        let silent: Vec<Arc<str>> = peers
            .into_iter()
            .filter(|p| !answered.contains(p))
            .collect();
        if !silent.is_empty()
            && claim.holders.is_empty()
            && !claim.superseded
            && !claim.owned_elsewhere
        {
            gone.extend(silent);
            self.claim_round(
                client,
                (clean_start, identity),
                answered,
                &names(&gone),
                deadline,
                &mut claim,
            )
            .await;
        }
        let gone = names(&gone);
        // Another user's connect claiming the id at this very node, started before or during
        // this one: as a peer would answer it (`answer_claim`).
        let key = self.claim_key(identity);
        if self
            .handover
            .pending
            .lock()
            .get(&**client)
            .is_some_and(|claims| claims.keys().any(|k| *k != key))
        {
            claim.contested = true;
        }
        // A copy kept here of a session whose node died: this node is a holder too.
        if !claim.superseded && !claim.owned_elsewhere {
            match self.claim_replica(client, &claim.order, clean_start, &gone, identity) {
                Holding::Session(subscriptions, owner) => {
                    claim
                        .holders
                        .push((self.node_id.clone(), subscriptions, owner))
                }
                Holding::Owned => claim.owned_elsewhere = true,
                Holding::Ended => claim.ended = true,
                Holding::Nothing | Holding::Superseded | Holding::Contested => {}
            }
        }
        claim
    }

    /// Asks `peers` for what they hold for `client` under `claim`'s order, adding to it;
    /// returns the peers that answered.
    async fn claim_round(
        &self,
        client: &Arc<str>,
        (clean_start, identity): (bool, Option<&str>),
        peers: Vec<Arc<str>>,
        gone: &[String],
        deadline: tokio::time::Instant,
        claim: &mut Claim,
    ) -> Vec<Arc<str>> {
        let mut asked = Vec::new();
        for node in peers {
            let message = |request| SessionMessage::Claim {
                request,
                client: client.to_string(),
                order: claim.order.clone(),
                clean_start,
                identity: identity.map(str::to_string),
                gone: gone.to_vec(),
            };
            match self.ask(&node, message) {
                Some((request, rx)) => asked.push((node, request, rx)),
                None => self.note_unanswered(client, &node, "not sent"),
            }
        }
        let mut answered = Vec::new();
        for (node, request, rx) in asked {
            match self.answer_from(&node, rx, deadline).await {
                Some(SessionMessage::Answer { holding, .. }) => {
                    match holding {
                        Holding::Nothing => {}
                        Holding::Superseded => claim.superseded = true,
                        Holding::Session(subscriptions, owner) => {
                            claim.holders.push((node.clone(), subscriptions, owner))
                        }
                        Holding::Owned => claim.owned_elsewhere = true,
                        Holding::Contested => claim.contested = true,
                        Holding::Ended => claim.ended = true,
                    }
                    answered.push(node);
                }
                _ => {
                    self.handover.waiting.lock().remove(&request);
                    self.note_unanswered(client, &node, "no answer in time");
                }
            }
        }
        answered
    }

    /// Asks `node` to hand over the session it holds for `client` to claim `order`.
    pub(crate) async fn release_from(
        &self,
        node: &Arc<str>,
        client: &str,
        order: &ClaimOrder,
    ) -> Released {
        if **node == *self.node_id {
            return match self.release_replica_recovered(client, order).await {
                Some(image) => Released::Image(image),
                None => Released::Gone,
            };
        }
        let message = |request| SessionMessage::Release {
            request,
            client: client.to_string(),
            order: order.clone(),
        };
        let Some((request, rx)) = self.ask(node, message) else {
            self.note_unanswered(client, node, "release not sent");
            return Released::NoAnswer;
        };
        let deadline = tokio::time::Instant::now() + self.takeover_timeout();
        match self.answer_from(node, rx, deadline).await {
            Some(SessionMessage::Image { image, .. }) => {
                image.map_or(Released::Gone, Released::Image)
            }
            _ => {
                self.handover.waiting.lock().remove(&request);
                self.note_unanswered(client, node, "no session image in time");
                Released::NoAnswer
            }
        }
    }

    /// The answer on `rx`, unless `deadline` passes first or the link to `node` stops
    /// delivering (a frozen or cut-off node: waiting for it would hold every connect for the
    /// whole timeout until the failure detector gives up on it).
    pub(super) async fn answer_from(
        &self,
        node: &str,
        mut rx: oneshot::Receiver<SessionMessage>,
        deadline: tokio::time::Instant,
    ) -> Option<SessionMessage> {
        loop {
            let step = deadline.min(tokio::time::Instant::now() + HEALTH_CHECK);
            match tokio::time::timeout_at(step, &mut rx).await {
                Ok(answer) => return answer.ok(),
                Err(_) if tokio::time::Instant::now() >= deadline => return None,
                Err(_) => {
                    let healthy = self.links.read().get(node).is_some_and(|l| l.is_healthy());
                    if !healthy {
                        return None;
                    }
                }
            }
        }
    }

    /// The claim `order` attached its connection: false if a newer claim came meanwhile.
    pub(crate) fn settle_claim(
        &self,
        client: &str,
        order: &ClaimOrder,
        identity: Option<&str>,
    ) -> bool {
        let key = self.claim_key(identity);
        let mut pending = self.handover.pending.lock();
        let Some(claims) = pending.get_mut(client) else {
            return false;
        };
        let current = claims.get(&key) == Some(order);
        if claims.get(&key).is_some_and(|o| o <= order) {
            claims.remove(&key);
            if claims.is_empty() {
                pending.remove(client);
            }
        }
        current
    }

    /// The key claims for `identity` are kept under (`pending`).
    fn claim_key(&self, identity: Option<&str>) -> Option<Arc<str>> {
        match self.ownership_enforced() {
            true => identity.map(Arc::from),
            false => None,
        }
    }

    /// A peer did not take part in a claim: counted, and logged (the client may find part of
    /// its session missing, or be connected twice until the next claim).
    pub(super) fn note_unanswered(&self, client: &str, node: &str, why: &str) {
        Metrics::add(&self.metrics.takeover_timeouts, 1);
        tracing::warn!(client_id = %crate::limits::printable(client), peer = %node, why, "session claim went without a peer's answer");
    }

    /// A `Frame::Session` record from `peer`: decoded here, acted on in a task of its own
    /// (closing a connection takes a while; the link reads on).
    pub(crate) fn on_session_record(
        self: &Arc<Self>,
        peer: &Arc<str>,
        body: &[u8],
    ) -> Result<(), String> {
        let (message, _): (SessionMessage, usize) =
            bincode::serde::decode_from_slice(body, bincode::config::standard())
                .map_err(|e| format!("session record: {e}"))?;
        match message {
            SessionMessage::Answer { request, .. }
            | SessionMessage::Image { request, .. }
            | SessionMessage::Recovered { request, .. }
            | SessionMessage::Passed { request } => {
                if let Some(tx) = self.handover.waiting.lock().remove(&request) {
                    let _ = tx.send(message);
                }
            }
            SessionMessage::Claim {
                request,
                client,
                order,
                clean_start,
                identity,
                gone,
            } => {
                let (cluster, peer) = (self.clone(), peer.clone());
                tokio::spawn(async move {
                    let holding = cluster
                        .answer_claim(&client, &order, (clean_start, identity.as_deref()), &gone)
                        .await;
                    cluster.answer(&peer, SessionMessage::Answer { request, holding });
                });
            }
            SessionMessage::Release {
                request,
                client,
                order,
            } => {
                let (cluster, peer) = (self.clone(), peer.clone());
                tokio::spawn(async move {
                    cluster.drain_from_peers(Some(&peer), &client).await;
                    let image = match cluster.broker().and_then(|b| b.hand_over(&client, &order)) {
                        Some(image) => Some(image),
                        None => cluster.release_replica_recovered(&client, &order).await,
                    };
                    cluster.answer(&peer, SessionMessage::Image { request, image });
                });
            }
            SessionMessage::Barrier { request } => {
                self.answer(peer, SessionMessage::Passed { request });
            }
            SessionMessage::Replica { client, op } => self.apply_replica_op(peer, &client, op),
            SessionMessage::Moved { client, order } => {
                if let Some(broker) = self.broker() {
                    broker.discard_superseded(&client, &order);
                }
            }
            SessionMessage::Processed {
                peer: of,
                epoch,
                last,
            } => {
                self.note_processed(peer, &of, epoch, last);
            }
            SessionMessage::Recover {
                request,
                holder,
                after,
                filters,
            } => self.answer_recover(peer, request, &holder, after, &filters),
        }
        Ok(())
    }

    /// Waits until this node has processed every message the live peers (but `except`) sent
    /// it before now: each is asked to answer over its link here, behind what it sent before.
    /// The holder does this before cutting a session out: the other nodes routed the
    /// session's subscriptions to the claimant too before the claimant asked for it, so what
    /// they forwarded here before then is in the session, not lost behind it (the claimant's
    /// own are ahead of its request on the same link). The claimant does it after adopting the
    /// session: the copies those nodes sent it are in by then, and can be told apart. Bounded
    /// like a claim; a peer that stops delivering is not waited for (counted).
    pub(crate) async fn drain_from_peers(&self, except: Option<&str>, client: &str) {
        let peers: Vec<Arc<str>> = self
            .links
            .read()
            .iter()
            .filter(|(node, l)| Some(&***node) != except && l.is_healthy())
            .map(|(node, _)| node.clone())
            .collect();
        let deadline = tokio::time::Instant::now() + self.takeover_timeout();
        let mut asked = Vec::new();
        for node in peers {
            match self.ask(&node, |request| SessionMessage::Barrier { request }) {
                Some((request, rx)) => asked.push((node, request, rx)),
                None => self.note_unanswered(client, &node, "barrier not sent"),
            }
        }
        for (node, request, rx) in asked {
            if self.answer_from(&node, rx, deadline).await.is_none() {
                self.handover.waiting.lock().remove(&request);
                self.note_unanswered(client, &node, "barrier not passed in time");
            }
        }
    }

    /// What this node holds for a claim from another node, once its connection is closed.
    async fn answer_claim(
        &self,
        client: &str,
        order: &ClaimOrder,
        (clean_start, identity): (bool, Option<&str>),
        gone: &[String],
    ) -> Holding {
        let Some(broker) = self.broker() else {
            return Holding::Nothing;
        };
        broker.clock.observe(order.stamp);
        // A claim under another identity than the session's changes nothing here: not the
        // newest claim seen (which would supersede the owner's own connect), not the session.
        if broker.owned_by_another(client, identity) {
            return Holding::Owned;
        }
        let mut contested = false;
        {
            let key = self.claim_key(identity);
            let mut pending = self.handover.pending.lock();
            if let Some(claims) = pending.get_mut(client) {
                // Claims of the same user (or any, with ownership off): the newer wins.
                if let Some(mine) = claims.get_mut(&key) {
                    if *mine > *order {
                        return Holding::Superseded;
                    }
                    *mine = order.clone();
                }
                // Claims for other users neither supersede nor are superseded (a stranger's
                // claims must not make the owner's connect lose): this node says it is
                // claiming the id for another user, and the session, if any, decides.
                contested = claims.keys().any(|k| *k != key);
            }
        }
        if contested && !broker.holds_session(client) {
            // No session here, and this node's own claim is another user's: its session may
            // be on its way here.
            return match self.claim_replica(client, order, clean_start, gone, identity) {
                Holding::Nothing => Holding::Contested,
                holding => holding,
            };
        }
        match broker
            .hold_for_claim(client, clean_start, order, identity)
            .await
        {
            Holding::Nothing => self.claim_replica(client, order, clean_start, gone, identity),
            holding => holding,
        }
    }
}
