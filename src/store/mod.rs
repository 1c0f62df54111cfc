//! The node's embedded store (fjall, chosen by measurement: see BENCHMARKS.md): retained
//! messages and persistent sessions, written through as they change and read back whole at
//! start-up. Callers on the tokio workers only queue an `Op` (numbered in submission order);
//! one writer thread encodes, commits and fsyncs them in groups (`writer`), so many
//! connections' writes share one fsync. An op's number is its ticket: a connection holds a
//! PUBACK until `is_durable(ticket)`. A write that fails (disk full, a read-only directory)
//! marks its tickets failed, is kept to retry, and the store recovers by itself when the disk
//! does. The directory is held by one node at a time (`vibemq.lock`).

mod keys;
pub mod records;
pub mod relay;
mod restore;
mod writer;

use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::broker::{Delivery, Message};
use crate::config::{PersistenceConfig, SyncMode};
pub use records::{InflightMark, SessionMeta, StoredSubscription};
pub use relay::{LinkRecord, RelayMark, RelayOp, RestoredLink, RestoredRelay, StoredFrame};
pub use restore::{Restored, RestoredSession};

/// Sessions stored under ids starting so are copies of other nodes' sessions that the
/// cluster keeps (`cluster::replica_store`); no MQTT client id holds U+0000. Restoring hands
/// them to the cluster (`RestoredRelay::copies`), not to the broker.
pub const COPY_PREFIX: &str = "\u{0}copy\u{0}";

/// One change to what is stored, in the order it happened.
#[derive(Debug)]
pub enum Op {
    /// The retained message (or tombstone) now in force for its topic.
    Retained(Arc<Message>),
    /// No retained message, nor tombstone, for this topic any more.
    RetainedGone(Arc<str>),
    /// A persistent session's own record, written when it attaches and detaches.
    Meta {
        client: Arc<str>,
        meta: SessionMeta,
    },
    /// The session ended: everything kept for it goes.
    SessionGone(Arc<str>),
    Subscribed {
        client: Arc<str>,
        filter: String,
        subscription: StoredSubscription,
    },
    Unsubscribed {
        client: Arc<str>,
        filter: String,
    },
    /// A delivery queued for a session, under its sequence number.
    Queued {
        client: Arc<str>,
        seq: u64,
        delivery: Delivery,
    },
    /// A queued delivery was sent with this packet id, or moved on in its QoS 2 handshake.
    Sent {
        client: Arc<str>,
        seq: u64,
        mark: InflightMark,
    },
    /// A delivery is finished with (acknowledged, sent at QoS 0, expired, handed elsewhere).
    Done {
        client: Arc<str>,
        seq: u64,
    },
    /// An inbound QoS 2 packet id received (`held`) or released.
    InboundQos2 {
        client: Arc<str>,
        packet_id: u16,
        held: bool,
    },
    /// The cluster relay's links, frames and progress (`relay`).
    Relay(RelayOp),
    /// The ops from here to the matching `GroupEnd` are committed together (see `group`).
    GroupStart,
    GroupEnd,
}

/// Ops submitted while it lives are committed in one batch, whole or not at all (the writer
/// waits for the end of a group before it commits, up to `writer::GROUP_WAIT`): a peer's
/// frames processed here and the mark saying so reach the disk together, so after a crash a
/// frame is either wholly done or wholly to be done again. Ends when dropped.
pub struct Group<'a>(&'a Store);

impl Drop for Group<'_> {
    fn drop(&mut self) {
        self.0.submit(Op::GroupEnd);
    }
}

/// The store's counters, read by the metrics endpoint.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Ops written, and commits (each one fsync with `sync = "always"`).
    pub ops_written: AtomicU64,
    pub commits: AtomicU64,
    /// Commits or syncs that failed (disk full, read-only, I/O error).
    pub write_errors: AtomicU64,
    /// Ops submitted while the store could not write and past `FAILED_BACKLOG_BYTES`:
    /// never written.
    pub ops_lost: AtomicU64,
    /// Bytes the store's files take on disk (sampled by the writer).
    pub disk_bytes: AtomicU64,
}

/// Ops kept in memory while the store cannot write, to write when it can again.
const FAILED_BACKLOG_OPS: usize = 1_000_000;

pub struct Store {
    dir: PathBuf,
    sync: SyncMode,
    /// The next ticket, and the writer's queue, together so that tickets reach the writer
    /// in the order they were handed out. None once closed.
    submit: Mutex<Submit>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Every op with a ticket up to this has been written (or has failed).
    done: watch::Sender<u64>,
    /// Ticket ranges whose writes failed (the latest few episodes).
    failed: Mutex<VecDeque<Range<u64>>>,
    any_failed: AtomicBool,
    /// The store cannot write now.
    failing: AtomicBool,
    pub metrics: StoreMetrics,
    _lock: File,
}

struct Submit {
    next: u64,
    tx: Option<std::sync::mpsc::Sender<(u64, Op)>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

/// Why the store could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "persistence.dir {dir}: held by another running node{holder} (its lock file is {dir}/vibemq.lock); give each node its own directory"
    )]
    Locked { dir: String, holder: String },
    #[error("persistence.dir {dir}: {error}")]
    Unusable { dir: String, error: String },
}

