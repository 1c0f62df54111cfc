//! Retained messages, kept in a topic trie so a subscription with wildcards finds its retained
//! messages by walking the matching branches rather than scanning every topic. Writes are
//! ordered last-writer-wins by (timestamp, origin node). In a cluster a delete leaves a
//! tombstone, so replicas that receive the same writes in any order end up the same; on a
//! single node a delete simply removes. The store is bounded (`mqtt.max_retained_messages`,
//! `mqtt.max_retained_bytes`): tombstones are evicted oldest first to make room, and a write
//! that would still exceed a bound is refused, never half-applied.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use super::Message;
use crate::limits::Limit;
use crate::topic::Trie;

/// Tombstones older than this are collected even when there is room.
const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);

/// What the store may hold.
#[derive(Debug, Clone, Copy)]
pub struct RetainedLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    /// Keep deletes as tombstones (a cluster needs them to order writes).
    pub tombstones: bool,
}

impl Default for RetainedLimits {
    fn default() -> Self {
        RetainedLimits {
            max_messages: usize::MAX,
            max_bytes: usize::MAX,
            tombstones: true,
        }
    }
}

/// What became of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainOutcome {
    Applied,
    /// The store holds a later write for the topic.
    Stale,
    /// Storing it would pass this bound.
    Refused(Limit),
}

#[derive(Default)]
struct Inner {
    trie: Trie<Arc<Message>>,
    /// Live messages and what they weigh (topic plus payload bytes).
    live: usize,
    live_bytes: usize,
    /// Tombstones and their weight; `tombstone_order` lists them oldest first (entries whose
    /// topic was written again since are skipped when reached).
    tombstones: usize,
    tombstone_bytes: usize,
    tombstone_order: VecDeque<(Arc<str>, u64, Instant)>,
}

/// What a retained message weighs against `mqtt.max_retained_bytes`.
fn weight(m: &Message) -> usize {
    m.topic.len() + m.payload.len()
}

#[derive(Default)]
pub struct RetainedStore {
    inner: RwLock<Inner>,
    count: AtomicUsize,
    /// This node's id, the origin of messages without one (empty on a single node).
    local_origin: Arc<str>,
    limits: RetainedLimits,
    /// With persistence on: every change is written through, submitted under the write lock
    /// so the store sees one topic's writes in the order they were applied.
    store: std::sync::OnceLock<Arc<crate::store::Store>>,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn new(local_origin: Arc<str>) -> RetainedStore {
        RetainedStore::with_limits(local_origin, RetainedLimits::default())
    }

    pub fn with_limits(local_origin: Arc<str>, limits: RetainedLimits) -> RetainedStore {
        RetainedStore {
            local_origin,
            limits,
            ..RetainedStore::default()
        }
    }

    /// From now on, writes every change through to `store` (set once, after restoring).
    pub fn persist_to(&self, store: Arc<crate::store::Store>) {
        let _ = self.store.set(store);
    }

    fn persist(&self, op: impl FnOnce() -> crate::store::Op) {
        if let Some(store) = self.store.get() {
            store.submit(op());
        }
    }

    /// Bytes held by live retained messages (topic plus payload).
    pub fn bytes(&self) -> usize {
        self.inner.read().live_bytes
    }

    /// Stores `message` for its topic (an empty payload deletes), unless the store holds a
    /// later write or the write would pass a bound.
    pub fn set(&self, message: Arc<Message>) -> RetainOutcome {
        let local = &*self.local_origin;
        let mut inner = self.inner.write();
        let existing = inner.trie.get(&message.topic).cloned();
        if let Some(existing) = &existing
            && existing.write_order(local) > message.write_order(local)
        {
            return RetainOutcome::Stale;
        }
        let was_live = existing.as_ref().is_some_and(|m| !m.payload.is_empty());
        let old_weight = existing.as_ref().map_or(0, |m| weight(m));
        let is_live = !message.payload.is_empty();
        if is_live {
            let (count, bytes) = match was_live {
                true => (inner.live, inner.live_bytes - old_weight),
                false => (inner.live + 1, inner.live_bytes),
            };
            let bytes = bytes + weight(&message);
            if count > self.limits.max_messages {
                return RetainOutcome::Refused(Limit::RetainedMessages);
            }
            if bytes > self.limits.max_bytes {
                return RetainOutcome::Refused(Limit::RetainedBytes);
            }
        }
        // Take the old entry's weight off whichever tally it was in.
        match (&existing, was_live) {
            (Some(_), true) => {
                inner.live -= 1;
                inner.live_bytes -= old_weight;
            }
            (Some(_), false) => {
                inner.tombstones -= 1;
                inner.tombstone_bytes -= old_weight;
            }
            (None, _) => {}
        }
        if is_live || self.limits.tombstones {
            self.persist(|| crate::store::Op::Retained(message.clone()));
        } else if existing.is_some() {
            self.persist(|| crate::store::Op::RetainedGone(message.topic.clone()));
        }
        if is_live {
            inner.live += 1;
            inner.live_bytes += weight(&message);
            let slot = inner
                .trie
                .get_or_insert_with(&message.topic, || message.clone());
            *slot = message;
        } else if self.limits.tombstones {
            inner.tombstones += 1;
            inner.tombstone_bytes += weight(&message);
            let topic = message.topic.clone();
            let order = message.stamp;
            let slot = inner
                .trie
                .get_or_insert_with(&message.topic, || message.clone());
            *slot = message;
            inner
                .tombstone_order
                .push_back((topic, order, Instant::now()));
        } else if existing.is_some() {
            inner.trie.edit(&message.topic, |_| true);
        }
        self.collect_tombstones(&mut inner);
        self.count.store(inner.live, Ordering::Relaxed);
        RetainOutcome::Applied
    }

