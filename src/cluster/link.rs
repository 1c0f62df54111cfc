//! An outbound link to one peer node: a queue of frames bounded in bytes (the task that keeps
//! its connection is in `dial`), which keeps every reliable frame (QoS 1/2 publishes, retained writes and the retained set) until
//! the peer acknowledges it. After a reconnect the peer says what it processed last and
//! everything after that is sent again, so a dropped connection between two live nodes loses
//! nothing reliable and duplicates nothing. The link is also flow control: past its window it
//! holds back the publishers whose messages only it wants (see `broker::pressure`); past its
//! hold bound it drops, counts and says so once per episode. Heartbeats both ways let either
//! end tell a dead or frozen connection from an idle one.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::wire::{self, Frame, WireMessage};
use crate::broker::Backlog;

/// One batch written at once.
pub(super) const BATCH_BYTES: usize = 256 * 1024;
/// What one queued frame costs beyond its bytes (queue entry, allocation), for the bounds.
const FRAME_OVERHEAD: usize = 64;
/// A link whose peer has acknowledged nothing for this long while frames wait is stalled: it
/// stops holding publishers back (as a stalled subscriber does) and only queues.
const STALLED_AFTER: Duration = Duration::from_secs(2);

/// How much a link may hold, from the cluster configuration.
#[derive(Debug, Clone, Copy)]
pub struct LinkBounds {
    /// `cluster.link_window_bytes`: past this, publishers whose messages only this peer
    /// wants wait for its acknowledgements.
    pub window_bytes: usize,
    /// `cluster.hold_bytes`: past this, new frames for the peer are dropped and counted.
    pub hold_bytes: usize,
    /// `cluster.link_timeout_ms`: a connection silent this long is dead.
    pub timeout: Duration,
}

struct Outgoing {
    /// Sequence number of a reliable frame; 0 for the others.
    seq: u64,
    body: Body,
}

enum Body {
    /// Encoded when written, with how long it waited here: message expiry counts down
    /// while a message is queued for a peer (or waits for it to come back).
    Publish {
        normal: bool,
        groups: Vec<String>,
        message: Bytes,
        queued_at: Instant,
    },
    Encoded(Bytes),
}

impl Outgoing {
    fn cost(&self) -> usize {
        let bytes = match &self.body {
            Body::Publish {
                groups, message, ..
            } => message.len() + groups.iter().map(|g| g.len() + 8).sum::<usize>(),
            Body::Encoded(bytes) => bytes.len(),
        };
        bytes + FRAME_OVERHEAD
    }

    fn write_to(&self, out: &mut BytesMut) -> Result<(), String> {
        match &self.body {
            Body::Publish {
                normal,
                groups,
                message,
                queued_at,
            } => wire::encode_frame(
                &Frame::Publish {
                    seq: self.seq,
                    normal: *normal,
                    groups: groups.clone(),
                    held_ms: queued_at.elapsed().as_millis() as u64,
                    message: message.clone(),
                },
                out,
            ),
            Body::Encoded(bytes) => {
                out.extend_from_slice(bytes);
                Ok(())
            }
        }
    }
}

/// Which retained messages a sync sends: all of them, or those that entered the cluster at
/// the listed nodes.
pub type RetainedScope<'a> = Option<&'a [Arc<str>]>;

/// Where this link's retained syncs stand: the whole set once per link, and the messages of
/// nodes whose runs ended (see `Link::resync_origin`).
enum RetainedSync {
    /// The whole set, not started: taken from the store when the first connection comes up.
    Due,
    /// The messages that entered at these nodes, not started.
    DueFrom(Vec<Arc<str>>),
    /// Batches not sent yet (the ones sent are reliable frames in the queue).
    Sending(VecDeque<Vec<WireMessage>>),
    Done,
}

struct LinkQueue {
    unsent: VecDeque<Outgoing>,
    /// Reliable frames written and not yet acknowledged, in order.
    unacked: VecDeque<Outgoing>,
    /// Cost of everything in both.
    bytes: usize,
    next_seq: u64,
    /// When the peer last acknowledged progress (or the queue was last empty).
    progress_at: Instant,
    retained: RetainedSync,
    /// Origins to resync once the sync on its way is done.
    pending_resync: Vec<Arc<str>>,
    /// Frames dropped since the queue last had room (logged once per episode).
    episode_drops: u64,
}

impl LinkQueue {
    fn push(&mut self, o: Outgoing) {
        if self.bytes == 0 {
            self.progress_at = Instant::now();
        }
        self.bytes += o.cost();
        self.unsent.push_back(o);
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }
}

