//! Hostile and careless clients against an in-process node: each attack measured in issue 8
//! as its own test. Every test checks that the node still serves a probe client within a
//! second afterwards, and that what the attacker made the node hold stays within the
//! configured bounds. (Memory as RSS is measured on a real process in hostile_process.rs.)

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vibemq::broker::Metrics;
use vibemq::codec::{Ack, Packet, Protocol, QoS, encode_packet};
use vibemq::limits::Limit;

async fn suback(c: &mut RawClient) -> Vec<u8> {
    match c.recv().await {
        Packet::SubAck(s) => s.reason_codes,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn a_65000_level_filter_is_refused_and_kills_nothing() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let deep = "/".repeat(65_000);
    for (protocol, code) in [(Protocol::V5, 0x8F), (Protocol::V311, 0x80)] {
        let mut c = RawClient::connect(addr, protocol, "deep", true).await;
        c.send(&subscribe_packet(vec![deep.clone()], QoS::AtMostOnce))
            .await;
        assert_eq!(suback(&mut c).await, [code]);
        c.disconnect().await;
    }
    assert_eq!(node.broker().limits.hits(Limit::TopicLevels), 2);
    probe(addr).await;
}

#[tokio::test]
async fn deep_filters_and_topics_within_a_raised_limit_kill_nothing_either() {
    // With the level limit lifted, the trie and the retained store take what the issue's
    // attack sent: a 65,000-level filter, a 30,000-level retained topic and a `#` on it.
    let node = start(|c| c.mqtt.max_topic_levels = 100_000).await;
    let addr = node.mqtt_addr();
    let mut c = RawClient::connect(addr, Protocol::V311, "deep", false).await;
    c.send(&subscribe_packet(vec!["/".repeat(65_000)], QoS::AtMostOnce))
        .await;
    assert_eq!(suback(&mut c).await, [0]);
    let topic = "a/".repeat(30_000) + "z";
    c.send(&publish_packet(&topic, b"deep", QoS::AtLeastOnce, true, 1))
        .await;
    assert!(matches!(c.recv().await, Packet::PubAck(_)));
    assert_eq!(c.subscribe("#", QoS::AtMostOnce).await, [0]);
    assert_eq!(c.recv_publish().await.topic.len(), topic.len());
    // Ending the session removes the deep filter from the trie (and drops its branch).
    let again = RawClient::connect(addr, Protocol::V311, "deep", true).await;
    again.disconnect().await;
    assert_eq!(node.broker().router.filter_count(), 0);
    probe(addr).await;
}

#[tokio::test]
async fn a_deep_publish_is_refused_with_its_reason_code() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let topic = "a/".repeat(30_000) + "z";
    let mut v5 = RawClient::connect(addr, Protocol::V5, "p5", true).await;
    v5.send(&publish_packet(&topic, b"x", QoS::AtMostOnce, true, 0))
        .await;
    assert_eq!(v5.expect_closed().await, Some(0x90));
    let mut v3 = RawClient::connect(addr, Protocol::V311, "p3", true).await;
    v3.send(&publish_packet(&topic, b"x", QoS::AtMostOnce, true, 0))
        .await;
    assert_eq!(
        v3.expect_closed().await,
        None,
        "v3 is closed without a packet"
    );
    assert_eq!(node.broker().retained.len(), 0);
    probe(addr).await;
}

