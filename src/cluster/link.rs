//! An outbound link to one peer node: a queue of frames bounded in bytes (the task that keeps
//! its connection is in `dial`), which keeps every reliable frame (QoS 1/2 publishes, retained writes and the retained set) until
//! the peer acknowledges it. After a reconnect the peer says what it processed last and
//! everything after that is sent again, so a dropped connection between two live nodes loses
//! nothing reliable and duplicates nothing. The link is also flow control: past its window it
//! holds back the publishers whose messages only it wants (see `broker::pressure`); past its
//! hold bound it drops, counts and says so once per episode. Heartbeats both ways let either
//! end tell a dead or frozen connection from an idle one. With persistence on, the link's
//! reliable publish frames are also stored until acknowledged (`link_store`), and a restarted
//! node reads its links back; a peer that restarts with its store keeps its link (the same
//! epoch and queue) instead of getting a fresh one.

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

use super::link_store::LinkJournal;
use super::wire::{self, Frame, WireMessage};
use crate::broker::Backlog;
use crate::store::{RestoredLink, Store};

/// One batch written at once.
pub(super) const BATCH_BYTES: usize = 256 * 1024;
/// What one queued frame costs beyond its bytes (queue entry, allocation), for the bounds.
const FRAME_OVERHEAD: usize = 64;
/// A link whose peer has acknowledged nothing for this long while frames wait is stalled: it
/// stops holding publishers back (as a stalled subscriber does) and only queues.
const STALLED_AFTER: Duration = Duration::from_secs(2);

/// The peer process a link is for.
#[derive(Debug, Clone)]
pub struct LinkTo {
    pub node_id: Arc<str>,
    /// Its chitchat generation (this process of it).
    pub generation: u64,
    /// Its relay run (see `Link::run`).
    pub run: u64,
    pub addr: SocketAddr,
    pub gossip_addr: SocketAddr,
}

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
    /// Kept in the store until the peer has it.
    stored: bool,
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
    /// The link's share of the store (persistence on); moves with the queue.
    journal: Option<LinkJournal>,
    /// Sequence number of the last route push queued (0: none yet).
    last_route: u64,
    /// Sequence number of the last session record queued (0: none yet).
    last_session: u64,
}

impl LinkQueue {
    fn empty(next_seq: u64, journal: Option<LinkJournal>) -> LinkQueue {
        LinkQueue {
            unsent: VecDeque::new(),
            unacked: VecDeque::new(),
            bytes: 0,
            next_seq,
            progress_at: Instant::now(),
            retained: RetainedSync::Due,
            pending_resync: Vec::new(),
            episode_drops: 0,
            journal,
            last_route: 0,
            last_session: 0,
        }
    }

    fn push(&mut self, o: Outgoing) {
        if self.bytes == 0 {
            self.progress_at = Instant::now();
        }
        self.bytes += o.cost();
        self.unsent.push_back(o);
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        if let Some(j) = &mut self.journal {
            j.used_up_to(self.next_seq);
        }
        self.next_seq - 1
    }

    /// Stored frames among `gone` leave the store too.
    fn forget_stored(&self, gone: impl Iterator<Item = (u64, bool)>) {
        if let Some(j) = &self.journal {
            j.acked(
                gone.filter(|(_, stored)| *stored)
                    .map(|(seq, _)| seq)
                    .collect(),
            );
        }
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
    /// The peer's relay run: its generation, or the id its store keeps across restarts.
    pub run: u64,
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
    /// The highest sequence number the peer has acknowledged on this link.
    acked: watch::Sender<u64>,
    /// The highest sequence number the peer has processed (applied) on this link, at least
    /// `acked`.
    applied: watch::Sender<u64>,
}

impl Link {
    /// A new link to `to`, with a new epoch (stored as the peer's link, replacing any other).
    pub fn new(to: LinkTo, bounds: LinkBounds, store: Option<&Arc<Store>>) -> Arc<Link> {
        let epoch = wire::random_u64();
        let journal =
            store.map(|s| LinkJournal::fresh(s.clone(), to.node_id.clone(), epoch, to.run));
        Link::with_queue(to, epoch, bounds, LinkQueue::empty(1, journal))
    }

