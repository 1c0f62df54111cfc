//! Shared-group messages queued for a node that failed go to a connected member elsewhere,
//! rather than waiting for that node (`cluster.hold_secs`) or dying with it. When the failure
//! detector declares a node failed, its link's reliable group publishes not written to it yet
//! leave the queue for a member connected on this node or at another live node (nothing of
//! them reached the failed node, so no member gets one twice); those no connected member can
//! take stay for the node's return. When this node gives up on a node (or it comes back as a
//! new run, or leaves), everything still queued for it is dropped: the group part of those
//! written and not acknowledged goes to another member too, since the failed node may never
//! have delivered it (a member may then get one the failed node did deliver: at least once).

use std::collections::HashSet;
use std::sync::Arc;

use super::link::{GroupFrame, Link};
use super::{Cluster, wire};
use crate::broker::{Message, Metrics};

impl Cluster {
    /// The node's link was declared failed: its unwritten group publishes that a connected
    /// member elsewhere can take go there. Returns how many went.
    pub(super) fn rescue_unsent_group_messages(&self, link: &Link) -> usize {
        let frames: Vec<GroupFrame> = link
            .group_frames(false)
            .into_iter()
            .filter(|f| !f.normal)
            .collect();
        if frames.is_empty() {
            return 0;
        }
        let Some(broker) = self.broker() else {
            return 0;
        };
        // Only a frame every group of which has a taker leaves the queue.
        let movable: Vec<(GroupFrame, Arc<Message>)> = frames
            .into_iter()
            .filter_map(|f| {
                let message = Arc::new(self.frame_message(&f)?);
                let all = f.groups.iter().all(|g| {
                    broker.router.group_connected(g) || self.group_taker_elsewhere(&message, g)
                });
                all.then_some((f, message))
            })
            .collect();
        let seqs: HashSet<u64> = movable.iter().map(|(f, _)| f.seq).collect();
        let taken = link.take_unsent(&seqs);
        let (mut moved, mut missed) = (0, 0);
        for (f, message) in movable.into_iter().filter(|(f, _)| taken.contains(&f.seq)) {
            for group in &f.groups {
                if self.deliver_to_group(&message, group) {
                    moved += 1;
                } else {
                    missed += 1;
                }
            }
        }
        self.note_missed(&link.node_id, missed);
        moved
    }

    /// This node gives up on the node of `link` and drops what it queued for it: the group
    /// part of each reliable publish goes to a connected member elsewhere where there is one.
    /// Returns how many frames went whole (none of them is dropped after all).
    pub(super) fn rescue_all_group_messages(&self, link: &Link) -> usize {
        let Some(broker) = self.broker() else {
            return 0;
        };
        let mut whole = 0;
        let mut missed = 0;
        for f in link.group_frames(true) {
            let Some(message) = self.frame_message(&f) else {
                continue;
            };
            let message = Arc::new(message);
            let mut all = true;
            for group in &f.groups {
                let taker = broker.router.group_connected(group)
                    || self.group_taker_elsewhere(&message, group);
                let delivered = taker && self.deliver_to_group(&message, group);
                missed += usize::from(taker && !delivered);
                all &= delivered;
            }
            whole += usize::from(all && !f.normal);
        }
        self.note_missed(&link.node_id, missed);
        whole
    }

    /// The message a queued frame carries, as this node's clients would get it (its expiry
    /// counted down by the time it waited); None once expired, or unreadable.
    fn frame_message(&self, f: &GroupFrame) -> Option<Message> {
        let wire = wire::decode_message(&f.message).ok()?;
        let mut message = wire::after_holding(wire, f.held_ms)?.into_message();
        // A delivery, not a retained write: it is not stored again where it goes.
        message.retain = false;
        Some(message)
    }

    /// Whether a member of `group` is connected at a live node whose link delivers.
    fn group_taker_elsewhere(&self, message: &Message, group: &str) -> bool {
        let links = self.links.read();
        self.remote
            .match_topic(&message.topic)
            .groups
            .iter()
            .filter(|g| &*g.key == group)
            .flat_map(|g| g.connected.iter())
            .any(|n| links.get(n).is_some_and(|l| l.is_healthy()))
    }

    /// Gives `message` to one connected member of `group`: here if one is connected, else
    /// at another node; false when none could take it after all (it left meanwhile).
    fn deliver_to_group(&self, message: &Arc<Message>, group: &str) -> bool {
        let Some(broker) = self.broker() else {
            return false;
        };
        let delivered = broker.deliver_to_local_group(message, group)
            || crate::broker::ClusterHook::hand_to_group(self, message, group);
        if delivered {
            Metrics::add(&self.metrics.group_messages_rescued, 1);
        }
        delivered
    }

    /// Counts and logs (once per failed node's rescue) group messages that had a taker when
    /// looked at and none when given to it.
    fn note_missed(&self, node: &str, missed: usize) {
        if missed > 0 {
            Metrics::add(&self.metrics.relay_dropped, missed as u64);
            tracing::warn!(node = %node, missed, "shared-group messages queued for a failed node lost their member before reaching it; dropped");
        }
    }
}
