//! Packets from the client after CONNECT: PUBLISH with its QoS handshakes and topic aliases,
//! acknowledgements of what we sent, SUBSCRIBE / UNSUBSCRIBE with retained delivery, PINGREQ
//! and DISCONNECT. Each violation becomes a `Close` naming the v5 reason code.

use std::sync::Arc;

use smallvec::SmallVec;

use super::connection::{Close, Connection};
use crate::broker::session::InflightState;
use crate::broker::{Delivery, Message};
use crate::codec::{
    Ack, Disconnect, Packet, Properties, Publish, QoS, SubAck, Subscribe, Unsubscribe, reason,
};
use crate::topic::{parse_shared, valid_filter, valid_topic_name};

impl Connection {
    pub(super) fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => {
                let mut st = self.session.state.lock();
                if let Some(i) = st.find_inflight(a.packet_id, InflightState::AwaitPubAck) {
                    st.inflight.remove(i);
                }
                Ok(())
            }
            Packet::PubRec(a) => {
                let found = {
                    let mut st = self.session.state.lock();
                    match st.find_inflight(a.packet_id, InflightState::AwaitPubRec) {
                        Some(i) if a.reason >= 0x80 => {
                            // The receiver refused it: the exchange ends here (v5 4.3.3).
                            st.inflight.remove(i);
                            return Ok(());
                        }
                        Some(i) => {
                            st.inflight[i].state = InflightState::AwaitPubComp;
                            true
                        }
                        None => st
                            .find_inflight(a.packet_id, InflightState::AwaitPubComp)
                            .is_some(),
                    }
                };
                let code = if found {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send(&Packet::PubRel(Ack::new(a.packet_id, code)));
                Ok(())
            }
            Packet::PubComp(a) => {
                let mut st = self.session.state.lock();
                if let Some(i) = st.find_inflight(a.packet_id, InflightState::AwaitPubComp) {
                    st.inflight.remove(i);
                }
                Ok(())
            }
            Packet::PubRel(a) => {
                let known = self.session.state.lock().inbound_qos2.remove(&a.packet_id);
                let code = if known {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send(&Packet::PubComp(Ack::new(a.packet_id, code)));
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(u);
                Ok(())
            }
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Auth(_) => Err(Close::violation(
                reason::PROTOCOL_ERROR,
                "AUTH without an authentication method",
            )),
            other => Err(Close::violation(
                reason::PROTOCOL_ERROR,
                format!("{} is not sent by clients", other.kind()),
            )),
        }
    }

    fn on_publish(&mut self, mut p: Publish) -> Result<(), Close> {
        let v5 = self.protocol.is_v5();
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias == 0 || alias > self.broker.config.mqtt.max_topic_alias {
                return Err(Close::violation(
                    reason::TOPIC_ALIAS_INVALID,
                    format!("topic alias {alias}"),
                ));
            }
            if p.topic.is_empty() {
                match self.in_aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return Err(Close::violation(
                            reason::PROTOCOL_ERROR,
                            format!("unknown topic alias {alias}"),
                        ));
                    }
                }
            } else {
                self.in_aliases.insert(alias, p.topic.clone());
            }
        }
        if !valid_topic_name(&p.topic) {
            let code = if v5 {
                reason::TOPIC_NAME_INVALID
            } else {
                reason::MALFORMED_PACKET
            };
            return Err(Close::violation(
                code,
                format!("invalid topic name {:?}", p.topic),
            ));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            return Err(Close::violation(
                reason::PROTOCOL_ERROR,
                "subscription identifier in a client PUBLISH",
            ));
        }
        if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            if p.qos == QoS::AtMostOnce {
                return Err(Close::violation(
                    reason::PAYLOAD_FORMAT_INVALID,
                    "payload is not UTF-8",
                ));
            }
            self.ack_publish(&p, reason::PAYLOAD_FORMAT_INVALID);
            return Ok(());
        }
        if p.qos == QoS::ExactlyOnce {
            let mut st = self.session.state.lock();
            if st.inbound_qos2.contains(&p.packet_id) {
                // A resend of one we already have: acknowledge, do not deliver twice.
                drop(st);
                self.ack_publish(&p, reason::SUCCESS);
                return Ok(());
            }
            if v5 && st.inbound_qos2.len() >= usize::from(self.broker.config.mqtt.max_inflight) {
                return Err(Close::violation(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "too many QoS 2 messages in flight",
                ));
            }
            st.inbound_qos2.insert(p.packet_id);
        }
        let properties = std::mem::take(&mut p.properties);
        let message = Message::new(
            Arc::from(p.topic.as_str()),
            p.payload.clone(),
            p.qos,
            p.retain,
            properties,
            Some(self.client_id.clone()),
        );
        let matched = self
            .broker
            .publish_noting(Arc::new(message), &mut Some(&mut self.held_by));
        let code = if matched == 0 {
            reason::NO_MATCHING_SUBSCRIBERS
        } else {
            reason::SUCCESS
        };
        self.ack_publish(&p, code);
        Ok(())
    }

    /// PUBACK or PUBREC for an inbound publish (nothing for QoS 0).
    fn ack_publish(&mut self, p: &Publish, code: u8) {
        let ack = Ack::new(p.packet_id, code);
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(ack)),
            QoS::ExactlyOnce => self.send(&Packet::PubRec(ack)),
        }
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let v5 = self.protocol.is_v5();
        let invalid = if v5 {
            reason::TOPIC_FILTER_INVALID
        } else {
            0x80
        };
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for (filter, options) in &s.filters {
            let shared = match parse_shared(filter) {
                Ok(shared) => shared,
                Err(_) => {
                    codes.push(invalid);
                    continue;
                }
            };
            if shared.is_none() && !valid_filter(filter) {
                codes.push(invalid);
                continue;
            }
            if shared.is_some() && options.no_local && v5 {
                return Err(Close::violation(
                    reason::PROTOCOL_ERROR,
                    "No Local on a shared subscription",
                ));
            }
            let existed =
                self.broker
                    .subscribe(&self.session, filter, shared.as_ref(), *options, sub_id);
            codes.push(options.qos as u8);
            let wants_retained = match options.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            // Shared subscriptions get no retained messages on subscribe (MQTT 5.0 section 4.8.2).
            if shared.is_none() && wants_retained {
                for message in self.broker.retained.matching(filter) {
                    retained.push(Delivery {
                        qos: message.qos.min(options.qos),
                        message,
                        retain: true,
                        subscription_ids: sub_id.into_iter().collect::<SmallVec<_>>(),
                        shared_group: None,
                    });
                }
            }
        }
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        }));
        if !retained.is_empty() {
            self.session.push_retained(retained);
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let codes = u
            .filters
            .iter()
            .map(|f| {
                if self.broker.unsubscribe(&self.session, f) {
                    reason::SUCCESS
                } else {
                    reason::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.send(&Packet::UnsubAck(SubAck {
            packet_id: u.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        }));
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Close> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.connect_expiry_zero && expiry != 0 {
                return Err(Close::violation(
                    reason::PROTOCOL_ERROR,
                    "DISCONNECT sets session expiry after CONNECT had 0",
                ));
            }
            self.expiry_interval = expiry.min(self.broker.config.mqtt.max_session_expiry);
        }
        Err(Close::ClientDisconnect {
            will: d.reason == reason::DISCONNECT_WITH_WILL,
        })
    }
}
