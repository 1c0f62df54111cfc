//! Password verification on a pool of its own: `auth.max_concurrent_hashes` threads, started
//! at the first check, never tokio's blocking pool (which the store and gossip share, and
//! which would grow a thread per waiting CONNECT). A check waits for a free slot, at most as
//! long as it is given; the slot goes back when the hash is done, even if the connection that
//! asked gave up meanwhile. Each thread reuses its memory from one hash to the next, so a
//! flood of wrong passwords costs at most the slots' worth of argon2's memory.

use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::passwords::Hash;

/// One verification: the hash, the password, where the verdict goes, and the slot it holds.
struct Job {
    hash: Hash,
    password: Vec<u8>,
    verdict: oneshot::Sender<bool>,
    _slot: OwnedSemaphorePermit,
}

/// No slot came free within the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// The hashing threads and their slots.
pub struct HashPool {
    threads: usize,
    slots: Arc<Semaphore>,
    jobs: OnceLock<mpsc::Sender<Job>>,
}

impl HashPool {
    pub fn new(threads: usize) -> HashPool {
        let threads = threads.max(1);
        HashPool {
            threads,
            slots: Arc::new(Semaphore::new(threads)),
            jobs: OnceLock::new(),
        }
    }

    /// Whether `password` matches `hash`, computed on a hashing thread once a slot is free
    /// (within `wait`).
    pub async fn verify(&self, hash: Hash, password: &[u8], wait: Duration) -> Result<bool, Busy> {
        let slot = match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => return Err(Busy),
        };
        let (verdict, answer) = oneshot::channel();
        let job = Job {
            hash,
            password: password.to_vec(),
            verdict,
            _slot: slot,
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
