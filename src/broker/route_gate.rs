//! What a SUBACK waits for in a cluster with `cluster.subscribe_ack = "cluster"`: every live
//! peer's word that it applied the route pushes queued for it up to the SUBSCRIBE, so that a
//! message published on any node after the SUBACK reaches the subscriber. The cluster makes the
//! gate (`ClusterHook::route_gate`); the connection holds its SUBACK behind it, bounded by
//! `cluster.subscribe_ack_timeout_ms`, after which the SUBACK goes anyway and the timeout is
//! counted and logged (once a minute at most).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;
use tokio::time::Instant;

use super::message::now_ms;

/// How far each peer applied its link's frames and the sequence number that must reach, until `deadline`.
#[derive(Clone)]
pub struct RouteGate {
    pub waits: Vec<(watch::Receiver<u64>, u64)>,
    pub deadline: Instant,
    pub timeouts: Arc<SubscribeAckTimeouts>,
}

impl RouteGate {
    /// Every peer has applied them (a link that went away is not waited for any more).
    pub fn is_settled(&self) -> bool {
        self.waits
            .iter()
            .all(|(acked, upto)| *acked.borrow() >= *upto || acked.has_changed().is_err())
    }

    /// Resolves once settled (not bounded: the caller bounds it by `deadline`).
    pub async fn settled(&mut self) {
        for (acked, upto) in &mut self.waits {
            let _ = acked.wait_for(|a| *a >= *upto).await;
        }
    }

    /// The SUBACK goes now: settled, or the deadline passed (counted, and logged once a minute).
    pub fn release(&self, client_id: &str) {
        if self.is_settled() {
            return;
        }
        let waiting = self
            .waits
            .iter()
            .filter(|(acked, upto)| *acked.borrow() < *upto && acked.has_changed().is_ok())
            .count();
        self.timeouts.hit(client_id, waiting);
    }
}

/// Whether a warning last given at `warned_at_ms` (0: never) may be given again now: once a
/// minute at most, across threads; notes the time when it may.
pub(crate) fn once_a_minute(warned_at_ms: &AtomicU64) -> bool {
    let now = now_ms();
    let last = warned_at_ms.load(Ordering::Relaxed);
    (last == 0 || now >= last + 60_000)
        && warned_at_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// SUBACKs sent before every live node applied the new routes.
#[derive(Debug, Default)]
pub struct SubscribeAckTimeouts {
    pub count: AtomicU64,
    warned_at_ms: AtomicU64,
}

impl SubscribeAckTimeouts {
    fn hit(&self, client_id: &str, waiting: usize) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if once_a_minute(&self.warned_at_ms) {
            tracing::warn!(
                client_id,
                peers_waited_for = waiting,
                timeouts_so_far = n,
                "SUBACK sent before every node applied the new route (cluster.subscribe_ack_timeout_ms); a message published elsewhere at once may miss the subscriber (logged once a minute at most)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_gate_settles_on_every_acknowledgement_or_a_gone_link() {
        let (a, a_rx) = watch::channel(0u64);
        let (b, b_rx) = watch::channel(3u64);
        let timeouts = Arc::new(SubscribeAckTimeouts::default());
        let mut gate = RouteGate {
            waits: vec![(a_rx, 5), (b_rx, 7)],
            deadline: Instant::now() + Duration::from_secs(5),
            timeouts: timeouts.clone(),
        };
        assert!(!gate.is_settled());
        a.send_replace(5);
        assert!(!gate.is_settled(), "b still below 7");
        gate.release("c");
        assert_eq!(
            timeouts.count.load(Ordering::Relaxed),
            1,
            "released unsettled: counted"
        );
        drop(b);
        assert!(gate.is_settled(), "a link that went away is not waited for");
        tokio::time::timeout(Duration::from_secs(5), gate.settled())
            .await
            .expect("settled resolves");
        gate.release("c");
        assert_eq!(
            timeouts.count.load(Ordering::Relaxed),
            1,
            "settled: not counted"
        );
    }
}
