//! From session to socket: moves queued deliveries into the write buffer within the inflight
//! window, assigns packet ids and outbound topic aliases, drops what has expired or exceeds the
//! client's Maximum Packet Size, and resends what was in flight when a session resumes.

use std::time::Instant;

use super::connection::{Close, Connection, OUT_HIGH_WATER};
use crate::broker::packet_ids::IdsInUse;
use crate::broker::session::{Inflight, InflightState, SessionState};
use crate::broker::{Delivery, Metrics};
use crate::codec::{Ack, OutboundPublish, Packet, QoS, encode_publish, publish_size};

impl Connection {
    /// Encodes as many queued deliveries as the window and the buffer allow.
    pub(super) fn fill_output(&mut self) -> Result<(), Close> {
        let session = self.session.clone();
        let now = Instant::now();
        let mut sent = [0u64; 3];
        let mut st = session.state.lock();
        if st.unsent_inflight > 0 {
            self.resend_within_window(&mut st, now);
        }
        let queued_before = st.queue.len();
        let acl = self.broker.auth.has_acl();
        // New messages wait behind a SUBACK that waits (see `durable`).
        let held_for_suback = self.pending_acks.holds_publishes();
        let mut ids = IdsInUse::default();
        while self.wbuf.len() < OUT_HIGH_WATER && !held_for_suback {
            let Some(front) = st.queue.front() else { break };
            if front.qos != QoS::AtMostOnce && st.inflight.len() >= self.window {
                break;
            }
            let delivery = st.queue.pop_front().expect("front exists");
            let Some(expiry) = delivery.message.expiry_left(now) else {
                Metrics::add(&self.broker.metrics.dropped_expired, 1);
                st.finished(&delivery);
                continue;
            };
            // Read access to the topic itself: a deny inside a wider grant (`#`) holds.
            if acl && !self.may_receive(&delivery) {
                st.finished(&delivery);
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                sent[0] += u64::from(self.write_publish(&delivery, 0, false, expiry));
                st.finished(&delivery);
                continue;
            }
            let packet_id = st.allocate_packet_id(&mut ids);
            let state = if delivery.qos == QoS::AtLeastOnce {
                InflightState::AwaitPubAck
            } else {
                InflightState::AwaitPubRec
            };
            let kept = st.mark_sent(&delivery, packet_id, state);
            if delivery.qos == QoS::ExactlyOnce && kept != 0 {
                // Held until its packet id is kept (see `Inflight::held_for`); the pending
                // wake brings this connection back here when it is.
                st.inflight.push_back(Inflight {
                    packet_id,
                    state,
                    delivery,
                    sent: false,
                    held_for: kept,
                });
                st.unsent_inflight += 1;
                self.wake_after(kept);
                continue;
            }
            if !self.write_publish(&delivery, packet_id, false, expiry) {
                ids.release(packet_id);
                st.finished(&delivery);
                continue;
            }
            sent[delivery.qos as usize] += 1;
            st.inflight.push_back(Inflight {
                packet_id,
                state,
                delivery,
                sent: true,
                held_for: 0,
            });
        }
        if st.queue.len() < queued_before {
            session.note_dequeued(&mut st);
        }
        drop(st);
        for (counter, n) in self.broker.metrics.messages_sent.iter().zip(sent) {
            Metrics::add(counter, n);
        }
        Ok(())
    }

    /// Whether this client may read what `delivery` carries, as the connection now
    /// connected is (its identity's rules): a message queued or in flight for an earlier
    /// connection of the session, or before an ACL reload, is checked again here. False is
    /// counted.
    fn may_receive(&self, delivery: &Delivery) -> bool {
        let allowed = self.acl_allows(crate::auth::acl::Action::Receive(&delivery.message.topic));
        if !allowed {
            Metrics::add(&self.broker.metrics.acl_denied_receive, 1);
        }
        allowed
    }

