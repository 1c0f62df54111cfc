//! Sessions that follow their client between nodes, the broker's half: giving up a session
//! another node claims for a new connection (closing the connection here with 0x8E, keeping
//! the session whole until the claimant takes it), cutting it out as a `SessionImage`, and
//! taking such an image into the session a connection attached to here. The cluster carries
//! claims, answers and images between nodes (`cluster::handover`); `Broker::attach` drives a
//! claim through the `ClusterHook`.
//!
//! Copies: while both nodes hold routes for the session (the claimant subscribes before the
//! holder lets go, so nothing published meanwhile is lost), a message reaches both. Each
//! message carries its origin's stamp; adopting an image drops the claimant's own copy of any
//! message the image holds, so the client gets each once (plus MQTT's DUP resends of what was
//! in flight).

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::session::{Inflight, InflightState};
use super::{Broker, Metrics, Session, TAKEOVER_WAIT};
use crate::codec::reason;
use crate::store::records::StoredDelivery;
use crate::store::{InflightMark, StoredSubscription};

/// Orders claims on one client id across the cluster: the later CONNECT (by the hybrid logical
/// clock of the node it reached) wins; the node id breaks a tie. Every node decides the same
/// way, so two connects racing on two nodes end with exactly one connected.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClaimOrder {
    pub stamp: u64,
    pub node: String,
}

/// A session on its way to another node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionImage {
    pub subscriptions: Subscriptions,
    /// In the order they would have gone out: in flight first (with packet id and state),
    /// then queued. Messages that entered at the holder name it as their origin.
    pub deliveries: Vec<(StoredDelivery, Option<InflightMark>)>,
    pub inbound_qos2: Vec<u16>,
}

/// A session's subscriptions as they travel: filter (with any `$share/{group}/` prefix) and
/// options.
pub type Subscriptions = Vec<(String, StoredSubscription)>;

/// What a claim found: its order, and the nodes that hold a session for the client id, with
/// its subscriptions and the identity that owns it (none for a clean start: those sessions
/// ended).
#[derive(Debug)]
pub struct Claim {
    pub order: ClaimOrder,
    pub holders: Vec<(Arc<str>, Subscriptions, Option<String>)>,
    /// A newer claim answered first: the connection goes once attached.
    pub superseded: bool,
    /// A node holds the session for another identity: the connection is refused.
    pub owned_elsewhere: bool,
    /// A node was claiming the client id for another identity at the same time.
    pub contested: bool,
    /// A node ended a session the claimant may take, for its clean start.
    pub ended: bool,
}

/// What a node holds for a claimed client id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Holding {
    /// No session here (or it ended for a clean start).
    Nothing,
    /// A newer claim has the client id: the claimant's connection must go.
    Superseded,
    /// A session, kept whole (its connection closed) until the claimant releases it: its
    /// subscriptions, which the claimant makes first so that nothing published meanwhile is
    /// lost, and the identity that owns it (it keeps its owner, or none, as it moves).
    Session(Subscriptions, Option<String>),
    /// A session that belongs to another identity (`auth.clientid_ownership`): left as it
    /// is, its connection untouched; the claimant's CONNECT is refused.
    Owned,
    /// No session here, but a connect of another identity is claiming the client id here
    /// right now (`auth.clientid_ownership`): the session may be on its way here; the
    /// claimant does not take the id unless a session of its own is offered.
    Contested,
    /// A session the claimant may take, ended here for its clean start: the claimant has
    /// shown the id is its to take.
    Ended,
}

/// What the holder of a session answered a claimant's release.
#[derive(Debug)]
pub enum Released {
    /// The session, on its way to the claimant.
    Image(SessionImage),
    /// It has none for this claim any more: a newer claim took it, or it ended meanwhile.
    Gone,
    /// No answer in time (or none could be asked).
    NoAnswer,
}

/// How long a session whose connection was closed for a claim stays at least, waiting for the
/// claimant to take it (the claimant may never come: it crashed, the link broke). After that it
/// lives on as any offline session, for the rest of its expiry.
const HOLD_GRACE_SECS: u32 = 60;

