//! A session: the state MQTT keeps for one client id across connections — its subscriptions,
//! the messages queued for it, QoS 1/2 messages in flight both ways, its will and expiry.
//! Publishers add deliveries under the session's own lock (never a broker-wide one) and wake
//! the connection that owns the session, which sends them within its inflight window.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

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
    pub will: Will,
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
    closed_tx: watch::Sender<bool>,
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
            closed_tx: watch::channel(false).0,
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
        self.closed_tx.send_replace(true);
    }

    /// Waits until `mark_closed` (or returns at once if it already happened).
    pub async fn closed(&self) {
        let mut rx = self.closed_tx.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }
}

#[derive(Debug)]
pub struct SessionState {
    /// The connection that owns the session, while there is one.
    pub connection: Option<Arc<ConnectionControl>>,
    /// Bumped on every attach and detach; timers armed at a detach act only if it is unchanged.
    pub generation: u64,
    /// Deliveries not yet sent (bounded by `max_queued`).
    pub queue: VecDeque<Delivery>,
    /// Outbound QoS 1/2 messages sent and not yet acknowledged, in send order.
    pub inflight: VecDeque<Inflight>,
    next_packet_id: u16,
    /// Filter as subscribed (with any `$share/{group}/` prefix) to its options.
    pub subscriptions: HashMap<String, SubscriptionRecord>,
    /// Inbound QoS 2 packet ids received and not yet released.
    pub inbound_qos2: HashSet<u16>,
    /// Session Expiry Interval in seconds (u32::MAX: never).
    pub expiry_interval: u32,
    pub will: Option<PendingWill>,
    /// Set when the session has been discarded: nothing more is queued for it.
    pub ended: bool,
    /// When the connection last took deliveries off the queue (stall detection).
    pub last_dequeue: std::time::Instant,
}

pub struct Session {
    pub client_id: Arc<str>,
    pub state: Mutex<SessionState>,
    online: AtomicBool,
    wake: Notify,
    /// Woken when the queue drops below `max_queued` (publishers held back wait on it).
    room: Notify,
    max_queued: usize,
    queue_qos0_offline: bool,
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

/// What happened to a delivery offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Queued past `max_queued`: the publisher should wait for room (`Session::has_room`).
    QueuedUnderPressure,
    DroppedFull,
    DroppedOffline,
    SessionEnded,
}

impl Session {
    pub fn new(client_id: Arc<str>, max_queued: usize, queue_qos0_offline: bool) -> Arc<Session> {
        Arc::new(Session {
            client_id,
            state: Mutex::new(SessionState {
                connection: None,
                generation: 0,
                queue: VecDeque::new(),
                inflight: VecDeque::new(),
                next_packet_id: 1,
                subscriptions: HashMap::new(),
                inbound_qos2: HashSet::new(),
                expiry_interval: 0,
                will: None,
                ended: false,
                last_dequeue: std::time::Instant::now(),
            }),
            online: AtomicBool::new(false),
            wake: Notify::new(),
            room: Notify::new(),
            max_queued,
            queue_qos0_offline,
        })
    }

    /// Whether a connection owns the session now (a hint: read without the lock).
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// Queues a delivery, dropping it (and counting the drop) when the queue is full or when it
    /// is QoS 0 for an offline session that does not queue those.
    pub fn enqueue(&self, delivery: Delivery, metrics: &Metrics) -> Enqueued {
        let mut st = self.state.lock();
        if st.ended {
            return Enqueued::SessionEnded;
        }
        let online = st.connection.is_some();
        if !online && delivery.qos == QoS::AtMostOnce && !self.queue_qos0_offline {
            Metrics::add(&metrics.dropped_qos0_offline, 1);
            return Enqueued::DroppedOffline;
        }
        let mut outcome = Enqueued::Queued;
        if st.queue.len() >= self.max_queued {
            // A connected subscriber that is keeping up, if slower than its publishers, gets
            // QoS 1/2 messages past the bound (up to a hard cap) while the publishers are held
            // back; a stalled one, an offline one or QoS 0 gets drops.
            let pressure = online
                && delivery.qos != QoS::AtMostOnce
                && st.queue.len() < self.hard_cap()
                && st.last_dequeue.elapsed() < STALLED_AFTER;
            if !pressure {
                drop(st);
                Metrics::add(&metrics.dropped_queue_full, 1);
                tracing::debug!(client_id = %self.client_id, "session queue full, message dropped");
                return Enqueued::DroppedFull;
            }
            outcome = Enqueued::QueuedUnderPressure;
        }
        st.queue.push_back(delivery);
        drop(st);
        if online {
            self.wake.notify_one();
        }
        outcome
    }

    /// Most deliveries queued under publisher backpressure.
    fn hard_cap(&self) -> usize {
        self.max_queued
            .saturating_mul(2)
            .max(self.max_queued + 65_536)
    }

    /// Whether a publisher held back by this session may go on: its queue is below the bound,
    /// or it has made no progress for a while (a stalled subscriber holds nobody back).
    pub fn has_room(&self) -> bool {
        let st = self.state.lock();
        st.ended || st.queue.len() < self.max_queued || st.last_dequeue.elapsed() >= STALLED_AFTER
    }

