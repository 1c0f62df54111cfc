//! Routes: which filters each node has subscribers for. `LocalRoutes` is this node's set, as
//! the router reports first and last subscribers, summarised to fit gossip (ordinary filters
//! widened to wildcards past a size budget: a wider route costs a wasted forward, a missing one
//! a lost message; shared-subscription keys are never widened, since groups are delivered by
//! exact key). The text is cut into gossip values of at most `CHUNK_BYTES` wherever the cut
//! falls, so no single route, however long, makes a value too large for a datagram. `RemoteRoutes` merges every other node's routes into one trie, combining each
//! node's gossiped set with changes pushed over peer links that gossip has not caught up with.
//! Beside a shared group's key a node advertises a mark (`connected_mark`) while one of the
//! group's members is connected there, so other nodes give their group messages to nodes
//! whose members can take them now, not to one whose members are all offline.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;

use crate::topic::{Trie, parse_shared};

/// The route a node advertises beside a shared group's key (`$share/{group}/{filter}`) while
/// a member of that group is connected there: the key behind a `+`. A level holding `+` and
/// more is not a valid filter, so no subscription can advertise it.
pub fn connected_mark(group_key: &str) -> String {
    format!("+{group_key}")
}

/// What a route key is.
enum RouteKind<'a> {
    /// A filter with ordinary subscribers.
    Ordinary,
    /// A shared group with members (`key`), delivered by exact key.
    Group { key: &'a str, filter: &'a str },
    /// A shared group with a member connected now (`connected_mark` of `key`).
    Connected { key: &'a str, filter: &'a str },
}

fn kind(route: &str) -> RouteKind<'_> {
    let (key, marked) = match route.strip_prefix('+') {
        Some(key) => (key, true),
        None => (route, false),
    };
    match parse_shared(key) {
        Ok(Some(shared)) if marked => RouteKind::Connected {
            key,
            filter: shared.filter,
        },
        Ok(Some(shared)) => RouteKind::Group {
            key,
            filter: shared.filter,
        },
        _ => RouteKind::Ordinary,
    }
}

/// Most bytes of route text one gossip value carries (chitchat cannot send a value that does
/// not fit one datagram, and stops at the first such value).
pub const CHUNK_BYTES: usize = 48 * 1024;
/// Chunks of ordinary routes a node advertises; past CHUNK_BYTES * MAX_CHUNKS they are
/// widened. Shared-subscription keys come on top, exact.
pub const MAX_CHUNKS: usize = 4;

#[derive(Default)]
pub struct LocalRoutes {
    keys: Mutex<BTreeSet<String>>,
    version: AtomicU64,
}

impl LocalRoutes {
    /// Brings `key` in line with the router: `truth` says whether it has subscribers now, read
    /// under this lock, so updates racing for one key end in the router's final state;
    /// `then` gets the new version and state, also under the lock, so pushes leave in version
    /// order.
    pub fn update(&self, key: &str, truth: impl FnOnce() -> bool, then: impl FnOnce(u64, bool)) {
        self.set(key, truth, then, true);
    }

    /// As `update`, but nothing (no new version, no push) when `truth` agrees with what is
    /// advertised: for marks that flip back and forth as clients come and go.
    pub fn update_if_changed(
        &self,
        key: &str,
        truth: impl FnOnce() -> bool,
        then: impl FnOnce(u64, bool),
    ) {
        self.set(key, truth, then, false);
    }

