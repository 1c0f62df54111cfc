//! Password verification on a pool of its own: `auth.max_concurrent_hashes` threads, started
//! at the first check, never tokio's blocking pool (which the store and gossip share, and
//! which would grow a thread per waiting CONNECT). A check waits for a free slot, at most as
//! long as it is given; the slot goes back when the hash is done, even if the connection that
//! asked gave up meanwhile. Each thread reuses its memory from one hash to the next, so a
//! flood of wrong passwords costs at most the slots' worth of argon2's memory. One source
//! address has at most `auth.max_hashes_per_ip` checks waiting or running: a flood from one
//! address is refused at once past that, and never queues ahead of everyone else.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::passwords::Hash;

/// One verification: the hash, the password, where the verdict goes, and the slot and
/// source share it holds.
struct Job {
    hash: Hash,
    password: Vec<u8>,
    verdict: oneshot::Sender<bool>,
    slot: OwnedSemaphorePermit,
    share: SourceShare,
}

/// Why a check was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// No slot came free within the wait (`auth.max_concurrent_hashes`).
    Slots,
    /// The source address has `auth.max_hashes_per_ip` checks waiting or running already.
    Source,
}

/// The hashing threads and their slots.
pub struct HashPool {
    threads: usize,
    per_source: usize,
    slots: Arc<Semaphore>,
    /// Checks waiting or running, by source address (absent: none).
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
    jobs: OnceLock<mpsc::Sender<Job>>,
}

/// One source's place among the checks, given back when dropped.
struct SourceShare {
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for SourceShare {
    fn drop(&mut self) {
        let mut sources = self.sources.lock();
        if let Some(n) = sources.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                sources.remove(&self.ip);
            }
        }
    }
}

impl HashPool {
    /// `threads` hashing threads; at most `per_source` checks of one address at once.
    pub fn new(threads: usize, per_source: usize) -> HashPool {
        let threads = threads.max(1);
        HashPool {
            threads,
            per_source: per_source.max(1),
            slots: Arc::new(Semaphore::new(threads)),
            sources: Arc::default(),
            jobs: OnceLock::new(),
        }
    }

    /// Whether `password` matches `hash`, computed on a hashing thread once a slot is free
    /// (within `wait`), for a client at `source`.
    pub async fn verify(
        &self,
        hash: Hash,
        password: &[u8],
        wait: Duration,
        source: IpAddr,
    ) -> Result<bool, Busy> {
        let source = crate::limits::source_key(source);
        let share = {
            let mut sources = self.sources.lock();
            let n = sources.entry(source).or_insert(0);
            if *n >= self.per_source {
                return Err(Busy::Source);
            }
            *n += 1;
            SourceShare {
                sources: self.sources.clone(),
                ip: source,
            }
        };
        let slot = match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => return Err(Busy::Slots),
        };
        let (verdict, answer) = oneshot::channel();
        let job = Job {
            hash,
            password: password.to_vec(),
            verdict,
            slot,
            share,
        };
        if self.jobs().send(job).is_err() {
            return Ok(false);
        }
        Ok(answer.await.unwrap_or(false))
    }

    /// The queue to the threads, which start with the first check.
    fn jobs(&self) -> &mpsc::Sender<Job> {
        self.jobs.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..self.threads {
                let rx = rx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("vibemq-hash-{i}"))
                    .spawn(move || {
                        // argon2's working memory, kept from one check to the next.
                        let mut memory = Vec::new();
                        // Ends when the pool (the sender) is gone.
                        loop {
                            let job = rx.lock().recv();
                            let Ok(job) = job else { return };
                            let ok = job.hash.verify_with(&job.password, &mut memory);
                            // The slot is free before the verdict is known: whoever hears it
                            // may find the slot taken by the next check, never still held.
                            drop(job.slot);
                            drop(job.share);
                            let _ = job.verdict.send(ok);
                        }
                    });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start a password hashing thread");
                }
            }
            tx
        })
    }

    /// Checks of `ip` waiting or running now (tests).
    #[cfg(test)]
    pub fn waiting_from(&self, ip: IpAddr) -> usize {
        self.sources.lock().get(&ip).copied().unwrap_or(0)
    }

    /// Slots free now (tests).
    #[cfg(test)]
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Takes every slot (tests: a pool all busy).
    #[cfg(test)]
    pub async fn take_all(&self) -> OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_many_owned(self.threads as u32)
            .await
            .expect("the semaphore is never closed")
    }
}
