//! Shared-group deliveries taken off the link to a node that failed, so another member of
//! the group gets them (`cluster::group_rescue`): a copy of each reliable publish that carries
//! a group, and taking out the ones another member can take.

use std::collections::HashSet;

use bytes::Bytes;

use super::{Body, Link};

/// A reliable publish queued on a link that carries shared-group deliveries.
pub(in crate::cluster) struct GroupFrame {
    pub seq: u64,
    /// Also for the peer's ordinary subscribers.
    pub normal: bool,
    pub groups: Vec<String>,
    pub message: Bytes,
    /// How long it has waited here.
    pub held_ms: u64,
}

impl Link {
    /// The reliable publishes queued here for a shared group: those not written yet, and with
    /// `written` also those written and not acknowledged.
    pub(in crate::cluster) fn group_frames(&self, written: bool) -> Vec<GroupFrame> {
        let q = self.queue.lock();
        let unacked = q.unacked.iter().filter(|_| written);
        unacked
            .chain(q.unsent.iter())
            .filter(|o| o.seq != 0)
            .filter_map(|o| match &o.body {
                Body::Publish {
                    normal,
                    groups,
                    message,
                    queued_at,
                } if !groups.is_empty() => Some(GroupFrame {
                    seq: o.seq,
                    normal: *normal,
                    groups: groups.clone(),
                    message: message.clone(),
                    held_ms: queued_at.elapsed().as_millis() as u64,
                }),
                _ => None,
            })
            .collect()
    }

    /// Takes the not yet written publishes numbered `seqs` off the queue (and the store):
    /// they go to other members. Returns the numbers taken (one written meanwhile stays).
    pub(in crate::cluster) fn take_unsent(&self, seqs: &HashSet<u64>) -> HashSet<u64> {
        let mut q = self.queue.lock();
        let mut taken = Vec::new();
        let mut freed = 0;
        q.unsent.retain(|o| {
            let take = o.seq != 0 && seqs.contains(&o.seq);
            if take {
                taken.push((o.seq, o.stored));
                freed += o.cost();
            }
            !take
        });
        q.bytes -= freed;
        q.forget_stored(taken.iter().copied());
        drop(q);
        let taken: HashSet<u64> = taken.into_iter().map(|(seq, _)| seq).collect();
        if !taken.is_empty() {
            self.room.notify_waiters();
        }
        taken
    }
}
