//! Each configured limit as a client meets it: the spec's reason code (v5) or the v3
//! behaviour, the hit counted under the limit's config key, and the node still serving
//! others afterwards.

mod common;

use std::time::Duration;

use common::*;
use vibemq::codec::{Packet, Protocol, QoS};
use vibemq::limits::Limit;

#[tokio::test]
async fn subscriptions_per_client() {
    let node = start(|c| c.mqtt.max_subscriptions_per_client = 3).await;
    let addr = node.mqtt_addr();
    for (protocol, refused) in [(Protocol::V5, 0x97), (Protocol::V311, 0x80)] {
        let mut c = RawClient::connect(addr, protocol, "subs", true).await;
        for f in ["a", "b", "c"] {
            assert_eq!(c.subscribe(f, QoS::AtMostOnce).await, [0]);
        }
        assert_eq!(c.subscribe("d", QoS::AtMostOnce).await, [refused]);
        // Replacing one it has is not a new subscription.
        assert_eq!(c.subscribe("a", QoS::AtLeastOnce).await, [1]);
        c.disconnect().await;
    }
    assert_eq!(node.broker().limits.hits(Limit::SubscriptionsPerClient), 2);
    probe(addr).await;
}

#[tokio::test]
async fn sessions_in_total() {
    let node = start(|c| c.mqtt.max_sessions = 3).await;
    let addr = node.mqtt_addr();
    // Two offline persistent sessions and one connected client hold the three places.
    for id in ["keep-1", "keep-2"] {
        RawClient::connect(addr, Protocol::V311, id, false)
            .await
            .disconnect()
            .await;
    }
    let _held = RawClient::connect(addr, Protocol::V311, "held", true).await;
    let (_, ack) =
        RawClient::connect_with(addr, connect_packet(Protocol::V5, "fourth", true)).await;
    assert_eq!(ack.code, 0x97);
    let (_, ack) =
        RawClient::connect_with(addr, connect_packet(Protocol::V311, "fourth", true)).await;
    assert_eq!(ack.code, 3, "v3: server unavailable");
    // A client whose session exists still gets in.
    RawClient::connect(addr, Protocol::V311, "keep-1", false).await;
    assert_eq!(node.broker().limits.hits(Limit::Sessions), 2);
}

