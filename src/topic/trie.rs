//! A trie over topic levels. Each node may hold a value for the filter that ends there;
//! `for_each_match` visits the values of every filter matching a topic, following `+` and `#`
//! and the rule that a leading wildcard never matches a `$` topic. Every walk is iterative
//! (an explicit stack, never recursion), and so is dropping a branch: a filter's depth comes
//! from clients and peers, and must never decide how deep the thread's stack goes.

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

impl<V> Drop for Node<V> {
    /// Frees a branch without recursing once per level: children are moved onto a stack and
    /// emptied there, so each node is dropped with no children left.
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<Node<V>> = self.children.drain().map(|(_, n)| n).collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain().map(|(_, n)| n));
        }
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
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.get_mut(level)?;
        }
        let remove = edit(node.value.as_mut()?);
        if remove {
            node.value = None;
            let now_empty = node.is_empty();
            self.len -= 1;
            if now_empty {
                self.prune(filter);
            }
        }
        Some(remove)
    }

    /// Removes the empty tail of `filter`'s branch: the chain of nodes below the deepest
    /// ancestor that still holds a value or another child.
    fn prune(&mut self, filter: &str) {
        // The cut: the deepest node on the path that must stay, and which child to remove.
        let mut cut = (0usize, filter.split('/').next().unwrap_or(""));
        let mut node = &self.root;
        for (depth, level) in filter.split('/').enumerate() {
            if depth > 0 && (node.value.is_some() || node.children.len() > 1) {
                cut = (depth, level);
            }
            match node.children.get(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        let (depth, level) = cut;
        let mut keep = &mut self.root;
        for step in filter.split('/').take(depth) {
            match keep.children.get_mut(step) {
                Some(child) => keep = child,
                None => return,
            }
        }
        // Dropped here, iteratively (see `Node::drop`).
        keep.children.remove(level);
    }

    /// Calls `visit` with the value of every filter that matches `topic`.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(&'a V)) {
        let levels: smallvec::SmallVec<[&str; 8]> = topic.split('/').collect();
        // (node, index of the topic level it is to match next)
        let mut stack: smallvec::SmallVec<[(&'a Node<V>, usize); 16]> = smallvec::SmallVec::new();
        stack.push((&self.root, 0));
        // A leading wildcard never matches a `$` topic.
        let dollar = topic.starts_with('$');
        while let Some((node, at)) = stack.pop() {
            let Some(level) = levels.get(at) else {
                if let Some(v) = &node.value {
                    visit(v);
                }
                // "a/#" also matches "a".
                if let Some(v) = node.children.get("#").and_then(|n| n.value.as_ref()) {
                    visit(v);
                }
                continue;
            };
            if !(at == 0 && dollar) {
                if let Some(v) = node.children.get("#").and_then(|n| n.value.as_ref()) {
                    visit(v);
                }
                if let Some(plus) = node.children.get("+") {
                    stack.push((plus, at + 1));
                }
            }
            if let Some(child) = node.children.get(*level) {
                stack.push((child, at + 1));
            }
        }
    }

    /// Calls `visit` with the value of every key that `filter` matches: the reverse of
    /// `for_each_match`, for a trie whose keys are topic names (the retained store).
    pub fn for_each_matched_by<'a>(&'a self, filter: &str, mut visit: impl FnMut(&'a V)) {
        let levels: smallvec::SmallVec<[&str; 8]> = filter.split('/').collect();
        let mut stack: smallvec::SmallVec<[(&'a Node<V>, usize); 16]> = smallvec::SmallVec::new();
        stack.push((&self.root, 0));
        // A topic starting with `$` is not matched by a leading wildcard.
        let visible = |at: usize, level: &str| at > 0 || !level.starts_with('$');
        while let Some((node, at)) = stack.pop() {
            let Some(level) = levels.get(at) else {
                if let Some(v) = &node.value {
                    visit(v);
                }
                continue;
            };
            match *level {
                "#" => {
                    // "a/#" matches "a" itself and everything below it.
                    if at > 0
                        && let Some(v) = &node.value
                    {
                        visit(v);
                    }
                    let mut below: Vec<&'a Node<V>> = node
                        .children
                        .iter()
                        .filter(|(l, _)| visible(at, l))
                        .map(|(_, n)| n)
                        .collect();
                    while let Some(n) = below.pop() {
                        if let Some(v) = &n.value {
                            visit(v);
                        }
                        below.extend(n.children.values());
                    }
                }
                "+" => {
                    for (l, child) in &node.children {
                        if visible(at, l) {
                            stack.push((child, at + 1));
                        }
                    }
                }
                literal => {
                    if let Some(child) = node.children.get(literal) {
                        stack.push((child, at + 1));
                    }
                }
            }
        }
    }

    /// Every value, in no particular order.
    pub fn for_each_value<'a>(&'a self, mut visit: impl FnMut(&'a V)) {
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            if let Some(v) = &node.value {
                visit(v);
            }
            stack.extend(node.children.values());
        }
    }

    /// Every filter and its value (for listings and tests).
    pub fn for_each(&self, mut visit: impl FnMut(&str, &V)) {
        // (node, its level, depth, the length of `path` at its parent)
        let mut stack: Vec<(&Node<V>, &str, usize, usize)> = vec![(&self.root, "", 0, 0)];
        let mut path = String::new();
        while let Some((node, level, depth, parent_len)) = stack.pop() {
            path.truncate(parent_len);
            if depth > 1 {
                path.push('/');
            }
            path.push_str(level);
            if let (Some(v), true) = (&node.value, depth > 0) {
                visit(&path, v);
            }
            let len = path.len();
            for (child_level, child) in &node.children {
                stack.push((child, child_level, depth + 1, len));
            }
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

    #[test]
    fn deep_filters_need_no_stack() {
        // Far deeper than any thread's stack would allow one frame per level.
        let deep = "a/".repeat(200_000) + "#";
        let slashes = "/".repeat(200_000);
        let mut trie = Trie::new();
        trie.get_or_insert_with(&deep, || 1);
        trie.get_or_insert_with(&slashes, || 2);
        trie.get_or_insert_with("a/b", || 3);
        let mut hits = Vec::new();
        trie.for_each_match(&("a/".repeat(200_001) + "z"), |v| hits.push(*v));
        assert_eq!(hits, [1]);
        trie.for_each_match(&slashes, |v| hits.push(*v));
        assert_eq!(hits, [1, 2]);
        let mut listed = 0;
        trie.for_each(|f, _| listed += f.len());
        assert_eq!(listed, deep.len() + slashes.len() + 3);
        assert_eq!(trie.edit(&deep, |_| true), Some(true));
        assert_eq!(trie.len(), 2);
        assert_eq!(trie.get("a/b"), Some(&3), "the shared prefix stays");
        // The rest is dropped with the trie, also without recursion.
    }

    #[test]
    fn pruning_keeps_branches_still_in_use() {
        let mut trie = Trie::new();
        for f in ["a/b/c/d", "a/b/x", "a"] {
            trie.get_or_insert_with(f, || ());
        }
        trie.edit("a/b/c/d", |_| true);
        assert!(trie.get("a/b/x").is_some() && trie.get("a").is_some());
        let b = &trie.root.children["a"].children["b"];
        assert_eq!(b.children.len(), 1, "c and d pruned, x kept");
        trie.edit("a/b/x", |_| true);
        assert!(trie.root.children["a"].children.is_empty());
        trie.edit("a", |_| true);
        assert!(trie.root.children.is_empty());
    }
}