impl Store {
    /// Takes the directory (creating it), opens the store, reads back everything in it and
    /// starts the writer thread.
    pub fn open(config: &PersistenceConfig) -> Result<(Arc<Store>, Restored), OpenError> {
        let dir = PathBuf::from(&config.dir);
        let shown = dir.display().to_string();
        let unusable = |error: String| OpenError::Unusable {
            dir: shown.clone(),
            error,
        };
        std::fs::create_dir_all(&dir).map_err(|e| unusable(format!("cannot create it: {e}")))?;
        let lock = take_lock(&dir)?;
        let db = writer::Db::open(&dir).map_err(|e| unusable(e.to_string()))?;
        let started = std::time::Instant::now();
        let restored = restore::read_all(&db).map_err(unusable)?;
        tracing::info!(
            dir = %shown,
            retained = restored.retained.len(),
            sessions = restored.sessions.len(),
            queued = restored.sessions.iter().map(|s| s.deliveries.len()).sum::<usize>(),
            relay_frames = restored.relay.links.iter().map(|l| l.frames.len()).sum::<usize>(),
            ms = started.elapsed().as_millis() as u64,
            "store read back"
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let store = Arc::new(Store {
            dir,
            sync: config.sync,
            submit: Mutex::new(Submit {
                next: 1,
                tx: Some(tx),
            }),
            writer: Mutex::new(None),
            done: watch::channel(0).0,
            failed: Mutex::new(VecDeque::new()),
            any_failed: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            metrics: StoreMetrics::default(),
            _lock: lock,
        });
        let interval = std::time::Duration::from_millis(config.sync_interval_ms);
        let handle =
            writer::spawn(store.clone(), db, rx, interval).map_err(|e| unusable(e.to_string()))?;
        *store.writer.lock() = Some(handle);
        Ok((store, restored))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues an op; its ticket (0 once the store is closed: the op is not written).
    pub fn submit(&self, op: Op) -> u64 {
        let mut s = self.submit.lock();
        let ticket = s.next;
        let Some(tx) = &s.tx else { return 0 };
        if tx.send((ticket, op)).is_err() {
            return 0;
        }
        s.next += 1;
        ticket
    }

    /// Opens a group of ops committed together (see `Group`).
    pub fn group(&self) -> Group<'_> {
        self.submit(Op::GroupStart);
        Group(self)
    }

    /// Writes and fsyncs what was submitted, then stops the writer (the node is stopping).
    /// The directory stays locked until the last handle is gone.
    pub fn close(&self) {
        self.submit.lock().tx = None;
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }

    /// The ticket of the last op submitted: waiting for it covers everything before.
    pub fn last_ticket(&self) -> u64 {
        self.submit.lock().next - 1
    }

    /// Whether acknowledgements wait for fsync (`sync = "always"`).
    pub fn acks_wait(&self) -> bool {
        self.sync == SyncMode::Always
    }

    /// Every op up to `ticket` was written (or failed).
    pub fn is_done(&self, ticket: u64) -> bool {
        *self.done.borrow() >= ticket
    }

    /// Whether the op with `ticket`, once done, was written (false: its write failed).
    pub fn written(&self, ticket: u64) -> bool {
        if !self.any_failed.load(Ordering::Relaxed) {
            return true;
        }
        !self.failed.lock().iter().any(|r| r.contains(&ticket))
    }

    /// Follows the writer's progress (the highest ticket done).
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.done.subscribe()
    }

    /// The store cannot write now (disk full, read-only): persistent writes are refused.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Ops submitted and not yet done.
    pub fn backlog(&self) -> u64 {
        self.last_ticket().saturating_sub(*self.done.borrow())
    }

    /// Waits (bounded, 5 s) until every op submitted so far is done.
    #[cfg(test)]
    pub(crate) fn settle(&self) {
        let ticket = self.last_ticket();
        for _ in 0..500 {
            if self.is_done(ticket) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("store did not write ticket {ticket} within 5 s");
    }

    /// Called by the writer: tickets up to `upto` are done; `failed` of them did not write.
    fn mark_done(&self, upto: u64, failed: Option<Range<u64>>) {
        if let Some(range) = failed {
            let mut list = self.failed.lock();
            match list.back_mut() {
                Some(last) if last.end == range.start => last.end = range.end,
                _ => list.push_back(range),
            }
            while list.len() > 64 {
                list.pop_front();
            }
            self.any_failed.store(true, Ordering::Relaxed);
        }
        self.done.send_replace(upto);
    }
}

/// Creates and locks `dir/vibemq.lock`, writing this process's id into it.
fn take_lock(dir: &Path) -> Result<File, OpenError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("vibemq.lock");
    let shown = dir.display().to_string();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| OpenError::Unusable {
            dir: shown.clone(),
            error: format!("cannot open its lock file: {e}"),
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim() {
                "" => String::new(),
                pid => format!(" (process {pid})"),
            };
            return Err(OpenError::Locked { dir: shown, holder });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(OpenError::Unusable {
                dir: shown,
                error: format!("cannot lock {}: {e}", path.display()),
            });
        }
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

#[cfg(test)]
mod tests;