impl Broker {
    /// Another node claims `client_id` for a new connection (`order`): closes the connection
    /// here, if any, with 0x8E and keeps its session; ends the session instead for a clean
    /// start (its pending will goes out, as for a clean-start takeover on one node).
    pub async fn hold_for_claim(
        &self,
        client_id: &str,
        clean_start: bool,
        order: &ClaimOrder,
        identity: Option<&str>,
    ) -> Holding {
        let Some(session) = self.sessions.get(client_id).map(|s| s.clone()) else {
            return Holding::Nothing;
        };
        let previous = {
            let mut st = session.state.lock();
            if st.ended {
                return Holding::Nothing;
            }
            // Checked before anything is touched: a claim under another identity neither
            // closes the connection nor ends the session.
            if self.ownership_enforced() && !super::session::may_take(st.owner.as_deref(), identity)
            {
                return Holding::Owned;
            }
            if st.claim.as_ref().is_some_and(|c| c > order) {
                return Holding::Superseded;
            }
            st.claim = Some(order.clone());
            let previous = st.connection.take();
            if previous.is_some() {
                st.generation += 1;
            }
            previous
        };
        if let Some(previous) = previous {
            tracing::info!(client_id = %crate::limits::printable(client_id), to = %order.node, "client id taken over at another node");
            Metrics::add(&self.metrics.takeovers_remote, 1);
            previous.kick(reason::SESSION_TAKEN_OVER);
            let _ = tokio::time::timeout(TAKEOVER_WAIT, previous.closed()).await;
            self.set_online(&session, false);
            let (generation, expiry, will_delay) = {
                let st = session.state.lock();
                if let Some(j) = &st.journal {
                    j.meta(
                        st.expiry_interval,
                        false,
                        st.will.as_ref(),
                        st.owner.as_deref(),
                    );
                }
                (
                    st.generation,
                    st.expiry_interval.max(HOLD_GRACE_SECS),
                    st.will.as_ref().map(|w| w.delay),
                )
            };
            self.arm_timers(&session, generation, expiry, will_delay);
        }
        if clean_start {
            let owner = session.state.lock().owner.clone();
            if let Some(owner) = owner {
                self.note_ended_for_owner(client_id, owner);
            }
            self.end_session(&session);
            return Holding::Ended;
        }
        let st = session.state.lock();
        if st.ended || st.connection.is_some() {
            // Ended meanwhile, or a newer connection here took it: nothing to hand.
            return Holding::Nothing;
        }
        Holding::Session(
            st.subscriptions
                .iter()
                .map(|(f, r)| (f.clone(), StoredSubscription::from_record(r)))
                .collect(),
            st.owner.as_deref().map(str::to_string),
        )
    }

    /// Whether the session of `client_id` here belongs to another identity than `identity`,
    /// with `auth.clientid_ownership = "enforce"` (or did a moment ago, when it was ended for
    /// its owner's clean start: their new session is being made at another node).
    pub fn owned_by_another(&self, client_id: &str, identity: Option<&str>) -> bool {
        if !self.ownership_enforced() {
            return false;
        }
        let here = self.sessions.get(client_id).is_some_and(|s| {
            let st = s.state.lock();
            !st.ended && !super::session::may_take(st.owner.as_deref(), identity)
        });
        here || self.ended_for_another(client_id, identity)
    }

