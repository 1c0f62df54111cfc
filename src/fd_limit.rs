//! The process's open-file limit. Every client connection is a file descriptor, so a node
//! whose soft limit is the usual 1,024 tops out near a thousand clients whatever
//! `server.max_connections` says. At start the binary raises its soft limit as far as the
//! hard limit allows, logs what it did, warns when the result is still too low for
//! `server.max_connections`, and exports the limit in force as a metric.

use std::sync::atomic::{AtomicU64, Ordering};

use rlimit::Resource;

/// Descriptors a node needs beside its client connections: listeners, peer links, the store's
/// files, the HTTP endpoint and its clients, DNS. A guess with room to spare.
pub const RESERVED: u64 = 1024;

/// The soft limit in force after `raise` (0 until it ran: embedded nodes and tests).
static OPEN_FILES_LIMIT: AtomicU64 = AtomicU64::new(0);

/// The open-file limit `raise` left in force, 0 if it did not run.
pub fn current() -> u64 {
    OPEN_FILES_LIMIT.load(Ordering::Relaxed)
}

/// What `raise` found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
}

impl Raised {
    /// Whether the limit leaves room for `max_connections` clients and the node's own files.
    pub fn enough_for(&self, max_connections: u64) -> bool {
        self.now >= max_connections.saturating_add(RESERVED)
    }
}

/// Raises the soft open-file limit to the hard limit (capped at the kernel's `nr_open`, since
/// an unlimited hard limit cannot be taken literally).
pub fn raise() -> std::io::Result<Raised> {
    let (before, hard) = Resource::NOFILE.get()?;
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let target = hard.min(ceiling);
    let now = if target > before {
        Resource::NOFILE.set(target, hard)?;
        target
    } else {
        before
    };
    OPEN_FILES_LIMIT.store(now, Ordering::Relaxed);
    Ok(Raised { before, now, hard })
}

/// Raises the limit and says what came of it, once, at start.
pub fn raise_and_log(max_connections: u64) {
    match raise() {
        Ok(r) => {
            if r.now > r.before {
                tracing::info!(from = r.before, to = r.now, "raised the open-file limit");
            }
            if !r.enough_for(max_connections) {
                tracing::warn!(
                    limit = r.now,
                    hard_limit = r.hard,
                    max_connections,
                    "the open-file limit is below server.max_connections plus {RESERVED} for the \
                     node's own files: clients past about {} will be refused at accept; raise the \
                     hard limit (ulimit -Hn, systemd LimitNOFILE, Docker/Compose ulimits nofile)",
                    r.now.saturating_sub(RESERVED)
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_lifts_the_soft_limit_to_the_hard_one() {
        let (_, hard) = Resource::NOFILE.get().unwrap();
        // Start from a low soft limit, as a container's default would be.
        Resource::NOFILE.set(256.min(hard), hard).unwrap();
        let r = raise().unwrap();
        assert_eq!(r.before, 256.min(hard));
        assert_eq!(r.hard, hard);
        let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(r.now, hard.min(nr_open).max(r.before));
        assert_eq!(Resource::NOFILE.get().unwrap().0, r.now);
        assert_eq!(current(), r.now);
        assert!(
            Raised {
                before: 0,
                now: 2024,
                hard: 2024
            }
            .enough_for(1000)
        );
        assert!(
            !Raised {
                before: 0,
                now: 2023,
                hard: 2023
            }
            .enough_for(1000)
        );
    }
}
