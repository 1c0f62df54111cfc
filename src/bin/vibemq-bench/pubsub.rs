//! `pub`, `sub` and `pubsub` modes: publishers stamp each payload with a time, their index
//! and a sequence number; subscribers record latency and which numbers arrived; the summary
//! counts what was sent, acknowledged to the publishers, delivered, lost (and lost of the
//! acknowledged) and duplicated.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::AsyncReadExt;
use vibemq::codec::{
    Ack, OutboundPublish, Packet, Properties, Protocol, QoS, encode_packet, encode_publish,
};

use crate::conn::Conn;
use crate::{HEADER, Mode, Opts, Shared, hosts, pace_connect, pattern, progress, protocol};

/// Sequence numbers above this are not a publisher's (no run sends 2^36 messages): such a
/// payload is counted as foreign instead of sizing the seen-bitmap.
const MAX_SEQ: u64 = 1 << 36;

/// What one subscriber saw.
struct SubResult {
    /// Payloads that do not carry a plausible publisher sequence number.
    foreign: u64,
    deliveries: u64,
    unique: u64,
    duplicates: u64,
    histogram: Histogram<u64>,
    last_receive: Option<Instant>,
    /// Sequence numbers seen, per publisher: a bit per message.
    seen: HashMap<u32, Vec<u64>>,
}

/// How many of `publisher`'s first `count` messages `seen` holds.
fn seen_below(seen: &HashMap<u32, Vec<u64>>, publisher: u32, count: u64) -> u64 {
    let Some(bits) = seen.get(&publisher) else {
        return 0;
    };
    let full = (count / 64) as usize;
    let mut n: u64 = bits
        .iter()
        .take(full)
        .map(|w| u64::from(w.count_ones()))
        .sum();
    let rest = count % 64;
    if rest > 0
        && let Some(w) = bits.get(full)
    {
        n += u64::from((w & ((1u64 << rest) - 1)).count_ones());
    }
    n
}

/// Significant figures of each subscriber's latency histogram: 3 (about 128 KB each) for a
/// few subscribers, 2 (about 16 KB) for the tens of thousands of a connection-scale run.
fn sub_precision(opts: &Opts) -> u8 {
    if opts.subscribers > 1000 { 2 } else { 3 }
}

/// How many of the sequence numbers `0..count` go to subscriber `i` of `n` when a topic
/// pattern spreads messages round robin (`%m`).
fn share(count: u64, i: usize, n: usize) -> u64 {
    let (i, n) = (i as u64, n.max(1) as u64);
    if count > i {
        (count - i - 1) / n + 1
    } else {
        0
    }
}

/// The topic subscriber `i` of a `%m` pattern receives on, for publisher `p`.
fn spread_topic(topic: &str, p: usize, i: usize) -> String {
    pattern(topic, p).replace("%m", &i.to_string())
}

