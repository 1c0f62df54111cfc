//! An outbound link to one peer node: a bounded queue of frames and the task that keeps a TCP
//! connection to the peer, authenticates, writes queued frames in batches, and keeps every
//! reliable (QoS 1/2) frame until the peer acknowledges it. After a reconnect the peer says
//! what it processed last and everything after that is sent again, so a dropped connection
//! between two live nodes loses no QoS 1/2 message and duplicates none.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use super::Cluster;
use super::wire::{self, Frame, HandshakeIds};
use crate::broker::Metrics;

/// One batch written at once.
const BATCH_BYTES: usize = 256 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

struct Outgoing {
    /// Sequence number of a reliable frame (QoS 1/2 publish); 0 for the others.
    seq: u64,
    bytes: Bytes,
}

#[derive(Default)]
struct LinkQueue {
    unsent: VecDeque<Outgoing>,
    /// Reliable frames written and not yet acknowledged, in order.
    unacked: VecDeque<Outgoing>,
    next_seq: u64,
}

pub struct Link {
    pub node_id: Arc<str>,
    pub generation: u64,
    /// This link's incarnation, random: the peer keeps its progress per epoch, so a link
    /// created anew (after this node gave up on the peer) starts its count afresh there.
    pub epoch: u64,
    pub addr: SocketAddr,
    pub gossip_addr: SocketAddr,
    queue: Mutex<LinkQueue>,
    wake: Notify,
    connected: AtomicBool,
    stop: watch::Sender<bool>,
    capacity: usize,
}

