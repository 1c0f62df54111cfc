//! A persistent session's line to the store: every change to what must outlive a restart
//! (deliveries queued, sent, finished; subscriptions; inbound QoS 2 ids; its own record) is
//! submitted here, under the session's lock, so the store sees one session's changes in the
//! order they happened. Each call returns the op's ticket, which an acknowledgement waits for
//! with `sync = "always"`. Sessions without a journal (clean ones, or persistence off) cost
//! nothing here.

use std::sync::Arc;

use super::Delivery;
use super::session::{InflightState, PendingWill, SubscriptionRecord};
use crate::codec::QoS;
use crate::store::records::StoredWill;
use crate::store::{InflightMark, Op, SessionMeta, Store, StoredSubscription};

#[derive(Debug)]
pub struct Journal {
    store: Arc<Store>,
    client: Arc<str>,
    /// The sequence number the next queued delivery is stored under.
    next_seq: u64,
}

impl Journal {
    pub fn new(store: Arc<Store>, client: Arc<str>, next_seq: u64) -> Journal {
        Journal {
            store,
            client,
            next_seq: next_seq.max(1),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stores a delivery being queued, numbering it; QoS 0 only for an offline session
    /// (`mqtt.queue_qos0_offline`): a connected one gets it now or never.
    pub fn queued(&mut self, d: &mut Delivery, online: bool) -> Option<u64> {
        if d.store_seq != 0 || (online && d.qos == QoS::AtMostOnce) {
            return None;
        }
        d.store_seq = self.next_seq;
        self.next_seq += 1;
        Some(self.store.submit(Op::Queued {
            client: self.client.clone(),
            seq: d.store_seq,
            delivery: d.clone(),
        }))
    }

    /// A stored delivery went out with `packet_id`, or moved on in its QoS 2 handshake; the
    /// op's ticket (0: the delivery is not stored).
    pub fn sent(&self, d: &Delivery, packet_id: u16, state: InflightState) -> u64 {
        if d.store_seq == 0 {
            return 0;
        }
        self.store.submit(Op::Sent {
            client: self.client.clone(),
            seq: d.store_seq,
            mark: InflightMark::new(packet_id, state),
        })
    }

    /// A stored delivery is finished with.
    pub fn done(&self, d: &Delivery) {
        if d.store_seq != 0 {
            self.store.submit(Op::Done {
                client: self.client.clone(),
                seq: d.store_seq,
            });
        }
    }

    pub fn subscribed(&self, filter: &str, record: &SubscriptionRecord) -> u64 {
        self.store.submit(Op::Subscribed {
            client: self.client.clone(),
            filter: filter.to_string(),
            subscription: StoredSubscription::from_record(record),
        })
    }

    pub fn unsubscribed(&self, filter: &str) -> u64 {
        self.store.submit(Op::Unsubscribed {
            client: self.client.clone(),
            filter: filter.to_string(),
        })
    }

    /// An inbound QoS 2 packet id received (`held`) or released.
    pub fn inbound_qos2(&self, packet_id: u16, held: bool) -> u64 {
        self.store.submit(Op::InboundQos2 {
            client: self.client.clone(),
            packet_id,
            held,
        })
    }

    /// The session's own record: its expiry, whether its connection is gone, and the will.
    pub fn meta(&self, expiry_interval: u32, connected: bool, will: Option<&PendingWill>) {
        self.store.submit(Op::Meta {
            client: self.client.clone(),
            meta: SessionMeta {
                expiry_interval,
                disconnected_at_ms: (!connected).then(super::now_ms),
                will: will.map(StoredWill::from_pending),
            },
        });
    }

    /// The session ended: everything stored for it goes.
    pub fn gone(&self) {
        self.store.submit(Op::SessionGone(self.client.clone()));
    }
}