    fn set(
        &self,
        key: &str,
        truth: impl FnOnce() -> bool,
        then: impl FnOnce(u64, bool),
        even_unchanged: bool,
    ) {
        let mut keys = self.keys.lock();
        let present = truth();
        if !even_unchanged && keys.contains(key) == present {
            return;
        }
        if present {
            keys.insert(key.to_string());
        } else {
            keys.remove(key);
        }
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        then(version, present);
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// `key` is advertised (its push, made under this lock, is queued on every link).
    pub fn contains(&self, key: &str) -> bool {
        self.keys.lock().contains(key)
    }

    pub fn len(&self) -> usize {
        self.keys.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (version, chunks of newline-separated routes) to gossip. The routes are copied under
    /// the lock and summarised outside it, so subscribers are not held up meanwhile.
    pub fn gossip_chunks(&self) -> (u64, Vec<String>) {
        let (version, keys) = {
            let keys = self.keys.lock();
            (self.version(), keys.clone())
        };
        let summary = summarize(&keys, CHUNK_BYTES * MAX_CHUNKS);
        (version, chunk(&summary, CHUNK_BYTES))
    }
}

/// `filter` cut to its first `depth` levels plus `#` (unchanged when it is no deeper).
fn widen(filter: &str, depth: usize) -> String {
    let levels: Vec<&str> = filter.split('/').collect();
    if levels.len() <= depth {
        return filter.to_string();
    }
    let mut out = levels[..depth].join("/");
    out.push_str("/#");
    out
}

fn text_len(keys: &BTreeSet<String>) -> usize {
    keys.iter().map(|k| k.len() + 1).sum()
}

/// The routes, ordinary filters widened until their text (with the shared keys and their
/// connected marks, which stay exact) fits `budget` bytes. Each result matches at least every
/// topic its originals matched, and every shared group keeps its exact key.
pub fn summarize(keys: &BTreeSet<String>, budget: usize) -> BTreeSet<String> {
    if text_len(keys) <= budget {
        return keys.clone();
    }
    let (shared, ordinary): (BTreeSet<String>, BTreeSet<String>) = keys
        .iter()
        .cloned()
        .partition(|k| !matches!(kind(k), RouteKind::Ordinary));
    let budget = budget.saturating_sub(text_len(&shared));
    let deepest = ordinary
        .iter()
        .map(|k| k.split('/').count())
        .max()
        .unwrap_or(1);
    let mut summary = None;
    for depth in (1..deepest).rev() {
        let widened: BTreeSet<String> = ordinary.iter().map(|k| widen(k, depth)).collect();
        if text_len(&widened) <= budget {
            summary = Some(widened);
            break;
        }
    }
    let mut summary = summary.unwrap_or_else(|| {
        // Everything: "#" for ordinary topics, "$X/#" for each `$` root.
        let mut all = BTreeSet::from(["#".to_string()]);
        all.extend(
            ordinary
                .iter()
                .filter(|k| k.starts_with('$'))
                .map(|k| widen(k, 1)),
        );
        all
    });
    summary.extend(shared);
    summary
}

/// The routes as newline-terminated text cut into pieces of at most `max` bytes (at
/// character boundaries; a route may straddle two pieces).
fn chunk(keys: &BTreeSet<String>, max: usize) -> Vec<String> {
    let mut text = String::with_capacity(text_len(keys));
    for k in keys {
        text.push_str(k);
        text.push('\n');
    }
    let mut chunks = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let mut cut = rest.len().min(max);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, tail) = rest.split_at(cut);
        chunks.push(piece.to_string());
        rest = tail;
    }
    if chunks.is_empty() {
        chunks.push(String::new());
    }
    chunks
}

/// The routes in gossiped chunks (joined first: a route may straddle two).
pub fn parse_chunks<'a>(chunks: impl IntoIterator<Item = &'a str>) -> HashSet<String> {
    let text: String = chunks.into_iter().collect();
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Node ids, usually a few.
pub type NodeList = SmallVec<[Arc<str>; 4]>;

/// A shared group other nodes have members in.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteGroup {
    /// `$share/{group}/{filter}`.
    pub key: Arc<str>,
    /// Nodes with members in it.
    pub nodes: NodeList,
    /// Those of `nodes` where a member is connected now.
    pub connected: NodeList,
}