/// What became of a publish offered to a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// Queued on a connected link that is keeping up.
    Flowing,
    /// Queued on a connected, moving link past its window: the publisher may wait for it.
    PastWindow,
    /// Queued on a link that is down, stalled or suspended: held for the peer's return,
    /// within the hold bounds.
    Parked,
    /// The hold bound is reached: dropped (counted by the caller).
    Dropped,
}

pub struct Link {
    pub node_id: Arc<str>,
    pub generation: u64,
    /// This link's incarnation, random: the peer keeps its progress per epoch, so a link
    /// created anew (after this node gave up on the peer) starts its count afresh there.
    pub epoch: u64,
    pub addr: SocketAddr,
    pub gossip_addr: SocketAddr,
    pub(super) bounds: LinkBounds,
    queue: Mutex<LinkQueue>,
    pub(super) wake: Notify,
    /// Acknowledgements made room.
    pub(super) room: Notify,
    pub(super) connected: AtomicBool,
    /// When the failure detector declared the peer failed; None while it is live.
    suspended_since: Mutex<Option<Instant>>,
    pub(super) stop: watch::Sender<bool>,
}

impl Link {
    pub fn new(
        node_id: Arc<str>,
        generation: u64,
        addr: SocketAddr,
        gossip_addr: SocketAddr,
        bounds: LinkBounds,
    ) -> Arc<Link> {
        let epoch = wire::random_u64();
        Arc::new(Link {
            node_id,
            generation,
            epoch,
            addr,
            gossip_addr,
            bounds,
            queue: Mutex::new(LinkQueue {
                unsent: VecDeque::new(),
                unacked: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                progress_at: Instant::now(),
                retained: RetainedSync::Due,
                pending_resync: Vec::new(),
                episode_drops: 0,
            }),
            wake: Notify::new(),
            room: Notify::new(),
            connected: AtomicBool::new(false),
            suspended_since: Mutex::new(None),
            stop: watch::channel(false).0,
        })
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Since when the peer is declared failed, if it is.
    pub fn suspended_since(&self) -> Option<Instant> {
        *self.suspended_since.lock()
    }

    pub fn set_suspended(&self, suspended: bool) {
        *self.suspended_since.lock() = suspended.then(Instant::now);
    }

    /// Frames waiting to be sent or acknowledged.
    pub fn depth(&self) -> usize {
        let q = self.queue.lock();
        q.unsent.len() + q.unacked.len()
    }

    /// What those frames cost against the bounds.
    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().bytes
    }

    /// How long the peer has acknowledged nothing while frames wait (zero when none wait).
    pub fn stalled_for(&self) -> Duration {
        let q = self.queue.lock();
        if q.bytes == 0 {
            Duration::ZERO
        } else {
            q.progress_at.elapsed()
        }
    }

    /// The link delivers: connected, not suspended, and acknowledging what it is sent.
    pub fn is_healthy(&self) -> bool {
        self.is_connected()
            && self.suspended_since().is_none()
            && self.stalled_for() < STALLED_AFTER
    }

    /// Queues a publish (retained ones are always reliable: every node stores them).
    pub fn send_publish(
        &self,
        reliable: bool,
        normal: bool,
        groups: Vec<String>,
        message: Bytes,
    ) -> Queued {
        let mut q = self.queue.lock();
        if self.admit(&mut q, message.len() + FRAME_OVERHEAD).is_none() {
            return Queued::Dropped;
        }
        let seq = if reliable { q.next_seq() } else { 0 };
        q.push(Outgoing {
            seq,
            body: Body::Publish {
                normal,
                groups,
                message,
                queued_at: Instant::now(),
            },
        });
        let state = if !self.is_connected()
            || self.suspended_since().is_some()
            || q.progress_at.elapsed() >= STALLED_AFTER
        {
            Queued::Parked
        } else if q.bytes > self.bounds.window_bytes {
            Queued::PastWindow
        } else {
            Queued::Flowing
        };
        drop(q);
        self.wake.notify_one();
        state
    }

    /// Queues a control frame (route pushes); false when the hold bound is reached.
    pub fn send_control(&self, frame: &Frame) -> bool {
        let Ok(bytes) = wire::frame_bytes(frame) else {
            return false;
        };
        let mut q = self.queue.lock();
        if self.admit(&mut q, bytes.len() + FRAME_OVERHEAD).is_none() {
            return false;
        }
        q.push(Outgoing {
            seq: 0,
            body: Body::Encoded(bytes),
        });
        drop(q);
        self.wake.notify_one();
        true
    }