    /// Resolves when the queue may have room again (or after a short while: callers re-check).
    pub async fn room(&self) {
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(10), self.room.notified()).await;
    }

    /// Called by the owning connection after it took deliveries off the queue.
    pub(crate) fn note_dequeued(&self, st: &mut SessionState) {
        st.last_dequeue = std::time::Instant::now();
        if st.queue.len() < self.max_queued {
            self.room.notify_waiters();
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

    /// Queues retained messages matched by a new subscription. They bypass the queue bound:
    /// they are already held by the retained store, and a subscriber to a wide filter must get
    /// all of them, not the first `max_queued`.
    pub fn push_retained(&self, deliveries: Vec<Delivery>) {
        let mut st = self.state.lock();
        if st.ended {
            return;
        }
        st.queue.extend(deliveries);
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
    /// A packet identifier not used by any outbound message in flight.
    pub fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.iter().any(|f| f.packet_id == id) {
                return id;
            }
        }
    }

    /// Position of the in-flight message with this id and state.
    pub fn find_inflight(&self, packet_id: u16, state: InflightState) -> Option<usize> {
        self.inflight
            .iter()
            .position(|f| f.packet_id == packet_id && f.state == state)
    }

    /// Takes out the deliveries that came through shared subscriptions and were not yet
    /// received by the client, so another group member can have them.
    pub fn take_shared_unacknowledged(&mut self) -> Vec<Delivery> {
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.inflight.len());
        for f in self.inflight.drain(..) {
            if f.delivery.shared_group.is_some() && f.state != InflightState::AwaitPubComp {
                out.push(f.delivery);
            } else {
                kept.push_back(f);
            }
        }
        self.inflight = kept;
        let mut queue = VecDeque::with_capacity(self.queue.len());
        for d in self.queue.drain(..) {
            if d.shared_group.is_some() {
                out.push(d)
            } else {
                queue.push_back(d)
            }
        }
        self.queue = queue;
        out
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
        }
    }

    #[test]
    fn queue_is_bounded_and_drops_are_counted() {
        let metrics = Metrics::default();
        let s = Session::new("c".into(), 2, false);
        s.state.lock().connection = Some(ConnectionControl::new(1));
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, false), &metrics),
            Enqueued::Queued
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce, false), &metrics),
            Enqueued::Queued
        );
        // Full: QoS 0 is dropped; QoS 1 to a connected, moving subscriber holds the publisher.
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce, false), &metrics),
            Enqueued::DroppedFull
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, false), &metrics),
            Enqueued::QueuedUnderPressure
        );
        assert!(!s.has_room());
        assert_eq!(Metrics::get(&metrics.dropped_queue_full), 1);
        // A subscriber that has not moved for the stall time holds nobody back.
        s.state.lock().last_dequeue = std::time::Instant::now() - STALLED_AFTER;
        assert!(s.has_room());
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, false), &metrics),
            Enqueued::DroppedFull
        );
        // Offline sessions never hold publishers back.
        let offline = Session::new("o".into(), 1, false);
        assert_eq!(
            offline.enqueue(delivery(QoS::AtLeastOnce, false), &metrics),
            Enqueued::Queued
        );
        assert_eq!(
            offline.enqueue(delivery(QoS::AtLeastOnce, false), &metrics),
            Enqueued::DroppedFull
        );
        // The hard cap bounds what pressure may queue.
        let capped = Session::new("h".into(), 1, false);
        capped.state.lock().connection = Some(ConnectionControl::new(2));
        let cap = capped.hard_cap();
        for _ in 0..cap {
            capped.enqueue(delivery(QoS::AtLeastOnce, false), &metrics);
        }
        assert_eq!(capped.state.lock().queue.len(), cap);
        assert_eq!(
            capped.enqueue(delivery(QoS::AtLeastOnce, false), &metrics),
            Enqueued::DroppedFull
        );
    }

    #[test]
    fn offline_sessions_skip_qos0_unless_configured() {
        let metrics = Metrics::default();
        let s = Session::new("c".into(), 10, false);
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce, false), &metrics),
            Enqueued::DroppedOffline
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, false), &metrics),
            Enqueued::Queued
        );
        let s = Session::new("c".into(), 10, true);
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce, false), &metrics),
            Enqueued::Queued
        );
        s.state.lock().ended = true;
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, false), &metrics),
            Enqueued::SessionEnded
        );
    }

    #[test]
    fn packet_ids_skip_ids_in_flight_and_wrap() {
        let s = Session::new("c".into(), 10, false);
        let mut st = s.state.lock();
        st.next_packet_id = u16::MAX;
        let d = delivery(QoS::AtLeastOnce, false);
        st.inflight.push_back(Inflight {
            packet_id: 1,
            state: InflightState::AwaitPubAck,
            delivery: d,
        });
        assert_eq!(st.allocate_packet_id(), u16::MAX);
        assert_eq!(
            st.allocate_packet_id(),
            2,
            "0 is never used and 1 is in flight"
        );
        assert_eq!(st.find_inflight(1, InflightState::AwaitPubAck), Some(0));
        assert_eq!(st.find_inflight(1, InflightState::AwaitPubRec), None);
    }

    #[test]
    fn shared_deliveries_are_taken_unless_already_received() {
        let s = Session::new("c".into(), 10, false);
        let mut st = s.state.lock();
        st.queue.push_back(delivery(QoS::AtLeastOnce, true));
        st.queue.push_back(delivery(QoS::AtLeastOnce, false));
        for (id, state) in [
            (1, InflightState::AwaitPubAck),
            (2, InflightState::AwaitPubComp),
        ] {
            st.inflight.push_back(Inflight {
                packet_id: id,
                state,
                delivery: delivery(QoS::ExactlyOnce, true),
            });
        }
        let taken = st.take_shared_unacknowledged();
        assert_eq!(taken.len(), 2);
        assert_eq!(st.queue.len(), 1);
        assert_eq!(st.inflight.len(), 1);
        assert_eq!(st.inflight[0].packet_id, 2);
    }
}
