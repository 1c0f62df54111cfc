//! MQTT 5.0 properties: one struct holding every property the spec defines, decoded with the
//! spec's rules (no duplicates except user properties and subscription identifiers, values in
//! range, only the properties a packet type allows) and encoded in a stable order.

use bytes::{Buf, BufMut, Bytes};

use super::decode::{
    DecodeError, read_binary, read_string, read_u8, read_u16, read_u32, read_varint,
};
use super::encode::{varint_len, write_binary, write_string, write_varint};

pub(crate) mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Which properties a packet may carry, as a bit set over property ids (all ids are < 64).
#[derive(Clone, Copy)]
pub(crate) struct Allowed(u64);

impl Allowed {
    const fn of(ids: &[u8]) -> Allowed {
        let mut bits = 0u64;
        let mut i = 0;
        while i < ids.len() {
            bits |= 1 << ids[i];
            i += 1;
        }
        Allowed(bits)
    }
    fn contains(self, property: u8) -> bool {
        property < 64 && self.0 & (1 << property) != 0
    }

    pub const CONNECT: Allowed = Allowed::of(&[
        id::SESSION_EXPIRY_INTERVAL,
        id::RECEIVE_MAXIMUM,
        id::MAXIMUM_PACKET_SIZE,
        id::TOPIC_ALIAS_MAXIMUM,
        id::REQUEST_RESPONSE_INFORMATION,
        id::REQUEST_PROBLEM_INFORMATION,
        id::USER_PROPERTY,
        id::AUTHENTICATION_METHOD,
        id::AUTHENTICATION_DATA,
    ]);
    pub const WILL: Allowed = Allowed::of(&[
        id::WILL_DELAY_INTERVAL,
        id::PAYLOAD_FORMAT_INDICATOR,
        id::MESSAGE_EXPIRY_INTERVAL,
        id::CONTENT_TYPE,
        id::RESPONSE_TOPIC,
        id::CORRELATION_DATA,
        id::USER_PROPERTY,
    ]);
    pub const CONNACK: Allowed = Allowed::of(&[
        id::SESSION_EXPIRY_INTERVAL,
        id::RECEIVE_MAXIMUM,
        id::MAXIMUM_QOS,
        id::RETAIN_AVAILABLE,
        id::MAXIMUM_PACKET_SIZE,
        id::ASSIGNED_CLIENT_IDENTIFIER,
        id::TOPIC_ALIAS_MAXIMUM,
        id::REASON_STRING,
        id::USER_PROPERTY,
        id::WILDCARD_SUBSCRIPTION_AVAILABLE,
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        id::SHARED_SUBSCRIPTION_AVAILABLE,
        id::SERVER_KEEP_ALIVE,
        id::RESPONSE_INFORMATION,
        id::SERVER_REFERENCE,
        id::AUTHENTICATION_METHOD,
        id::AUTHENTICATION_DATA,
    ]);
    pub const PUBLISH: Allowed = Allowed::of(&[
        id::PAYLOAD_FORMAT_INDICATOR,
        id::MESSAGE_EXPIRY_INTERVAL,
        id::TOPIC_ALIAS,
        id::RESPONSE_TOPIC,
        id::CORRELATION_DATA,
        id::USER_PROPERTY,
        id::SUBSCRIPTION_IDENTIFIER,
        id::CONTENT_TYPE,
    ]);
    pub const KNOWN: Allowed = Allowed(
        Allowed::CONNECT.0
            | Allowed::WILL.0
            | Allowed::CONNACK.0
            | Allowed::PUBLISH.0
            | Allowed::DISCONNECT.0
            | Allowed::AUTH.0,
    );
    pub const ACK: Allowed = Allowed::of(&[id::REASON_STRING, id::USER_PROPERTY]);
    pub const SUBSCRIBE: Allowed = Allowed::of(&[id::SUBSCRIPTION_IDENTIFIER, id::USER_PROPERTY]);
    pub const UNSUBSCRIBE: Allowed = Allowed::of(&[id::USER_PROPERTY]);
    pub const DISCONNECT: Allowed = Allowed::of(&[
        id::SESSION_EXPIRY_INTERVAL,
        id::REASON_STRING,
        id::USER_PROPERTY,
        id::SERVER_REFERENCE,
    ]);
    pub const AUTH: Allowed = Allowed::of(&[
        id::AUTHENTICATION_METHOD,
        id::AUTHENTICATION_DATA,
        id::REASON_STRING,
        id::USER_PROPERTY,
    ]);
}