#[tokio::test]
async fn one_subscribe_repeating_a_filter_costs_what_one_filter_costs() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut p = RawClient::connect(addr, Protocol::V311, "p", true).await;
    retain_messages(&mut p, 200, 1024).await;
    // 60,000 times `#` in one 240 KB SUBSCRIBE, from a client that never reads.
    let mut attacker = RawClient::connect(addr, Protocol::V311, "attacker", true).await;
    attacker
        .send(&subscribe_packet(
            vec!["#".to_string(); 60_000],
            QoS::AtMostOnce,
        ))
        .await;
    // Five distinct filters that all match every retained message, in another.
    let overlapping = ["#", "r/#", "+/#", "r/+", "+/+"].map(String::from).to_vec();
    let mut second = RawClient::connect(addr, Protocol::V311, "second", true).await;
    second
        .send(&subscribe_packet(overlapping, QoS::AtMostOnce))
        .await;
    assert_eq!(suback(&mut second).await, [0; 5]);
    let mut got = 0;
    while let Ok(Some(Packet::Publish(_))) =
        second.try_recv_within(Duration::from_millis(300)).await
    {
        got += 1;
    }
    assert_eq!(got, 200, "each retained message once, not once per filter");
    let session = node.broker().sessions.get("attacker").unwrap().clone();
    eventually("the attacker's SUBSCRIBE handled", || {
        !session.state.lock().subscriptions.is_empty()
    })
    .await;
    // Whatever it has not read sits in its socket, write buffer or queue: at most the 200.
    assert!(session.state.lock().queue.len() <= 200);
    probe(addr).await;
    drop(attacker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaced_qos0_flood_to_one_subscriber_is_held_back_not_dropped() {
    const N: usize = 200_000;
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::connect(addr, Protocol::V311, "sub", true).await;
    sub.subscribe("flood", QoS::AtMostOnce).await;
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < N {
            match sub.try_recv_within(Duration::from_secs(5)).await {
                Ok(Some(Packet::Publish(_))) => got += 1,
                other => panic!("subscriber stopped after {got}: {other:?}"),
            }
        }
        got
    });
    let mut p = RawClient::connect(addr, Protocol::V311, "flooder", true).await;
    // As fast as TCP takes it: the messages encoded in large writes.
    let mut chunk = BytesMut::new();
    for _ in 0..10_000 {
        encode_packet(
            &publish_packet("flood", &[b'f'; 64], QoS::AtMostOnce, false, 0),
            Protocol::V311,
            &mut chunk,
        );
    }
    let writer = tokio::spawn(async move {
        for _ in 0..N / 10_000 {
            p.stream.write_all(&chunk).await.expect("write");
        }
        p
    });
    // Others are served while the flood runs.
    probe(addr).await;
    let got = tokio::time::timeout(Duration::from_secs(90), reader)
        .await
        .expect("the subscriber receives the flood in time")
        .unwrap();
    assert_eq!(
        got, N,
        "nothing dropped: the publisher was read more slowly"
    );
    let m = &node.broker().metrics;
    assert_eq!(
        Metrics::get(&m.dropped_queue_full) + Metrics::get(&m.dropped_slow_subscriber),
        0
    );
    drop(writer.await.unwrap());
}

/// A v5 subscriber with Receive Maximum 1 that acknowledges one message every `every`.
fn slow_reader(mut c: RawClient, every: Duration) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut got = 0;
        loop {
            match c.try_recv_within(Duration::from_secs(3)).await {
                Ok(Some(Packet::Publish(m))) => {
                    got += 1;
                    tokio::time::sleep(every).await;
                    c.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
                }
                Ok(Some(Packet::Disconnect(d))) => {
                    assert_eq!(d.reason, 0x97, "told why it is disconnected");
                    return got;
                }
                Ok(Some(other)) => panic!("slow reader got {other:?}"),
                Ok(None) | Err(()) => return got,
            }
        }
    })
}

