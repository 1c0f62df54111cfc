//! What the store keeps, as bincode records: messages (retained, or queued for a session),
//! a session's meta data (expiry, pending will), its subscriptions and where each queued
//! message stands in its QoS handshake. Conversions to and from the broker's types live here
//! so the broker never sees the on-disk form. Times are wall-clock milliseconds, so an expiry
//! keeps counting while the node is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::broker::session::{InflightState, PendingWill, SubscriptionRecord};
use crate::broker::{Delivery, Message, now_ms};
use crate::codec::{Properties, QoS, SubscriptionOptions, Will};

/// The publish properties a stored message or will keeps (the others are per delivery).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredProperties {
    pub payload_format_indicator: Option<u8>,
    /// Only a will's: a message keeps its expiry as a deadline instead.
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

impl StoredProperties {
    fn from_properties(p: &Properties) -> StoredProperties {
        StoredProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
        }
    }

    fn into_properties(self) -> Properties {
        Properties {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.message_expiry_interval,
            content_type: self.content_type,
            response_topic: self.response_topic,
            correlation_data: self.correlation_data,
            user_properties: self.user_properties,
            ..Properties::default()
        }
    }
}

/// A message as stored: retained, or inside a queued delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub properties: StoredProperties,
    /// Wall-clock deadline of its Message Expiry Interval.
    pub expires_at_ms: Option<u64>,
    pub publisher: Option<String>,
    /// The node it entered the cluster at; None for this node.
    pub origin: Option<String>,
    pub stamp: u64,
}

impl StoredMessage {
    pub fn from_message(m: &Message) -> StoredMessage {
        let expires_at_ms = m.expires_at.map(|at| {
            let left = at.saturating_duration_since(Instant::now());
            now_ms().saturating_add(left.as_millis() as u64)
        });
        StoredMessage {
            topic: m.topic.to_string(),
            payload: m.payload.clone(),
            qos: m.qos as u8,
            retain: m.retain,
            properties: StoredProperties::from_properties(&m.properties),
            expires_at_ms,
            publisher: m.publisher.as_deref().map(str::to_string),
            origin: m.origin.as_deref().map(str::to_string),
            stamp: m.stamp,
        }
    }

    /// The message, or None when it expired while stored.
    pub fn into_message(self) -> Option<Message> {
        let expires_at = match self.expires_at_ms {
            None => None,
            Some(at) => {
                let left = at.checked_sub(now_ms()).filter(|left| *left > 0)?;
                Some(Instant::now() + Duration::from_millis(left))
            }
        };
        let mut properties = self.properties.into_properties();
        properties.message_expiry_interval = None;
        Some(Message {
            topic: self.topic.into(),
            payload: self.payload,
            qos: QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce),
            retain: self.retain,
            properties,
            expires_at,
            publisher: self.publisher.map(Arc::from),
            origin: self.origin.map(Arc::from),
            stamp: self.stamp,
        })
    }
}

/// A delivery queued for a session (or in flight to it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDelivery {
    pub message: StoredMessage,
    pub qos: u8,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    pub shared_group: Option<String>,
}

impl StoredDelivery {
    pub fn from_delivery(d: &Delivery) -> StoredDelivery {
        StoredDelivery {
            message: StoredMessage::from_message(&d.message),
            qos: d.qos as u8,
            retain: d.retain,
            subscription_ids: d.subscription_ids.to_vec(),
            shared_group: d.shared_group.as_deref().map(str::to_string),
        }
    }

    /// The delivery under store key `seq`, or None when its message expired while stored.
    pub fn into_delivery(self, seq: u64) -> Option<Delivery> {
        Some(Delivery {
            message: Arc::new(self.message.into_message()?),
            qos: QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce),
            retain: self.retain,
            subscription_ids: self.subscription_ids.into_iter().collect(),
            shared_group: self.shared_group.map(Arc::from),
            store_seq: seq,
        })
    }
}

/// Where a stored delivery stands once sent: its packet id and handshake state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InflightMark {
    pub packet_id: u16,
    /// 1 awaiting PUBACK, 2 awaiting PUBREC, 3 awaiting PUBCOMP.
    pub state: u8,
}

impl InflightMark {
    pub fn new(packet_id: u16, state: InflightState) -> InflightMark {
        let state = match state {
            InflightState::AwaitPubAck => 1,
            InflightState::AwaitPubRec => 2,
            InflightState::AwaitPubComp => 3,
        };
        InflightMark { packet_id, state }
    }

    pub fn state(&self) -> Option<InflightState> {
        match self.state {
            1 => Some(InflightState::AwaitPubAck),
            2 => Some(InflightState::AwaitPubRec),
            3 => Some(InflightState::AwaitPubComp),
            _ => None,
        }
    }
}

/// A will kept with its session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredWill {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub properties: StoredProperties,
    pub delay: u32,
}

impl StoredWill {
    pub fn from_pending(w: &PendingWill) -> StoredWill {
        StoredWill {
            topic: w.will.topic.clone(),
            payload: w.will.payload.clone(),
            qos: w.will.qos as u8,
            retain: w.will.retain,
            properties: StoredProperties::from_properties(&w.will.properties),
            delay: w.delay,
        }
    }

    pub fn into_pending(self) -> PendingWill {
        PendingWill {
            will: Box::new(Will {
                topic: self.topic,
                payload: self.payload,
                qos: QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce),
                retain: self.retain,
                properties: self.properties.into_properties(),
            }),
            delay: self.delay,
        }
    }
}

