//! The store's one writer thread: takes queued ops in submission order, encodes them, commits
//! as many as are waiting in one batch (never cutting a group: see `Store::group`) and syncs it (fsync with `sync = "always"`, to the
//! operating system with "interval", fsynced on a timer), then marks their tickets done. A
//! failed write (disk full, a read-only directory) marks its tickets failed and keeps the ops;
//! the writer then reopens the store every second and writes what waited once it can.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::records::{self, StoredDelivery, StoredMessage};
use super::relay::RelaySpaces;
use super::{FAILED_BACKLOG_OPS, Op, Store, keys};
use crate::config::SyncMode;

/// Most ops in one commit: a large backlog goes in a few commits, not one huge one.
const MAX_BATCH: usize = 4096;
/// How often a failing store tries to write again.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Longest the writer waits for the end of an open group before it commits what it has.
pub const GROUP_WAIT: Duration = Duration::from_secs(1);
/// How often the disk use figure is refreshed.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// The open database and its keyspaces.
pub struct Db {
    db: Database,
    pub retained: Keyspace,
    pub sessions: Keyspace,
    pub subscriptions: Keyspace,
    pub deliveries: Keyspace,
    pub inflight: Keyspace,
    pub inbound: Keyspace,
    pub relay: RelaySpaces,
}

impl Db {
    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn open(dir: &std::path::Path) -> fjall::Result<Db> {
        let db = Database::builder(dir.join("fjall")).open()?;
        let open = |name: &str| db.keyspace(name, KeyspaceCreateOptions::default);
        Ok(Db {
            retained: open("retained")?,
            sessions: open("sessions")?,
            subscriptions: open("subscriptions")?,
            deliveries: open("deliveries")?,
            inflight: open("inflight")?,
            inbound: open("inbound")?,
            relay: RelaySpaces {
                node: open("node")?,
                links: open("relay_links")?,
                frames: open("relay_frames")?,
                marks: open("relay_marks")?,
            },
            db,
        })
    }

    /// Writes `ops` in order as one commit (a session's removal commits what came before it
    /// first, so its scan sees them), then syncs.
    fn write(&self, ops: &[(u64, Op)], mode: PersistMode) -> fjall::Result<()> {
        let mut batch = self.db.batch();
        for (_, op) in ops {
            match op {
                Op::Retained(m) => batch.insert(
                    &self.retained,
                    m.topic.as_bytes(),
                    records::encode(&StoredMessage::from_message(m)),
                ),
                Op::RetainedGone(topic) => batch.remove(&self.retained, topic.as_bytes()),
                Op::Meta { client, meta } => {
                    batch.insert(&self.sessions, client.as_bytes(), records::encode(meta))
                }
                Op::SessionGone(client) => {
                    batch.commit()?;
                    batch = self.db.batch();
                    batch.remove(&self.sessions, client.as_bytes());
                    let prefix = keys::client_prefix(client);
                    for space in [
                        &self.subscriptions,
                        &self.deliveries,
                        &self.inflight,
                        &self.inbound,
                    ] {
                        for kv in space.prefix(&prefix) {
                            batch.remove(space, kv.key()?);
                        }
                    }
                }
                Op::Subscribed {
                    client,
                    filter,
                    subscription,
                } => batch.insert(
                    &self.subscriptions,
                    keys::subscription(client, filter),
                    records::encode(subscription),
                ),
                Op::Unsubscribed { client, filter } => {
                    batch.remove(&self.subscriptions, keys::subscription(client, filter))
                }
                Op::Queued {
                    client,
                    seq,
                    delivery,
                } => batch.insert(
                    &self.deliveries,
                    keys::delivery(client, *seq),
                    records::encode(&StoredDelivery::from_delivery(delivery)),
                ),
                Op::Sent { client, seq, mark } => batch.insert(
                    &self.inflight,
                    keys::delivery(client, *seq),
                    records::encode(mark),
                ),
                Op::Done { client, seq } => {
                    let key = keys::delivery(client, *seq);
                    batch.remove(&self.deliveries, key.clone());
                    batch.remove(&self.inflight, key);
                }
                Op::InboundQos2 {
                    client,
                    packet_id,
                    held,
                } => {
                    let key = keys::inbound(client, *packet_id);
                    match held {
                        true => batch.insert(&self.inbound, key, []),
                        false => batch.remove(&self.inbound, key),
                    }
                }
                Op::Relay(op) => self.relay.write(&self.db, &mut batch, op)?,
                Op::GroupStart | Op::GroupEnd => {}
            }
        }
        batch.commit()?;
        self.db.persist(mode)
    }
}

