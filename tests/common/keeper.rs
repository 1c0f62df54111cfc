//! A persistent subscriber for crash tests (`Keeper`): a raw MQTT 3.1.1 client that stays with
//! its session across broker restarts, counts each vibemq-bench message it receives by
//! (publisher, sequence number), and holds QoS 2 packet ids across reconnects, so losses and
//! duplicates are counted exactly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use vibemq::codec::{Ack, Packet, Properties, Protocol, QoS};

use super::nodes::LIMIT;
use super::{RawClient, connect_packet};

/// What the keeper received: how often each (publisher, sequence number), and its
/// connections' Session Present flags.
#[derive(Default)]
pub struct Seen {
    pub counts: HashMap<(u32, u64), u32>,
    pub session_present: Vec<bool>,
}

impl Seen {
    /// How many of `acked[p]` first messages of each publisher `p` arrived.
    pub fn missing(&self, acked: &[u64]) -> u64 {
        let mut missing = 0;
        for (p, &n) in acked.iter().enumerate() {
            missing += (0..n)
                .filter(|seq| !self.counts.contains_key(&(p as u32, *seq)))
                .count() as u64;
        }
        missing
    }

    pub fn duplicates(&self) -> u64 {
        self.counts.values().map(|c| u64::from(c - 1)).sum()
    }
}

/// A persistent subscriber that stays with its session across broker restarts: it connects
/// again with clean start off whenever the connection drops, acknowledges what it gets, and
/// for QoS 2 holds each packet id from PUBLISH to PUBREL across reconnects, so a PUBLISH sent
/// again is not taken twice (the receiver's half of exactly once, MQTT 4.3.3).
/// How long the keeper takes over each message: slower than the publishers, so the node holds
/// a backlog for it (queued and in flight) when it is killed.
const ACK_DELAY: Duration = Duration::from_micros(500);

pub struct Keeper {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Keeper {
    pub fn start(addr: SocketAddr, filter: &'static str, qos: QoS) -> Keeper {
        Self::start_roaming(vec![addr], filter, qos)
    }

    /// As `start`, connecting to each of `addrs` in turn whenever a connection fails or
    /// drops: a client that moves to another node of a cluster when its node dies.
    pub fn start_roaming(addrs: Vec<SocketAddr>, filter: &'static str, qos: QoS) -> Keeper {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn(keep(
            addrs,
            filter,
            qos,
            ACK_DELAY,
            seen.clone(),
            stop.clone(),
        ));
        Keeper { seen, stop, task }
    }

    pub async fn wait_connected(&self) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while self.seen.lock().session_present.is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "keeper connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every acknowledged message arrived (bounded); returns how many did not.
    pub async fn wait_for(&self, acked: &[u64], limit: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let missing = self.seen.lock().missing(acked);
            if missing == 0 || tokio::time::Instant::now() > deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop(self) -> Seen {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = tokio::time::timeout(LIMIT, self.task).await;
        std::mem::take(&mut *self.seen.lock())
    }
}

async fn keep(
    addrs: Vec<SocketAddr>,
    filter: &'static str,
    qos: QoS,
    ack_delay: Duration,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::AsyncWriteExt;
    let stopped = || stop.load(std::sync::atomic::Ordering::Relaxed);
    let mut held_qos2 = std::collections::HashSet::new();
    let mut subscribed = false;
    let mut attempt = 0;
    while !stopped() {
        let addr = addrs[attempt % addrs.len()];
        attempt += 1;
        let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut c = RawClient {
            stream,
            buf: Default::default(),
            protocol: Protocol::V311,
        };
        let send = |packet: &Packet| {
            let mut out = bytes::BytesMut::new();
            vibemq::codec::encode_packet(packet, Protocol::V311, &mut out);
            out
        };
        let connect = Packet::Connect(Box::new(connect_packet(Protocol::V311, "keeper", false)));
        if c.stream.write_all(&send(&connect)).await.is_err() {
            continue;
        }
        match c.try_recv_within(LIMIT).await {
            Ok(Some(Packet::ConnAck(a))) => seen.lock().session_present.push(a.session_present),
            _ => continue,
        }
        if !subscribed {
            let options = vibemq::codec::SubscriptionOptions {
                qos,
                ..Default::default()
            };
            let subscribe = Packet::Subscribe(vibemq::codec::Subscribe {
                packet_id: 1,
                filters: vec![(filter.into(), options)],
                properties: Properties::default(),
            });
            if c.stream.write_all(&send(&subscribe)).await.is_err() {
                continue;
            }
        }
        while !stopped() {
            let reply = match c.try_recv_within(Duration::from_millis(200)).await {
                Err(()) => continue,
                Ok(None) => break,
                Ok(Some(Packet::SubAck(_))) => {
                    subscribed = true;
                    continue;
                }
                Ok(Some(Packet::Publish(p))) => {
                    let fresh = p.qos != QoS::ExactlyOnce || held_qos2.insert(p.packet_id);
                    if fresh && p.payload.len() >= 20 {
                        let publisher = u32::from_be_bytes(p.payload[8..12].try_into().unwrap());
                        let seq = u64::from_be_bytes(p.payload[12..20].try_into().unwrap());
                        *seen.lock().counts.entry((publisher, seq)).or_default() += 1;
                    }
                    // Slower than the publishers: a backlog builds up in the broker.
                    tokio::time::sleep(ack_delay).await;
                    match p.qos {
                        QoS::AtMostOnce => continue,
                        QoS::AtLeastOnce => Packet::PubAck(Ack::new(p.packet_id, 0)),
                        QoS::ExactlyOnce => Packet::PubRec(Ack::new(p.packet_id, 0)),
                    }
                }
                Ok(Some(Packet::PubRel(a))) => {
                    held_qos2.remove(&a.packet_id);
                    Packet::PubComp(Ack::new(a.packet_id, 0))
                }
                Ok(Some(_)) => continue,
            };
            if c.stream.write_all(&send(&reply)).await.is_err() {
                break;
            }
        }
    }
}