async fn subscriber(
    opts: Arc<Opts>,
    shared: Arc<Shared>,
    i: usize,
    addr: SocketAddr,
    ready: tokio::sync::mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
) -> SubResult {
    let protocol = protocol(&opts.protocol);
    let filter = pattern(opts.sub_topic.as_deref().unwrap_or(&opts.topic), i);
    let mut result = SubResult {
        foreign: 0,
        deliveries: 0,
        unique: 0,
        duplicates: 0,
        histogram: Histogram::new_with_bounds(1, 60_000_000, sub_precision(&opts))
            .expect("histogram bounds"),
        last_receive: None,
        seen: HashMap::new(),
    };
    let mut conn =
        match Conn::open(addr, protocol, format!("bench-sub-{i}"), !opts.persistent).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("subscriber {i}: {e}");
                let _ = ready.send(()).await;
                return result;
            }
        };
    let qos = QoS::from_u8(opts.qos).unwrap_or(QoS::AtMostOnce);
    if let Err(e) = conn.subscribe(&filter, qos).await {
        eprintln!("subscriber {i}: {e}");
    }
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(()).await;
    // Until the run ends (publishing plus the drain window): a broker still streaming a
    // backlog then has its undelivered messages counted as lost, not waited for.
    while !stop.load(Ordering::Relaxed) {
        let read = tokio::time::timeout(
            Duration::from_millis(200),
            conn.stream.read_buf(&mut conn.rbuf),
        )
        .await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
            Err(_) => continue,
        }
        let now_ns = shared.now_ns();
        let mut count = 0;
        while let Ok(Some(p)) = conn.next_buffered() {
            match p {
                Packet::Publish(p) => {
                    count += 1;
                    if p.payload.len() >= HEADER {
                        let sent_ns =
                            u64::from_be_bytes(p.payload[0..8].try_into().expect("8 bytes"));
                        let publisher =
                            u32::from_be_bytes(p.payload[8..12].try_into().expect("4 bytes"));
                        let seq =
                            u64::from_be_bytes(p.payload[12..20].try_into().expect("8 bytes"));
                        let _ = result
                            .histogram
                            .record((now_ns.saturating_sub(sent_ns) / 1000).max(1));
                        if seq > MAX_SEQ {
                            // Not one of ours: never let it size the bitmap.
                            result.foreign += 1;
                        } else {
                            let bits = result.seen.entry(publisher).or_default();
                            let (word, bit) = ((seq / 64) as usize, seq % 64);
                            if bits.len() <= word {
                                bits.resize(word + 1, 0);
                            }
                            if bits[word] & (1 << bit) != 0 {
                                result.duplicates += 1;
                            } else {
                                bits[word] |= 1 << bit;
                                result.unique += 1;
                            }
                        }
                    }
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => encode_packet(
                            &Packet::PubAck(Ack::new(p.packet_id, 0)),
                            protocol,
                            &mut conn.wbuf,
                        ),
                        QoS::ExactlyOnce => encode_packet(
                            &Packet::PubRec(Ack::new(p.packet_id, 0)),
                            protocol,
                            &mut conn.wbuf,
                        ),
                    }
                }
                Packet::PubRel(a) => encode_packet(
                    &Packet::PubComp(Ack::new(a.packet_id, 0)),
                    protocol,
                    &mut conn.wbuf,
                ),
                _ => {}
            }
        }
        if count > 0 {
            result.deliveries += count;
            result.last_receive = Some(Instant::now());
            shared.received.fetch_add(count, Ordering::Relaxed);
        }
        if !conn.wbuf.is_empty() && conn.flush().await.is_err() {
            break;
        }
    }
    result
}

/// A slow consumer: MQTT 5 with Receive Maximum 1, one acknowledgement every `ack_every`.
/// Returns how many messages it received before `stop`.
async fn slow_subscriber(
    opts: Arc<Opts>,
    i: usize,
    addr: SocketAddr,
    ready: tokio::sync::mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let properties = vibemq::codec::Properties {
        receive_maximum: Some(1),
        ..Default::default()
    };
    let id = format!("bench-slow-{i}");
    let conn = Conn::open_with(addr, Protocol::V5, id, true, properties).await;
    let mut conn = match conn {
        Ok(c) => c,
        Err(e) => {
            eprintln!("slow subscriber {i}: {e}");
            let _ = ready.send(()).await;
            return 0;
        }
    };
    let filter = pattern(opts.sub_topic.as_deref().unwrap_or(&opts.topic), 0);
    let qos = QoS::from_u8(opts.qos).unwrap_or(QoS::AtMostOnce);
    if let Err(e) = conn.subscribe(&filter, qos).await {
        eprintln!("slow subscriber {i}: {e}");
    }
    let _ = ready.send(()).await;
    let every = Duration::from_millis(opts.slow_ack_ms);
    let mut got = 0;
    while !stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(200), conn.recv()).await;
        let packet = match next {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => break,
            Err(_) => continue,
        };
        if let Packet::Publish(p) = packet {
            got += 1;
            tokio::time::sleep(every).await;
            let ack = match p.qos {
                QoS::AtMostOnce => continue,
                QoS::AtLeastOnce => Packet::PubAck(Ack::new(p.packet_id, 0)),
                QoS::ExactlyOnce => Packet::PubRec(Ack::new(p.packet_id, 0)),
            };
            if conn.send(&ack).await.is_err() {
                break;
            }
        } else if let Packet::PubRel(a) = packet
            && conn
                .send(&Packet::PubComp(Ack::new(a.packet_id, 0)))
                .await
                .is_err()
        {
            break;
        }
    }
    got
}