struct Writer {
    store: Arc<Store>,
    /// None after a failure dropped it, until it reopens.
    db: Option<Db>,
    rx: Receiver<(u64, Op)>,
    interval: Duration,
    /// "interval" mode: written since the last fsync.
    unsynced: bool,
    last_sync: Instant,
    last_sample: Instant,
    last_retry: Instant,
    /// Ops whose write failed, or that came while failing, oldest first.
    waiting: Vec<(u64, Op)>,
    /// Ops lost past `FAILED_BACKLOG_OPS` in the current failure (logged once).
    lost_this_episode: u64,
}

pub fn spawn(
    store: Arc<Store>,
    db: Db,
    rx: Receiver<(u64, Op)>,
    interval: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let now = Instant::now();
    let writer = Writer {
        store,
        db: Some(db),
        rx,
        interval,
        unsynced: false,
        last_sync: now,
        last_sample: now - SAMPLE_EVERY,
        last_retry: now,
        waiting: Vec::new(),
        lost_this_episode: 0,
    };
    std::thread::Builder::new()
        .name("vibemq-store".into())
        .spawn(move || writer.run())
}

impl Writer {
    fn run(mut self) {
        loop {
            let wait = self.next_wake();
            let first = match self.rx.recv_timeout(wait) {
                Ok(op) => Some(op),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    if self.store.is_failing() {
                        self.recover();
                    }
                    self.sync_now();
                    return;
                }
            };
            let mut ops = Vec::new();
            if let Some(op) = first {
                self.collect(op, &mut ops);
            }
            if self.store.is_failing() {
                self.hold(ops);
                if self.last_retry.elapsed() >= RETRY_EVERY {
                    self.last_retry = Instant::now();
                    self.recover();
                }
            } else if !ops.is_empty() {
                self.write(ops);
            }
            self.housekeeping();
        }
    }

    /// Takes `first` and what else waits, up to `MAX_BATCH`, and never stops inside a group
    /// (see `Store::group`) unless its end is `GROUP_WAIT` late.
    fn collect(&mut self, first: (u64, Op), ops: &mut Vec<(u64, Op)>) {
        let mut open = 0usize;
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op.1 {
                Op::GroupStart => open += 1,
                Op::GroupEnd => open = open.saturating_sub(1),
                _ => {}
            }
            ops.push(op);
            if ops.len() >= MAX_BATCH && open == 0 {
                return;
            }
            next = match self.rx.try_recv() {
                Ok(op) => Some(op),
                Err(_) if open == 0 => None,
                Err(_) => match self.rx.recv_timeout(GROUP_WAIT) {
                    Ok(op) => Some(op),
                    Err(_) => {
                        tracing::warn!(
                            "a group of store writes did not end in time: committed as it is"
                        );
                        None
                    }
                },
            };
        }
    }

    /// How long to wait for ops before there is something else to do.
    fn next_wake(&self) -> Duration {
        let mut wait = SAMPLE_EVERY.saturating_sub(self.last_sample.elapsed());
        if self.store.is_failing() {
            wait = wait.min(RETRY_EVERY.saturating_sub(self.last_retry.elapsed()));
        }
        if self.unsynced {
            wait = wait.min(self.interval.saturating_sub(self.last_sync.elapsed()));
        }
        wait.max(Duration::from_millis(1))
    }

    fn mode(&self) -> PersistMode {
        match self.store.sync {
            SyncMode::Always => PersistMode::SyncAll,
            SyncMode::Interval => PersistMode::Buffer,
        }
    }

    fn write(&mut self, ops: Vec<(u64, Op)>) {
        let (first, last) = (ops[0].0, ops[ops.len() - 1].0);
        let Some(db) = &self.db else {
            self.hold(ops);
            return;
        };
        match db.write(&ops, self.mode()) {
            Ok(()) => {
                let metrics = &self.store.metrics;
                let markers = ops
                    .iter()
                    .filter(|(_, op)| matches!(op, Op::GroupStart | Op::GroupEnd))
                    .count();
                metrics
                    .ops_written
                    .fetch_add((ops.len() - markers) as u64, Ordering::Relaxed);
                metrics.commits.fetch_add(1, Ordering::Relaxed);
                self.unsynced = self.store.sync == SyncMode::Interval;
                self.store.mark_done(last, None);
            }
            Err(e) => {
                self.store
                    .metrics
                    .write_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    dir = %self.store.dir.display(),
                    error = %e,
                    "store write failed (disk full or unwritable?): persistent writes are refused (v5 0x97) until it works again; retrying every second"
                );
                self.store.failing.store(true, Ordering::Relaxed);
                self.store.mark_done(last, Some(first..last + 1));
                // A failed database refuses every later write: it is reopened to recover.
                self.db = None;
                self.last_retry = Instant::now();
                self.waiting = ops;
                self.lost_this_episode = 0;
            }
        }
    }

    /// While failing: the ops' tickets fail at once, and the ops wait (within the bound).
    fn hold(&mut self, ops: Vec<(u64, Op)>) {
        let Some(last) = ops.last().map(|(t, _)| *t) else {
            return;
        };
        self.store.mark_done(last, Some(ops[0].0..last + 1));
        for op in ops {
            if self.waiting.len() < FAILED_BACKLOG_OPS {
                self.waiting.push(op);
            } else {
                self.lost_this_episode += 1;
                self.store.metrics.ops_lost.fetch_add(1, Ordering::Relaxed);
                if self.lost_this_episode == 1 {
                    tracing::error!(
                        kept = FAILED_BACKLOG_OPS,
                        "store still failing: further changes are not kept for it (counted in vibemq_store_ops_lost_total)"
                    );
                }
            }
        }
    }

    /// Reopens the store and writes what waited; on success the store takes writes again.
    fn recover(&mut self) {
        if self.db.is_none() {
            match Db::open(&self.store.dir) {
                Ok(db) => self.db = Some(db),
                Err(e) => {
                    tracing::debug!(error = %e, "store still cannot open");
                    return;
                }
            }
        }
        let db = self.db.as_ref().expect("opened above");
        let waiting = std::mem::take(&mut self.waiting);
        for chunk in whole_groups(&waiting, MAX_BATCH) {
            if let Err(e) = db.write(chunk, PersistMode::SyncAll) {
                tracing::debug!(error = %e, "store still cannot write");
                self.db = None;
                self.waiting = waiting;
                return;
            }
        }
        self.store.failing.store(false, Ordering::Relaxed);
        tracing::info!(
            written = waiting.len(),
            lost = self.lost_this_episode,
            "store writable again: the changes that waited are written"
        );
    }

    fn sync_now(&mut self) {
        self.last_sync = Instant::now();
        let Some(db) = &self.db else { return };
        match db.db.persist(PersistMode::SyncAll) {
            Ok(()) => self.unsynced = false,
            Err(e) => {
                self.store
                    .metrics
                    .write_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(dir = %self.store.dir.display(), error = %e, "store fsync failed: persistent writes are refused until it works again");
                self.store.failing.store(true, Ordering::Relaxed);
                self.db = None;
                self.last_retry = Instant::now();
                self.lost_this_episode = 0;
            }
        }
    }

    fn housekeeping(&mut self) {
        if self.unsynced && self.last_sync.elapsed() >= self.interval {
            self.sync_now();
        }
        if self.last_sample.elapsed() >= SAMPLE_EVERY {
            self.last_sample = Instant::now();
            let bytes = disk_usage(&self.store.dir);
            self.store
                .metrics
                .disk_bytes
                .store(bytes, Ordering::Relaxed);
        }
    }
}

