//! Serialisation of packets. `encode_publish` writes a delivery straight from a shared message
//! plus the few per-subscriber fields (packet id, alias, expiry left, subscription ids), so
//! fan-out never clones a message to encode it.

use bytes::BufMut;

use super::properties::id;
use super::{Packet, Properties, Protocol, QoS};

pub(crate) fn varint_len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn write_varint(buf: &mut impl BufMut, mut v: u32) {
    loop {
        let mut byte = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

pub(crate) fn write_binary(buf: &mut impl BufMut, v: &[u8]) {
    buf.put_u16(v.len() as u16);
    buf.put_slice(v);
}

pub(crate) fn write_string(buf: &mut impl BufMut, v: &[u8]) {
    write_binary(buf, v)
}

fn header(buf: &mut impl BufMut, first: u8, remaining: usize) {
    buf.put_u8(first);
    write_varint(buf, remaining as u32);
}

fn props_size(p: &Properties) -> usize {
    let len = p.encoded_len();
    varint_len(len as u32) + len
}

/// One PUBLISH as sent to one subscriber.
#[derive(Debug, Clone, Copy)]
pub struct OutboundPublish<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty when an already-established topic alias stands for the topic.
    pub topic: &'a str,
    pub packet_id: u16,
    pub payload: &'a [u8],
    /// The message's own v5 properties: must not hold expiry, alias or subscription ids,
    /// which are per delivery and given below.
    pub properties: &'a Properties,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub subscription_identifiers: &'a [u32],
}

impl OutboundPublish<'_> {
    fn delivery_props_len(&self) -> usize {
        let mut n = self.properties.encoded_len();
        if self.message_expiry_interval.is_some() {
            n += 5;
        }
        if self.topic_alias.is_some() {
            n += 3;
        }
        n += self
            .subscription_identifiers
            .iter()
            .map(|&s| 1 + varint_len(s))
            .sum::<usize>();
        n
    }

    fn remaining_len(&self, v5: bool) -> usize {
        let mut n = 2 + self.topic.len() + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            n += 2;
        }
        if v5 {
            let p = self.delivery_props_len();
            n += varint_len(p as u32) + p;
        }
        n
    }
}

/// Whole encoded size of a PUBLISH, fixed header included (what Maximum Packet Size limits).
pub fn publish_size(p: &OutboundPublish<'_>, protocol: Protocol) -> usize {
    let remaining = p.remaining_len(protocol.is_v5());
    1 + varint_len(remaining as u32) + remaining
}

pub fn encode_publish(buf: &mut impl BufMut, p: &OutboundPublish<'_>, protocol: Protocol) {
    let v5 = protocol.is_v5();
    let first = 0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain);
    header(buf, first, p.remaining_len(v5));
    write_string(buf, p.topic.as_bytes());
    if p.qos != QoS::AtMostOnce {
        buf.put_u16(p.packet_id);
    }
    if v5 {
        write_varint(buf, p.delivery_props_len() as u32);
        p.properties.encode_body(buf);
        if let Some(e) = p.message_expiry_interval {
            buf.put_u8(id::MESSAGE_EXPIRY_INTERVAL);
            buf.put_u32(e);
        }
        if let Some(a) = p.topic_alias {
            buf.put_u8(id::TOPIC_ALIAS);
            buf.put_u16(a);
        }
        for &s in p.subscription_identifiers {
            buf.put_u8(id::SUBSCRIPTION_IDENTIFIER);
            write_varint(buf, s);
        }
    }
    buf.put_slice(p.payload);
}

