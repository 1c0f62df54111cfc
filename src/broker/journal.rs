//! A persistent session's record of every change to what must outlive its node: deliveries
//! queued, sent, finished; subscriptions; inbound QoS 2 ids; its own record. Each change goes,
//! under the session's lock (so in the order it happened), to the store when persistence is
//! on, and to the nodes that keep a replica of the session when `cluster.session_replicas` is
//! set (`replica`). Each call returns the store op's ticket, which an acknowledgement waits
//! for with `sync = "always"` (0 without a store). Sessions without a journal (clean ones, or
//! neither persistence nor replicas) cost nothing here.

use std::sync::Arc;

use super::Delivery;
use super::replica::{ReplicaLine, ReplicaOp, stored_delivery};
use super::session::{InflightState, PendingWill, SubscriptionRecord};
use crate::codec::QoS;
use crate::store::records::StoredWill;
use crate::store::{InflightMark, Op, SessionMeta, Store, StoredSubscription};

#[derive(Debug)]
pub struct Journal {
    store: Option<Arc<Store>>,
    client: Arc<str>,
    /// The sequence number the next queued delivery is recorded under.
    next_seq: u64,
    /// The session's replicas, when replication is on.
    pub replicas: Option<ReplicaLine>,
}

impl Journal {
    pub fn new(
        store: Option<Arc<Store>>,
        client: Arc<str>,
        next_seq: u64,
        replicas: Option<ReplicaLine>,
    ) -> Journal {
        Journal {
            store,
            client,
            next_seq: next_seq.max(1),
            replicas,
        }
    }

    /// The store op's ticket (0 without a store).
    fn submit(&self, op: impl FnOnce() -> Op) -> u64 {
        self.store.as_ref().map_or(0, |s| s.submit(op()))
    }

    fn replicate(&self, op: impl FnOnce(&str) -> ReplicaOp) {
        if let Some(line) = &self.replicas
            && !line.nodes.is_empty()
        {
            line.send(&self.client, op(&line.node_id));
        }
    }

    /// Records a delivery being queued, numbering it; QoS 0 only for an offline session
    /// (`mqtt.queue_qos0_offline`): a connected one gets it now or never.
    pub fn queued(&mut self, d: &mut Delivery, online: bool) -> Option<u64> {
        if d.store_seq != 0 || (online && d.qos == QoS::AtMostOnce) {
            return None;
        }
        d.store_seq = self.next_seq;
        self.next_seq += 1;
        self.replicate(|me| ReplicaOp::Queued {
            seq: d.store_seq,
            delivery: Box::new(stored_delivery(me, d)),
        });
        Some(self.submit(|| Op::Queued {
            client: self.client.clone(),
            seq: d.store_seq,
            delivery: d.clone(),
        }))
    }

    /// A recorded delivery went out with `packet_id`, or moved on in its QoS 2 handshake;
    /// the store op's ticket (0: the delivery is not recorded, or no store).
    pub fn sent(&self, d: &Delivery, packet_id: u16, state: InflightState) -> u64 {
        if d.store_seq == 0 {
            return 0;
        }
        let mark = InflightMark::new(packet_id, state);
        self.replicate(|_| ReplicaOp::Sent {
            seq: d.store_seq,
            mark,
        });
        self.submit(|| Op::Sent {
            client: self.client.clone(),
            seq: d.store_seq,
            mark,
        })
    }

    /// A recorded delivery is finished with.
    pub fn done(&self, d: &Delivery) {
        if d.store_seq != 0 {
            self.replicate(|_| ReplicaOp::Done { seq: d.store_seq });
            self.submit(|| Op::Done {
                client: self.client.clone(),
                seq: d.store_seq,
            });
        }
    }

    pub fn subscribed(&self, filter: &str, record: &SubscriptionRecord) -> u64 {
        let subscription = StoredSubscription::from_record(record);
        self.replicate(|_| ReplicaOp::Subscribed {
            filter: filter.to_string(),
            subscription,
        });
        self.submit(|| Op::Subscribed {
            client: self.client.clone(),
            filter: filter.to_string(),
            subscription,
        })
    }

    pub fn unsubscribed(&self, filter: &str) -> u64 {
        self.replicate(|_| ReplicaOp::Unsubscribed {
            filter: filter.to_string(),
        });
        self.submit(|| Op::Unsubscribed {
            client: self.client.clone(),
            filter: filter.to_string(),
        })
    }

    /// An inbound QoS 2 packet id received (`held`) or released.
    pub fn inbound_qos2(&self, packet_id: u16, held: bool) -> u64 {
        self.replicate(|_| ReplicaOp::InboundQos2 { packet_id, held });
        self.submit(|| Op::InboundQos2 {
            client: self.client.clone(),
            packet_id,
            held,
        })
    }

    /// The session's own record: its expiry, whether its connection is gone, the will, and
    /// the identity that owns it.
    pub fn meta(
        &self,
        expiry_interval: u32,
        connected: bool,
        will: Option<&PendingWill>,
        owner: Option<&str>,
    ) {
        let owner = owner.map(str::to_string);
        self.replicate(|_| ReplicaOp::Meta {
            expiry_interval,
            owner: owner.clone(),
        });
        self.submit(|| Op::Meta {
            client: self.client.clone(),
            meta: SessionMeta {
                expiry_interval,
                disconnected_at_ms: (!connected).then(super::now_ms),
                will: will.map(StoredWill::from_pending),
                owner,
            },
        });
    }

    /// The session ended (or moved to another node): everything recorded for it goes.
    pub fn gone(&self) {
        self.replicate(|_| ReplicaOp::Gone);
        self.submit(|| Op::SessionGone(self.client.clone()));
    }
}