async fn slow_subscriber_case(disconnect: bool) {
    const N: u16 = 3000;
    let node = start(|c| {
        c.mqtt.max_queued_messages = 100;
        if disconnect {
            c.mqtt.slow_subscriber = vibemq::config::SlowSubscriber::Disconnect;
        }
    })
    .await;
    let addr = node.mqtt_addr();
    let mut connect = connect_packet(Protocol::V5, "slow", true);
    connect.properties.receive_maximum = Some(1);
    let (mut slow, _) = RawClient::connect_with(addr, connect).await;
    slow.subscribe("t", QoS::AtLeastOnce).await;
    let slow = slow_reader(slow, Duration::from_millis(300));
    let mut healthy = RawClient::connect(addr, Protocol::V5, "healthy", true).await;
    healthy.subscribe("t", QoS::AtLeastOnce).await;
    let healthy = tokio::spawn(async move {
        let mut got = 0;
        while got < N {
            match healthy.try_recv_within(Duration::from_secs(5)).await {
                Ok(Some(Packet::Publish(m))) => {
                    got += 1;
                    healthy
                        .send(&Packet::PubAck(Ack::new(m.packet_id, 0)))
                        .await;
                }
                other => panic!("healthy subscriber stopped at {got}: {other:?}"),
            }
        }
        got
    });
    let mut p = RawClient::connect(addr, Protocol::V5, "p", true).await;
    let started = std::time::Instant::now();
    for i in 1..=N {
        p.publish("t", &i.to_be_bytes(), QoS::AtLeastOnce, false, i)
            .await;
        match p.try_recv_within(Duration::from_secs(5)).await {
            Ok(Some(Packet::PubAck(a))) => assert_eq!(a.reason, 0),
            other => panic!("publisher stuck at {i}: {other:?}"),
        }
    }
    let held_for = started.elapsed();
    let healthy = tokio::time::timeout(Duration::from_secs(30), healthy)
        .await
        .expect("in time")
        .unwrap();
    assert_eq!(healthy, N, "the healthy subscriber got every message");
    // The slow one acknowledges every 300 ms: had it held the publisher back, 3000
    // messages would have taken at least a quarter of an hour.
    assert!(held_for < Duration::from_secs(60), "took {held_for:?}");
    let session_drops = node
        .broker()
        .sessions
        .get("slow")
        .map(|s| s.dropped.load(Ordering::Relaxed));
    let m = &node.broker().metrics;
    assert!(Metrics::get(&m.dropped_slow_subscriber) > 0);
    if disconnect {
        let got = tokio::time::timeout(Duration::from_secs(10), slow)
            .await
            .expect("the slow one is let go")
            .unwrap();
        assert!(got < 10, "disconnected early, after {got}");
    } else {
        assert!(
            session_drops.unwrap_or(0) > 0,
            "drops counted for the client"
        );
        slow.abort();
    }
    probe(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_does_not_slow_the_others() {
    slow_subscriber_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_can_be_disconnected_instead() {
    slow_subscriber_case(true).await;
}

#[tokio::test]
async fn a_60kb_invalid_topic_is_not_echoed_back() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut c = RawClient::connect(addr, Protocol::V5, "echo", true).await;
    let topic = format!("bad+{}", "x".repeat(60_000));
    c.send(&publish_packet(&topic, b"x", QoS::AtMostOnce, false, 0))
        .await;
    // RawClient decodes strictly: a truncated reason string would fail here.
    match c.recv().await {
        Packet::Disconnect(d) => {
            assert_eq!(d.reason, 0x90);
            let text = d.properties.reason_string.expect("a reason string");
            assert!(text.len() <= 256, "reason string of {} bytes", text.len());
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    probe(addr).await;
}

/// Reads to the end of the stream, failing on a reset: the packets the broker sent.
async fn read_to_clean_end(c: &mut RawClient) -> Vec<Packet> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(p) =
            vibemq::codec::decode_packet(&mut c.buf, Some(c.protocol), usize::MAX).unwrap()
        {
            out.push(p);
        }
        match tokio::time::timeout_at(deadline, c.stream.read_buf(&mut c.buf)).await {
            Err(_) => panic!("no end of stream within the wait; got {out:?}"),
            Ok(Ok(0)) => return out,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("connection reset ({e}) after {out:?}"),
        }
    }
}

#[tokio::test]
async fn a_refusal_reaches_the_client_before_the_connection_closes() {
    // paho's test_flow_control2: more QoS 2 messages than the Receive Maximum, written
    // together with more data; the client must read DISCONNECT 0x93, not a reset.
    let node = start(|c| c.mqtt.max_inflight = 2).await;
    let addr = node.mqtt_addr();
    let mut c = RawClient::connect(addr, Protocol::V5, "flow", true).await;
    let mut burst = BytesMut::new();
    for id in 1..=3 {
        encode_packet(
            &publish_packet("q2", b"x", QoS::ExactlyOnce, false, id),
            Protocol::V5,
            &mut burst,
        );
    }
    for id in 4..=200 {
        encode_packet(
            &publish_packet("q2", &[0u8; 1000], QoS::ExactlyOnce, false, id),
            Protocol::V5,
            &mut burst,
        );
    }
    c.send_raw(&burst).await;
    // As paho does: go on writing a moment later. A broker that closed at once has reset
    // the connection by now, and this write fails before the client read the reason.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.stream
        .write_all(&[0xC0, 0x00])
        .await
        .expect("still writable: the broker drains before it closes");
    let got = read_to_clean_end(&mut c).await;
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == 0x93),
        "{got:?}"
    );
    // A refusing CONNACK is readable too, even with more bytes behind the CONNECT.
    let mut raw = RawClient::open(addr, Protocol::V311).await;
    let mut bytes = vec![0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 9, 2, 0, 60, 0, 0];
    bytes.extend(std::iter::repeat_n(0xC0, 100_000));
    raw.send_raw(&bytes).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    raw.stream
        .write_all(&[0xC0, 0x00])
        .await
        .expect("still writable after the refusal");
    let mut reply = Vec::new();
    let end = tokio::time::timeout(WAIT, raw.stream.read_to_end(&mut reply)).await;
    assert!(matches!(end, Ok(Ok(_))), "clean end, not a reset: {end:?}");
    assert_eq!(
        reply,
        [0x20, 2, 0, 1],
        "CONNACK unacceptable protocol version"
    );
    probe(addr).await;
}

