//! Which embedded store VibeMQ persists to, decided by measurement: redb and fjall under the
//! broker's own write patterns, on the disk under DIR (default: the system's temporary
//! directory).
//!
//! 1. Group commit: QoS 1 messages (16-byte key: a session and a sequence number; 128-byte
//!    value) written in batches, each batch durable (fsync) before the next, for batch sizes
//!    1 to 512. A broker answers PUBACK once the batch holding the message is durable, so
//!    messages per second at each batch size is the figure that matters.
//! 2. Churn: a queue 10,000 deep, each durable batch of 64 adding new messages and removing the
//!    64 oldest (delivered and acknowledged), for 5 seconds: throughput and disk use after.
//! 3. Start-up: 1,000,000 retained messages (topic key, 200-byte value) written, the store
//!    closed, then opened and read whole, as a node does when it starts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const VALUE: [u8; 128] = [7u8; 128];
const RETAINED: u64 = 1_000_000;

fn key(session: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&session.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn topic(i: u64) -> Vec<u8> {
    format!("site/{}/sensor/{}/temperature", i / 1000, i % 1000).into_bytes()
}

fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let meta = e.metadata().unwrap();
            total += if meta.is_dir() {
                disk_bytes(&e.path())
            } else {
                meta.len()
            };
        }
    }
    total
}

/// What each store must do for the three scenarios.
trait Store {
    fn name(&self) -> &'static str;
    /// Inserts `puts` and removes `dels` in one commit, durable when `durable`.
    fn commit(&mut self, puts: &[(Vec<u8>, &[u8])], dels: &[Vec<u8>], durable: bool);
    /// Reads every entry; returns how many.
    fn scan(&self) -> u64;
}

struct Redb {
    db: redb::Database,
}

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("messages");

