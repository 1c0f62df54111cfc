//! Retained messages: a tree keyed by topic level, so a subscription with wildcards finds its
//! retained messages by walking the matching branches rather than scanning every topic.

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
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores `message` for its topic, or deletes the topic's retained message when the
    /// payload is empty.
    pub fn set(&self, message: Arc<Message>) {
        let levels: Vec<&str> = message.topic.split('/').collect();
        let mut root = self.root.write();
        if message.payload.is_empty() {
            if Self::remove(&mut root, &levels) {
                self.count
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            return;
        }
        let mut node = &mut *root;
        for level in levels {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(message).is_none() {
            self.count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn remove(node: &mut Node, levels: &[&str]) -> bool {
        let Some((first, rest)) = levels.split_first() else {
            return node.message.take().is_some();
        };
        let Some(child) = node.children.get_mut(*first) else {
            return false;
        };
        let removed = Self::remove(child, rest);
        if child.message.is_none() && child.children.is_empty() {
            node.children.remove(*first);
        }
        removed
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
