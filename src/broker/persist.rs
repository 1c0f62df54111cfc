//! Bringing a node back from its store: retained messages, then every persistent session with
//! its subscriptions (back in the router, so messages published from now on reach it), its
//! queued and in-flight deliveries in their order, its inbound QoS 2 ids, its will and what is
//! left of its expiry. A session whose connection was up when the node went down is taken as
//! disconnected at start-up: its will (if any) goes out after its delay, as for a connection
//! that dropped.

use std::collections::VecDeque;
use std::sync::Arc;

use super::journal::Journal;
use super::queue::QueueBounds;
use super::session::Inflight;
use super::{Broker, Session, now_ms};
use crate::store::{Op, Restored, RestoredSession, Store};

impl Broker {
    /// The embedded store, when persistence is on.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.get()
    }

    /// Connects the store and loads what it held. Called once, before any client connects.
    pub fn restore(&self, store: Arc<Store>, restored: Restored) {
        for m in restored.retained {
            self.clock.observe(m.stamp);
            self.retained.set(Arc::new(m));
        }
        self.retained.persist_to(store.clone());
        let _ = self.store.set(store.clone());
        for op in restored.cleanup {
            store.submit(op);
        }
        for s in restored.sessions {
            self.restore_session(&store, s);
        }
    }

    /// Tells the cluster of the routes the restored sessions hold: it starts after the store
    /// is read back, so it missed their subscribing.
    pub fn announce_restored_routes(&self) {
        let mut keys = std::collections::HashSet::new();
        for session in self.sessions.iter() {
            keys.extend(session.state.lock().subscriptions.keys().cloned());
        }
        for key in keys {
            self.report_route(&key);
        }
    }

    fn restore_session(&self, store: &Arc<Store>, r: RestoredSession) {
        let meta = &r.meta;
        let away_secs = meta
            .disconnected_at_ms
            .map_or(0, |at| now_ms().saturating_sub(at) / 1000);
        let expiry_left = match meta.expiry_interval {
            u32::MAX => Some(u32::MAX),
            e => u32::try_from(u64::from(e).saturating_sub(away_secs))
                .ok()
                .filter(|left| *left > 0),
        };
        let will = meta.will.clone().map(|w| {
            let mut w = w.into_pending();
            // A delay already served while the node was up counts.
            w.delay = u32::try_from(u64::from(w.delay).saturating_sub(away_secs)).unwrap_or(0);
            w
        });
        let Some(expiry_left) = expiry_left else {
            // It expired while the node was down: gone, and its will is owed.
            store.submit(Op::SessionGone(r.client.clone()));
            if let Some(w) = will {
                self.publish_will(&r.client, w);
            }
            return;
        };
        let mqtt = &self.config.mqtt;
        let bounds = QueueBounds {
            max_messages: mqtt.max_queued_messages,
            max_bytes: mqtt.max_queued_bytes,
        };
        let session = Session::new(r.client.clone(), bounds, mqtt.queue_qos0_offline);
        self.sessions.insert(r.client.clone(), session.clone());
        for (filter, record) in &r.subscriptions {
            let shared = crate::topic::parse_shared(filter).ok().flatten();
            self.subscribe(&session, filter, shared.as_ref(), record.options, record.id);
        }
        let generation = {
            let mut st = session.state.lock();
            let mut inflight = VecDeque::new();
            for (delivery, mark) in r.deliveries {
                match mark.and_then(|m| Some((m.packet_id, m.state()?))) {
                    Some((packet_id, state)) => inflight.push_back(Inflight {
                        packet_id,
                        state,
                        delivery,
                        sent: true,
                        held_for: 0,
                    }),
                    None => st.queue.push_back(delivery),
                }
            }
            st.inflight = inflight;
            st.inbound_qos2 = r.inbound_qos2.into_iter().collect();
            st.expiry_interval = meta.expiry_interval;
            st.will = will;
            st.owner = meta.owner.as_deref().map(Arc::from);
            st.journal = Some(Box::new(Journal::new(
                Some(store.clone()),
                r.client.clone(),
                r.next_seq,
                None,
            )));
            // Its record now says "disconnected", from now: a second crash counts from here.
            if let Some(j) = &st.journal {
                j.meta(
                    meta.expiry_interval,
                    false,
                    st.will.as_ref(),
                    st.owner.as_deref(),
                );
            }
            st.generation
        };
        let will_delay = session.state.lock().will.as_ref().map(|w| w.delay);
        self.arm_timers(&session, generation, expiry_left, will_delay);
    }
}