    /// The link `stored` read back from the store, to the peer run it was for (now at `to`):
    /// its frames are sent again (the peer skips those it processed), later ones numbered past
    /// any it may have seen.
    pub fn restored(
        stored: RestoredLink,
        to: LinkTo,
        bounds: LinkBounds,
        store: &Arc<Store>,
    ) -> Arc<Link> {
        let first = LinkJournal::first_seq(&stored.record);
        let journal = LinkJournal::restored(store.clone(), to.node_id.clone(), stored.record);
        let mut queue = LinkQueue::empty(first, Some(journal));
        for (seq, frame) in stored.frames {
            let queued_at = LinkJournal::queued_at(&frame);
            queue.push(Outgoing {
                seq,
                stored: true,
                body: Body::Publish {
                    normal: frame.normal,
                    groups: frame.groups,
                    message: frame.message,
                    queued_at,
                },
            });
        }
        Link::with_queue(to, stored.record.epoch, bounds, queue)
    }

    /// The peer came back as a new process of the same relay run (it restarted with its
    /// store): a link to it at `to` that takes over this one's epoch, numbering and queue,
    /// everything unacknowledged to be sent again. This link stops.
    pub fn carry_to(&self, to: LinkTo) -> Arc<Link> {
        self.stop.send_replace(true);
        let mut q = self.queue.lock();
        let mut queue = LinkQueue::empty(q.next_seq, q.journal.take());
        queue.unsent = std::mem::take(&mut q.unacked);
        queue.unsent.append(&mut q.unsent);
        queue.bytes = std::mem::take(&mut q.bytes);
        queue.episode_drops = q.episode_drops;
        queue.last_route = q.last_route;
        drop(q);
        self.room.notify_waiters();
        Link::with_queue(to, self.epoch, self.bounds, queue)
    }

