//! An outbound link to one peer node: a queue of frames bounded in bytes, and the task that
//! keeps a TCP connection to the peer, authenticates, writes queued frames in batches, and
//! keeps every reliable frame (QoS 1/2 publishes, retained writes and the retained set) until
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
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, watch};

use super::Cluster;
use super::wire::{self, Frame, HandshakeIds, WireMessage};
use crate::broker::{Backlog, Metrics};

/// One batch written at once.
const BATCH_BYTES: usize = 256 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
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
    bounds: LinkBounds,
    queue: Mutex<LinkQueue>,
    wake: Notify,
    /// Acknowledgements made room.
    room: Notify,
    connected: AtomicBool,
    /// When the failure detector declared the peer failed; None while it is live.
    suspended_since: Mutex<Option<Instant>>,
    stop: watch::Sender<bool>,
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

    fn ack(&self, upto: u64) {
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
    fn resume(&self, resume_after: u64) {
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
    fn take_batch(
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
        if q.bytes <= self.bounds.window_bytes {
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

    fn has_more(&self) -> bool {
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

/// Keeps the link connected until it is closed or the node stops.
pub async fn run(link: Arc<Link>, cluster: Arc<Cluster>) {
    let mut stop = link.stop.subscribe();
    let mut backoff = BACKOFF_MIN;
    let mut down_since: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let session = async {
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, (cluster.dial)(link.addr))
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| format!("connect: {e}"))?;
            serve(&link, &cluster, stream, &mut backoff, &mut down_since).await
        };
        let outcome = tokio::select! {
            biased;
            _ = crate::stopped(&mut stop) => return,
            r = session => r,
        };
        link.connected.store(false, Ordering::Relaxed);
        link.room.notify_waiters();
        let since = *down_since.get_or_insert_with(Instant::now);
        if let Err(e) = outcome {
            // Once per outage at warn (a peer down for long), the retries at debug.
            if since.elapsed() >= link.bounds.timeout && backoff == BACKOFF_MAX {
                tracing::debug!(peer = %link.node_id, addr = %link.addr, error = %e, "peer link still down");
            } else if since.elapsed() < Duration::from_millis(1) {
                tracing::info!(peer = %link.node_id, addr = %link.addr, error = %e, "peer link down; reconnecting");
            } else {
                tracing::debug!(peer = %link.node_id, addr = %link.addr, error = %e, "peer link down; reconnecting");
            }
        }
        Metrics::add(&cluster.metrics.link_reconnects, 1);
        // Exponential backoff with jitter, so a restarted node is not hit by all peers at once.
        let jitter = 0.8 + 0.4 * (wire::random_u64() % 256) as f64 / 255.0;
        tokio::select! {
            biased;
            _ = crate::stopped(&mut stop) => return,
            _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

pub(super) async fn serve(
    link: &Link,
    cluster: &Cluster,
    stream: super::PeerStream,
    backoff: &mut Duration,
    down_since: &mut Option<Instant>,
) -> Result<(), String> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let resume_after = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(link, cluster, &mut reader, &mut writer, &mut rbuf),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())??;
    link.resume(resume_after);
    link.connected.store(true, Ordering::Relaxed);
    *backoff = BACKOFF_MIN;
    if let Some(since) = down_since.take() {
        tracing::info!(peer = %link.node_id, addr = %link.addr, resume_after, down_ms = since.elapsed().as_millis() as u64, "peer link up again");
    } else {
        tracing::debug!(peer = %link.node_id, addr = %link.addr, resume_after, "peer link up");
    }
    // The loop reads while it writes: the peer's acknowledgements (and heartbeats) must keep
    // flowing while a large batch or the retained set goes out.
    let timeout = link.bounds.timeout;
    let mut heartbeat = tokio::time::interval(timeout / 4);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let mut wrote = Instant::now();
    let mut ticked = Instant::now();
    let mut wbuf = BytesMut::with_capacity(BATCH_BYTES);
    loop {
        if wbuf.is_empty() {
            let n = link.take_batch(&mut wbuf, |scope| cluster.retained_batches(scope));
            Metrics::add(&cluster.metrics.frames_forwarded, n as u64);
        }
        // Biased (in this order) so a simulation replays exactly; reading first is also what
        // keeps acknowledgements flowing while there is always more to write.
        tokio::select! {
            biased;
            frame = wire::read_frame(&mut reader, &mut rbuf) => {
                heard = Instant::now();
                match frame? {
                    Frame::Ack { upto } => link.ack(upto),
                    Frame::Refused { reason } => return Err(format!("refused: {reason}")),
                    other => return Err(format!("unexpected frame from acceptor: {other:?}")),
                }
            }
            written = writer.write(&wbuf), if !wbuf.is_empty() => {
                let n = written.map_err(|e| format!("write: {e}"))?;
                bytes::Buf::advance(&mut wbuf, n);
                wrote = Instant::now();
            }
            _ = link.wake.notified(), if wbuf.is_empty() && !link.has_more() => {}
            _ = heartbeat.tick() => {
                if ticked.elapsed() >= timeout {
                    // This node was the one paused (SIGSTOP, a VM pause): the silence is ours.
                    heard = Instant::now();
                }
                ticked = Instant::now();
                if heard.elapsed() >= timeout {
                    Metrics::add(&cluster.metrics.link_timeouts, 1);
                    tracing::warn!(peer = %link.node_id, addr = %link.addr, silent_ms = heard.elapsed().as_millis() as u64, "peer link silent past cluster.link_timeout_ms; reconnecting");
                    return Err("peer silent".into());
                }
                if wbuf.is_empty() && wrote.elapsed() >= timeout / 4 {
                    wire::encode_frame(&Frame::Heartbeat, &mut wbuf)?;
                }
            }
        }
    }
}

async fn handshake(
    link: &Link,
    cluster: &Cluster,
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut (impl AsyncWrite + Unpin),
    rbuf: &mut BytesMut,
) -> Result<u64, String> {
    let my_nonce = wire::nonce();
    let hello = Frame::Hello {
        version: wire::PROTOCOL_VERSION,
        cluster: cluster.name.clone(),
        node_id: cluster.node_id.to_string(),
        generation: cluster.generation,
        link_epoch: link.epoch,
        nonce: my_nonce,
    };
    wire::write_frame(writer, &hello).await?;
    let (their_id, their_gen, their_nonce, their_proof) = match wire::read_frame(reader, rbuf)
        .await?
    {
        Frame::Welcome {
            node_id,
            generation,
            nonce,
            proof,
        } => (node_id, generation, nonce, proof),
        Frame::Refused { reason } => {
            Metrics::add(&cluster.metrics.auth_failures, 1);
            tracing::warn!(peer = %link.node_id, addr = %link.addr, %reason, "peer refused our link");
            return Err(format!("refused: {reason}"));
        }
        other => return Err(format!("expected Welcome, got {other:?}")),
    };
    if their_id != *link.node_id {
        return Err(format!(
            "expected node {} at {}, found {their_id}",
            link.node_id, link.addr
        ));
    }
    // A restarted peer at the same address is another run: this link's queue (and its
    // sequence numbers) belong to the old one. Membership makes a new link for the new run.
    if their_gen != link.generation {
        return Err(format!(
            "expected run {} of {}, found run {their_gen}",
            link.generation, link.node_id
        ));
    }
    let ids = HandshakeIds {
        cluster: &cluster.name,
        dialer: (&cluster.node_id, cluster.generation),
        link_epoch: link.epoch,
        acceptor: (&their_id, their_gen),
        dialer_nonce: &my_nonce,
        acceptor_nonce: &their_nonce,
    };
    let key = cluster.key.as_ref();
    if !wire::verify(key, "acceptor", &ids, &their_proof) {
        Metrics::add(&cluster.metrics.auth_failures, 1);
        tracing::warn!(peer = %their_id, addr = %link.addr, "peer failed authentication (wrong cluster secret?)");
        let _ = wire::write_frame(
            writer,
            &Frame::Refused {
                reason: "authentication failed".into(),
            },
        )
        .await;
        return Err("peer failed authentication".into());
    }
    wire::write_frame(
        writer,
        &Frame::Proof {
            proof: wire::proof(key, "dialer", &ids),
        },
    )
    .await?;
    match wire::read_frame(reader, rbuf).await? {
        Frame::Ready { resume_after } => Ok(resume_after),
        Frame::Refused { reason } => {
            Metrics::add(&cluster.metrics.auth_failures, 1);
            tracing::warn!(peer = %their_id, addr = %link.addr, %reason, "peer refused our link");
            Err(format!("refused: {reason}"))
        }
        other => Err(format!("expected Ready, got {other:?}")),
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
        let batch = |i: usize| {
            vec![WireMessage {
                topic: format!("r/{i}"),
                payload: Bytes::from(vec![1u8; 300]),
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
        };
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