    /// Room for `cost` more bytes within the hold bound; else the drop is counted in the
    /// episode (the first one of an episode is logged).
    fn admit(&self, q: &mut LinkQueue, cost: usize) -> Option<usize> {
        if q.bytes + cost <= self.bounds.hold_bytes || q.bytes == 0 {
            return Some(cost);
        }
        if q.episode_drops == 0 {
            tracing::warn!(
                peer = %self.node_id, queued_bytes = q.bytes, hold_bytes = self.bounds.hold_bytes,
                connected = self.is_connected(), suspended = self.suspended_since().is_some(),
                "peer link queue full (cluster.hold_bytes): dropping messages for this node until it catches up"
            );
        }
        q.episode_drops += 1;
        // A dropped retained write leaves the peer's store behind: send the whole set again.
        q.retained = RetainedSync::Due;
        None
    }

    /// A node's run ended (crashed, restarted, given up on) perhaps before its last retained
    /// writes reached the peer at this link's other end: send the peer the ones that entered
    /// the cluster there, as this node has them. The last-writer-wins order makes it harmless
    /// where the peer already has them, and all surviving nodes converge.
    pub fn resync_origin(&self, origin: &Arc<str>) {
        let mut q = self.queue.lock();
        match &mut q.retained {
            RetainedSync::Due => {}
            RetainedSync::DueFrom(origins) => {
                if !origins.contains(origin) {
                    origins.push(origin.clone());
                }
            }
            // A set on its way was taken before this; its scope is sent again afterwards.
            RetainedSync::Sending(_) => q.pending_resync.push(origin.clone()),
            RetainedSync::Done => q.retained = RetainedSync::DueFrom(vec![origin.clone()]),
        }
        drop(q);
        self.wake.notify_one();
    }

    /// Stops the link's task; what is queued is dropped. Returns how many frames that was.
    pub fn close(&self) -> usize {
        self.stop.send_replace(true);
        let mut q = self.queue.lock();
        let n = q.unsent.len() + q.unacked.len();
        q.unsent.clear();
        q.unacked.clear();
        q.bytes = 0;
        drop(q);
        self.room.notify_waiters();
        n
    }

    pub(super) fn ack(&self, upto: u64) {
        let mut q = self.queue.lock();
        let mut freed = false;
        while q.unacked.front().is_some_and(|o| o.seq <= upto) {
            let o = q.unacked.pop_front().expect("checked");
            q.bytes -= o.cost();
            freed = true;
        }
        if freed {
            q.progress_at = Instant::now();
            if q.episode_drops > 0 && q.bytes <= self.bounds.hold_bytes / 2 {
                tracing::warn!(
                    peer = %self.node_id, dropped = q.episode_drops,
                    "peer link caught up; messages dropped meanwhile (cluster.hold_bytes)"
                );
                q.episode_drops = 0;
            }
        }
        drop(q);
        if freed {
            self.room.notify_waiters();
        }
    }

    /// After a (re)connect: drop what the peer has, resend the rest ahead of new frames.
    pub(super) fn resume(&self, resume_after: u64) {
        let mut q = self.queue.lock();
        let unacked = std::mem::take(&mut q.unacked);
        for o in unacked.into_iter().rev() {
            if o.seq > resume_after {
                q.unsent.push_front(o);
            } else {
                q.bytes -= o.cost();
            }
        }
        q.progress_at = Instant::now();
    }