    fn with_queue(to: LinkTo, epoch: u64, bounds: LinkBounds, queue: LinkQueue) -> Arc<Link> {
        Arc::new(Link {
            node_id: to.node_id,
            generation: to.generation,
            run: to.run,
            epoch,
            addr: to.addr,
            gossip_addr: to.gossip_addr,
            bounds,
            queue: Mutex::new(queue),
            wake: Notify::new(),
            room: Notify::new(),
            connected: AtomicBool::new(false),
            suspended_since: Mutex::new(None),
            stop: watch::channel(false).0,
            acked: watch::channel(0).0,
            applied: watch::channel(0).0,
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

    /// The peer is live as far as this link knows: connected and not declared failed (a
    /// frozen peer stops being connected after `cluster.link_timeout_ms` of silence).
    pub fn is_live(&self) -> bool {
        self.is_connected() && self.suspended_since().is_none()
    }

    /// The link delivers: connected, not suspended, and acknowledging what it is sent.
    pub fn is_healthy(&self) -> bool {
        self.is_connected()
            && self.suspended_since().is_none()
            && self.stalled_for() < STALLED_AFTER
    }

    /// Queues a publish (retained ones are always reliable: every node stores them). With
    /// persistence on, a reliable one is stored too: the ticket of that write (else 0).
    pub fn send_publish(
        &self,
        reliable: bool,
        normal: bool,
        groups: Vec<String>,
        message: Bytes,
    ) -> (Queued, u64) {
        let mut q = self.queue.lock();
        if self.admit(&mut q, message.len() + FRAME_OVERHEAD).is_none() {
            return (Queued::Dropped, 0);
        }
        let seq = if reliable { q.next_seq() } else { 0 };
        let queued_at = Instant::now();
        let ticket = match &q.journal {
            Some(j) if reliable => j.frame(seq, normal, &groups, &message, queued_at),
            _ => 0,
        };
        q.push(Outgoing {
            seq,
            stored: ticket != 0,
            body: Body::Publish {
                normal,
                groups,
                message,
                queued_at,
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
        (state, ticket)
    }

    /// Queues a route push, reliable (resent after a reconnect, and its acknowledgement says
    /// the peer applied it; it is not stored: after a restart gossip carries the routes).
    /// False when the hold bound is reached.
    pub fn send_route(&self, version: u64, key: &str, present: bool) -> bool {
        let cost = key.len() + 32 + FRAME_OVERHEAD;
        let frame = |seq| Frame::Route {
            seq,
            version,
            key: key.to_string(),
            present,
        };
        self.queue_reliable(cost, "route push", frame, |q, seq| q.last_route = seq)
    }

    /// Queues a session record (`handover`), reliable like a route push. False when the hold
    /// bound is reached.
    pub fn send_session(&self, body: Bytes) -> bool {
        let cost = body.len() + FRAME_OVERHEAD;
        let frame = |seq| Frame::Session { seq, body };
        self.queue_reliable(cost, "session record", frame, |q, seq| q.last_session = seq)
    }

    /// Queues the reliable frame `frame` makes for the next sequence number (`cost` against
    /// the hold bound; `noted` records it in the queue, under the same lock). False when the
    /// hold bound is reached (or the frame, bounded by the limits, cannot be encoded: gossip
    /// and the next claim carry what it said).
    fn queue_reliable(
        &self,
        cost: usize,
        what: &str,
        frame: impl FnOnce(u64) -> Frame,
        noted: impl FnOnce(&mut LinkQueue, u64),
    ) -> bool {
        let mut q = self.queue.lock();
        if self.admit(&mut q, cost).is_none() {
            return false;
        }
        let seq = q.next_seq();
        let bytes = match wire::frame_bytes(&frame(seq)) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(peer = %self.node_id, error = %e, "{what} not sent");
                return false;
            }
        };
        noted(&mut q, seq);
        q.push(Outgoing {
            seq,
            stored: false,
            body: Body::Encoded(bytes),
        });
        drop(q);
        self.wake.notify_one();
        true
    }

    /// What a SUBACK waits for on this link: how far the peer applied what it was sent (its
    /// `Applied` marks, which run ahead of acknowledgements held for disk or session copies),
    /// and the number of the last route push queued, if the peer has not applied it yet and
    /// the link is live (a link that is down or suspended is not waited for: its peer is not
    /// live).
    pub fn route_wait(&self) -> Option<(watch::Receiver<u64>, u64)> {
        if !self.is_connected() || self.suspended_since().is_some() || *self.stop.borrow() {
            return None;
        }
        let last_route = self.queue.lock().last_route;
        let applied = self.applied.subscribe();
        let pending = *applied.borrow() < last_route;
        pending.then_some((applied, last_route))
    }

    /// What an acknowledgement that must follow the session records queued so far waits for
    /// on this link (see `broker::copies_wait`): None when the peer has applied them all, or
    /// is not live (down, declared failed). A slow or stalled peer is waited for: a copy
    /// confirms what is acknowledged, or its node is known gone first.
    pub fn session_wait(self: &Arc<Self>) -> Option<crate::broker::PeerWait> {
        if !self.is_live() || *self.stop.borrow() {
            return None;
        }
        let last_session = self.queue.lock().last_session;
        let acked = self.applied.subscribe();
        if *acked.borrow() >= last_session {
            return None;
        }
        let link = Arc::downgrade(self);
        Some(crate::broker::PeerWait {
            acked,
            upto: last_session,
            delivering: Arc::new(move || link.upgrade().is_some_and(|l| l.is_live())),
        })
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

    /// The QoS 1/2 publishes for the peer's own subscribers (not shared-group picks) that it
    /// has not acknowledged, after the sequence number `after` when that mark is of this
    /// link's epoch (else all of them): what a dead holder's session may not have had yet
    /// (see `recovery`). Each with how long it has waited here, oldest first.
    pub(super) fn unacknowledged_publishes(&self, after: Option<(u64, u64)>) -> Vec<(Bytes, u64)> {
        let after = after
            .filter(|(epoch, _)| *epoch == self.epoch)
            .map_or(0, |(_, seq)| seq);
        let q = self.queue.lock();
        q.unacked
            .iter()
            .chain(q.unsent.iter())
            .filter(|o| o.seq > after)
            .filter_map(|o| match &o.body {
                Body::Publish {
                    normal: true,
                    message,
                    queued_at,
                    ..
                } => Some((message.clone(), queued_at.elapsed().as_millis() as u64)),
                _ => None,
            })
            .collect()
    }

    /// The peer's link is given up on for good: what the store keeps of it goes too.
    pub fn forget(&self) {
        if let Some(j) = &self.queue.lock().journal {
            j.gone();
        }
    }

    /// With persistence on, the store ticket the link waits for before it may send its next
    /// frame (see `link_store`), if it waits.
    pub(super) fn awaits_store(&self) -> Option<(Arc<Store>, u64)> {
        let mut q = self.queue.lock();
        let seq = q.unsent.front().map(|o| o.seq).filter(|s| *s != 0)?;
        let j = q.journal.as_mut()?;
        if j.may_send(seq) {
            return None;
        }
        j.pending()
    }

    /// Stops the link's task; what is queued is dropped (and stays in the store, if it is
    /// there, for this node's next run). Returns how many frames that was.
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
        self.note_acked(upto);
        let mut q = self.queue.lock();
        let mut freed = Vec::new();
        while q.unacked.front().is_some_and(|o| o.seq <= upto) {
            let o = q.unacked.pop_front().expect("checked");
            q.bytes -= o.cost();
            freed.push((o.seq, o.stored));
        }
        let freed = !freed.is_empty() && {
            q.forget_stored(freed.into_iter());
            true
        };
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
        // Publishers held back wait for room: waking them while the window is still full
        // would only put them back to sleep.
        let room = freed && q.bytes <= self.bounds.window_bytes;
        drop(q);
        if room {
            self.room.notify_waiters();
        }
    }

    /// After a (re)connect: drop what the peer has, resend the rest ahead of new frames.
    pub(super) fn resume(&self, resume_after: u64) {
        self.note_acked(resume_after);
        let mut q = self.queue.lock();
        let unacked = std::mem::take(&mut q.unacked);
        let mut had = Vec::new();
        for o in unacked.into_iter().rev() {
            if o.seq > resume_after {
                q.unsent.push_front(o);
            } else {
                q.bytes -= o.cost();
                had.push((o.seq, o.stored));
            }
        }
        // Frames read back from the store that the peer had processed before this node
        // stopped are still in `unsent`: they go too.
        while q
            .unsent
            .front()
            .is_some_and(|o| o.seq != 0 && o.seq <= resume_after)
        {
            let o = q.unsent.pop_front().expect("checked");
            q.bytes -= o.cost();
            had.push((o.seq, o.stored));
        }
        q.forget_stored(had.into_iter());
        q.progress_at = Instant::now();
    }

    fn note_acked(&self, upto: u64) {
        self.acked.send_if_modified(|acked| {
            let moved = upto > *acked;
            *acked = (*acked).max(upto);
            moved
        });
        self.note_applied(upto);
    }

    /// The peer processed everything up to `upto` (acknowledged or not).
    pub(super) fn note_applied(&self, upto: u64) {
        self.applied.send_if_modified(|applied| {
            let moved = upto > *applied;
            *applied = (*applied).max(upto);
            moved
        });
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
            // A number not yet reserved on disk waits (see `link_store`).
            let seq = q.unsent.front().map_or(0, |o| o.seq);
            if seq != 0
                && let Some(j) = &mut q.journal
                && !j.may_send(seq)
            {
                break;
            }
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
                                    stored: false,
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

mod group_frames;
pub(super) use group_frames::GroupFrame;

#[cfg(test)]
#[path = "link_tests.rs"]
mod tests;