/// `ops` cut into commits of about `max` ops, never inside a group (see `Store::group`).
fn whole_groups(ops: &[(u64, Op)], max: usize) -> Vec<&[(u64, Op)]> {
    let mut chunks = Vec::new();
    let (mut start, mut open) = (0, 0usize);
    for (i, (_, op)) in ops.iter().enumerate() {
        match op {
            Op::GroupStart => open += 1,
            Op::GroupEnd => open = open.saturating_sub(1),
            _ => {}
        }
        if open == 0 && i + 1 - start >= max {
            chunks.push(&ops[start..=i]);
            start = i + 1;
        }
    }
    if start < ops.len() {
        chunks.push(&ops[start..]);
    }
    chunks
}

/// Bytes the files under `dir` take on disk (blocks allocated: the journal is a sparse file
/// whose length says far more than it holds). Walks with a stack, not recursion.
fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_is_written_in_commits_that_never_cut_a_group() {
        let gone = |t: u64| (t, Op::RetainedGone("t".into()));
        let mut ops = vec![gone(1), gone(2), (3, Op::GroupStart)];
        ops.extend((4..10).map(gone));
        ops.push((10, Op::GroupEnd));
        ops.push(gone(11));
        let chunks = whole_groups(&ops, 2);
        let lens: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(lens, [2, 8, 1], "the group (3 to 10) is one commit");
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), ops.len());
        assert!(whole_groups(&[], 2).is_empty());
    }
}