/// The exchange of the paho interoperability suite's `test_flow_control2` (client_test5.py),
/// step for step: the Receive Maximum from CONNACK, that many plus one QoS 2 PUBLISHes, each
/// its own write and none released, then reading until the server's DISCONNECT, which must
/// say 147 (0x93, Receive Maximum exceeded).
#[tokio::test]
async fn paho_test_flow_control2() {
    let node = start(|_| {}).await;
    let mut connect = connect_packet(Protocol::V5, "myclientid", true);
    connect.properties.session_expiry_interval = Some(0);
    let (mut c, connack) = RawClient::connect_with(node.mqtt_addr(), connect).await;
    let receive_maximum = connack.properties.receive_maximum.unwrap_or(u16::MAX);
    assert_eq!(receive_maximum, 32, "the default mqtt.max_inflight");
    for i in 1..=receive_maximum + 1 {
        let message = format!("message {i}");
        c.publish(
            "client_test5/TopicA",
            message.as_bytes(),
            QoS::ExactlyOnce,
            false,
            i,
        )
        .await;
    }
    let got = read_to_clean_end(&mut c).await;
    let pubrecs = got
        .iter()
        .filter(|p| matches!(p, Packet::PubRec(_)))
        .count();
    assert_eq!(pubrecs, usize::from(receive_maximum));
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason == 147),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_reconnect_loop_leaves_no_sleeping_tasks_behind() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let metrics = tokio::runtime::Handle::current().metrics();
    let mut c = RawClient::connect(addr, Protocol::V311, "looper", false).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = metrics.num_alive_tasks();
    for _ in 0..300 {
        c = RawClient::connect(addr, Protocol::V311, "looper", false).await;
        drop(c);
    }
    // Let the last connection task finish closing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = metrics.num_alive_tasks();
    assert!(
        after <= before + 2,
        "tasks alive: {before} before, {after} after"
    );
    probe(addr).await;
}