    /// Moves up to one batch from the queue into `out` (reliable frames go to `unacked`),
    /// then at most one batch of the retained set while the link is within its window, so
    /// a large set never holds live publishes up behind it.
    pub(super) fn take_batch(
        &self,
        out: &mut BytesMut,
        retained_set: impl FnOnce(RetainedScope<'_>) -> Vec<Vec<WireMessage>>,
    ) -> usize {
        let mut q = self.queue.lock();
        let mut n = 0;
        while out.len() < BATCH_BYTES {
            let Some(o) = q.unsent.pop_front() else { break };
            if let Err(e) = o.write_to(out) {
                // Bounded when queued; cannot happen, and must not stop the link if it does.
                tracing::warn!(peer = %self.node_id, error = %e, "frame not sent");
                q.bytes -= o.cost();
                continue;
            }
            if o.seq != 0 {
                q.unacked.push_back(o);
            } else {
                q.bytes -= o.cost();
            }
            n += 1;
        }
        // A batch of the set gets the next sequence number, so it may go only once every frame
        // numbered before it has gone: frames resent after a reconnect are still in `unsent`
        // until then, and the peer, which skips numbers at or below the last it processed,
        // would otherwise take them for ones it already has.
        if q.unsent.is_empty() && q.bytes <= self.bounds.window_bytes {
            match std::mem::replace(&mut q.retained, RetainedSync::Done) {
                RetainedSync::Due => {
                    q.retained = RetainedSync::Sending(retained_set(None).into());
                }
                RetainedSync::DueFrom(origins) => {
                    q.retained = RetainedSync::Sending(retained_set(Some(&origins)).into());
                }
                other => q.retained = other,
            }
            if let RetainedSync::Sending(batches) = &mut q.retained {
                match batches.pop_front() {
                    Some(messages) => {
                        let seq = q.next_seq();
                        let frame = Frame::Retained { seq, messages };
                        match wire::frame_bytes(&frame) {
                            Ok(bytes) => {
                                out.extend_from_slice(&bytes);
                                let o = Outgoing {
                                    seq,
                                    body: Body::Encoded(bytes),
                                };
                                q.bytes += o.cost();
                                q.unacked.push_back(o);
                                n += 1;
                            }
                            Err(e) => {
                                tracing::warn!(peer = %self.node_id, error = %e, "retained batch not sent")
                            }
                        }
                    }
                    None => {
                        q.retained = if q.pending_resync.is_empty() {
                            RetainedSync::Done
                        } else {
                            RetainedSync::DueFrom(std::mem::take(&mut q.pending_resync))
                        };
                        tracing::debug!(peer = %self.node_id, "retained set sent");
                    }
                }
            }
        }
        n
    }

    pub(super) fn has_more(&self) -> bool {
        let q = self.queue.lock();
        !q.unsent.is_empty()
            || (q.bytes <= self.bounds.window_bytes && !matches!(q.retained, RetainedSync::Done))
    }
}

impl Backlog for Link {
    fn has_room(&self) -> bool {
        if *self.stop.borrow() || !self.is_connected() || self.suspended_since().is_some() {
            return true;
        }
        let q = self.queue.lock();
        q.bytes <= self.bounds.window_bytes || q.progress_at.elapsed() >= STALLED_AFTER
    }

