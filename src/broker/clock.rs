//! The hybrid logical clock that orders retained writes across nodes: a stamp is the wall
//! clock in milliseconds shifted left 16 bits plus a counter, never lower than any stamp this
//! node has made or seen. A local write therefore always orders after everything this node
//! knows of, even after the wall clock steps back (with the wall clock alone such an update or
//! delete was silently ignored), and stamps still follow real time closely enough that the
//! later of two writes on different nodes wins.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of the stamp below the milliseconds.
const LOGICAL_BITS: u32 = 16;

#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

/// The stamp of a wall-clock reading.
pub fn physical(ms: u64) -> u64 {
    ms << LOGICAL_BITS
}

/// The wall-clock milliseconds a stamp was made at (near enough).
pub fn millis(stamp: u64) -> u64 {
    stamp >> LOGICAL_BITS
}

impl Hlc {
    /// A stamp for a write made here now: later than every stamp made or seen before.
    pub fn now(&self) -> u64 {
        self.at(super::now_ms())
    }

    fn at(&self, wall_ms: u64) -> u64 {
        let physical = physical(wall_ms);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = physical.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// A stamp made elsewhere (a write from another node): later local writes order after it.
    pub fn observe(&self, stamp: u64) {
        self.last.fetch_max(stamp, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_only_go_forward_even_when_the_wall_clock_steps_back() {
        let clock = Hlc::default();
        let a = clock.at(10_000_000);
        let b = clock.at(10_000_000);
        assert!(b > a, "same millisecond: the counter orders them");
        // The wall clock steps back an hour: a later local write still wins.
        let c = clock.at(10_000_000 - 3_600_000);
        assert!(c > b);
        assert_eq!(millis(c), 10_000_000);
        // Seeing a stamp from a node whose clock runs ahead moves this clock past it.
        clock.observe(physical(50_000_000) + 7);
        assert!(clock.at(20_000_000) > physical(50_000_000) + 7);
        // The wall clock catching up takes over again.
        assert_eq!(clock.at(60_000_000), physical(60_000_000));
    }
}
