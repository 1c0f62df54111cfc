//! Reading the store back at start-up: every retained message and every persistent session
//! with its subscriptions, deliveries (in the order they were queued, with where each stood
//! in its QoS handshake) and inbound QoS 2 packet ids. What is stale (expired messages,
//! records of a session that is gone, records that do not decode) is skipped and listed as
//! ops that remove it.

use std::collections::HashMap;
use std::sync::Arc;

use super::Op;
use super::keys;
use super::records::{
    self, InflightMark, SessionMeta, StoredDelivery, StoredMessage, StoredSubscription,
};
use super::writer::Db;
use crate::broker::session::SubscriptionRecord;
use crate::broker::{Delivery, Message};

/// Everything the store held.
#[derive(Debug, Default)]
pub struct Restored {
    pub retained: Vec<Message>,
    pub sessions: Vec<RestoredSession>,
    /// Ops that remove what was stale; submitted once the store runs.
    pub cleanup: Vec<Op>,
    /// The cluster relay's state (taken by the cluster when it starts).
    pub relay: super::RestoredRelay,
}

#[derive(Debug)]
pub struct RestoredSession {
    pub client: Arc<str>,
    pub meta: SessionMeta,
    pub subscriptions: Vec<(String, SubscriptionRecord)>,
    /// In the order they were queued; with their packet id and state once sent.
    pub deliveries: Vec<(Delivery, Option<InflightMark>)>,
    pub inbound_qos2: Vec<u16>,
    /// Higher than any delivery's sequence number.
    pub next_seq: u64,
}

type KeyValue = (fjall::UserKey, fjall::UserValue);

fn entries(space: &fjall::Keyspace) -> impl Iterator<Item = Result<KeyValue, String>> + '_ {
    space
        .iter()
        .map(|kv| kv.into_inner().map_err(|e| e.to_string()))
}

pub fn read_all(db: &Db) -> Result<Restored, String> {
    let mut out = Restored::default();
    for kv in entries(&db.retained) {
        let (key, value) = kv?;
        let message = records::decode::<StoredMessage>(&value)
            .ok()
            .and_then(StoredMessage::into_message);
        match message {
            Some(m) => out.retained.push(m),
            None => out
                .cleanup
                .push(Op::RetainedGone(String::from_utf8_lossy(&key).into())),
        }
    }
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    for kv in entries(&db.sessions) {
        let (key, value) = kv?;
        let client: Arc<str> = String::from_utf8_lossy(&key).into();
        match SessionMeta::decode(&value) {
            Ok(meta) => {
                index.insert(client.clone(), out.sessions.len());
                out.sessions.push(RestoredSession {
                    client,
                    meta,
                    subscriptions: Vec::new(),
                    deliveries: Vec::new(),
                    inbound_qos2: Vec::new(),
                    next_seq: 1,
                });
            }
            Err(e) => {
                tracing::warn!(client_id = %crate::limits::printable(&client), error = %e, "stored session does not decode: dropped");
                out.cleanup.push(Op::SessionGone(client));
            }
        }
    }
    // Records whose session is gone (its removal did not finish): removed with it.
    let mut orphans: HashMap<Arc<str>, ()> = HashMap::new();
    let mut session_of = |key: &[u8], out: &mut Restored| -> Option<(usize, Vec<u8>)> {
        let (client, rest) = keys::split(key)?;
        match index.get(client) {
            Some(&i) => Some((i, rest.to_vec())),
            None => {
                if orphans.insert(client.into(), ()).is_none() {
                    out.cleanup.push(Op::SessionGone(client.into()));
                }
                None
            }
        }
    };
    for kv in entries(&db.subscriptions) {
        let (key, value) = kv?;
        let Some((i, filter)) = session_of(&key, &mut out) else {
            continue;
        };
        let filter = String::from_utf8_lossy(&filter).into_owned();
        if let Ok(sub) = records::decode::<StoredSubscription>(&value) {
            out.sessions[i]
                .subscriptions
                .push((filter, sub.into_record()));
        }
    }
    let mut marks: HashMap<fjall::UserKey, InflightMark> = HashMap::new();
    for kv in entries(&db.inflight) {
        let (key, value) = kv?;
        if let Ok(mark) = records::decode::<InflightMark>(&value) {
            marks.insert(key, mark);
        }
    }
    for kv in entries(&db.deliveries) {
        let (key, value) = kv?;
        let Some((i, rest)) = session_of(&key, &mut out) else {
            continue;
        };
        let Ok(seq_bytes) = <[u8; 8]>::try_from(rest.as_slice()) else {
            continue;
        };
        let seq = u64::from_be_bytes(seq_bytes);
        let session = &mut out.sessions[i];
        session.next_seq = session.next_seq.max(seq + 1);
        let delivery = records::decode::<StoredDelivery>(&value)
            .ok()
            .and_then(|d| d.into_delivery(seq));
        match delivery {
            Some(d) => session.deliveries.push((d, marks.get(&key).copied())),
            None => out.cleanup.push(Op::Done {
                client: session.client.clone(),
                seq,
            }),
        }
    }
    let (relay, stale) = db.relay.read_all(db.database())?;
    out.relay = relay;
    out.cleanup.extend(stale.into_iter().map(Op::Relay));
    for kv in entries(&db.inbound) {
        let (key, _) = kv?;
        let Some((i, rest)) = session_of(&key, &mut out) else {
            continue;
        };
        if let Ok(id) = <[u8; 2]>::try_from(rest.as_slice()) {
            out.sessions[i].inbound_qos2.push(u16::from_be_bytes(id));
        }
    }
    // Copies of other nodes' sessions go to the cluster.
    let (copies, own): (Vec<_>, Vec<_>) = std::mem::take(&mut out.sessions)
        .into_iter()
        .partition(|s| s.client.starts_with(super::COPY_PREFIX));
    out.sessions = own;
    out.relay.copies = copies;
    Ok(out)
}