    fn room(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {
            let _ = tokio::time::timeout(Duration::from_millis(10), self.room.notified()).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(window_bytes: usize, hold_bytes: usize) -> LinkBounds {
        LinkBounds {
            window_bytes,
            hold_bytes,
            timeout: Duration::from_secs(5),
        }
    }

    fn link(b: LinkBounds) -> Arc<Link> {
        let addr = "127.0.0.1:1".parse().unwrap();
        let l = Link::new("peer".into(), 1, addr, addr, b);
        l.queue.lock().retained = RetainedSync::Done;
        l
    }

    fn seqs(link: &Link) -> (Vec<u64>, Vec<u64>) {
        let q = link.queue.lock();
        (
            q.unsent.iter().map(|o| o.seq).collect(),
            q.unacked.iter().map(|o| o.seq).collect(),
        )
    }

    /// A batch of the retained set holding one message of `size` bytes on `r/{i}`.
    fn retained_batch(i: usize, size: usize) -> Vec<WireMessage> {
        vec![WireMessage {
            topic: format!("r/{i}"),
            payload: Bytes::from(vec![1u8; size]),
            qos: 0,
            retain: true,
            payload_format_indicator: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
            expiry_secs: None,
            publisher: None,
            origin: "me".into(),
            stamp: 1,
        }]
    }

    fn none(_: RetainedScope<'_>) -> Vec<Vec<WireMessage>> {
        Vec::new()
    }

    #[test]
    fn reliable_frames_are_kept_until_acknowledged_and_resent_after_reconnect() {
        let l = link(bounds(1 << 20, 1 << 20));
        for reliable in [true, false, true, true] {
            let q = l.send_publish(reliable, true, vec![], Bytes::from_static(b"m"));
            assert_eq!(q, Queued::Parked, "not connected: held for the peer");
        }
        let mut out = BytesMut::new();
        assert_eq!(l.take_batch(&mut out, none), 4);
        assert_eq!(seqs(&l), (vec![], vec![1, 2, 3]), "QoS 0 is not kept");
        l.ack(1);
        assert_eq!(seqs(&l).1, vec![2, 3]);
        l.send_publish(true, true, vec![], Bytes::from_static(b"m"));
        // The connection drops; the peer had processed up to 2.
        l.resume(2);
        assert_eq!(
            seqs(&l),
            (vec![3, 4], vec![]),
            "resend 3 ahead of the new 4"
        );
        // What is acknowledged or sent unreliably no longer counts against the bounds.
        let mut out = BytesMut::new();
        l.take_batch(&mut out, none);
        l.ack(4);
        assert_eq!(l.queued_bytes(), 0);
    }

    #[test]
    fn the_window_holds_publishers_and_the_hold_bound_drops() {
        let l = link(bounds(1000, 4000));
        l.connected.store(true, Ordering::Relaxed);
        let payload = Bytes::from(vec![0u8; 400]);
        let mut states = Vec::new();
        for _ in 0..12 {
            states.push(l.send_publish(true, true, vec![], payload.clone()));
        }
        assert_eq!(states[0], Queued::Flowing);
        assert!(states.contains(&Queued::PastWindow));
        assert_eq!(*states.last().unwrap(), Queued::Dropped);
        assert!(l.queued_bytes() <= 4000);
        assert!(!l.has_room(), "past the window, moving: holds publishers");
        // The peer acknowledges everything: room again.
        let mut out = BytesMut::new();
        while l.take_batch(&mut out, none) > 0 {}
        l.ack(u64::MAX);
        assert!(l.has_room());
        assert_eq!(l.send_publish(true, true, vec![], payload), Queued::Flowing);
        // A peer that acknowledges nothing for the stall time holds nobody back.
        l.queue.lock().progress_at = Instant::now() - STALLED_AFTER;
        assert!(l.has_room());
    }

    #[test]
    fn the_retained_set_goes_in_reliable_batches_within_the_window() {
        let l = link(bounds(100, 1 << 20));
        l.queue.lock().retained = RetainedSync::Due;
        let batch = |i: usize| retained_batch(i, 300);
        let set = |_: RetainedScope<'_>| (0..3).map(batch).collect::<Vec<_>>();
        l.send_publish(true, true, vec![], Bytes::from_static(b"live"));
        let mut out = BytesMut::new();
        // Live traffic first, then one batch of the set.
        assert_eq!(l.take_batch(&mut out, set), 2);
        assert_eq!(seqs(&l).1, vec![1, 2]);
        // Past the window nothing more of the set goes until acknowledgements come.
        assert_eq!(l.take_batch(&mut out, set), 0);
        l.ack(2);
        assert_eq!(l.take_batch(&mut out, set), 1);
        // A cut: the unacknowledged batch is resent, the set continues after it.
        l.resume(2);
        assert_eq!(seqs(&l).0, vec![3]);
        l.take_batch(&mut out, set);
        l.ack(3);
        assert_eq!(l.take_batch(&mut out, set), 1);
        l.ack(4);
        l.take_batch(&mut out, set);
        assert!(matches!(l.queue.lock().retained, RetainedSync::Done));
        assert!(!l.has_more());
        // A node's run ended: its messages are sent again, and only those.
        let gone: Arc<str> = "n3".into();
        l.resync_origin(&gone);
        let mut scopes = Vec::new();
        l.take_batch(&mut out, |scope| {
            scopes.push(scope.map(<[Arc<str>]>::to_vec));
            vec![batch(9)]
        });
        assert_eq!(scopes, vec![Some(vec![gone])]);
    }

    #[test]
    fn frames_go_out_in_sequence_order_after_a_reconnect() {
        // The bug a cut in the middle of a large retained set showed: a new batch of the set
        // (numbered 4) went out right behind the first resent frame (2), ahead of the other
        // resent one (3), and the peer, having processed 4, skipped 3 as already seen.
        let l = link(bounds(1 << 20, 1 << 30));
        l.queue.lock().retained = RetainedSync::Due;
        let big = |i: usize| retained_batch(i, BATCH_BYTES);
        let set = |_: RetainedScope<'_>| (0..5).map(big).collect::<Vec<_>>();
        let mut sent = Vec::new();
        let mut take = |l: &Link| {
            let mut out = BytesMut::new();
            l.take_batch(&mut out, set);
            while let Ok(Some(frame)) = wire::decode_frame(&mut out) {
                if let Frame::Retained { seq, .. } = frame {
                    sent.push(seq);
                }
            }
        };
        take(&l);
        take(&l);
        take(&l);
        assert_eq!(seqs(&l).1, vec![1, 2, 3]);
        // The peer processed 1; the connection drops with 2 and 3 unacknowledged.
        l.resume(1);
        for _ in 0..4 {
            take(&l);
        }
        assert_eq!(
            sent,
            [1, 2, 3, 2, 3, 4, 5],
            "in order, the resent ones first"
        );
    }

    #[test]
    fn close_drops_the_queue() {
        let l = link(bounds(1000, 1000));
        l.send_publish(true, true, vec![], Bytes::new());
        assert!(l.send_control(&Frame::Ack { upto: 0 }));
        assert_eq!(l.depth(), 2);
        assert_eq!(l.close(), 2);
        assert_eq!(l.depth(), 0);
        assert_eq!(l.queued_bytes(), 0);
    }
}
