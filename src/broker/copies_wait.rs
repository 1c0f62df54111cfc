//! What an acknowledgement waits for when sessions are replicated (`cluster.session_replicas`):
//! the nodes that keep session copies confirming the changes it made. A PUBACK to a publisher
//! here, and the acknowledgement of relayed frames to the node that sent them, go out only
//! once every such node acknowledged the session records queued for it up to then, so a
//! message acknowledged is in a copy (or still held by its sender) when the holder dies.
//! A node that is not live any more (its link down, which a frozen node's is after
//! `cluster.link_timeout_ms` of silence, or declared failed) is not waited for: the
//! acknowledgement goes, and that is counted and logged (once a minute). A slow one is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// How often a wait looks at whether the nodes it waits on are still live.
const HEALTH_CHECK: Duration = Duration::from_millis(100);

/// How far one node has applied what its link carried (its acknowledgements, or the
/// `Applied` marks ahead of them), the sequence number that must reach, and whether its link
/// still delivers.
#[derive(Clone)]
pub struct PeerWait {
    pub acked: watch::Receiver<u64>,
    pub upto: u64,
    pub delivering: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl PeerWait {
    fn confirmed(&self) -> bool {
        *self.acked.borrow() >= self.upto
    }

    /// Confirmed, or not to be waited for any more (the link went away or stopped delivering).
    fn over(&self) -> bool {
        self.confirmed() || self.acked.has_changed().is_err() || !(self.delivering)()
    }
}

/// Every copy-keeping node's confirmation an acknowledgement waits for.
#[derive(Clone)]
pub struct CopiesWait {
    pub waits: Vec<PeerWait>,
    pub unconfirmed: Arc<Unconfirmed>,
}

impl CopiesWait {
    pub fn is_settled(&self) -> bool {
        self.waits.iter().all(PeerWait::over)
    }

    /// Resolves once settled (bounded by the links' liveness: a node that stops answering is
    /// not waited for past `cluster.link_timeout_ms`).
    pub async fn settled(&mut self) {
        while !self.is_settled() {
            let Some(w) = self.waits.iter_mut().find(|w| !w.over()) else {
                return;
            };
            let upto = w.upto;
            let _ = tokio::time::timeout(HEALTH_CHECK, w.acked.wait_for(|a| *a >= upto)).await;
        }
    }

    /// The acknowledgement goes now (settled): counted if a copy did not confirm.
    pub fn release(&self) {
        let missing = self.waits.iter().filter(|w| !w.confirmed()).count();
        if missing > 0 {
            self.unconfirmed.hit(missing);
        }
    }
}

/// Acknowledgements given before every copy confirmed them.
#[derive(Debug, Default)]
pub struct Unconfirmed {
    pub count: AtomicU64,
    warned_at_ms: AtomicU64,
}

impl Unconfirmed {
    fn hit(&self, nodes: usize) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if super::route_gate::once_a_minute(&self.warned_at_ms) {
            tracing::warn!(
                nodes_not_confirming = nodes,
                so_far = n,
                "acknowledged before every session copy confirmed it: a node keeping copies stopped answering (logged once a minute at most)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_settles_on_confirmation_or_a_link_that_stops_delivering() {
        let (a, a_rx) = watch::channel(0u64);
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let h = healthy.clone();
        let unconfirmed = Arc::new(Unconfirmed::default());
        let mut wait = CopiesWait {
            waits: vec![PeerWait {
                acked: a_rx,
                upto: 4,
                delivering: Arc::new(move || h.load(Ordering::Relaxed)),
            }],
            unconfirmed: unconfirmed.clone(),
        };
        assert!(!wait.is_settled());
        a.send_replace(4);
        assert!(wait.is_settled());
        wait.release();
        assert_eq!(unconfirmed.count.load(Ordering::Relaxed), 0, "confirmed");
        wait.waits[0].upto = 9;
        assert!(!wait.is_settled());
        healthy.store(false, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(5), wait.settled())
            .await
            .expect("a link that stops delivering is not waited for");
        wait.release();
        assert_eq!(unconfirmed.count.load(Ordering::Relaxed), 1, "counted");
    }
}