/// A session's own record: how long it outlives its connection and what it leaves behind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionMeta {
    /// Session Expiry Interval in seconds (u32::MAX: never).
    pub expiry_interval: u32,
    /// When its connection went (None while connected: after a crash, the restart counts as
    /// the moment it went).
    pub disconnected_at_ms: Option<u64>,
    /// The will of its connection, or the one waiting for its delay.
    pub will: Option<StoredWill>,
    /// The verified identity that owns the session (`auth.clientid_ownership`); None: made
    /// anonymously, or stored before sessions had owners.
    pub owner: Option<String>,
}

/// A session record as stores written before sessions had owners keep it.
#[derive(Deserialize)]
struct SessionMetaWithoutOwner {
    expiry_interval: u32,
    disconnected_at_ms: Option<u64>,
    will: Option<StoredWill>,
}

impl SessionMeta {
    /// Reads a session record, of this version or of one before owners (which reads as
    /// owned by nobody).
    pub fn decode(bytes: &[u8]) -> Result<SessionMeta, String> {
        let current = decode::<SessionMeta>(bytes);
        if current.is_ok() {
            return current;
        }
        match decode::<SessionMetaWithoutOwner>(bytes) {
            Ok(old) => Ok(SessionMeta {
                expiry_interval: old.expiry_interval,
                disconnected_at_ms: old.disconnected_at_ms,
                will: old.will,
                owner: None,
            }),
            Err(_) => current,
        }
    }
}

/// A subscription as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub id: Option<u32>,
}

impl StoredSubscription {
    pub fn from_record(r: &SubscriptionRecord) -> StoredSubscription {
        StoredSubscription {
            qos: r.options.qos as u8,
            no_local: r.options.no_local,
            retain_as_published: r.options.retain_as_published,
            retain_handling: r.options.retain_handling,
            id: r.id,
        }
    }

    pub fn into_record(self) -> SubscriptionRecord {
        SubscriptionRecord {
            options: SubscriptionOptions {
                qos: QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce),
                no_local: self.no_local,
                retain_as_published: self.retain_as_published,
                retain_handling: self.retain_handling,
            },
            id: self.id,
        }
    }
}

fn config() -> impl bincode::config::Config {
    // A record is at most a message of `mqtt.max_packet_size` plus its fields.
    bincode::config::standard().with_limit::<{ 300 * 1024 * 1024 }>()
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).expect("store records always encode")
}

pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(bytes, config())
        .map(|(value, _)| value)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_round_trips_with_its_expiry_as_a_deadline() {
        let mut props = Properties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            message_expiry_interval: Some(60),
            ..Properties::default()
        };
        props.correlation_data = Some(Bytes::from_static(b"c"));
        let m = Message::new(
            "a/b".into(),
            Bytes::from_static(b"hello"),
            QoS::ExactlyOnce,
            true,
            props,
            Some("pub".into()),
        );
        let d = Delivery {
            message: Arc::new(m),
            qos: QoS::AtLeastOnce,
            retain: true,
            subscription_ids: [7].into_iter().collect(),
            shared_group: Some("$share/g/a/b".into()),
            store_seq: 0,
        };
        let bytes = encode(&StoredDelivery::from_delivery(&d));
        let back = decode::<StoredDelivery>(&bytes)
            .unwrap()
            .into_delivery(42)
            .expect("not expired");
        assert_eq!(back.store_seq, 42);
        assert_eq!(back.qos, QoS::AtLeastOnce);
        assert_eq!(&*back.message.topic, "a/b");
        assert_eq!(&back.message.payload[..], b"hello");
        assert_eq!(back.message.properties, d.message.properties);
        assert_eq!(back.subscription_ids.as_slice(), &[7]);
        assert_eq!(back.shared_group.as_deref(), Some("$share/g/a/b"));
        let left = back.message.expiry_left(Instant::now()).unwrap().unwrap();
        assert!((59..=60).contains(&left), "expiry left {left}");
    }

    #[test]
    fn a_message_that_expired_while_stored_is_not_restored() {
        let mut stored = StoredMessage::from_message(&Message::new(
            "t".into(),
            Bytes::new(),
            QoS::AtLeastOnce,
            false,
            Properties::default(),
            None,
        ));
        assert!(stored.clone().into_message().is_some());
        stored.expires_at_ms = Some(now_ms() - 1);
        assert!(stored.into_message().is_none());
    }

    #[test]
    fn session_records_of_stores_before_owners_still_read() {
        #[derive(Serialize)]
        struct Before {
            expiry_interval: u32,
            disconnected_at_ms: Option<u64>,
            will: Option<StoredWill>,
        }
        let old = encode(&Before {
            expiry_interval: 60,
            disconnected_at_ms: Some(5),
            will: None,
        });
        let meta = SessionMeta::decode(&old).unwrap();
        assert_eq!((meta.expiry_interval, meta.owner), (60, None));
        let now = SessionMeta {
            expiry_interval: 7,
            disconnected_at_ms: None,
            will: None,
            owner: Some("alice".into()),
        };
        assert_eq!(SessionMeta::decode(&encode(&now)).unwrap(), now);
        assert!(SessionMeta::decode(&[0xff; 3]).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<SessionMeta>(&[0xff; 3]).is_err());
        assert!(decode::<StoredDelivery>(&[]).is_err());
    }
}