    /// After a session resumes: in the original order, PUBREL what was received and PUBLISH
    /// again (DUP, same packet id) what was not acknowledged (MQTT-4.4.0-1), as far as the
    /// client's Receive Maximum, which may be smaller now, allows. The rest is marked unsent
    /// and goes out from `resend_within_window` as acknowledgements make room. A message the
    /// client now connected may not read is not sent again: it is finished with, counted.
    pub(super) fn resend_inflight(&mut self) {
        let session = self.session.clone();
        let now = Instant::now();
        let mut st = session.state.lock();
        let inflight = std::mem::take(&mut st.inflight);
        let mut outstanding = 0;
        let mut unsent = 0;
        let acl = self.broker.auth.has_acl();
        for mut f in inflight {
            // Past PUBREC the client has the message: only the PUBREL is left to send.
            if acl && f.state != InflightState::AwaitPubComp && !self.may_receive(&f.delivery) {
                st.finished(&f.delivery);
                continue;
            }
            if f.held_for != 0 {
                // Never sent: it goes out from `resend_within_window` once its id is kept.
                f.sent = false;
                unsent += 1;
                self.wake_after(f.held_for);
            } else if f.state == InflightState::AwaitPubComp {
                self.send(&Packet::PubRel(Ack::new(f.packet_id, 0)));
                outstanding += 1;
            } else if outstanding < self.window {
                let expiry = f.delivery.message.expiry_left(now).unwrap_or(Some(1));
                if !self.write_publish(&f.delivery, f.packet_id, true, expiry) {
                    st.finished(&f.delivery);
                    continue;
                }
                f.sent = true;
                outstanding += 1;
            } else {
                f.sent = false;
                unsent += 1;
            }
            st.inflight.push_back(f);
        }
        st.unsent_inflight = unsent;
    }

    /// Sends again, in order, the in-flight messages marked unsent, while fewer than the
    /// window are outstanding (each checked against the client's read access, as
    /// `resend_inflight` does).
    fn resend_within_window(&mut self, st: &mut SessionState, now: Instant) {
        let mut outstanding = st.inflight.iter().filter(|f| f.sent).count();
        let mut i = 0;
        let acl = self.broker.auth.has_acl();
        while i < st.inflight.len() && outstanding < self.window && st.unsent_inflight > 0 {
            if st.inflight[i].sent {
                i += 1;
                continue;
            }
            if acl && !self.may_receive(&st.inflight[i].delivery) {
                st.remove_inflight(i);
                continue;
            }
            let f = &st.inflight[i];
            if f.held_for != 0
                && !self
                    .broker
                    .store()
                    .is_some_and(|store| store.is_done(f.held_for))
            {
                // The rest wait behind it, in order.
                break;
            }
            let expiry = f.delivery.message.expiry_left(now).unwrap_or(Some(1));
            // DUP only for what went out before (MQTT-3.3.1-1).
            let dup = f.held_for == 0;
            if self.write_publish(&f.delivery, f.packet_id, dup, expiry) {
                st.inflight[i].sent = true;
                st.inflight[i].held_for = 0;
                st.unsent_inflight -= 1;
                outstanding += 1;
                i += 1;
            } else {
                st.remove_inflight(i);
            }
        }
    }

    /// Writes one PUBLISH for `d`; false (and counted) when it exceeds the client's Maximum
    /// Packet Size, in which case nothing is written.
    fn write_publish(
        &mut self,
        d: &Delivery,
        packet_id: u16,
        dup: bool,
        expiry: Option<u32>,
    ) -> bool {
        let topic = &d.message.topic;
        let mut new_alias = None;
        // Clients that take no aliases (all v3, most v5) skip the map and its hashing.
        let known = if self.client_alias_max == 0 {
            None
        } else {
            self.out_aliases.get(topic)
        };
        let (topic_field, alias): (&str, Option<u16>) = match known {
            Some(&a) => ("", Some(a)),
            None if self.out_aliases.len() < usize::from(self.client_alias_max) => {
                let a = self.out_aliases.len() as u16 + 1;
                new_alias = Some(a);
                (topic, Some(a))
            }
            None => (topic, None),
        };
        let out = OutboundPublish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: topic_field,
            packet_id,
            payload: &d.message.payload,
            properties: &d.message.properties,
            message_expiry_interval: expiry,
            topic_alias: alias,
            subscription_identifiers: &d.subscription_ids,
        };
        if publish_size(&out, self.protocol) > self.client_max_packet {
            Metrics::add(&self.broker.metrics.dropped_too_large, 1);
            tracing::debug!(client_id = %crate::limits::printable(&self.client_id), topic = %crate::limits::printable(topic), "message exceeds the client's maximum packet size; dropped");
            return false;
        }
        encode_publish(&mut self.wbuf, &out, self.protocol);
        if let Some(a) = new_alias {
            self.out_aliases.insert(topic.clone(), a);
        }
        true
    }
}
