//! Backpressure: what a publisher waits for when the messages it sent have nowhere to go but
//! somewhere full. A full local session and a peer link past its window are both a `Backlog`;
//! the reader that produced the message (a client connection, or the link from another node)
//! reads no more until one of the backlogs it is held by has room. Each backlog also stops
//! holding anyone once it has not moved for a while, so a stalled consumer turns into counted
//! drops instead of a frozen publisher.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Something full that a publisher may wait on.
pub trait Backlog: Send + Sync {
    /// Room again (or stalled, or gone): a publisher held by it may go on.
    fn has_room(&self) -> bool;
    /// Resolves when there may be room (or after a short while: callers re-check).
    fn room(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The backlogs one publisher is held by.
#[derive(Default)]
pub struct Held(Vec<Arc<dyn Backlog>>);

impl Held {
    /// Adds `backlog` unless it is already there.
    pub fn push(&mut self, backlog: Arc<dyn Backlog>) {
        let ptr = Arc::as_ptr(&backlog).cast::<()>();
        if !self.0.iter().any(|b| Arc::as_ptr(b).cast::<()>() == ptr) {
            self.0.push(backlog);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// One of them has room: the publisher goes on (a backlog still full is then dropped
    /// for, not waited for). Clears the set when so.
    pub fn release_if_room(&mut self) -> bool {
        if self.0.iter().any(|b| b.has_room()) {
            self.0.clear();
            true
        } else {
            false
        }
    }

    /// Resolves when the first of them may have room; never while none holds.
    pub async fn room(&self) {
        match self.0.first() {
            Some(b) => b.room().await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Flag(AtomicBool);
    impl Backlog for Flag {
        fn has_room(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
        fn room(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
            Box::pin(async {})
        }
    }

    #[test]
    fn held_until_any_has_room_and_deduplicated() {
        let a = Arc::new(Flag(AtomicBool::new(false)));
        let b = Arc::new(Flag(AtomicBool::new(false)));
        let mut held = Held::default();
        held.push(a.clone());
        held.push(a.clone());
        held.push(b.clone());
        assert_eq!(held.len(), 2);
        assert!(!held.release_if_room());
        b.0.store(true, Ordering::Relaxed);
        assert!(held.release_if_room());
        assert!(held.is_empty());
    }
}