impl Link {
    pub fn new(
        node_id: Arc<str>,
        generation: u64,
        addr: SocketAddr,
        gossip_addr: SocketAddr,
        capacity: usize,
    ) -> Arc<Link> {
        let random = wire::nonce();
        let epoch = u64::from_be_bytes(random[..8].try_into().expect("8 bytes"));
        Arc::new(Link {
            node_id,
            generation,
            epoch,
            addr,
            gossip_addr,
            queue: Mutex::new(LinkQueue {
                next_seq: 1,
                ..LinkQueue::default()
            }),
            wake: Notify::new(),
            connected: AtomicBool::new(false),
            stop: watch::channel(false).0,
            capacity,
        })
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Frames waiting to be sent or acknowledged.
    pub fn depth(&self) -> usize {
        let q = self.queue.lock();
        q.unsent.len() + q.unacked.len()
    }

    /// Queues a publish; false (and counted by the caller) when the queue is full.
    pub fn send_publish(
        &self,
        reliable: bool,
        normal: bool,
        groups: Vec<String>,
        message: Bytes,
    ) -> bool {
        let mut q = self.queue.lock();
        if q.unsent.len() + q.unacked.len() >= self.capacity {
            return false;
        }
        let seq = if reliable {
            q.next_seq += 1;
            q.next_seq - 1
        } else {
            0
        };
        let bytes = wire::frame_bytes(&Frame::Publish {
            seq,
            normal,
            groups,
            message,
        });
        q.unsent.push_back(Outgoing { seq, bytes });
        drop(q);
        self.wake.notify_one();
        true
    }

    /// Queues a control frame (route pushes); false when the queue is full.
    pub fn send_control(&self, frame: &Frame) -> bool {
        let mut q = self.queue.lock();
        if q.unsent.len() + q.unacked.len() >= self.capacity {
            return false;
        }
        q.unsent.push_back(Outgoing {
            seq: 0,
            bytes: wire::frame_bytes(frame),
        });
        drop(q);
        self.wake.notify_one();
        true
    }

    /// Stops the link's task; what is queued is dropped. Returns how many frames that was.
    pub fn close(&self) -> usize {
        self.stop.send_replace(true);
        let mut q = self.queue.lock();
        let n = q.unsent.len() + q.unacked.len();
        q.unsent.clear();
        q.unacked.clear();
        n
    }

    fn ack(&self, upto: u64) {
        let mut q = self.queue.lock();
        while q.unacked.front().is_some_and(|o| o.seq <= upto) {
            q.unacked.pop_front();
        }
    }

    /// After a (re)connect: drop what the peer has, resend the rest ahead of new frames.
    fn resume(&self, resume_after: u64) {
        let mut q = self.queue.lock();
        let unacked = std::mem::take(&mut q.unacked);
        for o in unacked.into_iter().rev() {
            if o.seq > resume_after {
                q.unsent.push_front(o);
            }
        }
    }

    /// Moves up to one batch from the queue into `out`; reliable frames go to `unacked`.
    fn take_batch(&self, out: &mut BytesMut) -> usize {
        let mut q = self.queue.lock();
        let mut n = 0;
        while out.len() < BATCH_BYTES {
            let Some(o) = q.unsent.pop_front() else { break };
            out.extend_from_slice(&o.bytes);
            if o.seq != 0 {
                q.unacked.push_back(o);
            }
            n += 1;
        }
        n
    }
}

/// Keeps the link connected until it is closed or the node stops.
pub async fn run(link: Arc<Link>, cluster: Arc<Cluster>) {
    let mut stop = link.stop.subscribe();
    let mut backoff = BACKOFF_MIN;
    loop {
        if *stop.borrow() {
            return;
        }
        let session = async {
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(link.addr))
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| format!("connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            serve(&link, &cluster, stream, &mut backoff).await
        };
        let outcome = tokio::select! {
            r = session => r,
            _ = crate::stopped(&mut stop) => return,
        };
        link.connected.store(false, Ordering::Relaxed);
        if let Err(e) = outcome {
            tracing::debug!(peer = %link.node_id, addr = %link.addr, error = %e, "peer link down; reconnecting");
        }
        Metrics::add(&cluster.metrics.link_reconnects, 1);
        // Exponential backoff with jitter, so a restarted node is not hit by all peers at once.
        let jitter = 0.8 + 0.4 * f64::from(wire::nonce()[0]) / 255.0;
        tokio::select! {
            _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
            _ = crate::stopped(&mut stop) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn serve(
    link: &Link,
    cluster: &Cluster,
    stream: TcpStream,
    backoff: &mut Duration,
) -> Result<(), String> {
    let (mut reader, mut writer) = stream.into_split();
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
    tracing::debug!(peer = %link.node_id, addr = %link.addr, resume_after, "peer link up");
    // Every time a link comes up (first contact, restart, or a cut healed) both sides bring
    // each other up to date on retained messages: ask for the peer's, and send ours. That goes
    // out through the loop below, which reads while it writes: the peer may be writing its
    // whole set to us at the same moment, and if neither side read until it had written, both
    // would wait on full socket buffers for ever.
    let mut wbuf = BytesMut::with_capacity(BATCH_BYTES);
    wire::encode_frame(&Frame::RetainedRequest, &mut wbuf);
    for frame in cluster.retained_frames() {
        wire::encode_frame(&frame, &mut wbuf);
    }
    loop {
        if wbuf.is_empty() {
            let n = link.take_batch(&mut wbuf);
            Metrics::add(&cluster.metrics.frames_forwarded, n as u64);
        }
        tokio::select! {
            written = writer.write(&wbuf), if !wbuf.is_empty() => {
                let n = written.map_err(|e| format!("write: {e}"))?;
                bytes::Buf::advance(&mut wbuf, n);
            }
            frame = wire::read_frame(&mut reader, &mut rbuf) => match frame? {
                Frame::Ack { upto } => link.ack(upto),
                Frame::Retained { messages, done } => {
                    cluster.apply_retained(messages);
                    if done {
                        tracing::debug!(peer = %link.node_id, "retained messages caught up");
                    }
                }
                Frame::Refused { reason } => return Err(format!("refused: {reason}")),
                other => return Err(format!("unexpected frame from acceptor: {other:?}")),
            },
            _ = link.wake.notified(), if wbuf.is_empty() => {}
        }
    }
}

async fn handshake(
    link: &Link,
    cluster: &Cluster,
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
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

    fn link(capacity: usize) -> Arc<Link> {
        let addr = "127.0.0.1:1".parse().unwrap();
        Link::new("peer".into(), 1, addr, addr, capacity)
    }

    fn seqs(link: &Link) -> (Vec<u64>, Vec<u64>) {
        let q = link.queue.lock();
        (
            q.unsent.iter().map(|o| o.seq).collect(),
            q.unacked.iter().map(|o| o.seq).collect(),
        )
    }

    #[test]
    fn reliable_frames_are_kept_until_acknowledged_and_resent_after_reconnect() {
        let l = link(100);
        for reliable in [true, false, true, true] {
            assert!(l.send_publish(reliable, true, vec![], Bytes::from_static(b"m")));
        }
        let mut out = BytesMut::new();
        assert_eq!(l.take_batch(&mut out), 4);
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
    }

    #[test]
    fn queue_is_bounded_and_close_drops_it() {
        let l = link(2);
        assert!(l.send_publish(true, true, vec![], Bytes::new()));
        assert!(l.send_control(&Frame::Ack { upto: 0 }));
        assert!(!l.send_publish(true, true, vec![], Bytes::new()));
        assert_eq!(l.depth(), 2);
        assert_eq!(l.close(), 2);
        assert_eq!(l.depth(), 0);
    }
}