/// Every MQTT 5.0 property; a packet uses the ones its type allows. Empty for v3 packets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("duplicate property"));
    }
    *slot = Some(value);
    Ok(())
}

fn flag_byte(buf: &mut Bytes) -> Result<u8, DecodeError> {
    let v = read_u8(buf)?;
    if v > 1 {
        return Err(DecodeError::Protocol("property value must be 0 or 1"));
    }
    Ok(v)
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        self == &Properties::default()
    }

    /// Reads a property length and the properties after it.
    pub(crate) fn decode(buf: &mut Bytes, allowed: Allowed) -> Result<Properties, DecodeError> {
        let len = read_varint(buf)? as usize;
        if buf.remaining() < len {
            return Err(DecodeError::Malformed("property length exceeds packet"));
        }
        let mut data = buf.split_to(len);
        let mut p = Properties::default();
        while data.has_remaining() {
            let property = read_varint(&mut data)?;
            let property =
                u8::try_from(property).map_err(|_| DecodeError::Malformed("unknown property"))?;
            if !Allowed::KNOWN.contains(property) {
                return Err(DecodeError::Malformed("unknown property"));
            }
            if !allowed.contains(property) {
                return Err(DecodeError::Protocol("property not allowed in this packet"));
            }
            let d = &mut data;
            match property {
                id::PAYLOAD_FORMAT_INDICATOR => {
                    set_once(&mut p.payload_format_indicator, flag_byte(d)?)?
                }
                id::MESSAGE_EXPIRY_INTERVAL => {
                    set_once(&mut p.message_expiry_interval, read_u32(d)?)?
                }
                id::CONTENT_TYPE => set_once(&mut p.content_type, read_string(d)?)?,
                id::RESPONSE_TOPIC => set_once(&mut p.response_topic, read_string(d)?)?,
                id::CORRELATION_DATA => set_once(&mut p.correlation_data, read_binary(d)?)?,
                id::SUBSCRIPTION_IDENTIFIER => {
                    let v = read_varint(d)?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    p.subscription_identifiers.push(v);
                }
                id::SESSION_EXPIRY_INTERVAL => {
                    set_once(&mut p.session_expiry_interval, read_u32(d)?)?
                }
                id::ASSIGNED_CLIENT_IDENTIFIER => {
                    set_once(&mut p.assigned_client_identifier, read_string(d)?)?
                }
                id::SERVER_KEEP_ALIVE => set_once(&mut p.server_keep_alive, read_u16(d)?)?,
                id::AUTHENTICATION_METHOD => {
                    set_once(&mut p.authentication_method, read_string(d)?)?
                }
                id::AUTHENTICATION_DATA => set_once(&mut p.authentication_data, read_binary(d)?)?,
                id::REQUEST_PROBLEM_INFORMATION => {
                    set_once(&mut p.request_problem_information, flag_byte(d)?)?
                }
                id::WILL_DELAY_INTERVAL => set_once(&mut p.will_delay_interval, read_u32(d)?)?,
                id::REQUEST_RESPONSE_INFORMATION => {
                    set_once(&mut p.request_response_information, flag_byte(d)?)?
                }
                id::RESPONSE_INFORMATION => set_once(&mut p.response_information, read_string(d)?)?,
                id::SERVER_REFERENCE => set_once(&mut p.server_reference, read_string(d)?)?,
                id::REASON_STRING => set_once(&mut p.reason_string, read_string(d)?)?,
                id::RECEIVE_MAXIMUM => {
                    let v = read_u16(d)?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    set_once(&mut p.receive_maximum, v)?
                }
                id::TOPIC_ALIAS_MAXIMUM => set_once(&mut p.topic_alias_maximum, read_u16(d)?)?,
                id::TOPIC_ALIAS => set_once(&mut p.topic_alias, read_u16(d)?)?,
                id::MAXIMUM_QOS => set_once(&mut p.maximum_qos, flag_byte(d)?)?,
                id::RETAIN_AVAILABLE => set_once(&mut p.retain_available, flag_byte(d)?)?,
                id::USER_PROPERTY => {
                    let k = read_string(d)?;
                    let v = read_string(d)?;
                    p.user_properties.push((k, v));
                }
                id::MAXIMUM_PACKET_SIZE => {
                    let v = read_u32(d)?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    set_once(&mut p.maximum_packet_size, v)?
                }
                id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    set_once(&mut p.wildcard_subscription_available, flag_byte(d)?)?
                }
                id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    set_once(&mut p.subscription_identifier_available, flag_byte(d)?)?
                }
                id::SHARED_SUBSCRIPTION_AVAILABLE => {
                    set_once(&mut p.shared_subscription_available, flag_byte(d)?)?
                }
                _ => return Err(DecodeError::Malformed("unknown property")),
            }
        }
        Ok(p)
    }

    /// Visits every property in encoding order; `encoded_len` and `encode` share it so the
    /// length written is always the length of what follows.
    fn visit(&self, v: &mut impl PropertyVisitor) {
        if let Some(x) = self.payload_format_indicator {
            v.byte(id::PAYLOAD_FORMAT_INDICATOR, x);
        }
        if let Some(x) = self.message_expiry_interval {
            v.u32(id::MESSAGE_EXPIRY_INTERVAL, x);
        }
        if let Some(x) = &self.content_type {
            v.bytes(id::CONTENT_TYPE, x.as_bytes());
        }
        if let Some(x) = &self.response_topic {
            v.bytes(id::RESPONSE_TOPIC, x.as_bytes());
        }
        if let Some(x) = &self.correlation_data {
            v.bytes(id::CORRELATION_DATA, x);
        }
        for &x in &self.subscription_identifiers {
            v.varint(id::SUBSCRIPTION_IDENTIFIER, x);
        }
        if let Some(x) = self.session_expiry_interval {
            v.u32(id::SESSION_EXPIRY_INTERVAL, x);
        }
        if let Some(x) = &self.assigned_client_identifier {
            v.bytes(id::ASSIGNED_CLIENT_IDENTIFIER, x.as_bytes());
        }
        if let Some(x) = self.server_keep_alive {
            v.u16(id::SERVER_KEEP_ALIVE, x);
        }
        if let Some(x) = &self.authentication_method {
            v.bytes(id::AUTHENTICATION_METHOD, x.as_bytes());
        }
        if let Some(x) = &self.authentication_data {
            v.bytes(id::AUTHENTICATION_DATA, x);
        }
        if let Some(x) = self.request_problem_information {
            v.byte(id::REQUEST_PROBLEM_INFORMATION, x);
        }
        if let Some(x) = self.will_delay_interval {
            v.u32(id::WILL_DELAY_INTERVAL, x);
        }
        if let Some(x) = self.request_response_information {
            v.byte(id::REQUEST_RESPONSE_INFORMATION, x);
        }
        if let Some(x) = &self.response_information {
            v.bytes(id::RESPONSE_INFORMATION, x.as_bytes());
        }
        if let Some(x) = &self.server_reference {
            v.bytes(id::SERVER_REFERENCE, x.as_bytes());
        }
        if let Some(x) = &self.reason_string {
            v.bytes(id::REASON_STRING, x.as_bytes());
        }
        if let Some(x) = self.receive_maximum {
            v.u16(id::RECEIVE_MAXIMUM, x);
        }
        if let Some(x) = self.topic_alias_maximum {
            v.u16(id::TOPIC_ALIAS_MAXIMUM, x);
        }
        if let Some(x) = self.topic_alias {
            v.u16(id::TOPIC_ALIAS, x);
        }
        if let Some(x) = self.maximum_qos {
            v.byte(id::MAXIMUM_QOS, x);
        }
        if let Some(x) = self.retain_available {
            v.byte(id::RETAIN_AVAILABLE, x);
        }
        for (k, val) in &self.user_properties {
            v.pair(id::USER_PROPERTY, k.as_bytes(), val.as_bytes());
        }
        if let Some(x) = self.maximum_packet_size {
            v.u32(id::MAXIMUM_PACKET_SIZE, x);
        }
        if let Some(x) = self.wildcard_subscription_available {
            v.byte(id::WILDCARD_SUBSCRIPTION_AVAILABLE, x);
        }
        if let Some(x) = self.subscription_identifier_available {
            v.byte(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE, x);
        }
        if let Some(x) = self.shared_subscription_available {
            v.byte(id::SHARED_SUBSCRIPTION_AVAILABLE, x);
        }
    }

    /// Bytes the properties take, without the property-length prefix.
    pub fn encoded_len(&self) -> usize {
        let mut counter = LenCounter(0);
        self.visit(&mut counter);
        counter.0
    }

    /// Writes the property length and the properties.
    pub fn encode(&self, buf: &mut impl BufMut) {
        write_varint(buf, self.encoded_len() as u32);
        self.encode_body(buf);
    }

    /// Writes the properties without their length prefix.
    pub fn encode_body(&self, buf: &mut impl BufMut) {
        self.visit(&mut Writer(buf));
    }
}

