//! Packet structs shared by all protocol versions; v5-only fields live in `Properties`.

use bytes::Bytes;

use super::{Properties, Protocol, QoS};

#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(SubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// Name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub protocol: Protocol,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will properties (v5): will delay interval plus the publish properties.
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    /// v5 reason code, or the v3 return code when the connection is v3.
    pub code: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: String,
    /// Zero for QoS 0.
    pub packet_id: u16,
    pub payload: Bytes,
    pub properties: Properties,
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ack {
    pub packet_id: u16,
    pub reason: u8,
    pub properties: Properties,
}

impl Ack {
    pub fn new(packet_id: u16, reason: u8) -> Ack {
        Ack {
            packet_id,
            reason,
            properties: Properties::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0 send retained on subscribe, 1 only if the subscription is new, 2 never.
    pub retain_handling: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub filters: Vec<(String, SubscriptionOptions)>,
    pub properties: Properties,
}

/// SUBACK and UNSUBACK (v3 UNSUBACK has no reason codes).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SubAck {
    pub packet_id: u16,
    pub reason_codes: Vec<u8>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<String>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Disconnect {
    pub reason: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Auth {
    pub reason: u8,
    pub properties: Properties,
}