/// Encodes any packet for a connection speaking `protocol`.
pub fn encode_packet(packet: &Packet, protocol: Protocol, buf: &mut impl BufMut) {
    let v5 = protocol.is_v5();
    match packet {
        Packet::Connect(c) => {
            let name: &[u8] = if c.protocol == Protocol::V31 {
                b"MQIsdp"
            } else {
                b"MQTT"
            };
            let level = match c.protocol {
                Protocol::V31 => 3,
                Protocol::V311 => 4,
                Protocol::V5 => 5,
            };
            let cv5 = c.protocol.is_v5();
            let mut n = 2 + name.len() + 1 + 1 + 2 + 2 + c.client_id.len();
            if cv5 {
                n += props_size(&c.properties);
            }
            let mut flags = u8::from(c.clean_start) << 1;
            if let Some(w) = &c.will {
                flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
                n += 2 + w.topic.len() + 2 + w.payload.len();
                if cv5 {
                    n += props_size(&w.properties);
                }
            }
            if let Some(u) = &c.username {
                flags |= 0x80;
                n += 2 + u.len();
            }
            if let Some(p) = &c.password {
                flags |= 0x40;
                n += 2 + p.len();
            }
            header(buf, 0x10, n);
            write_binary(buf, name);
            buf.put_u8(level);
            buf.put_u8(flags);
            buf.put_u16(c.keep_alive);
            if cv5 {
                c.properties.encode(buf);
            }
            write_string(buf, c.client_id.as_bytes());
            if let Some(w) = &c.will {
                if cv5 {
                    w.properties.encode(buf);
                }
                write_string(buf, w.topic.as_bytes());
                write_binary(buf, &w.payload);
            }
            if let Some(u) = &c.username {
                write_string(buf, u.as_bytes());
            }
            if let Some(p) = &c.password {
                write_binary(buf, p);
            }
        }
        Packet::ConnAck(a) => {
            let n = 2 + if v5 { props_size(&a.properties) } else { 0 };
            header(buf, 0x20, n);
            buf.put_u8(u8::from(a.session_present));
            buf.put_u8(a.code);
            if v5 {
                a.properties.encode(buf);
            }
        }
        Packet::Publish(p) => {
            let out = OutboundPublish {
                dup: p.dup,
                qos: p.qos,
                retain: p.retain,
                topic: &p.topic,
                packet_id: p.packet_id,
                payload: &p.payload,
                properties: &p.properties,
                message_expiry_interval: None,
                topic_alias: None,
                subscription_identifiers: &[],
            };
            encode_publish(buf, &out, protocol);
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            let first = match packet {
                Packet::PubAck(_) => 0x40,
                Packet::PubRec(_) => 0x50,
                Packet::PubRel(_) => 0x62,
                _ => 0x70,
            };
            if v5 && !a.properties.is_empty() {
                header(buf, first, 3 + props_size(&a.properties));
                buf.put_u16(a.packet_id);
                buf.put_u8(a.reason);
                a.properties.encode(buf);
            } else if v5 && a.reason != 0 {
                header(buf, first, 3);
                buf.put_u16(a.packet_id);
                buf.put_u8(a.reason);
            } else {
                header(buf, first, 2);
                buf.put_u16(a.packet_id);
            }
        }
        Packet::Subscribe(s) => {
            let mut n = 2 + s.filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>();
            if v5 {
                n += props_size(&s.properties);
            }
            header(buf, 0x82, n);
            buf.put_u16(s.packet_id);
            if v5 {
                s.properties.encode(buf);
            }
            for (f, o) in &s.filters {
                write_string(buf, f.as_bytes());
                let mut b = o.qos as u8;
                if v5 {
                    b |= u8::from(o.no_local) << 2
                        | u8::from(o.retain_as_published) << 3
                        | o.retain_handling << 4;
                }
                buf.put_u8(b);
            }
        }
        Packet::SubAck(s) | Packet::UnsubAck(s) => {
            let first = if matches!(packet, Packet::SubAck(_)) {
                0x90
            } else {
                0xB0
            };
            // A v3 UNSUBACK carries only the packet identifier.
            let codes: &[u8] = if first == 0xB0 && !v5 {
                &[]
            } else {
                &s.reason_codes
            };
            let n = 2 + codes.len() + if v5 { props_size(&s.properties) } else { 0 };
            header(buf, first, n);
            buf.put_u16(s.packet_id);
            if v5 {
                s.properties.encode(buf);
            }
            buf.put_slice(codes);
        }
        Packet::Unsubscribe(u) => {
            let mut n = 2 + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>();
            if v5 {
                n += props_size(&u.properties);
            }
            header(buf, 0xA2, n);
            buf.put_u16(u.packet_id);
            if v5 {
                u.properties.encode(buf);
            }
            for f in &u.filters {
                write_string(buf, f.as_bytes());
            }
        }
        Packet::PingReq => header(buf, 0xC0, 0),
        Packet::PingResp => header(buf, 0xD0, 0),
        Packet::Disconnect(d) => {
            if !v5 {
                header(buf, 0xE0, 0);
            } else if d.properties.is_empty() {
                header(buf, 0xE0, 1);
                buf.put_u8(d.reason);
            } else {
                header(buf, 0xE0, 1 + props_size(&d.properties));
                buf.put_u8(d.reason);
                d.properties.encode(buf);
            }
        }
        Packet::Auth(a) => {
            header(buf, 0xF0, 1 + props_size(&a.properties));
            buf.put_u8(a.reason);
            a.properties.encode(buf);
        }
    }
}