    /// Drops tombstones, oldest first, while live messages and tombstones together pass a
    /// bound, or while the oldest is past its time to live.
    fn collect_tombstones(&self, inner: &mut Inner) {
        let max_messages = self.limits.max_messages;
        let max_bytes = self.limits.max_bytes;
        while let Some((topic, order, at)) = inner.tombstone_order.front().cloned() {
            let over = inner.live.saturating_add(inner.tombstones) > max_messages
                || inner.live_bytes.saturating_add(inner.tombstone_bytes) > max_bytes;
            if !over && at.elapsed() < TOMBSTONE_TTL {
                break;
            }
            inner.tombstone_order.pop_front();
            let current = inner
                .trie
                .get(&topic)
                .filter(|m| m.payload.is_empty() && m.stamp == order)
                .map(|m| weight(m));
            if let Some(w) = current {
                self.persist(|| crate::store::Op::RetainedGone(topic.clone()));
                inner.trie.edit(&topic, |_| true);
                inner.tombstones -= 1;
                inner.tombstone_bytes -= w;
            }
        }
        // Entries for topics written again since stay in the queue until reached; keep them
        // from outgrowing the tombstones they stand for.
        if inner.tombstone_order.len() > 2 * inner.tombstones + 1024 {
            let Inner {
                trie,
                tombstone_order,
                ..
            } = inner;
            tombstone_order.retain(|(topic, order, _)| {
                trie.get(topic)
                    .is_some_and(|m| m.payload.is_empty() && m.stamp == *order)
            });
        }
    }

