//! Retained messages: a tree keyed by topic level, so a subscription with wildcards finds its
//! retained messages by walking the matching branches rather than scanning every topic.
//! Writes are ordered last-writer-wins by (timestamp, origin node), and a delete leaves a
//! tombstone, so replicas that receive the same writes in any order end up the same.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;

use super::Message;

#[derive(Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

#[derive(Default)]
pub struct RetainedStore {
    root: RwLock<Node>,
    count: std::sync::atomic::AtomicUsize,
    /// This node's id, the origin of messages without one (empty on a single node).
    local_origin: Arc<str>,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn new(local_origin: Arc<str>) -> RetainedStore {
        RetainedStore {
            local_origin,
            ..RetainedStore::default()
        }
    }

    /// Stores `message` for its topic (an empty payload deletes: it is kept as a tombstone),
    /// unless the store holds a later write. Returns whether it was applied.
    pub fn set(&self, message: Arc<Message>) -> bool {
        let mut root = self.root.write();
        let mut node = &mut *root;
        for level in message.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let local = &*self.local_origin;
        if let Some(existing) = &node.message
            && existing.write_order(local) > message.write_order(local)
        {
            return false;
        }
        let was_live = node.message.as_ref().is_some_and(|m| !m.payload.is_empty());
        let is_live = !message.payload.is_empty();
        node.message = Some(message);
        match (was_live, is_live) {
            (false, true) => self
                .count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            (true, false) => self
                .count
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed),
            _ => 0,
        };
        true
    }

    /// Every retained message and tombstone, for bringing another node up to date.
    pub fn snapshot(&self) -> Vec<Arc<Message>> {
        fn walk(node: &Node, out: &mut Vec<Arc<Message>>) {
            out.extend(node.message.clone());
            for child in node.children.values() {
                walk(child, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.root.read(), &mut out);
        out
    }

    /// The retained messages whose topics match `filter`, skipping expired ones.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let now = Instant::now();
        let mut out = Vec::new();
        let root = self.root.read();
        Self::collect(&root, &levels, true, now, &mut out);
        out
    }

    fn collect(
        node: &Node,
        levels: &[&str],
        at_root: bool,
        now: Instant,
        out: &mut Vec<Arc<Message>>,
    ) {
        let Some((first, rest)) = levels.split_first() else {
            Self::push(node, now, out);
            return;
        };
        match *first {
            "#" => {
                // "a/#" matches "a" itself and everything below it.
                if !at_root {
                    Self::push(node, now, out);
                }
                Self::all_below(node, at_root, now, out);
            }
            "+" => {
                for (level, child) in &node.children {
                    if at_root && level.starts_with('$') {
                        continue;
                    }
                    Self::collect(child, rest, false, now, out);
                }
            }
            literal => {
                if let Some(child) = node.children.get(literal) {
                    Self::collect(child, rest, false, now, out);
                }
            }
        }
    }

    fn all_below(node: &Node, at_root: bool, now: Instant, out: &mut Vec<Arc<Message>>) {
        for (level, child) in &node.children {
            if at_root && level.starts_with('$') {
                continue;
            }
            Self::push(child, now, out);
            Self::all_below(child, false, now, out);
        }
    }

    fn push(node: &Node, now: Instant, out: &mut Vec<Arc<Message>>) {
        if let Some(m) = &node.message
            && !m.payload.is_empty()
            && m.expiry_left(now).is_some()
        {
            out.push(m.clone());
        }
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
            m.timestamp_ms = ts;
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
        assert!(!s.set(at("old", 20, "n3")));
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
}
