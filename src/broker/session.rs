//! A session: the state MQTT keeps for one client id across connections — its subscriptions,
//! the messages queued for it, QoS 1/2 messages in flight both ways, its will and expiry.
//! Publishers add deliveries under the session's own lock (never a broker-wide one) and wake
//! the connection that owns the session, which sends them within its inflight window.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::packet_ids::IdsInUse;
use super::queue::{DeliveryQueue, QueueBounds};
use super::{Delivery, Metrics};
use crate::codec::{Protocol, QoS, SubscriptionOptions, Will};

/// Where an outbound QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}

#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: u16,
    pub state: InflightState,
    pub delivery: Delivery,
    /// False while it waits to be sent again after a resume (the client's new Receive
    /// Maximum may be smaller than what was in flight), or to be sent at all (`held_for`).
    pub sent: bool,
    /// A QoS 2 message to a stored session is not sent until its packet id is kept (this
    /// store ticket is done): sent before, a crash would make the restart send it again
    /// under a new id, which the client may still hold for another message. 0: not held.
    pub held_for: u64,
}

/// A subscription as the session remembers it (the trie holds the routing copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

/// A will waiting for its delay to pass or its session to end.
#[derive(Debug, Clone)]
pub struct PendingWill {
    /// Boxed: a will is large (its properties) and sits in every session that has one.
    pub will: Box<Will>,
    pub delay: u32,
}

/// The handle a session holds on the connection that owns it, so a newer connection with the
/// same client id can close it (session takeover) and wait until it is gone.
#[derive(Debug)]
pub struct ConnectionControl {
    pub id: u64,
    /// What the admin API shows of the connection.
    pub protocol: Protocol,
    pub peer: Option<std::net::SocketAddr>,
    pub connected_at_ms: u64,
    kick_reason: AtomicU8,
    kicked: Notify,
    /// Set by `mark_closed`; `closed_notify` wakes those waiting for it. (Not a watch
    /// channel: its shared state is several hundred bytes, in every connection.)
    closed: AtomicBool,
    closed_notify: Notify,
}

impl ConnectionControl {
    pub fn new(id: u64) -> Arc<ConnectionControl> {
        ConnectionControl::for_client(id, Protocol::V311, None)
    }

    pub fn for_client(
        id: u64,
        protocol: Protocol,
        peer: Option<std::net::SocketAddr>,
    ) -> Arc<ConnectionControl> {
        Arc::new(ConnectionControl {
            id,
            protocol,
            peer,
            connected_at_ms: super::now_ms(),
            kick_reason: AtomicU8::new(0),
            kicked: Notify::new(),
            closed: AtomicBool::new(false),
            closed_notify: Notify::new(),
        })
    }

    /// Asks the connection to close with this v5 reason code.
    pub fn kick(&self, reason: u8) {
        self.kick_reason.store(reason, Ordering::SeqCst);
        self.kicked.notify_one();
    }

    /// The reason given to `kick`, if it was called.
    pub fn kick_reason(&self) -> Option<u8> {
        match self.kick_reason.load(Ordering::SeqCst) {
            0 => None,
            r => Some(r),
        }
    }

    pub async fn kicked(&self) {
        self.kicked.notified().await
    }

    /// Called by the connection when it has finished closing.
    pub fn mark_closed(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.closed_notify.notify_waiters();
    }