/// What the remote nodes want for one topic.
#[derive(Debug, Default, PartialEq)]
pub struct RemoteMatch {
    /// Nodes with ordinary subscribers.
    pub nodes: NodeList,
    /// Shared groups and the nodes with members in them.
    pub groups: Vec<RemoteGroup>,
}

#[derive(Default)]
struct Entry {
    nodes: NodeList,
    /// Group key -> nodes with members.
    groups: HashMap<Arc<str>, NodeList>,
    /// Group key -> nodes with a member connected.
    connected: HashMap<Arc<str>, NodeList>,
}

impl Entry {
    /// The node list `route` (a key stored at this entry) adds its node to.
    fn list_for(&mut self, route: &RouteKind<'_>) -> &mut NodeList {
        match route {
            RouteKind::Ordinary => &mut self.nodes,
            RouteKind::Group { key, .. } => self.groups.entry(Arc::from(*key)).or_default(),
            RouteKind::Connected { key, .. } => self.connected.entry(Arc::from(*key)).or_default(),
        }
    }

    /// Takes `node` off the list `route` names, dropping a group's list once empty.
    fn remove(&mut self, route: &RouteKind<'_>, node: &Arc<str>) {
        let (lists, key) = match route {
            RouteKind::Ordinary => {
                self.nodes.retain(|n| n != node);
                return;
            }
            RouteKind::Group { key, .. } => (&mut self.groups, *key),
            RouteKind::Connected { key, .. } => (&mut self.connected, *key),
        };
        if let Some(nodes) = lists.get_mut(key) {
            nodes.retain(|n| n != node);
            if nodes.is_empty() {
                lists.remove(key);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.groups.is_empty() && self.connected.is_empty()
    }
}

#[derive(Default)]
struct NodeRoutes {
    gossip_version: u64,
    gossip: HashSet<String>,
    /// Pushed changes newer than the gossip seen, in order.
    pushed: std::collections::VecDeque<(u64, String, bool)>,
    effective: HashSet<String>,
}

/// Pushed changes kept per node before gossip catches up (gossip repairs any dropped).
const MAX_PUSHED: usize = 100_000;

#[derive(Default)]
struct RemoteIndex {
    trie: Trie<Entry>,
    nodes: HashMap<Arc<str>, NodeRoutes>,
}

#[derive(Default)]
pub struct RemoteRoutes {
    index: RwLock<RemoteIndex>,
}

impl RemoteIndex {
    fn add(&mut self, node: &Arc<str>, route: &str) {
        let kind = kind(route);
        let filter = match kind {
            RouteKind::Ordinary => route,
            RouteKind::Group { filter, .. } | RouteKind::Connected { filter, .. } => filter,
        };
        let nodes = self
            .trie
            .get_or_insert_with(filter, Entry::default)
            .list_for(&kind);
        if !nodes.contains(node) {
            nodes.push(node.clone());
        }
    }

    fn remove(&mut self, node: &Arc<str>, route: &str) {
        let kind = kind(route);
        let filter = match kind {
            RouteKind::Ordinary => route,
            RouteKind::Group { filter, .. } | RouteKind::Connected { filter, .. } => filter,
        };
        self.trie.edit(filter, |entry| {
            entry.remove(&kind, node);
            entry.is_empty()
        });
    }

    /// Recomputes a node's effective routes and applies the difference to the trie.
    fn refresh(&mut self, node: &Arc<str>) {
        let Some(routes) = self.nodes.get_mut(node) else {
            return;
        };
        let mut effective = routes.gossip.clone();
        for (_, key, present) in &routes.pushed {
            if *present {
                effective.insert(key.clone());
            } else {
                effective.remove(key);
            }
        }
        let old = std::mem::replace(&mut routes.effective, effective.clone());
        for key in old.difference(&effective) {
            self.remove(node, key);
        }
        for key in effective.difference(&old) {
            self.add(node, key);
        }
    }
}

impl RemoteRoutes {
    /// A node membership knows: from now on its routes are taken (and until `remove_node`;
    /// routes of nodes not known are ignored, so a late push from a node given up on cannot
    /// re-create routes that nothing would remove).
    pub fn add_node(&self, node: &Arc<str>) {
        self.index.write().nodes.entry(node.clone()).or_default();
    }

    /// A node's gossiped routes at `version` (ignored when older than what is known).
    pub fn apply_gossip(&self, node: &Arc<str>, version: u64, keys: HashSet<String>) {
        let mut index = self.index.write();
        let Some(routes) = index.nodes.get_mut(node) else {
            return;
        };
        if version < routes.gossip_version {
            return;
        }
        routes.gossip_version = version;
        routes.gossip = keys;
        routes.pushed.retain(|(v, _, _)| *v > version);
        index.refresh(node);
    }

    /// A route change pushed over a peer link, ahead of gossip. Applied on its own (one key),
    /// so a burst of subscriptions costs linear time, not quadratic.
    pub fn apply_push(&self, node: &Arc<str>, version: u64, key: String, present: bool) {
        let mut index = self.index.write();
        let Some(routes) = index.nodes.get_mut(node) else {
            return;
        };
        if version <= routes.gossip_version {
            return;
        }
        if routes.pushed.len() >= MAX_PUSHED {
            routes.pushed.pop_front();
        }
        routes.pushed.push_back((version, key.clone(), present));
        let changed = if present {
            routes.effective.insert(key.clone())
        } else {
            routes.effective.remove(&key)
        };
        if changed {
            if present {
                index.add(node, &key);
            } else {
                index.remove(node, &key);
            }
        }
    }

    /// A node restarted with its store, as the same relay run: its routes stay in force (its
    /// persistent sessions came back with it) until its new process gossips its own, whose
    /// versions count from the start again.
    pub fn new_run(&self, node: &Arc<str>) {
        let mut index = self.index.write();
        if let Some(routes) = index.nodes.get_mut(node) {
            routes.gossip = routes.effective.clone();
            routes.gossip_version = 0;
            routes.pushed.clear();
        }
    }

    /// Forgets a node (failed or left).
    pub fn remove_node(&self, node: &Arc<str>) {
        let mut index = self.index.write();
        if let Some(routes) = index.nodes.remove(node) {
            for key in &routes.effective {
                index.remove(node, key);
            }
        }
    }

    /// The routes in force for `node` (its gossiped set with the pushes newer than it).
    pub fn routes_of(&self, node: &str) -> HashSet<String> {
        self.index
            .read()
            .nodes
            .get(node)
            .map(|n| n.effective.clone())
            .unwrap_or_default()
    }

    /// Number of (node, route) pairs known.
    pub fn len(&self) -> usize {
        self.index
            .read()
            .nodes
            .values()
            .map(|n| n.effective.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn match_topic(&self, topic: &str) -> RemoteMatch {
        let index = self.index.read();
        let mut out = RemoteMatch::default();
        index.trie.for_each_match(topic, |entry| {
            for n in &entry.nodes {
                if !out.nodes.contains(n) {
                    out.nodes.push(n.clone());
                }
            }
            for (key, nodes) in &entry.groups {
                out.groups.push(RemoteGroup {
                    key: key.clone(),
                    nodes: nodes.clone(),
                    connected: entry.connected.get(key).cloned().unwrap_or_default(),
                });
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;

    fn set(keys: &[&str]) -> HashSet<String> {
        keys.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn summary_is_exact_when_small_and_a_superset_when_widened() {
        let keys: BTreeSet<String> = (0..100_000)
            .map(|i| format!("fleet/{}/device-{i}/telemetry", i % 50))
            .collect();
        let summary = summarize(&keys, CHUNK_BYTES * MAX_CHUNKS);
        assert!(text_len(&summary) <= CHUNK_BYTES * MAX_CHUNKS);
        assert!(
            summary.contains("fleet/7/#"),
            "{:?}",
            summary.iter().take(3).collect::<Vec<_>>()
        );
        for k in keys.iter().step_by(997) {
            let topic = k.as_str();
            assert!(
                summary.iter().any(|f| matches(f, topic)),
                "{topic} lost by widening"
            );
        }
        let chunks = chunk(&summary, CHUNK_BYTES);
        assert!(chunks.len() <= MAX_CHUNKS && chunks.iter().all(|c| c.len() <= CHUNK_BYTES));
        assert_eq!(
            parse_chunks(chunks.iter().map(String::as_str)),
            summary.into_iter().collect()
        );

        let small: BTreeSet<String> = ["a/b", "$share/g/x/y"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(summarize(&small, 1000), small);
    }

    #[test]
    fn widest_fallback_keeps_dollar_roots_and_exact_groups() {
        let keys: BTreeSet<String> = ["a", "b", "$SYS/x", "$share/g/q/r/s"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let all = summarize(&keys, 1);
        assert_eq!(
            all,
            ["#", "$SYS/#", "$share/g/q/r/s"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
    }

    #[test]
    fn shared_keys_are_never_widened_past_the_budget() {
        // Past 192 KB of routes, `$share/g/a/b/c` used to be advertised as `$share/g/a/#`:
        // the sender grouped by that key and the receiver knew only the exact one, so group
        // messages were dropped or delivered twice.
        let mut keys: BTreeSet<String> = (0..20_000)
            .map(|i| format!("fleet/{}/device-{i}/telemetry", i % 50))
            .collect();
        keys.insert("$share/g/a/b/c".into());
        let summary = summarize(&keys, CHUNK_BYTES * MAX_CHUNKS);
        assert!(summary.contains("$share/g/a/b/c"));
        assert!(!summary.iter().any(|k| k.starts_with("$share/g/a/#")));
        assert!(summary.contains("fleet/7/#"), "ordinary routes widened");
    }

    #[test]
    fn a_route_longer_than_a_gossip_value_straddles_chunks() {
        // One SUBSCRIBE of a 60 KB filter used to sit alone in a value too large for a
        // datagram, and chitchat then stopped sending that node's later keys.
        let long = format!("big/{}", "é".repeat(30_000));
        let keys: BTreeSet<String> = [long.clone(), "a/b".into(), "$share/g/x".into()]
            .into_iter()
            .collect();
        let chunks = chunk(&summarize(&keys, CHUNK_BYTES * MAX_CHUNKS), CHUNK_BYTES);
        assert!(chunks.len() >= 2);
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_BYTES));
        let back = parse_chunks(chunks.iter().map(String::as_str));
        assert!(back.contains(&long) && back.contains("a/b") && back.contains("$share/g/x"));
        assert_eq!(chunk(&BTreeSet::new(), CHUNK_BYTES), vec![String::new()]);
    }

    #[test]
    fn remote_index_merges_gossip_and_pushes() {
        let r = RemoteRoutes::default();
        let (n1, n2): (Arc<str>, Arc<str>) = ("n1".into(), "n2".into());
        r.apply_gossip(&n1, 5, set(&["ignored/#"]));
        r.apply_push(&n1, 6, "ignored/too".into(), true);
        assert!(
            r.is_empty(),
            "routes of a node membership does not know are ignored"
        );
        r.add_node(&n1);
        r.add_node(&n2);
        r.apply_gossip(&n1, 5, set(&["a/+", "$share/g/a/#"]));
        r.apply_gossip(&n2, 1, set(&["a/b"]));
        let m = r.match_topic("a/b");
        let mut nodes: Vec<&str> = m.nodes.iter().map(|n| &**n).collect();
        nodes.sort();
        assert_eq!(nodes, ["n1", "n2"]);
        assert_eq!(m.groups.len(), 1);
        assert_eq!(&*m.groups[0].key, "$share/g/a/#");
        assert!(m.groups[0].connected.is_empty(), "no member connected");

        // A push newer than gossip takes effect; an older gossip snapshot does not undo it.
        r.apply_push(&n2, 2, "x/#".into(), true);
        assert_eq!(r.match_topic("x/y").nodes.len(), 1);
        r.apply_gossip(&n2, 1, set(&["a/b"]));
        assert_eq!(r.match_topic("x/y").nodes.len(), 1, "stale gossip ignored");
        // Gossip that has caught up replaces the pushes.
        r.apply_gossip(&n2, 2, set(&["a/b", "x/#"]));
        r.apply_push(&n2, 3, "x/#".into(), false);
        assert!(r.match_topic("x/y").nodes.is_empty());
        // A push older than gossip is ignored.
        r.apply_push(&n1, 4, "old/#".into(), true);
        assert!(r.match_topic("old/x").nodes.is_empty());

        r.remove_node(&n1);
        r.apply_push(&n1, 9, "late/#".into(), true);
        assert!(
            r.match_topic("late/x").nodes.is_empty(),
            "a late push after removal"
        );
        assert!(r.match_topic("a/b").groups.is_empty());
        assert_eq!(
            r.match_topic("a/b").nodes.as_slice(),
            std::slice::from_ref(&n2)
        );
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn connected_marks_say_where_a_group_has_a_member_online_and_stay_exact() {
        let r = RemoteRoutes::default();
        let (n2, n3): (Arc<str>, Arc<str>) = ("n2".into(), "n3".into());
        r.add_node(&n2);
        r.add_node(&n3);
        let key = "$share/g/a/+";
        r.apply_gossip(&n2, 1, set(&[key, &connected_mark(key)]));
        r.apply_gossip(&n3, 1, set(&[key]));
        let m = r.match_topic("a/b");
        assert!(m.nodes.is_empty(), "a mark is no ordinary route");
        assert_eq!(m.groups.len(), 1);
        assert_eq!(m.groups[0].nodes.len(), 2);
        assert_eq!(m.groups[0].connected.as_slice(), std::slice::from_ref(&n2));
        // n2's member goes offline, n3's comes online.
        r.apply_push(&n2, 2, connected_mark(key), false);
        r.apply_push(&n3, 2, connected_mark(key), true);
        let m = r.match_topic("a/b");
        assert_eq!(m.groups[0].connected.as_slice(), std::slice::from_ref(&n3));
        // No subscription spells a mark: "+$share" is no valid filter level.
        assert!(!crate::topic::valid_filter(&connected_mark(key)));
        // Past the budget, marks stay exact as the group keys do.
        let mut keys: BTreeSet<String> = (0..20_000)
            .map(|i| format!("fleet/{}/device-{i}/telemetry", i % 50))
            .collect();
        keys.insert(connected_mark(key));
        assert!(summarize(&keys, CHUNK_BYTES * MAX_CHUNKS).contains(&connected_mark(key)));
        // A local mark is pushed only when it changes.
        let l = LocalRoutes::default();
        let mut pushes = 0;
        for online in [true, true, false, false, true] {
            l.update_if_changed(&connected_mark(key), || online, |_, _| pushes += 1);
        }
        assert_eq!(pushes, 3);
    }

    #[test]
    fn local_routes_version_every_change() {
        let l = LocalRoutes::default();
        let mut pushed = Vec::new();
        for (key, present) in [("a", true), ("b", true), ("a", false)] {
            l.update(key, || present, |v, p| pushed.push((v, p)));
        }
        assert_eq!(pushed, [(1, true), (2, true), (3, false)]);
        let (v, chunks) = l.gossip_chunks();
        assert_eq!(v, 3);
        assert_eq!(parse_chunks(chunks.iter().map(String::as_str)), set(&["b"]));
    }
}