/// Publishes until the deadline or count; returns how many it sent.
async fn publisher(
    opts: Arc<Opts>,
    shared: Arc<Shared>,
    i: usize,
    addr: SocketAddr,
    deadline: Instant,
) -> (u64, u64) {
    let protocol = protocol(&opts.protocol);
    let mut conn = match Conn::open(addr, protocol, format!("bench-pub-{i}"), true).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("publisher {i}: {e}");
            return (0, 0);
        }
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let topic = pattern(&opts.topic, i);
    // A topic per message only when the pattern asks for one.
    let per_message = topic.contains("%n") || topic.contains("%m");
    let spread_over = opts.subscribers.max(1) as u64;
    let mut message_topic = topic.clone();
    let qos = QoS::from_u8(opts.qos).unwrap_or(QoS::AtMostOnce);
    let mut payload = vec![0u8; opts.size.max(HEADER)];
    let properties = Properties::default();
    let (mut seq, mut inflight, mut next_id) = (0u64, 0usize, 1u16);
    let interval = (opts.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / opts.rate));
    let began = Instant::now();
    let limit = opts.count.unwrap_or(u64::MAX);
    let mut acks_pending_rel: Vec<u16> = Vec::new();
    let mut flushed = 0u64;
    // PUBACK / PUBCOMP received: the broker answers in order, so these are messages 0..acked.
    let mut acked = 0u64;
    while Instant::now() < deadline && seq < limit {
        // Fill a batch: up to the window, the rate, and 64 KB.
        while conn.wbuf.len() < 64 * 1024
            && seq < limit
            && (qos == QoS::AtMostOnce || inflight < opts.inflight)
        {
            if let Some(iv) = interval
                && began + iv.mul_f64(seq as f64) > Instant::now()
            {
                break;
            }
            payload[0..8].copy_from_slice(&shared.now_ns().to_be_bytes());
            payload[8..12].copy_from_slice(&(i as u32).to_be_bytes());
            payload[12..20].copy_from_slice(&seq.to_be_bytes());
            let packet_id = if qos == QoS::AtMostOnce {
                0
            } else {
                let id = next_id;
                next_id = if next_id == u16::MAX { 1 } else { next_id + 1 };
                inflight += 1;
                id
            };
            if per_message {
                message_topic = topic
                    .replace("%n", &seq.to_string())
                    .replace("%m", &(seq % spread_over).to_string());
            }
            let out = OutboundPublish {
                dup: false,
                qos,
                retain: opts.retain,
                topic: &message_topic,
                packet_id,
                payload: &payload,
                properties: &properties,
                message_expiry_interval: None,
                topic_alias: None,
                subscription_identifiers: &[],
            };
            encode_publish(&mut conn.wbuf, &out, protocol);
            seq += 1;
        }
        if !conn.wbuf.is_empty() {
            // A broker that reads slowly must not keep the publisher past the deadline; what
            // could not be written by then is not counted as sent.
            match tokio::time::timeout_at(deadline.into(), conn.flush()).await {
                Ok(Ok(())) => flushed = seq,
                _ => break,
            }
        }
        // Read acknowledgements (or wait for the next rate slot).
        let wait = if qos != QoS::AtMostOnce && inflight >= opts.inflight {
            Duration::from_millis(100)
        } else if let Some(iv) = interval {
            (began + iv.mul_f64(seq as f64)).saturating_duration_since(Instant::now())
        } else if qos == QoS::AtMostOnce {
            Duration::ZERO
        } else {
            Duration::from_micros(50)
        };
        if wait.is_zero() && qos == QoS::AtMostOnce {
            tokio::task::yield_now().await;
            continue;
        }
        if let Ok(Ok(n)) = tokio::time::timeout(wait, conn.stream.read_buf(&mut conn.rbuf)).await {
            if n == 0 {
                break;
            }
            while let Ok(Some(p)) = conn.next_buffered() {
                match p {
                    Packet::PubAck(_) | Packet::PubComp(_) => {
                        inflight = inflight.saturating_sub(1);
                        acked += 1;
                    }
                    Packet::PubRec(a) => acks_pending_rel.push(a.packet_id),
                    _ => {}
                }
            }
            for id in acks_pending_rel.drain(..) {
                encode_packet(&Packet::PubRel(Ack::new(id, 0)), protocol, &mut conn.wbuf);
            }
        }
    }
    shared.sent.fetch_add(flushed, Ordering::Relaxed);
    // Let the last acknowledgements arrive before closing.
    let settle = Instant::now() + Duration::from_secs(2);
    while qos != QoS::AtMostOnce && inflight > 0 && Instant::now() < settle {
        if !conn.wbuf.is_empty() && conn.flush().await.is_err() {
            break;
        }
        match tokio::time::timeout(
            Duration::from_millis(100),
            conn.stream.read_buf(&mut conn.rbuf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {
                while let Ok(Some(p)) = conn.next_buffered() {
                    match p {
                        Packet::PubAck(_) | Packet::PubComp(_) => {
                            inflight = inflight.saturating_sub(1);
                            acked += 1;
                        }
                        Packet::PubRec(a) => encode_packet(
                            &Packet::PubRel(Ack::new(a.packet_id, 0)),
                            protocol,
                            &mut conn.wbuf,
                        ),
                        _ => {}
                    }
                }
            }
            Err(_) => {}
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        conn.send(&Packet::Disconnect(Default::default())),
    )
    .await;
    // QoS 0 has no acknowledgement: what was written counts.
    (
        flushed,
        if qos == QoS::AtMostOnce {
            flushed
        } else {
            acked.min(flushed)
        },
    )
}

pub(crate) async fn pubsub_mode(opts: &Arc<Opts>, shared: &Arc<Shared>) -> serde_json::Value {
    let pub_hosts = hosts(opts.pub_host.as_deref().unwrap_or(&opts.host));
    let sub_hosts = hosts(opts.sub_host.as_deref().unwrap_or(&opts.host));
    let stop = Arc::new(AtomicBool::new(false));
    progress(shared, stop.clone());
    let subscribers = if opts.mode == Mode::Pub {
        0
    } else {
        opts.subscribers
    };
    let publishers = if opts.mode == Mode::Sub {
        0
    } else {
        opts.publishers
    };
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(subscribers.max(1));
    let start = Instant::now();
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let (opts, shared, tx, stop) =
            (opts.clone(), shared.clone(), ready_tx.clone(), stop.clone());
        let addr = sub_hosts[i % sub_hosts.len()];
        subs.push(tokio::spawn(async move {
            pace_connect(&opts, i, start).await;
            subscriber(opts, shared, i, addr, tx, stop).await
        }));
    }
    let mut slow = Vec::new();
    let (slow_tx, mut slow_rx) = tokio::sync::mpsc::channel(opts.slow_subscribers.max(1));
    for i in 0..opts.slow_subscribers {
        let (opts, tx, stop) = (opts.clone(), slow_tx.clone(), stop.clone());
        let addr = sub_hosts[i % sub_hosts.len()];
        slow.push(tokio::spawn(slow_subscriber(opts, i, addr, tx, stop)));
    }
    for _ in 0..subscribers {
        let _ = ready_rx.recv().await;
    }
    for _ in 0..opts.slow_subscribers {
        let _ = slow_rx.recv().await;
    }
    let subscribe_secs = start.elapsed().as_secs_f64();
    // Subscriptions on other nodes of a cluster take a moment to be routed everywhere.
    if pub_hosts != sub_hosts {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let began = Instant::now();
    let deadline = began + Duration::from_secs_f64(opts.duration);
    let mut pubs = Vec::new();
    for i in 0..publishers {
        let (opts, shared) = (opts.clone(), shared.clone());
        let addr = pub_hosts[i % pub_hosts.len()];
        pubs.push(tokio::spawn(async move {
            pace_connect(&opts, i, began).await;
            publisher(opts, shared, i, addr, deadline).await
        }));
    }
    let mut sent_by = Vec::new();
    let mut acked_by = Vec::new();
    for p in pubs {
        let (sent, acked) = p.await.unwrap_or((0, 0));
        sent_by.push(sent);
        acked_by.push(acked);
    }
    let sent: u64 = sent_by.iter().sum();
    let publish_secs = began.elapsed().as_secs_f64();
    // Expected deliveries: for each subscriber, what the publishers whose topics it matches sent.
    let filters: Vec<String> = (0..subscribers)
        .map(|i| pattern(opts.sub_topic.as_deref().unwrap_or(&opts.topic), i))
        .collect();
    // With `%m` each subscriber's filter matches only its share of each publisher's messages.
    let spread = opts.topic.contains("%m");
    let reaches = |i: usize, p: usize| {
        let topic = if spread {
            spread_topic(&opts.topic, p, i)
        } else {
            pattern(&opts.topic, p)
        };
        vibemq::topic::matches(&filters[i], &topic)
    };
    let share_of = |count: u64, i: usize| {
        if spread {
            share(count, i, subscribers)
        } else {
            count
        }
    };
    let expected: u64 = (0..subscribers)
        .map(|i| {
            (0..publishers)
                .filter(|&p| reaches(i, p))
                .map(|p| share_of(sent_by[p], i))
                .sum::<u64>()
        })
        .sum();
    let drain_until = Instant::now() + Duration::from_secs_f64(opts.drain);
    while shared.received.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut histogram: Histogram<u64> =
        Histogram::new_with_bounds(1, 60_000_000, sub_precision(opts)).expect("bounds");
    let (mut deliveries, mut unique, mut duplicates, mut foreign) = (0, 0, 0, 0);
    // Messages acknowledged to their publisher that a subscriber matching them never got
    // (in all, and per publisher).
    let mut lost_acked = 0u64;
    let mut lost_acked_by = vec![0u64; acked_by.len()];
    let mut last_receive = None;
    let mut slow_received = 0;
    for s in slow {
        slow_received += s.await.unwrap_or(0);
    }
    for (i, s) in subs.into_iter().enumerate() {
        if let Ok(r) = s.await {
            for (p, &acked) in acked_by.iter().enumerate() {
                if reaches(i, p) {
                    let owed = share_of(acked, i);
                    let lost = owed - seen_below(&r.seen, p as u32, acked).min(owed);
                    lost_acked += lost;
                    lost_acked_by[p] += lost;
                }
            }
            deliveries += r.deliveries;
            unique += r.unique;
            duplicates += r.duplicates;
            foreign += r.foreign;
            let _ = histogram.add(&r.histogram);
            last_receive = last_receive.max(r.last_receive);
        }
    }
    // Throughput over the time deliveries took: from the first publish to the last delivery.
    let window = last_receive
        .map_or(publish_secs, |t| t.duration_since(began).as_secs_f64())
        .max(1e-3);
    let q = |p: f64| histogram.value_at_quantile(p);
    serde_json::json!({
        "mode": format!("{:?}", opts.mode).to_lowercase(),
        "qos": opts.qos,
        "publishers": publishers,
        "subscribers": subscribers,
        "size": opts.size.max(HEADER),
        "sent": sent,
        "received": deliveries,
        "expected": expected,
        "lost": expected.saturating_sub(unique),
        "acked": acked_by.iter().sum::<u64>(),
        "lost_acked": lost_acked,
        "acked_by_publisher": acked_by,
        "lost_acked_by_publisher": lost_acked_by,
        "duplicates": duplicates,
        "foreign": foreign,
        "slow_received": slow_received,
        "seconds": (window * 1000.0).round() / 1000.0,
        "subscribers_ready_seconds": (subscribe_secs * 1000.0).round() / 1000.0,
        "msgs_per_sec": (deliveries as f64 / window).round(),
        "sent_per_sec": (sent as f64 / publish_secs.max(1e-3)).round(),
        "latency_us": {
            "min": if histogram.is_empty() { 0 } else { histogram.min() },
            "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": histogram.max(),
        },
    })
}