    /// Every retained message and tombstone, for bringing another node up to date.
    pub fn snapshot(&self) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        self.inner
            .read()
            .trie
            .for_each_value(|m| out.push(m.clone()));
        out
    }

    /// The retained messages whose topics match `filter`, skipping expired ones.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        self.for_each_matching(filter, |m| out.push(m.clone()));
        out
    }

    /// Calls `visit` with each live, unexpired retained message matching `filter`.
    pub fn for_each_matching(&self, filter: &str, mut visit: impl FnMut(&Arc<Message>)) {
        let now = Instant::now();
        self.inner.read().trie.for_each_matched_by(filter, |m| {
            if !m.payload.is_empty() && m.expiry_left(now).is_some() {
                visit(m);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Properties, QoS};
    use bytes::Bytes;

    fn msg(topic: &str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message::new(
            topic.into(),
            Bytes::from_static(payload.as_bytes()),
            QoS::AtMostOnce,
            true,
            Properties::default(),
            None,
        ))
    }

    fn topics(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut t: Vec<String> = store
            .matching(filter)
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        t.sort();
        t
    }

    #[test]
    fn set_replace_delete_and_match() {
        let s = RetainedStore::default();
        for t in ["a", "a/b", "a/b/c", "x/b", "$SYS/up", "/lead"] {
            s.set(msg(t, "1"));
        }
        s.set(msg("a/b", "2"));
        assert_eq!(s.len(), 6);
        assert_eq!(&s.matching("a/b")[0].payload[..], b"2");
        assert_eq!(topics(&s, "#"), ["/lead", "a", "a/b", "a/b/c", "x/b"]);
        assert_eq!(topics(&s, "a/#"), ["a", "a/b", "a/b/c"]);
        assert_eq!(topics(&s, "+/b"), ["a/b", "x/b"]);
        assert_eq!(topics(&s, "+"), ["a"]);
        assert_eq!(topics(&s, "$SYS/#"), ["$SYS/up"]);
        assert_eq!(topics(&s, "+/lead"), ["/lead"]);
        s.set(msg("a/b", ""));
        assert_eq!(s.len(), 5);
        assert_eq!(topics(&s, "a/#"), ["a", "a/b/c"]);
        s.set(msg("nothing/here", ""));
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn last_writer_wins_in_any_order() {
        let at = |payload: &'static str, ts: u64, origin: &str| {
            let mut m = Message::new(
                "t".into(),
                Bytes::from_static(payload.as_bytes()),
                QoS::AtMostOnce,
                true,
                Properties::default(),
                None,
            );
            m.stamp = ts;
            m.origin = Some(origin.into());
            Arc::new(m)
        };
        let writes = [
            at("a", 10, "n1"),
            at("b", 20, "n1"),
            at("", 15, "n2"),
            at("c", 20, "n2"),
        ];
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
            let s = RetainedStore::new("n1".into());
            for i in order {
                s.set(writes[i].clone());
            }
            assert_eq!(&s.matching("t")[0].payload[..], b"c", "order {order:?}");
            assert_eq!(s.len(), 1);
        }
        // A later delete wins over an earlier set, and a stale set does not resurrect it.
        let s = RetainedStore::new("n1".into());
        s.set(at("a", 10, "n1"));
        s.set(at("", 30, "n2"));
        assert_eq!(s.set(at("old", 20, "n3")), RetainOutcome::Stale);
        assert!(s.matching("t").is_empty());
        assert_eq!(s.len(), 0);
        assert_eq!(s.snapshot().len(), 1, "tombstone kept for replication");
    }

    #[test]
    fn expired_messages_are_not_matched() {
        let s = RetainedStore::default();
        let mut m = Message::new(
            "e".into(),
            Bytes::from_static(b"x"),
            QoS::AtMostOnce,
            true,
            Properties::default(),
            None,
        );
        m.expires_at = Some(Instant::now() - std::time::Duration::from_secs(1));
        s.set(Arc::new(m));
        assert!(s.matching("e").is_empty());
    }

    #[test]
    fn bounded_by_count_and_bytes_with_tombstones_evicted_first() {
        let limits = RetainedLimits {
            max_messages: 3,
            max_bytes: 100,
            tombstones: true,
        };
        let s = RetainedStore::with_limits("n1".into(), limits);
        for t in ["a", "b", "c"] {
            assert_eq!(s.set(msg(t, "1")), RetainOutcome::Applied);
        }
        assert_eq!(
            s.set(msg("d", "1")),
            RetainOutcome::Refused(Limit::RetainedMessages)
        );
        // Replacing an existing topic and deleting are always possible.
        assert_eq!(s.set(msg("a", "2")), RetainOutcome::Applied);
        assert_eq!(s.set(msg("b", "")), RetainOutcome::Applied);
        assert_eq!(s.len(), 2);
        // The tombstone for b makes room when d needs it.
        assert_eq!(s.set(msg("d", "1")), RetainOutcome::Applied);
        assert_eq!(s.len(), 3);
        assert_eq!(s.snapshot().len(), 3, "b's tombstone evicted");
        let big: &'static str = Box::leak("x".repeat(98).into_boxed_str());
        assert_eq!(
            s.set(msg("a", big)),
            RetainOutcome::Refused(Limit::RetainedBytes)
        );
        assert_eq!(
            &s.matching("a")[0].payload[..],
            b"2",
            "a refused write changes nothing"
        );
        assert_eq!(s.bytes(), 6);
    }

    #[test]
    fn a_single_node_keeps_no_tombstones() {
        let limits = RetainedLimits {
            tombstones: false,
            ..RetainedLimits::default()
        };
        let s = RetainedStore::with_limits("".into(), limits);
        s.set(msg("a/b/c", "1"));
        s.set(msg("a/b/c", ""));
        for i in 0..100 {
            s.set(msg(&format!("never/set/{i}"), ""));
        }
        assert!(s.snapshot().is_empty());
        assert!(s.is_empty());
    }

    #[test]
    fn deep_topics_need_no_stack() {
        let s = RetainedStore::default();
        let deep = "l/".repeat(100_000) + "end";
        s.set(msg(&deep, "1"));
        assert_eq!(s.matching("#").len(), 1);
        assert_eq!(s.matching(&("+/".repeat(100_000) + "end")).len(), 1);
        assert_eq!(s.snapshot().len(), 1);
    }
}
