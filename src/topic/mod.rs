//! Topic names and filters: validation by the spec's rules, shared-subscription parsing, and the
//! subscription trie that matches a topic against many filters without scanning them. It knows
//! nothing of sessions or clients: the trie stores whatever value the broker gives it.

mod trie;
mod validate;

pub use trie::Trie;
pub use validate::{
    InvalidSharedFilter, SharedFilter, TopicBound, check_topic_bounds, is_sys_topic, parse_shared,
    valid_filter, valid_topic_name,
};

/// Whether `filter` matches `topic` (for tests and one-off checks; the trie does the bulk work).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}
