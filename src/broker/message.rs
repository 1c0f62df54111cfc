//! An application message as the broker holds it: shared by every subscriber it goes to
//! (`Arc<Message>`, payload as `Bytes`), plus what one subscriber's copy needs (`Delivery`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;

use crate::codec::{Properties, QoS};

#[derive(Debug, Clone)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 properties that travel with the message. Never holds message expiry, topic alias or
    /// subscription identifiers: those are per delivery.
    pub properties: Properties,
    /// From the Message Expiry Interval, when one was given.
    pub expires_at: Option<Instant>,
    /// Client id of the publisher, for No Local; None for messages the broker makes.
    pub publisher: Option<Arc<str>>,
    /// Node the message entered the cluster at; None when it is this node.
    pub origin: Option<Arc<str>>,
    /// Hybrid logical clock stamp (see `clock`), given by the origin's broker to a retained
    /// write: orders retained writes (last writer wins, ties broken by origin).
    pub stamp: u64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    // In the cluster simulation, the simulated wall clock: a run replays exactly.
    #[cfg(test)]
    if let Some(since_epoch) = turmoil::since_epoch() {
        return since_epoch.as_millis() as u64;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Message {
    /// Builds a message from a publish's fields, moving the per-delivery properties out.
    pub fn new(
        topic: Arc<str>,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut properties: Properties,
        publisher: Option<Arc<str>>,
    ) -> Message {
        let expires_at = properties
            .message_expiry_interval
            .take()
            .map(|secs| Instant::now() + std::time::Duration::from_secs(u64::from(secs)));
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        properties.will_delay_interval = None;
        Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            expires_at,
            publisher,
            origin: None,
            stamp: super::clock::physical(now_ms()),
        }
    }

    /// Order of retained writes: stamp, then origin node id (`local` for messages that
    /// entered at this node). The larger one wins everywhere, so all nodes agree.
    pub fn write_order<'a>(&'a self, local: &'a str) -> (u64, &'a str) {
        (self.stamp, self.origin.as_deref().unwrap_or(local))
    }

    /// `None` when expired; otherwise the Message Expiry Interval left to send (if any).
    pub fn expiry_left(&self, now: Instant) -> Option<Option<u32>> {
        match self.expires_at {
            None => Some(None),
            Some(at) if at > now => {
                let left = at.duration_since(now).as_secs_f64().ceil() as u32;
                Some(Some(left.max(1)))
            }
            Some(_) => None,
        }
    }
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(publish QoS, subscription QoS).
    pub qos: QoS,
    /// The RETAIN flag to send (retained-on-subscribe, or Retain As Published).
    pub retain: bool,
    pub subscription_ids: SmallVec<[u32; 1]>,
    /// Set when the delivery came through a shared subscription: `$share/{group}/{filter}`.
    pub shared_group: Option<Arc<str>>,
    /// The number it is stored under in its session's journal (0: not stored).
    pub store_seq: u64,
}