    /// How long a client id stays its owner's after their session here was ended for their
    /// clean start elsewhere: as long as that connect may take to attach (`cluster.
    /// takeover_timeout_ms`), after which their new session answers for them.
    fn owner_grace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.config.cluster.takeover_timeout_ms)
    }

    /// Remembers that `client_id`'s session, `owner`'s, was ended here for `owner`'s clean
    /// start.
    pub(crate) fn note_ended_for_owner(&self, client_id: &str, owner: Arc<str>) {
        let grace = self.owner_grace();
        let mut ended = self.ended_for_owner.lock();
        if ended.len() >= 1024 {
            ended.retain(|_, (_, at)| at.elapsed() < grace);
        }
        ended.insert(client_id.into(), (owner, std::time::Instant::now()));
    }

    /// Whether `client_id`'s session was ended here a moment ago for another identity's
    /// clean start.
    fn ended_for_another(&self, client_id: &str, identity: Option<&str>) -> bool {
        let grace = self.owner_grace();
        let mut ended = self.ended_for_owner.lock();
        match ended.get(client_id) {
            Some((_, at)) if at.elapsed() >= grace => {
                ended.remove(client_id);
                false
            }
            Some((owner, _)) => identity != Some(&**owner),
            None => false,
        }
    }

    /// Whether a session of `client_id` here is one `identity` may take (its own, or one that
    /// belongs to nobody).
    pub fn takeable_here(&self, client_id: &str, identity: Option<&str>) -> bool {
        self.sessions.get(client_id).is_some_and(|s| {
            let st = s.state.lock();
            !st.ended && super::session::may_take(st.owner.as_deref(), identity)
        })
    }

    /// Whether a session of `client_id` is here (not ended).
    pub fn holds_session(&self, client_id: &str) -> bool {
        self.sessions
            .get(client_id)
            .is_some_and(|s| !s.state.lock().ended)
    }

    /// Whether client ids belong to their sessions' identities
    /// (`auth.clientid_ownership = "enforce"`).
    pub fn ownership_enforced(&self) -> bool {
        self.config.auth.clientid_ownership == crate::config::ClientIdOwnership::Enforce
    }

    /// The claimant (`order`) made the session's subscriptions: the session leaves this node
    /// whole. No will is published (the client resumes it) and nothing counts as dropped.
    /// None if the session is not here any more, or a newer claim or connection has it.
    pub fn hand_over(&self, client_id: &str, order: &ClaimOrder) -> Option<SessionImage> {
        let image = self.cut_out(client_id, |claim| claim == Some(order))?;
        Metrics::add(&self.metrics.sessions_handed_over, 1);
        Some(image)
    }

    /// The session of `client_id` was resumed elsewhere (claim `order`) from its copy while
    /// this node was down or cut off: the copy here is stale and goes, unless a newer
    /// connection has it (counted, and logged with the messages it held: nearly all of them
    /// were delivered from the other copy; those acknowledged to their publishers within the
    /// last moments before this node went may not have been).
    pub fn discard_superseded(&self, client_id: &str, order: &ClaimOrder) {
        let Some(image) = self.cut_out(client_id, |claim| claim.is_none_or(|c| c < order)) else {
            return;
        };
        Metrics::add(&self.metrics.stale_sessions_discarded, 1);
        tracing::warn!(client_id = %crate::limits::printable(client_id), resumed_at = %order.node, messages_held = image.deliveries.len(), "discarded this node's copy of a session resumed elsewhere while this node was away");
    }

    /// Takes the session of `client_id` out of this node whole, if it has no connection and
    /// its claim passes `claim_ok`: no will, nothing counted, its routes and record gone.
    fn cut_out(
        &self,
        client_id: &str,
        claim_ok: impl FnOnce(Option<&ClaimOrder>) -> bool,
    ) -> Option<SessionImage> {
        let session = self.sessions.get(client_id).map(|s| s.clone())?;
        let (image, filters) = {
            let mut st = session.state.lock();
            if st.ended || st.connection.is_some() || !claim_ok(st.claim.as_ref()) {
                return None;
            }
            st.ended = true;
            st.generation += 1;
            if let Some(timer) = st.timer.take() {
                timer.abort();
            }
            let stored = |d: &super::Delivery| super::replica::stored_delivery(&self.node_id, d);
            let mut deliveries = Vec::with_capacity(st.inflight.len() + st.queue.len());
            for f in st.inflight.drain(..) {
                let mark = InflightMark::new(f.packet_id, f.state);
                deliveries.push((stored(&f.delivery), Some(mark)));
            }
            st.unsent_inflight = 0;
            while let Some(d) = st.queue.pop_front() {
                deliveries.push((stored(&d), None));
            }
            if let Some(j) = st.journal.take() {
                j.gone();
            }
            st.will = None;
            let subscriptions = std::mem::take(&mut st.subscriptions);
            let filters: Vec<String> = subscriptions.keys().cloned().collect();
            let image = SessionImage {
                subscriptions: subscriptions
                    .iter()
                    .map(|(f, r)| (f.clone(), StoredSubscription::from_record(r)))
                    .collect(),
                deliveries,
                inbound_qos2: st.inbound_qos2.drain().collect(),
            };
            (image, filters)
        };
        self.sessions
            .remove_if(&session.client_id, |_, s| Arc::ptr_eq(s, &session));
        for filter in &filters {
            self.remove_route_entry(&session.client_id, filter);
        }
        session.wake();
        Some(image)
    }

    /// Makes the subscriptions of a session another node holds (`subscriptions`) in `session`,
    /// attached here, and waits (bounded) until every live node routes them here: from then on
    /// nothing published is lost between the two nodes.
    pub async fn subscribe_for_handover(
        &self,
        cluster: &Arc<dyn super::ClusterHook>,
        session: &Arc<Session>,
        subscriptions: &[(String, StoredSubscription)],
    ) {
        let mut keys = Vec::new();
        for (filter, sub) in subscriptions {
            let present = session.state.lock().subscriptions.contains_key(filter);
            if present {
                continue;
            }
            let record = sub.into_record();
            let shared = crate::topic::parse_shared(filter).ok().flatten();
            self.subscribe(session, filter, shared.as_ref(), record.options, record.id);
            keys.push(filter.as_str());
        }
        if let Some(mut gate) = cluster.handover_gate(&keys) {
            let deadline = gate.deadline;
            if tokio::time::timeout_at(deadline, gate.settled())
                .await
                .is_err()
            {
                // Counted with the SUBACKs that went early: same cause, same bound.
                gate.release(&session.client_id);
            }
        }
    }

    /// Takes a session image from the node that held it into `session` (attached here, its
    /// connection not yet told CONNACK): subscriptions, in-flight and queued deliveries in
    /// front of what arrived here since (minus the copies of messages the image holds),
    /// inbound QoS 2 ids, expiry. Returns how many deliveries came with it.
    pub fn adopt(&self, session: &Arc<Session>, image: SessionImage) -> usize {
        let missing: Subscriptions = {
            let st = session.state.lock();
            image
                .subscriptions
                .iter()
                .filter(|(f, _)| !st.subscriptions.contains_key(f))
                .cloned()
                .collect()
        };
        for (filter, sub) in missing {
            let record = sub.into_record();
            let shared = crate::topic::parse_shared(&filter).ok().flatten();
            self.subscribe(session, &filter, shared.as_ref(), record.options, record.id);
        }
        let me: &str = &self.node_id;
        let online = session.is_online();
        let mut st = session.state.lock();
        let mut seen = HashSet::new();
        let mut inflight = Vec::new();
        let mut queued = Vec::new();
        // Packet ids of the image's in-flight messages are only free when nothing is in
        // flight here (a session new here, or resumed with nothing in flight).
        let keep_ids = st.inflight.is_empty();
        for (stored, mark) in image.deliveries {
            let Some(mut delivery) = stored.into_delivery(0) else {
                continue; // expired on the way
            };
            if delivery.message.origin.as_deref() == Some(me) {
                Arc::make_mut(&mut delivery.message).origin = None;
            }
            seen.insert(MessageId::of(&delivery.message));
            match mark.and_then(|m| Some((m.packet_id, m.state()?))) {
                Some((packet_id, state)) if keep_ids => inflight.push((packet_id, state, delivery)),
                // Past PUBREC the client has the message: without its packet id it cannot
                // be completed here (counted as a session drop, as a session end would).
                Some((_, InflightState::AwaitPubComp)) => {
                    Metrics::add(&self.metrics.dropped_session_ended, 1);
                }
                _ => queued.push(delivery),
            }
        }
        // A message in flight here already (a second image of the same session: a node
        // restored from its store and a replica of it) stays as it is.
        let in_flight_here: HashSet<MessageId> = st
            .inflight
            .iter()
            .map(|f| MessageId::of(&f.delivery.message))
            .collect();
        queued.retain(|d| !in_flight_here.contains(&MessageId::of(&d.message)));
        let count = inflight.len() + queued.len();
        // What reached this node while both held routes, and is in the image too, goes.
        let copies = st
            .queue
            .extract(|d| seen.contains(&MessageId::of(&d.message)));
        for d in &copies {
            st.finished(d);
        }
        for (packet_id, state, mut delivery) in inflight {
            if let Some(j) = st.journal.as_mut() {
                j.queued(&mut delivery, false);
                j.sent(&delivery, packet_id, state);
            }
            st.inflight.push_back(Inflight {
                packet_id,
                state,
                delivery,
                sent: true,
                held_for: 0,
            });
        }
        let mut front = Vec::with_capacity(queued.len());
        for mut delivery in queued {
            if let Some(j) = st.journal.as_mut() {
                j.queued(&mut delivery, online);
            }
            front.push(delivery);
        }
        for d in front.into_iter().rev() {
            st.queue.push_front(d);
        }
        for id in image.inbound_qos2 {
            if st.inbound_qos2.insert(id)
                && let Some(j) = &st.journal
            {
                j.inbound_qos2(id, true);
            }
        }
        st.moved_in
            .get_or_insert_with(Default::default)
            .extend(seen);
        drop(st);
        session.wake();
        Metrics::add(&self.metrics.sessions_adopted, 1);
        count
    }

    /// The claim `order` lost to a newer one while its connection attached here: that
    /// connection goes (0x8E), as a connection taken over on one node does.
    pub fn claim_lost(&self, client_id: &str, control_id: u64) {
        let Some(session) = self.sessions.get(client_id).map(|s| s.clone()) else {
            return;
        };
        let control = {
            let st = session.state.lock();
            st.connection.clone().filter(|c| c.id == control_id)
        };
        if let Some(c) = control {
            tracing::info!(client_id = %crate::limits::printable(client_id), "connect lost to a newer one with the same client id at another node");
            c.kick(reason::SESSION_TAKEN_OVER);
        }
    }
}

/// A message's identity across the cluster: its origin's stamp (unique there: the hybrid
/// logical clock never repeats) and the origin node (None: this node).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageId(u64, Option<Arc<str>>);

impl MessageId {
    pub fn of(message: &super::Message) -> MessageId {
        MessageId(message.stamp, message.origin.clone())
    }
}

#[cfg(test)]
#[path = "handover_tests.rs"]
mod tests;
