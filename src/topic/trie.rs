//! A trie over topic levels. Each node may hold a value for the filter that ends there;
//! `for_each_match` visits the values of every filter matching a topic, following `+` and `#`
//! and the rule that a leading wildcard never matches a `$` topic.

use std::collections::HashMap;

#[derive(Debug)]
struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    value: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            value: None,
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.value.is_none() && self.children.is_empty()
    }
}

/// Map from topic filter to `V`, matched by topic.
#[derive(Debug)]
pub struct Trie<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for Trie<V> {
    fn default() -> Self {
        Trie {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> Trie<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of filters holding a value.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The value for `filter`, created with `make` when absent.
    pub fn get_or_insert_with(&mut self, filter: &str, make: impl FnOnce() -> V) -> &mut V {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.value.is_none() {
            self.len += 1;
        }
        node.value.get_or_insert_with(make)
    }

    pub fn get(&self, filter: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    pub fn get_mut(&mut self, filter: &str) -> Option<&mut V> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.get_mut(level)?;
        }
        node.value.as_mut()
    }

    /// Applies `edit` to the value for `filter`; when `edit` returns true the value is removed
    /// and empty nodes are pruned. Returns what `edit` returned, or None if there was no value.
    pub fn edit(&mut self, filter: &str, edit: impl FnOnce(&mut V) -> bool) -> Option<bool> {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::edit_at(&mut self.root, &levels, edit)?;
        if removed {
            self.len -= 1;
        }
        Some(removed)
    }

    fn edit_at(
        node: &mut Node<V>,
        levels: &[&str],
        edit: impl FnOnce(&mut V) -> bool,
    ) -> Option<bool> {
        let Some((first, rest)) = levels.split_first() else {
            let remove = edit(node.value.as_mut()?);
            if remove {
                node.value = None;
            }
            return Some(remove);
        };
        let child = node.children.get_mut(*first)?;
        let removed = Self::edit_at(child, rest, edit)?;
        if removed && child.is_empty() {
            node.children.remove(*first);
        }
        Some(removed)
    }

    /// Calls `visit` with the value of every filter that matches `topic`.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(&'a V)) {
        let levels: smallvec::SmallVec<[&str; 8]> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        Self::walk(&self.root, &levels, dollar, &mut visit);
    }

    fn walk<'a>(
        node: &'a Node<V>,
        levels: &[&str],
        no_wildcard: bool,
        visit: &mut impl FnMut(&'a V),
    ) {
        let Some((first, rest)) = levels.split_first() else {
            if let Some(v) = &node.value {
                visit(v);
            }
            // "a/#" also matches "a".
            if let Some(v) = node.children.get("#").and_then(|n| n.value.as_ref()) {
                visit(v);
            }
            return;
        };
        if !no_wildcard {
            if let Some(v) = node.children.get("#").and_then(|n| n.value.as_ref()) {
                visit(v);
            }
            if let Some(plus) = node.children.get("+") {
                Self::walk(plus, rest, false, visit);
            }
        }
        if let Some(child) = node.children.get(*first) {
            Self::walk(child, rest, false, visit);
        }
    }

    /// Every filter and its value (for listings and tests).
    pub fn for_each(&self, mut visit: impl FnMut(&str, &V)) {
        let mut path = String::new();
        Self::each_at(&self.root, &mut path, true, &mut visit);
    }

    fn each_at(node: &Node<V>, path: &mut String, root: bool, visit: &mut impl FnMut(&str, &V)) {
        if let (Some(v), false) = (&node.value, root) {
            visit(path, v);
        }
        for (level, child) in &node.children {
            let len = path.len();
            if !root {
                path.push('/');
            }
            path.push_str(level);
            Self::each_at(child, path, false, visit);
            path.truncate(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;

    fn matched(trie: &Trie<&'static str>, topic: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |v| out.push(*v));
        out.sort();
        out
    }

    #[test]
    fn matches_like_the_reference_matcher() {
        let filters = [
            "#", "+", "a", "a/b", "a/+", "a/#", "+/b", "+/+", "a/b/c", "a/+/c", "/+", "+/#",
            "$SYS/#", "$SYS/+", "a//c", "", "/",
        ];
        let topics = [
            "a", "a/b", "a/b/c", "a/x/c", "b", "/a", "a//c", "$SYS/x", "$SYS", "/", "a/", "x/b",
        ];
        let mut trie = Trie::new();
        for f in filters {
            *trie.get_or_insert_with(f, || f) = f;
        }
        assert_eq!(trie.len(), filters.len());
        for topic in topics {
            let mut expected: Vec<&str> = filters
                .iter()
                .copied()
                .filter(|f| matches(f, topic))
                .collect();
            expected.sort();
            assert_eq!(matched(&trie, topic), expected, "topic {topic}");
        }
    }

    #[test]
    fn edit_removes_and_prunes() {
        let mut trie = Trie::new();
        *trie.get_or_insert_with("a/b/c", || 0) += 1;
        *trie.get_or_insert_with("a/b", || 0) += 1;
        assert_eq!(trie.edit("a/b/c", |_| true), Some(true));
        assert_eq!(trie.edit("a/b/c", |_| true), None);
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.edit("a/b", |v| v == &1), Some(true));
        assert!(trie.is_empty());
        assert!(trie.root.children.is_empty(), "empty nodes pruned");
    }

    #[test]
    fn lists_every_filter() {
        let mut trie = Trie::new();
        for f in ["a/b", "a/+", "#", "/x"] {
            trie.get_or_insert_with(f, || ());
        }
        let mut all = Vec::new();
        trie.for_each(|f, _| all.push(f.to_string()));
        all.sort();
        assert_eq!(all, ["#", "/x", "a/+", "a/b"]);
    }
}
