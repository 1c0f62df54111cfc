//! Packets from the client after CONNECT: PUBLISH with its QoS handshakes and topic aliases,
//! acknowledgements of what we sent, SUBSCRIBE / UNSUBSCRIBE with retained delivery, PINGREQ
//! and DISCONNECT. Each violation becomes a `Close` naming the v5 reason code.

use std::sync::Arc;

use smallvec::SmallVec;

use super::connection::{Close, Connection};
use crate::broker::session::InflightState;
use crate::broker::{Delivery, Message, Metrics};
use crate::codec::{
    Ack, Disconnect, Packet, Properties, Publish, QoS, SubAck, Subscribe, Unsubscribe, reason,
};
use crate::limits::{Limit, printable};
use crate::topic::{
    check_topic_bounds, is_sys_topic, parse_shared, valid_filter, valid_topic_name,
};

impl Connection {
    pub(super) fn handle(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => {
                let mut st = self.session.state.lock();
                if let Some(i) = st.find_inflight(a.packet_id, InflightState::AwaitPubAck) {
                    st.remove_inflight(i);
                }
                Ok(())
            }
            Packet::PubRec(a) => {
                // The PUBREL goes out once "received" is kept: after it the client may forget
                // the packet id, so a restart must not send the PUBLISH again (MQTT 4.3.3).
                let mut kept = 0;
                let found = {
                    let mut st = self.session.state.lock();
                    match st.find_inflight(a.packet_id, InflightState::AwaitPubRec) {
                        Some(i) if a.reason >= 0x80 => {
                            // The receiver refused it: the exchange ends here (v5 4.3.3).
                            st.remove_inflight(i);
                            return Ok(());
                        }
                        Some(i) => {
                            let f = &mut st.inflight[i];
                            f.state = InflightState::AwaitPubComp;
                            // Received after all: nothing left to send again for it.
                            let was_unsent = !std::mem::replace(&mut f.sent, true);
                            st.unsent_inflight -= usize::from(was_unsent);
                            kept = st.mark_sent(
                                &st.inflight[i].delivery,
                                a.packet_id,
                                InflightState::AwaitPubComp,
                            );
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
                self.send_after(kept, Packet::PubRel(Ack::new(a.packet_id, code)));
                Ok(())
            }
            Packet::PubComp(a) => {
                let mut st = self.session.state.lock();
                if let Some(i) = st.find_inflight(a.packet_id, InflightState::AwaitPubComp) {
                    st.remove_inflight(i);
                }
                Ok(())
            }
            Packet::PubRel(a) => {
                let (known, ticket) = {
                    let mut st = self.session.state.lock();
                    let known = st.inbound_qos2.remove(&a.packet_id);
                    // Once the release is kept, the client may use the id for a new message.
                    let ticket = match (&st.journal, known) {
                        (Some(j), true) => j.inbound_qos2(a.packet_id, false),
                        _ => 0,
                    };
                    (known, ticket)
                };
                let code = if known {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                self.send_after(ticket, Packet::PubComp(Ack::new(a.packet_id, code)));
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
        self.charge_publish(p.topic.len() + p.payload.len());
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
                format!("invalid topic name {}", printable(&p.topic)),
            ));
        }
        let mqtt = &self.broker.config.mqtt;
        if let Err(bound) =
            check_topic_bounds(&p.topic, mqtt.max_topic_length, mqtt.max_topic_levels)
        {
            let limit = Limit::of_topic(bound);
            self.broker
                .limits
                .hit(limit, &self.client_id, "PUBLISH topic refused");
            return Err(Close::violation(
                reason::TOPIC_NAME_INVALID,
                format!("topic name exceeds {}", limit.key()),
            ));
        }
        if let Some(rt) = &p.properties.response_topic
            && !valid_topic_name(rt)
        {
            // MQTT-3.3.2-14: a Response Topic is a topic name, never a filter.
            return Err(Close::violation(
                reason::PROTOCOL_ERROR,
                "response topic is not a valid topic name",
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
        if is_sys_topic(&p.topic) {
            // The broker's own figures: no client may publish (or retain) there.
            Metrics::add(&self.broker.metrics.publishes_refused_sys, 1);
            if !self.warned_sys {
                self.warned_sys = true;
                tracing::warn!(client_id = %printable(&self.client_id), topic = %printable(&p.topic), "client PUBLISH to $SYS refused (logged once per connection)");
            }
            self.ack_publish(&p, reason::NOT_AUTHORIZED);
            return Ok(());
        }
        if !self.acl_allows(crate::auth::acl::Action::Publish(&p.topic)) {
            // As mosquitto: v5 hears 0x87 on QoS 1/2; v3 is acknowledged and not delivered.
            Metrics::add(&self.broker.metrics.acl_denied_publish, 1);
            self.ack_publish(&p, reason::NOT_AUTHORIZED);
            return Ok(());
        }
        let mut ticket = 0;
        let mut copies = None;
        if p.qos == QoS::ExactlyOnce {
            let mut st = self.session.state.lock();
            if st.inbound_qos2.contains(&p.packet_id) {
                // A resend of one we already have: acknowledge, do not deliver twice.
                drop(st);
                self.ack_publish(&p, reason::SUCCESS);
                return Ok(());
            }
            if v5 && st.inbound_qos2.len() >= usize::from(self.broker.config.mqtt.max_inflight) {
                drop(st);
                self.broker
                    .limits
                    .hit(Limit::InboundQos2, &self.client_id, "connection closed");
                return Err(Close::violation(
                    reason::RECEIVE_MAXIMUM_EXCEEDED,
                    "too many QoS 2 messages in flight",
                ));
            }
            st.inbound_qos2.insert(p.packet_id);
            if let Some(j) = &st.journal {
                ticket = j.inbound_qos2(p.packet_id, true);
            }
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
        let code = match self
            .broker
            .publish_noting(Arc::new(message), &mut Some(&mut self.held_by))
        {
            Ok(published) => {
                ticket = ticket.max(published.ticket);
                copies = published.copies;
                match published.matched {
                    0 => reason::NO_MATCHING_SUBSCRIBERS,
                    _ => reason::SUCCESS,
                }
            }
            Err(_) => reason::QUOTA_EXCEEDED,
        };
        if code == reason::QUOTA_EXCEEDED && p.qos == QoS::ExactlyOnce {
            // Refused: the exchange ends with the PUBREC (v5 4.3.3), nothing to release.
            let mut st = self.session.state.lock();
            st.inbound_qos2.remove(&p.packet_id);
            if let Some(j) = &st.journal {
                ticket = j.inbound_qos2(p.packet_id, false);
            }
        }
        if p.qos != QoS::AtMostOnce {
            self.ack_publish_after(ticket, copies, p.qos, p.packet_id, code);
        }
        Ok(())
    }

    /// PUBACK or PUBREC for an inbound publish that needs nothing stored (nothing for QoS 0).
    /// A v3 client hears only success: its protocol has no refusal codes, so a refused message
    /// is acknowledged and dropped (and counted where it was refused), as MQTT 3.1.1 section
    /// 4.11 allows.
    fn ack_publish(&mut self, p: &Publish, code: u8) {
        if p.qos != QoS::AtMostOnce {
            self.ack_publish_after(0, None, p.qos, p.packet_id, code);
        }
    }

    /// The ACL's verdict for this client (always yes without an `auth.acl_file`).
    /// The ACL's verdict for this client, from its rules resolved once per connection (again
    /// after a reload).
    pub(super) fn acl_allows(&self, action: crate::auth::acl::Action<'_>) -> bool {
        let Some(acl) = self.broker.auth.acl() else {
            return true;
        };
        let mut resolved = self.acl_rules.borrow_mut();
        match &*resolved {
            Some((source, rules)) if Arc::ptr_eq(source, &acl) => rules.allows(action),
            _ => {
                let rules = acl.rules_for(self.identity.as_deref(), &self.client_id);
                let verdict = rules.allows(action);
                *resolved = Some((acl, rules));
                verdict
            }
        }
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let v5 = self.protocol.is_v5();
        let (invalid, quota) = if v5 {
            (reason::TOPIC_FILTER_INVALID, reason::QUOTA_EXCEEDED)
        } else {
            (0x80, 0x80)
        };
        let mqtt = &self.broker.config.mqtt;
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = RetainedOnSubscribe::default();
        let mut ticket = 0;
        let mut subscribed: Vec<&str> = Vec::with_capacity(s.filters.len());
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
            if let Err(bound) =
                check_topic_bounds(filter, mqtt.max_topic_length, mqtt.max_topic_levels)
            {
                let limit = Limit::of_topic(bound);
                self.broker
                    .limits
                    .hit(limit, &self.client_id, "SUBSCRIBE filter refused");
                codes.push(invalid);
                continue;
            }
            let inner = shared.as_ref().map_or(filter.as_str(), |s| s.filter);
            if !self.acl_allows(crate::auth::acl::Action::Subscribe(inner)) {
                Metrics::add(&self.broker.metrics.acl_denied_subscribe, 1);
                codes.push(if v5 { reason::NOT_AUTHORIZED } else { 0x80 });
                continue;
            }
            if shared.is_some() && options.no_local && v5 {
                return Err(Close::violation(
                    reason::PROTOCOL_ERROR,
                    "No Local on a shared subscription",
                ));
            }
            let is_new = {
                let st = self.session.state.lock();
                let held = st.subscriptions.len();
                let is_new = !st.subscriptions.contains_key(filter.as_str());
                if is_new && held >= mqtt.max_subscriptions_per_client {
                    drop(st);
                    self.broker.limits.hit(
                        Limit::SubscriptionsPerClient,
                        &self.client_id,
                        "SUBSCRIBE refused",
                    );
                    codes.push(quota);
                    continue;
                }
                is_new
            };
            ticket = ticket.max(self.broker.subscribe(
                &self.session,
                filter,
                shared.as_ref(),
                *options,
                sub_id,
            ));
            codes.push(options.qos as u8);
            subscribed.push(filter);
            let wants_retained = match options.retain_handling {
                0 => true,
                1 => is_new,
                _ => false,
            };
            // Shared subscriptions get no retained messages on subscribe (MQTT 5.0 section 4.8.2).
            if shared.is_none() && wants_retained {
                retained.add(&self.broker, filter, options.qos);
            }
        }
        // In a cluster, the SUBACK waits for every live node to apply the new routes.
        let gate = if subscribed.is_empty() {
            None
        } else {
            self.broker.route_gate(&subscribed)
        };
        self.send_suback_after(
            ticket,
            gate,
            Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                reason_codes: codes,
                properties: Properties::default(),
            }),
        );
        let deliveries = retained.into_deliveries(sub_id);
        if !deliveries.is_empty() {
            self.session.push_retained(deliveries, &self.broker.metrics);
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let mut ticket = 0;
        let codes = u
            .filters
            .iter()
            .map(|f| {
                let (had, kept) = self.broker.unsubscribe(&self.session, f);
                ticket = ticket.max(kept);
                if had {
                    reason::SUCCESS
                } else {
                    reason::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.send_after(
            ticket,
            Packet::UnsubAck(SubAck {
                packet_id: u.packet_id,
                reason_codes: codes,
                properties: Properties::default(),
            }),
        );
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

/// The retained messages one SUBSCRIBE is owed: each message once, however many of the
/// packet's filters match it (at the highest QoS among them), and each distinct filter looked
/// up once. So a packet that repeats `#` sixty thousand times costs what one `#` costs.
#[derive(Default)]
struct RetainedOnSubscribe {
    filters_seen: std::collections::HashSet<String>,
    /// Message (by address) to its index in `messages`.
    index: std::collections::HashMap<*const Message, usize>,
    messages: Vec<(Arc<Message>, QoS)>,
}

impl RetainedOnSubscribe {
    fn add(&mut self, broker: &crate::broker::Broker, filter: &str, qos: QoS) {
        if !self.filters_seen.insert(filter.to_string()) {
            return;
        }
        broker
            .retained
            .for_each_matching(filter, |m| match self.index.entry(Arc::as_ptr(m)) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    let slot = &mut self.messages[*e.get()].1;
                    *slot = (*slot).max(qos);
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(self.messages.len());
                    self.messages.push((m.clone(), qos));
                }
            });
    }

    fn into_deliveries(self, sub_id: Option<u32>) -> Vec<Delivery> {
        self.messages
            .into_iter()
            .map(|(message, qos)| Delivery {
                qos: message.qos.min(qos),
                message,
                retain: true,
                subscription_ids: sub_id.into_iter().collect::<SmallVec<_>>(),
                shared_group: None,
                store_seq: 0,
            })
            .collect()
    }
}