#[tokio::test]
async fn queued_bytes_of_an_offline_session() {
    let node = start(|c| c.mqtt.max_queued_bytes = 100_000).await;
    let addr = node.mqtt_addr();
    let mut s = RawClient::connect(addr, Protocol::V311, "offline", false).await;
    s.subscribe("big", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = RawClient::connect(addr, Protocol::V311, "p", true).await;
    for i in 1..=50u16 {
        p.publish("big", &[0u8; 10_000], QoS::AtLeastOnce, false, i)
            .await;
        assert!(matches!(p.recv().await, Packet::PubAck(_)));
    }
    let session = node.broker().sessions.get("offline").unwrap().clone();
    let (len, bytes) = {
        let st = session.state.lock();
        (st.queue.len(), st.queue.bytes())
    };
    assert_eq!(len, 10, "10 x 10,003 bytes reach the 100,000-byte bound");
    assert!(bytes <= 100_000 + 10_003, "{bytes}");
    assert_eq!(
        session.dropped.load(std::sync::atomic::Ordering::Relaxed),
        40
    );
    probe(addr).await;
}

#[tokio::test]
async fn retained_messages_in_count_and_bytes() {
    let node = start(|c| {
        c.mqtt.max_retained_messages = 2;
        c.mqtt.max_retained_bytes = 1000;
    })
    .await;
    let addr = node.mqtt_addr();
    let mut v5 = RawClient::connect(addr, Protocol::V5, "r5", true).await;
    let ack = async |c: &mut RawClient, topic: &str, payload: &[u8], id| {
        c.publish(topic, payload, QoS::AtLeastOnce, true, id).await;
        match c.recv().await {
            Packet::PubAck(a) => a.reason,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    };
    assert_eq!(ack(&mut v5, "r/1", b"one", 1).await, 0x10);
    assert_eq!(ack(&mut v5, "r/2", b"two", 2).await, 0x10);
    assert_eq!(ack(&mut v5, "r/3", b"three", 3).await, 0x97, "count");
    assert_eq!(ack(&mut v5, "r/1", &[b'x'; 2000], 4).await, 0x97, "bytes");
    // Replacing and deleting always work.
    assert_eq!(ack(&mut v5, "r/1", b"uno", 5).await, 0x10);
    assert_eq!(ack(&mut v5, "r/2", b"", 6).await, 0x10);
    assert_eq!(ack(&mut v5, "r/3", b"three", 7).await, 0x10);
    // A v3 client hears success for a refused one (its protocol has no refusal code).
    let mut v3 = RawClient::connect(addr, Protocol::V311, "r3", true).await;
    assert_eq!(ack(&mut v3, "r/4", b"four", 1).await, 0);
    let mut sub = RawClient::connect(addr, Protocol::V311, "sub", true).await;
    sub.subscribe("r/#", QoS::AtMostOnce).await;
    let mut topics = vec![
        sub.recv_publish().await.topic,
        sub.recv_publish().await.topic,
    ];
    topics.sort();
    assert_eq!(topics, ["r/1", "r/3"]);
    sub.expect_silence(Duration::from_millis(200)).await;
    let limits = &node.broker().limits;
    assert_eq!(limits.hits(Limit::RetainedMessages), 2);
    assert_eq!(limits.hits(Limit::RetainedBytes), 1);
    probe(addr).await;
}

#[tokio::test]
async fn publish_rate_slows_the_client_down_without_dropping() {
    let node = start(|c| c.mqtt.max_publish_rate = 50).await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::connect(addr, Protocol::V311, "sub", true).await;
    sub.subscribe("rate", QoS::AtLeastOnce).await;
    let mut p = RawClient::connect(addr, Protocol::V311, "fast", true).await;
    let started = std::time::Instant::now();
    for i in 1..=150u16 {
        p.publish("rate", b"x", QoS::AtLeastOnce, false, i).await;
    }
    for _ in 1..=150 {
        assert!(matches!(p.recv().await, Packet::PubAck(_)));
    }
    // A burst of 50, then 50 a second: the other 100 take about two seconds.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1800), "took {took:?}");
    for _ in 0..150 {
        let m = sub.recv_publish().await;
        sub.send(&Packet::PubAck(vibemq::codec::Ack::new(m.packet_id, 0)))
            .await;
    }
    assert!(node.broker().limits.hits(Limit::PublishRate) > 0);
    probe(addr).await;
}

#[tokio::test]
async fn connections_per_ip_and_per_second() {
    let node = start(|c| c.server.max_connections_per_ip = 2).await;
    let addr = node.mqtt_addr();
    let _a = RawClient::connect(addr, Protocol::V311, "a", true).await;
    let _b = RawClient::connect(addr, Protocol::V311, "b", true).await;
    let (_, ack) = RawClient::connect_with(addr, connect_packet(Protocol::V5, "c", true)).await;
    assert_eq!(ack.code, 0x97);
    assert_eq!(node.broker().limits.hits(Limit::ConnectionsPerIp), 1);
    drop(_a);
    eventually("a's place freed", || {
        vibemq::broker::Metrics::get(&node.broker().metrics.connections_current) < 2
    })
    .await;
    RawClient::connect(addr, Protocol::V311, "c", true).await;

    let node = start(|c| c.server.max_connection_rate_per_ip = 5).await;
    let addr = node.mqtt_addr();
    let mut kept = Vec::new();
    for i in 0..5 {
        kept.push(RawClient::connect(addr, Protocol::V311, &format!("r{i}"), true).await);
    }
    let (_, ack) = RawClient::connect_with(addr, connect_packet(Protocol::V5, "r5", true)).await;
    assert_eq!(ack.code, 0x9F, "connection rate exceeded");
    let (_, ack) = RawClient::connect_with(addr, connect_packet(Protocol::V311, "r6", true)).await;
    assert_eq!(ack.code, 3);
    assert_eq!(node.broker().limits.hits(Limit::ConnectionRatePerIp), 2);
    // A second later the bucket has refilled.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    RawClient::connect(addr, Protocol::V311, "r7", true).await;
}

#[tokio::test]
async fn clients_cannot_publish_to_sys() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut watcher = RawClient::connect(addr, Protocol::V311, "watcher", true).await;
    watcher.subscribe("$SYS/#", QoS::AtMostOnce).await;
    let mut v5 = RawClient::connect(addr, Protocol::V5, "spoof5", true).await;
    v5.publish(
        "$SYS/broker/clients/connected",
        b"0",
        QoS::AtLeastOnce,
        true,
        1,
    )
    .await;
    match v5.recv().await {
        Packet::PubAck(a) => assert_eq!(a.reason, 0x87, "not authorized"),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let mut v3 = RawClient::connect(addr, Protocol::V311, "spoof3", true).await;
    v3.publish("$SYS/x", b"0", QoS::AtMostOnce, false, 0).await;
    watcher.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(node.broker().retained.len(), 0);
    assert_eq!(
        vibemq::broker::Metrics::get(&node.broker().metrics.publishes_refused_sys),
        2
    );
    // A will in $SYS is refused at CONNECT.
    let mut c = connect_packet(Protocol::V5, "will-sys", true);
    c.will = Some(vibemq::codec::Will {
        topic: "$SYS/fake".into(),
        payload: bytes::Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (_, ack) = RawClient::connect_with(addr, c).await;
    assert_eq!(ack.code, 0x87);
    probe(addr).await;
}

#[tokio::test]
async fn limit_hits_are_in_the_metrics_by_config_key() {
    let node = start(|c| c.mqtt.max_subscriptions_per_client = 1).await;
    let addr = node.mqtt_addr();
    let mut c = RawClient::connect(addr, Protocol::V311, "m", true).await;
    c.subscribe("a", QoS::AtMostOnce).await;
    c.subscribe("b", QoS::AtMostOnce).await;
    let body = common::http::get(node.http_addr().unwrap(), "/metrics")
        .await
        .1;
    assert!(
        body.contains(r#"vibemq_limit_hits_total{limit="mqtt.max_subscriptions_per_client"} 1"#),
        "{body}"
    );
    assert!(body.contains(r#"vibemq_messages_dropped_total{reason="slow_subscriber"} 0"#));
}