    /// Waits until `mark_closed` (or returns at once if it already happened).
    pub async fn closed(&self) {
        let notified = self.closed_notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a `mark_closed` in between still wakes it.
        notified.as_mut().enable();
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

#[derive(Debug)]
pub struct SessionState {
    /// The connection that owns the session, while there is one.
    pub connection: Option<Arc<ConnectionControl>>,
    /// Bumped on every attach and detach; timers armed at a detach act only if it is unchanged.
    pub generation: u64,
    /// Deliveries not yet sent (bounded, see `QueueBounds`).
    pub queue: DeliveryQueue,
    /// Outbound QoS 1/2 messages in flight, in send order.
    pub inflight: VecDeque<Inflight>,
    /// How many of `inflight` wait to be sent again (after a resume).
    pub unsent_inflight: usize,
    next_packet_id: u16,
    /// Filter as subscribed (with any `$share/{group}/` prefix) to its options.
    pub subscriptions: HashMap<String, SubscriptionRecord>,
    /// Inbound QoS 2 packet ids received and not yet released.
    pub inbound_qos2: HashSet<u16>,
    /// Session Expiry Interval in seconds (u32::MAX: never).
    pub expiry_interval: u32,
    pub will: Option<PendingWill>,
    /// The will-delay / expiry timer armed when the connection went; cancelled by a new one.
    pub timer: Option<tokio::task::AbortHandle>,
    /// Set when the session has been discarded: nothing more is queued for it.
    pub ended: bool,
    /// When the connection last took deliveries off the queue (stall detection).
    pub last_dequeue: tokio::time::Instant,
    /// Deliveries dropped since the current overflow episode began (0: none running).
    episode_drops: u64,
    /// The store's record of this session, when it is persistent and persistence is on.
    /// Boxed: most sessions are not stored.
    pub journal: Option<Box<super::journal::Journal>>,
    /// In a cluster: the claim of the connection that last attached, or of the node that
    /// asked for the session since (see `handover`); an older claim is refused.
    pub claim: Option<super::handover::ClaimOrder>,
    /// Just after the session moved here: the messages it came with (see
    /// `handover::MessageId`), so that copies still on their way here are not queued twice.
    pub moved_in: Option<Box<std::collections::HashSet<super::handover::MessageId>>>,
    /// The verified identity (user name) that made the session; None for a session made
    /// anonymously (or stored before sessions had owners), which belongs to nobody and stays
    /// so (`auth.clientid_ownership`).
    pub owner: Option<Arc<str>>,
}

/// May a connection of `identity` (a verified user name, None when anonymous) take a session
/// made by `owner`? A session made anonymously belongs to nobody; one made under an
/// identity belongs to it alone.
pub fn may_take(owner: Option<&str>, identity: Option<&str>) -> bool {
    owner.is_none_or(|owner| identity == Some(owner))
}

pub struct Session {
    pub client_id: Arc<str>,
    pub state: Mutex<SessionState>,
    online: AtomicBool,
    wake: Notify,
    /// Woken when the queue drops below its bound (publishers held back wait on it).
    room: Notify,
    bounds: QueueBounds,
    queue_qos0_offline: bool,
    /// Deliveries to this session dropped (queue full, slow subscriber, offline QoS 0).
    pub dropped: AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// A subscriber whose queue has not moved for this long is stalled: it stops holding its
/// publishers back and gets drops instead.
const STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// What a session did with a delivery offered to it.
#[derive(Debug)]
pub enum Offer {
    /// Queued, for a connected session (`online`) or an offline one; `ticket` is the store
    /// op that keeps it (0: not stored).
    Queued {
        online: bool,
        ticket: u64,
    },
    /// Not queued: the session is connected and moving, but its queue is at its bound. The
    /// router decides between holding the publisher back (`admit_under_pressure`) and
    /// dropping (`overflow`), by whether other subscribers of the message would starve.
    Full(Delivery),
    /// Dropped and counted (offline QoS 0, a full queue that may not hold anyone back).
    Dropped,
    SessionEnded,
}

/// Why a delivery to a session was dropped (each has its own counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// At the bound, offline, stalled, its own publisher, or at the hard cap.
    QueueFull,
    /// At the bound while other subscribers of the same message keep up.
    SlowSubscriber,
    Qos0Offline,
}

impl Session {
    pub fn new(client_id: Arc<str>, bounds: QueueBounds, queue_qos0_offline: bool) -> Arc<Session> {
        Arc::new(Session {
            client_id,
            state: Mutex::new(SessionState {
                connection: None,
                generation: 0,
                queue: DeliveryQueue::default(),
                inflight: VecDeque::new(),
                unsent_inflight: 0,
                claim: None,
                moved_in: None,
                owner: None,
                next_packet_id: 1,
                subscriptions: HashMap::new(),
                inbound_qos2: HashSet::new(),
                expiry_interval: 0,
                will: None,
                timer: None,
                ended: false,
                last_dequeue: tokio::time::Instant::now(),
                episode_drops: 0,
                journal: None,
            }),
            online: AtomicBool::new(false),
            wake: Notify::new(),
            room: Notify::new(),
            bounds,
            queue_qos0_offline,
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether a connection owns the session now (a hint: read without the lock).
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// Offers a delivery. Within the bound it is queued. Past it, a connected subscriber that
    /// is still taking messages gets `Offer::Full` back when `may_hold` (the publisher is
    /// not this session's own client); otherwise the delivery is dropped and counted.
    pub fn offer(&self, delivery: Delivery, may_hold: bool, metrics: &Metrics) -> Offer {
        let mut st = self.state.lock();
        if st.ended {
            return Offer::SessionEnded;
        }
        let online = st.connection.is_some();
        if let Some(moved_in) = &st.moved_in
            && moved_in.contains(&super::handover::MessageId::of(&delivery.message))
        {
            // The session came here holding this message already.
            return Offer::Queued { online, ticket: 0 };
        }
        if !online && delivery.qos == QoS::AtMostOnce && !self.queue_qos0_offline {
            drop(st);
            self.count_drop(DropReason::Qos0Offline, metrics);
            return Offer::Dropped;
        }
        if st.queue.has_room(&self.bounds) {
            if st.queue.is_empty() {
                // Nothing was waiting, so nothing was stalled: the stall clock starts now. (A
                // node frozen for a while must not find its subscribers "stalled" on return.)
                st.last_dequeue = tokio::time::Instant::now();
            }
            let ticket = st.enqueue(delivery, online);
            drop(st);
            if online {
                self.wake.notify_one();
            }
            return Offer::Queued { online, ticket };
        }
        let moving = st.last_dequeue.elapsed() < STALLED_AFTER;
        if online && may_hold && moving && st.queue.below_hard_cap(&self.bounds) {
            return Offer::Full(delivery);
        }
        self.drop_locked(&mut st, DropReason::QueueFull, metrics);
        Offer::Dropped
    }

    /// Queues a delivery the session was `Full` for, past the soft bound (its publisher is
    /// being held back). Dropped and counted at the hard cap; when queued, the ticket of the
    /// store op that keeps it (0: not stored).
    pub fn admit_under_pressure(&self, delivery: Delivery, metrics: &Metrics) -> Option<u64> {
        let mut st = self.state.lock();
        if st.ended {
            return None;
        }
        if !st.queue.below_hard_cap(&self.bounds) {
            self.drop_locked(&mut st, DropReason::QueueFull, metrics);
            return None;
        }
        let online = st.connection.is_some();
        let ticket = st.enqueue(delivery, online);
        drop(st);
        self.wake.notify_one();
        Some(ticket)
    }

    /// Drops a delivery the session was `Full` for because other subscribers of the same
    /// message keep up (`mqtt.slow_subscriber`): counted, and with `disconnect` the client is
    /// told to go (v5 0x97 Quota exceeded).
    pub fn overflow(&self, _delivery: Delivery, disconnect: bool, metrics: &Metrics) {
        let mut st = self.state.lock();
        self.drop_locked(&mut st, DropReason::SlowSubscriber, metrics);
        if disconnect && let Some(c) = &st.connection {
            c.kick(crate::codec::reason::QUOTA_EXCEEDED);
        }
    }

    fn count_drop(&self, reason: DropReason, metrics: &Metrics) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        Metrics::add(metrics.dropped(reason), 1);
    }

    /// Counts a drop and logs the first of an overflow episode (ended by `note_dequeued`).
    fn drop_locked(&self, st: &mut SessionState, reason: DropReason, metrics: &Metrics) {
        self.count_drop(reason, metrics);
        st.episode_drops += 1;
        if st.episode_drops == 1 {
            tracing::warn!(
                client_id = %crate::limits::printable(&self.client_id),
                queued = st.queue.len(),
                queued_bytes = st.queue.bytes(),
                online = st.connection.is_some(),
                ?reason,
                "session queue full: dropping its overflow (logged once per episode)"
            );
        }
    }

    /// Whether a publisher held back by this session may go on: its queue is within its
    /// bound, or it has made no progress for a while (a stalled subscriber holds nobody back).
    pub fn has_room(&self) -> bool {
        let st = self.state.lock();
        st.ended
            || st.connection.is_none()
            || st.queue.has_room(&self.bounds)
            || st.last_dequeue.elapsed() >= STALLED_AFTER
    }

    /// Resolves when the queue may have room again (or after a short while: callers re-check).
    pub async fn room(&self) {
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(10), self.room.notified()).await;
    }

    /// Called by the owning connection after it took deliveries off the queue.
    pub(crate) fn note_dequeued(&self, st: &mut SessionState) {
        st.last_dequeue = tokio::time::Instant::now();
        if st.queue.has_room(&self.bounds) {
            self.room.notify_waiters();
            if st.episode_drops > 0 {
                tracing::info!(
                    client_id = %crate::limits::printable(&self.client_id),
                    dropped = st.episode_drops,
                    "session queue has room again"
                );
                st.episode_drops = 0;
            }
        }
    }

    /// Puts deliveries back at the front of the queue (kept in order), ignoring the bound:
    /// they were admitted once already.
    pub fn requeue_front(&self, deliveries: Vec<Delivery>) {
        let mut st = self.state.lock();
        if st.ended {
            return;
        }
        for d in deliveries.into_iter().rev() {
            st.queue.push_front(d);
        }
    }

    /// Queues retained messages matched by a new subscription. They may pass the soft bound
    /// (a subscriber to a wide filter gets all of them, not the first `max_queued_messages`)
    /// but not the hard cap: past it they are dropped and counted.
    pub fn push_retained(&self, deliveries: Vec<Delivery>, metrics: &Metrics) {
        let mut st = self.state.lock();
        if st.ended {
            return;
        }
        let online = st.connection.is_some();
        for d in deliveries {
            if st.queue.below_hard_cap(&self.bounds) {
                st.enqueue(d, online);
            } else {
                self.drop_locked(&mut st, DropReason::QueueFull, metrics);
            }
        }
        drop(st);
        self.wake.notify_one();
    }

    /// Wakes the owning connection so it looks at the queue again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Resolves when a delivery has been queued since the last call (or a wake was asked for).
    pub async fn woken(&self) {
        self.wake.notified().await
    }
}

impl SessionState {
    /// Queues a delivery at the back, storing it when the session is persistent; the store
    /// op's ticket (0: not stored).
    pub fn enqueue(&mut self, mut d: Delivery, online: bool) -> u64 {
        let ticket = match &mut self.journal {
            Some(j) => j.queued(&mut d, online).unwrap_or(0),
            None => 0,
        };
        self.queue.push_back(d);
        ticket
    }

    /// A stored delivery is finished with (sent at QoS 0, acknowledged, expired, refused).
    pub fn finished(&self, d: &Delivery) {
        if let Some(j) = &self.journal {
            j.done(d);
        }
    }

    /// A stored delivery was sent with `packet_id`, or moved on to `state`; the store op's
    /// ticket (0: not stored).
    pub fn mark_sent(&self, d: &Delivery, packet_id: u16, state: InflightState) -> u64 {
        self.journal
            .as_ref()
            .map_or(0, |j| j.sent(d, packet_id, state))
    }

    /// A packet identifier not used by any outbound message in flight (nor handed out
    /// earlier in the run `ids` belongs to; see `packet_ids`).
    pub fn allocate_packet_id(&mut self, ids: &mut IdsInUse) -> u16 {
        super::packet_ids::allocate(&mut self.next_packet_id, &self.inflight, ids)
    }

    /// Removes an in-flight message that is finished with (acknowledged, or refused by the
    /// client), keeping `unsent_inflight` in step.
    pub fn remove_inflight(&mut self, index: usize) -> Option<Inflight> {
        let f = self.inflight.remove(index)?;
        self.unsent_inflight -= usize::from(!f.sent);
        self.finished(&f.delivery);
        Some(f)
    }

    /// Position of the in-flight message with this id and state.
    pub fn find_inflight(&self, packet_id: u16, state: InflightState) -> Option<usize> {
        self.inflight
            .iter()
            .position(|f| f.packet_id == packet_id && f.state == state)
    }

    /// Takes out the deliveries that came through shared subscriptions and may go to another
    /// group member: those still queued and QoS 1 ones in flight. A QoS 2 message already
    /// sent stays with this session, to be completed when the client returns or discarded
    /// with the session (MQTT-4.8.2-4, MQTT-4.8.2-5).
    pub fn take_shared_unacknowledged(&mut self) -> Vec<Delivery> {
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.inflight.len());
        for f in self.inflight.drain(..) {
            if f.delivery.shared_group.is_some() && f.state == InflightState::AwaitPubAck {
                self.unsent_inflight -= usize::from(!f.sent);
                out.push(f.delivery);
            } else {
                kept.push_back(f);
            }
        }
        self.inflight = kept;
        out.extend(self.queue.extract(|d| d.shared_group.is_some()));
        out
    }
}

impl super::pressure::Backlog for Session {
    fn has_room(&self) -> bool {
        Session::has_room(self)
    }

    fn room(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(Session::room(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Message;
    use crate::codec::Properties;
    use bytes::Bytes;

    fn delivery(qos: QoS, shared: bool) -> Delivery {
        let m = Message::new(
            "t".into(),
            Bytes::from_static(b"x"),
            qos,
            false,
            Properties::default(),
            None,
        );
        Delivery {
            message: Arc::new(m),
            qos,
            retain: false,
            subscription_ids: Default::default(),
            shared_group: shared.then(|| Arc::from("$share/g/t")),
            store_seq: 0,
        }
    }

    fn queued(o: &Offer) -> bool {
        matches!(o, Offer::Queued { .. })
    }

    #[test]
    fn a_subscriber_with_nothing_waiting_is_not_stalled_however_long_ago_it_last_took_one() {
        // A node frozen for 12 s comes back with a burst for a subscriber that was idle: the
        // subscriber must hold the burst's source back, not be dropped for as stalled.
        let metrics = Metrics::default();
        let s = Session::new("c".into(), QueueBounds::messages(2), false);
        s.state.lock().connection = Some(ConnectionControl::new(1));
        s.state.lock().last_dequeue = tokio::time::Instant::now() - STALLED_AFTER * 6;
        for _ in 0..2 {
            assert!(queued(&s.offer(
                delivery(QoS::AtLeastOnce, false),
                true,
                &metrics
            )));
        }
        let full = s.offer(delivery(QoS::AtLeastOnce, false), true, &metrics);
        assert!(matches!(full, Offer::Full(_)), "got {full:?}");
    }

    #[test]
    fn past_the_bound_a_moving_subscriber_is_full_and_others_drop() {
        let metrics = Metrics::default();
        let s = Session::new("c".into(), QueueBounds::messages(2), false);
        s.state.lock().connection = Some(ConnectionControl::new(1));
        assert!(queued(&s.offer(
            delivery(QoS::AtLeastOnce, false),
            true,
            &metrics
        )));
        assert!(queued(&s.offer(
            delivery(QoS::AtMostOnce, false),
            true,
            &metrics
        )));
        // At the bound: QoS 0 and 1 alike come back Full when the publisher may be held.
        let full = s.offer(delivery(QoS::AtMostOnce, false), true, &metrics);
        let Offer::Full(d) = full else {
            panic!("expected Full, got {full:?}")
        };
        assert!(!s.has_room());
        assert!(s.admit_under_pressure(d, &metrics).is_some());
        assert_eq!(s.state.lock().queue.len(), 3);
        // Its own client's publish may not hold it: dropped.
        assert!(matches!(
            s.offer(delivery(QoS::AtLeastOnce, false), false, &metrics),
            Offer::Dropped
        ));
        let Offer::Full(d) = s.offer(delivery(QoS::AtLeastOnce, false), true, &metrics) else {
            panic!("expected Full")
        };
        s.overflow(d, false, &metrics);
        assert_eq!(Metrics::get(&metrics.dropped_queue_full), 1);
        assert_eq!(Metrics::get(&metrics.dropped_slow_subscriber), 1);
        assert_eq!(s.dropped.load(Ordering::Relaxed), 2, "counted per client");
        // A subscriber that has not moved for the stall time holds nobody back.
        s.state.lock().last_dequeue = tokio::time::Instant::now() - STALLED_AFTER;
        assert!(s.has_room());
        assert!(matches!(
            s.offer(delivery(QoS::AtLeastOnce, false), true, &metrics),
            Offer::Dropped
        ));
        // Offline sessions never hold publishers back.
        let offline = Session::new("o".into(), QueueBounds::messages(1), false);
        assert!(matches!(
            offline.offer(delivery(QoS::AtLeastOnce, false), true, &metrics),
            Offer::Queued { online: false, .. }
        ));
        assert!(matches!(
            offline.offer(delivery(QoS::AtLeastOnce, false), true, &metrics),
            Offer::Dropped
        ));
    }

    #[test]
    fn the_hard_cap_bounds_pressure_retained_and_bytes() {
        let metrics = Metrics::default();
        let bounds = QueueBounds {
            max_messages: 1,
            max_bytes: 10,
        };
        let s = Session::new("h".into(), bounds, false);
        s.state.lock().connection = Some(ConnectionControl::new(2));
        let cap = bounds.hard_messages();
        for _ in 0..cap + 5 {
            s.admit_under_pressure(delivery(QoS::AtLeastOnce, false), &metrics);
        }
        // Each delivery weighs 2 bytes ("t" + "x"): the 20-byte hard cap is reached first.
        assert_eq!(s.state.lock().queue.len(), 10);
        assert_eq!(s.state.lock().queue.bytes(), 20);
        s.push_retained(vec![delivery(QoS::AtMostOnce, false); 3], &metrics);
        assert_eq!(s.state.lock().queue.len(), 10);
        assert_eq!(
            Metrics::get(&metrics.dropped_queue_full),
            cap as u64 + 5 - 10 + 3
        );
        let big = QueueBounds::messages(1);
        assert_eq!(big.hard_messages(), 65_537);
    }

    #[test]
    fn offline_sessions_skip_qos0_unless_configured() {
        let metrics = Metrics::default();
        let s = Session::new("c".into(), QueueBounds::messages(10), false);
        assert!(matches!(
            s.offer(delivery(QoS::AtMostOnce, false), true, &metrics),
            Offer::Dropped
        ));
        assert_eq!(Metrics::get(&metrics.dropped_qos0_offline), 1);
        assert!(queued(&s.offer(
            delivery(QoS::AtLeastOnce, false),
            true,
            &metrics
        )));
        let s = Session::new("c".into(), QueueBounds::messages(10), true);
        assert!(queued(&s.offer(
            delivery(QoS::AtMostOnce, false),
            true,
            &metrics
        )));
        s.state.lock().ended = true;
        assert!(matches!(
            s.offer(delivery(QoS::AtLeastOnce, false), true, &metrics),
            Offer::SessionEnded
        ));
    }

    #[test]
    fn packet_ids_skip_ids_in_flight_and_wrap() {
        let s = Session::new("c".into(), QueueBounds::messages(10), false);
        let mut st = s.state.lock();
        st.next_packet_id = u16::MAX;
        let d = delivery(QoS::AtLeastOnce, false);
        st.inflight.push_back(Inflight {
            packet_id: 1,
            state: InflightState::AwaitPubAck,
            delivery: d,
            sent: true,
            held_for: 0,
        });
        let mut ids = IdsInUse::default();
        assert_eq!(st.allocate_packet_id(&mut ids), u16::MAX);
        assert_eq!(
            st.allocate_packet_id(&mut ids),
            2,
            "0 is never used and 1 is in flight"
        );
        assert_eq!(st.find_inflight(1, InflightState::AwaitPubAck), Some(0));
        assert_eq!(st.find_inflight(1, InflightState::AwaitPubRec), None);
    }

    #[test]
    fn shared_deliveries_are_taken_unless_qos2_already_sent() {
        let s = Session::new("c".into(), QueueBounds::messages(10), false);
        let mut st = s.state.lock();
        st.queue.push_back(delivery(QoS::AtLeastOnce, true));
        st.queue.push_back(delivery(QoS::AtLeastOnce, false));
        for (id, qos, state) in [
            (1, QoS::AtLeastOnce, InflightState::AwaitPubAck),
            (2, QoS::ExactlyOnce, InflightState::AwaitPubRec),
            (3, QoS::ExactlyOnce, InflightState::AwaitPubComp),
        ] {
            st.inflight.push_back(Inflight {
                packet_id: id,
                state,
                delivery: delivery(qos, true),
                sent: true,
                held_for: 0,
            });
        }
        let taken = st.take_shared_unacknowledged();
        assert_eq!(taken.len(), 2, "the queued one and the QoS 1 in flight");
        assert_eq!(st.queue.len(), 1);
        assert_eq!(st.queue.bytes(), 2);
        let kept: Vec<u16> = st.inflight.iter().map(|f| f.packet_id).collect();
        assert_eq!(kept, [2, 3], "QoS 2 once sent stays with its session");
    }
}