trait PropertyVisitor {
    fn byte(&mut self, id: u8, v: u8);
    fn u16(&mut self, id: u8, v: u16);
    fn u32(&mut self, id: u8, v: u32);
    fn varint(&mut self, id: u8, v: u32);
    fn bytes(&mut self, id: u8, v: &[u8]);
    fn pair(&mut self, id: u8, k: &[u8], v: &[u8]);
}

struct LenCounter(usize);

impl PropertyVisitor for LenCounter {
    fn byte(&mut self, _: u8, _: u8) {
        self.0 += 2;
    }
    fn u16(&mut self, _: u8, _: u16) {
        self.0 += 3;
    }
    fn u32(&mut self, _: u8, _: u32) {
        self.0 += 5;
    }
    fn varint(&mut self, _: u8, v: u32) {
        self.0 += 1 + varint_len(v);
    }
    fn bytes(&mut self, _: u8, v: &[u8]) {
        self.0 += 3 + v.len();
    }
    fn pair(&mut self, _: u8, k: &[u8], v: &[u8]) {
        self.0 += 5 + k.len() + v.len();
    }
}

struct Writer<'a, B: BufMut>(&'a mut B);

impl<B: BufMut> PropertyVisitor for Writer<'_, B> {
    fn byte(&mut self, id: u8, v: u8) {
        self.0.put_u8(id);
        self.0.put_u8(v);
    }
    fn u16(&mut self, id: u8, v: u16) {
        self.0.put_u8(id);
        self.0.put_u16(v);
    }
    fn u32(&mut self, id: u8, v: u32) {
        self.0.put_u8(id);
        self.0.put_u32(v);
    }
    fn varint(&mut self, id: u8, v: u32) {
        self.0.put_u8(id);
        write_varint(self.0, v);
    }
    fn bytes(&mut self, id: u8, v: &[u8]) {
        self.0.put_u8(id);
        write_binary(self.0, v);
    }
    fn pair(&mut self, id: u8, k: &[u8], v: &[u8]) {
        self.0.put_u8(id);
        write_string(self.0, k);
        write_string(self.0, v);
    }
}