impl Redb {
    fn open(dir: &Path) -> Redb {
        std::fs::create_dir_all(dir).unwrap();
        let db = redb::Database::create(dir.join("store.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(TABLE).unwrap();
        tx.commit().unwrap();
        Redb { db }
    }
}

impl Store for Redb {
    fn name(&self) -> &'static str {
        "redb 4.5"
    }
    fn commit(&mut self, puts: &[(Vec<u8>, &[u8])], dels: &[Vec<u8>], durable: bool) {
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(if durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        })
        .unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for (k, v) in puts {
                t.insert(k.as_slice(), *v).unwrap();
            }
            for k in dels {
                t.remove(k.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn scan(&self) -> u64 {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(TABLE).unwrap();
        let mut n = 0;
        for entry in t.iter().unwrap() {
            let (k, v) = entry.unwrap();
            std::hint::black_box((k.value().len(), v.value().len()));
            n += 1;
        }
        n
    }
}

struct Fjall {
    db: fjall::Database,
    messages: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path) -> Fjall {
        let db = fjall::Database::builder(dir).open().unwrap();
        let messages = db
            .keyspace("messages", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        Fjall { db, messages }
    }
}

impl Store for Fjall {
    fn name(&self) -> &'static str {
        "fjall 3.1"
    }
    fn commit(&mut self, puts: &[(Vec<u8>, &[u8])], dels: &[Vec<u8>], durable: bool) {
        let mut batch = self.db.batch();
        for (k, v) in puts {
            batch.insert(&self.messages, k.clone(), v.to_vec());
        }
        for k in dels {
            batch.remove(&self.messages, k.clone());
        }
        batch.commit().unwrap();
        if durable {
            self.db.persist(fjall::PersistMode::SyncAll).unwrap();
        }
    }
    fn scan(&self) -> u64 {
        let mut n = 0;
        for kv in self.messages.iter() {
            let (k, v) = kv.into_inner().unwrap();
            std::hint::black_box((k.len(), v.len()));
            n += 1;
        }
        n
    }
}

type Opener = fn(&Path) -> Box<dyn Store>;

fn group_commit(open: Opener, dir: &Path, batch: usize) -> (f64, f64) {
    let mut store = open(dir);
    let limit = Duration::from_secs(2);
    let start = Instant::now();
    let (mut seq, mut commits) = (0u64, 0u64);
    while start.elapsed() < limit {
        let puts: Vec<(Vec<u8>, &[u8])> = (0..batch)
            .map(|i| (key(i as u64 % 20, seq + i as u64).to_vec(), &VALUE[..]))
            .collect();
        store.commit(&puts, &[], true);
        seq += batch as u64;
        commits += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    (seq as f64 / secs, commits as f64 / secs)
}

fn churn(open: Opener, dir: &Path) -> (f64, u64) {
    let mut store = open(dir);
    let depth = 10_000u64;
    let batch = 64u64;
    let fill: Vec<(Vec<u8>, &[u8])> = (0..depth)
        .map(|s| (key(1, s).to_vec(), &VALUE[..]))
        .collect();
    store.commit(&fill, &[], true);
    let start = Instant::now();
    let mut next = depth;
    while start.elapsed() < Duration::from_secs(5) {
        let puts: Vec<(Vec<u8>, &[u8])> = (next..next + batch)
            .map(|s| (key(1, s).to_vec(), &VALUE[..]))
            .collect();
        let dels: Vec<Vec<u8>> = (next - depth..next - depth + batch)
            .map(|s| key(1, s).to_vec())
            .collect();
        store.commit(&puts, &dels, true);
        next += batch;
    }
    let rate = (next - depth) as f64 / start.elapsed().as_secs_f64();
    drop(store);
    (rate, disk_bytes(dir))
}

fn startup(open: Opener, dir: &Path) -> (f64, f64, u64) {
    let value = [3u8; 200];
    let write_start = Instant::now();
    {
        let mut store = open(dir);
        let mut i = 0;
        while i < RETAINED {
            let end = (i + 10_000).min(RETAINED);
            let puts: Vec<(Vec<u8>, &[u8])> = (i..end).map(|n| (topic(n), &value[..])).collect();
            store.commit(&puts, &[], end == RETAINED);
            i = end;
        }
    }
    let write = write_start.elapsed().as_secs_f64();
    let start = Instant::now();
    let store = open(dir);
    let n = store.scan();
    assert_eq!(n, RETAINED, "{} lost retained messages", store.name());
    let read = start.elapsed().as_secs_f64();
    drop(store);
    (write, read, disk_bytes(dir))
}

fn main() {
    let base = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("store-choice-{}", std::process::id()));
    let stores: [(&str, Opener); 2] = [
        ("redb", |d| Box::new(Redb::open(d))),
        ("fjall", |d| Box::new(Fjall::open(d))),
    ];
    println!("| store | batch | messages/s durable | commits/s |");
    println!("|---|---|---|---|");
    for (name, open) in stores {
        for batch in [1, 8, 64, 512] {
            let dir = base.join(format!("{name}-gc-{batch}"));
            let (rate, commits) = group_commit(open, &dir, batch);
            println!("| {name} | {batch} | {rate:.0} | {commits:.0} |");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    println!();
    println!("| store | churn messages/s (batch 64, depth 10,000) | disk after churn |");
    println!("|---|---|---|");
    for (name, open) in stores {
        let dir = base.join(format!("{name}-churn"));
        let (rate, bytes) = churn(open, &dir);
        println!("| {name} | {rate:.0} | {:.1} MB |", bytes as f64 / 1e6);
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!();
    println!("| store | write 1,000,000 retained | open and read them all | disk |");
    println!("|---|---|---|---|");
    for (name, open) in stores {
        let dir = base.join(format!("{name}-startup"));
        let (write, read, bytes) = startup(open, &dir);
        println!(
            "| {name} | {write:.1} s | {read:.2} s | {:.0} MB |",
            bytes as f64 / 1e6
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&base);
}
