//! Copies of other nodes' sessions on this node's disk, with persistence on: each copy is a
//! session in the store under a reserved id naming the holder's run, the holder and the
//! client (`copy_id`; it starts with U+0000, which no MQTT client id can hold, so copies
//! never mix with this node's own sessions). The holder's changes are written as they are
//! applied, a whole copy when one arrives, and the copy is removed when it is dropped or
//! brought back; so a node restarted from its store still has the copies it held, and a
//! session whose holder and copies all died together comes back with a copy's node. The
//! writes reach the disk as the node's others do (`persistence.sync`).

use std::sync::Arc;

use super::Cluster;
use super::replicas::Replica;
use crate::broker::replica::ReplicaOp;
use crate::store::{COPY_PREFIX, Op, RestoredSession, SessionMeta, Store, StoredSubscription};

/// The store id of the copy of `client`'s session held at `holder` (as its run
/// `generation`). None past the store's longest session id: such a copy (its client id near
/// MQTT's 65,535-byte limit) is kept in memory only.
pub(super) fn copy_id(holder: &str, generation: u64, client: &str) -> Option<Arc<str>> {
    let id = format!("{COPY_PREFIX}{generation}\u{0}{holder}\u{0}{client}");
    (id.len() <= usize::from(u16::MAX)).then(|| id.into())
}

/// (holder's run, holder, client) of a copy's store id. Node ids hold no U+0000 (the
/// holder ends at the first one); the client id is the rest.
pub(super) fn parse_copy_id(id: &str) -> Option<(u64, &str, &str)> {
    let rest = id.strip_prefix(COPY_PREFIX)?;
    let (generation, rest) = rest.split_once('\0')?;
    let (holder, client) = rest.split_once('\0')?;
    Some((generation.parse().ok()?, holder, client))
}

/// The session record of copy `id`: its expiry (which counts from when its holder is gone,
/// not from this record) and its owner.
fn meta(id: Arc<str>, expiry_interval: u32, owner: Option<&str>) -> Op {
    Op::Meta {
        client: id,
        meta: SessionMeta {
            expiry_interval,
            disconnected_at_ms: None,
            will: None,
            owner: owner.map(str::to_string),
        },
    }
}

impl Cluster {
    fn copy_store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// Writes one change `holder` made to the copy of `client` held here.
    pub(super) fn store_copy_op(
        &self,
        holder: &str,
        generation: u64,
        client: &str,
        op: &ReplicaOp,
    ) {
        let (Some(store), Some(id)) = (self.copy_store(), copy_id(holder, generation, client))
        else {
            return;
        };
        let op = match op {
            ReplicaOp::Queued { seq, delivery } => {
                let Some(delivery) = (**delivery).clone().into_delivery(*seq) else {
                    return; // expired or unreadable: the copy keeps it in memory only
                };
                Op::Queued {
                    client: id,
                    seq: *seq,
                    delivery,
                }
            }
            ReplicaOp::Sent { seq, mark } => Op::Sent {
                client: id,
                seq: *seq,
                mark: *mark,
            },
            ReplicaOp::Done { seq } => Op::Done {
                client: id,
                seq: *seq,
            },
            ReplicaOp::Subscribed {
                filter,
                subscription,
            } => Op::Subscribed {
                client: id,
                filter: filter.clone(),
                subscription: *subscription,
            },
            ReplicaOp::Unsubscribed { filter } => Op::Unsubscribed {
                client: id,
                filter: filter.clone(),
            },
            ReplicaOp::InboundQos2 { packet_id, held } => Op::InboundQos2 {
                client: id,
                packet_id: *packet_id,
                held: *held,
            },
            ReplicaOp::Meta {
                expiry_interval,
                owner,
            } => meta(id, *expiry_interval, owner.as_deref()),
            // Whole copies and removals go through `store_copy` and `forget_copy`.
            ReplicaOp::Snapshot(_) | ReplicaOp::Gone => return,
        };
        store.submit(op);
    }

    /// Writes the whole copy `r` of `client` held for `holder`, in one commit.
    pub(super) fn store_copy(&self, holder: &str, client: &str, r: &Replica) {
        let (Some(store), Some(id)) = (
            self.copy_store(),
            copy_id(holder, r.holder_generation, client),
        ) else {
            return;
        };
        let _group = store.group();
        store.submit(Op::SessionGone(id.clone()));
        store.submit(meta(id.clone(), r.expiry_interval, r.owner.as_deref()));
        for (filter, subscription) in &r.subscriptions {
            store.submit(Op::Subscribed {
                client: id.clone(),
                filter: filter.clone(),
                subscription: *subscription,
            });
        }
        for (seq, (delivery, mark)) in &r.deliveries {
            let Some(d) = delivery.clone().into_delivery(*seq) else {
                continue;
            };
            store.submit(Op::Queued {
                client: id.clone(),
                seq: *seq,
                delivery: d,
            });
            if let Some(mark) = mark {
                store.submit(Op::Sent {
                    client: id.clone(),
                    seq: *seq,
                    mark: *mark,
                });
            }
        }
        for packet_id in &r.inbound_qos2 {
            store.submit(Op::InboundQos2 {
                client: id.clone(),
                packet_id: *packet_id,
                held: true,
            });
        }
    }

    /// Removes the stored copy of `client` held for `holder` as its run `generation`.
    pub(super) fn forget_copy(&self, holder: &str, generation: u64, client: &str) {
        if let (Some(store), Some(id)) = (self.copy_store(), copy_id(holder, generation, client)) {
            store.submit(Op::SessionGone(id));
        }
    }
}

/// The copies the store kept, as (client, holder, copy); records that are not copies'
/// are skipped (the store hands over only ids with `COPY_PREFIX`).
pub(super) fn restored_copies(
    sessions: Vec<RestoredSession>,
) -> Vec<(Arc<str>, Arc<str>, Replica)> {
    sessions
        .into_iter()
        .filter_map(|s| {
            let (generation, holder, client) = parse_copy_id(&s.client)?;
            let replica = Replica {
                holder_generation: generation,
                expiry_interval: s.meta.expiry_interval,
                owner: s.meta.owner.clone(),
                subscriptions: s
                    .subscriptions
                    .iter()
                    .map(|(f, r)| (f.clone(), StoredSubscription::from_record(r)))
                    .collect(),
                deliveries: s
                    .deliveries
                    .iter()
                    .map(|(d, mark)| {
                        let stored = crate::store::records::StoredDelivery::from_delivery(d);
                        (d.store_seq, (stored, *mark))
                    })
                    .collect(),
                inbound_qos2: s.inbound_qos2.iter().copied().collect(),
                claimed: None,
                orphaned_at: None,
                restored: Some(None),
            };
            Some((Arc::from(client), Arc::from(holder), replica))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ids_name_holder_run_and_client_and_read_back() {
        let id = copy_id("node-1", 42, "a\u{1}b/c").unwrap();
        assert!(id.starts_with('\0'), "no MQTT client id can start so");
        assert_eq!(parse_copy_id(&id), Some((42, "node-1", "a\u{1}b/c")));
        assert_eq!(parse_copy_id("node-1"), None);
        assert_eq!(parse_copy_id(&format!("{COPY_PREFIX}x\u{0}n\u{0}c")), None);
        assert!(copy_id("n", 1, &"c".repeat(65_535)).is_none());
    }
}
