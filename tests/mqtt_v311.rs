//! MQTT 3.1.1 (and 3.1) behaviour through a real client library (rumqttc's v4 client) and,
//! where exact bytes matter, the raw client: QoS 0/1/2, wildcards, retained messages, wills,
//! persistent sessions with their bounded offline queue, redelivery and takeover.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::QoS as RQoS;
use vibemq::broker::Metrics;
use vibemq::codec::{Ack, Packet, Protocol, QoS, Will, v3_return};

#[tokio::test]
async fn publish_and_subscribe_at_every_qos() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut sub = V4Client::connect(addr, "sub", true, |_| {}).await;
    sub.client
        .subscribe("q/#", RQoS::ExactlyOnce)
        .await
        .unwrap();
    let publisher = V4Client::connect(addr, "pub", true, |_| {}).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (i, qos) in [RQoS::AtMostOnce, RQoS::AtLeastOnce, RQoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publisher
            .client
            .publish(format!("q/{i}"), qos, false, vec![i as u8; 10])
            .await
            .unwrap();
        let p = sub.next().await;
        assert_eq!(p.topic, format!("q/{i}"));
        assert_eq!(p.qos, qos);
        assert_eq!(&p.payload[..], &[i as u8; 10]);
        assert!(!p.retain);
    }
}

#[tokio::test]
async fn delivery_qos_is_downgraded_to_the_subscription() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut sub = V4Client::connect(addr, "sub", true, |_| {}).await;
    sub.client.subscribe("d", RQoS::AtLeastOnce).await.unwrap();
    let publisher = V4Client::connect(addr, "pub", true, |_| {}).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    publisher
        .client
        .publish("d", RQoS::ExactlyOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(sub.next().await.qos, RQoS::AtLeastOnce);
}

#[tokio::test]
async fn wildcards_and_dollar_topics() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut all = RawClient::connect(addr, Protocol::V311, "all", true).await;
    assert_eq!(all.subscribe("#", QoS::AtMostOnce).await, [0]);
    let mut plus = RawClient::connect(addr, Protocol::V311, "plus", true).await;
    assert_eq!(
        plus.subscribe("sport/+/player1", QoS::AtMostOnce).await,
        [0]
    );
    let mut sys = RawClient::connect(addr, Protocol::V311, "sys", true).await;
    assert_eq!(sys.subscribe("$app/#", QoS::AtMostOnce).await, [0]);
    let mut p = RawClient::connect(addr, Protocol::V311, "p", true).await;
    p.publish("$app/test", b"s", QoS::AtMostOnce, false, 0)
        .await;
    p.publish("sport/tennis/player1", b"t", QoS::AtMostOnce, false, 0)
        .await;
    p.publish("sport/tennis/player2", b"u", QoS::AtMostOnce, false, 0)
        .await;
    assert_eq!(sys.recv_publish().await.topic, "$app/test");
    assert_eq!(plus.recv_publish().await.topic, "sport/tennis/player1");
    // "#" does not match $ topics: the first message "all" sees is the sport one.
    assert_eq!(all.recv_publish().await.topic, "sport/tennis/player1");
    assert_eq!(all.recv_publish().await.topic, "sport/tennis/player2");
    plus.expect_silence(Duration::from_millis(200)).await;
    // Invalid filters are refused per filter with 0x80.
    assert_eq!(plus.subscribe("a/#/b", QoS::AtMostOnce).await, [0x80]);
}

#[tokio::test]
async fn retained_messages_store_replace_and_delete() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut p = RawClient::connect(addr, Protocol::V311, "p", true).await;
    p.publish("r/a", b"1", QoS::AtLeastOnce, true, 1).await;
    assert!(matches!(p.recv().await, Packet::PubAck(_)));
    p.publish("r/a", b"2", QoS::AtLeastOnce, true, 2).await;
    assert!(matches!(p.recv().await, Packet::PubAck(_)));
    p.publish("r/b", b"3", QoS::AtLeastOnce, true, 3).await;
    assert!(matches!(p.recv().await, Packet::PubAck(_)));
    assert_eq!(node.broker().retained.len(), 2);

    let mut s = RawClient::connect(addr, Protocol::V311, "s", true).await;
    s.subscribe("r/+", QoS::AtLeastOnce).await;
    let mut got = vec![s.recv_publish().await, s.recv_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        (got[0].topic.as_str(), &got[0].payload[..], got[0].retain),
        ("r/a", &b"2"[..], true)
    );
    assert_eq!(
        (got[1].topic.as_str(), &got[1].payload[..], got[1].retain),
        ("r/b", &b"3"[..], true)
    );
    for g in &got {
        s.send(&Packet::PubAck(Ack::new(g.packet_id, 0))).await;
    }
    // A live subscriber gets retained publishes with RETAIN 0 (3.1.1: 3.3.1.3).
    p.publish("r/a", b"4", QoS::AtMostOnce, true, 0).await;
    let live = s.recv_publish().await;
    assert_eq!((&live.payload[..], live.retain), (&b"4"[..], false));
    // An empty retained payload deletes.
    p.publish("r/a", b"", QoS::AtMostOnce, true, 0).await;
    assert!(s.recv_publish().await.payload.is_empty());
    eventually("retained delete", || node.broker().retained.len() == 1).await;
    let mut s2 = RawClient::connect(addr, Protocol::V311, "s2", true).await;
    s2.subscribe("r/#", QoS::AtMostOnce).await;
    assert_eq!(s2.recv_publish().await.topic, "r/b");
    s2.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn will_is_sent_on_abnormal_close_only() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut watcher = V4Client::connect(addr, "watcher", true, |_| {}).await;
    watcher
        .client
        .subscribe("will/#", RQoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let will = |topic: &str| Will {
        topic: topic.into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    let mut c = connect_packet(Protocol::V311, "dies", true);
    c.will = Some(will("will/dies"));
    let (dies, ack) = RawClient::connect_with(addr, c).await;
    assert_eq!(ack.code, 0);
    drop(dies); // socket closed without DISCONNECT
    let p = watcher.next().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("will/dies", &b"gone"[..])
    );

    let mut c = connect_packet(Protocol::V311, "polite", true);
    c.will = Some(will("will/polite"));
    let (polite, _) = RawClient::connect_with(addr, c).await;
    polite.disconnect().await;
    watcher.expect_none(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn persistent_session_keeps_subscriptions_and_queues_offline_messages() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut s = RawClient::connect(addr, Protocol::V311, "keeper", false).await;
    s.subscribe("k/#", QoS::AtLeastOnce).await;
    s.disconnect().await;

    let mut p = RawClient::connect(addr, Protocol::V311, "p", true).await;
    for i in 1..=3u16 {
        p.publish("k/x", &[i as u8], QoS::AtLeastOnce, false, i)
            .await;
        assert!(matches!(p.recv().await, Packet::PubAck(_)));
    }
    p.publish("k/zero", b"q0", QoS::AtMostOnce, false, 0).await;

    let (mut s, ack) =
        RawClient::connect_with(addr, connect_packet(Protocol::V311, "keeper", false)).await;
    assert!(ack.session_present);
    for i in 1..=3u8 {
        let m = s.recv_publish().await;
        assert_eq!((&m.payload[..], m.qos), (&[i][..], QoS::AtLeastOnce));
        s.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
    }
    // QoS 0 is not queued for offline sessions by default.
    s.expect_silence(Duration::from_millis(200)).await;
    s.disconnect().await;

    // Clean session discards it.
    let (s, ack) =
        RawClient::connect_with(addr, connect_packet(Protocol::V311, "keeper", true)).await;
    assert!(!ack.session_present);
    s.disconnect().await;
    let (_s, ack) =
        RawClient::connect_with(addr, connect_packet(Protocol::V311, "keeper", false)).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn offline_queue_is_bounded_and_drops_are_counted() {
    let node = start(|c| c.mqtt.max_queued_messages = 5).await;
    let addr = node.mqtt_addr();
    let mut s = RawClient::connect(addr, Protocol::V311, "slowpoke", false).await;
    s.subscribe("b", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = RawClient::connect(addr, Protocol::V311, "p", true).await;
    for i in 1..=10u16 {
        p.publish("b", &i.to_be_bytes(), QoS::AtLeastOnce, false, i)
            .await;
        assert!(matches!(p.recv().await, Packet::PubAck(_)));
    }
    assert_eq!(Metrics::get(&node.broker().metrics.dropped_queue_full), 5);
    let mut s = RawClient::connect(addr, Protocol::V311, "slowpoke", false).await;
    for i in 1..=5u16 {
        let m = s.recv_publish().await;
        assert_eq!(
            &m.payload[..],
            &i.to_be_bytes(),
            "oldest kept, newest dropped"
        );
        s.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
    }
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn unacknowledged_messages_are_redelivered_with_dup_on_resume() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut s = RawClient::connect(addr, Protocol::V311, "forgetful", false).await;
    s.subscribe("u/+", QoS::ExactlyOnce).await;
    let mut p = RawClient::connect(addr, Protocol::V311, "p", true).await;
    p.publish("u/1", b"one", QoS::AtLeastOnce, false, 1).await;
    p.publish("u/2", b"two", QoS::ExactlyOnce, false, 2).await;
    let first = s.recv_publish().await;
    let second = s.recv_publish().await;
    assert!(!first.dup && !second.dup);
    // Acknowledge the QoS 2 one half-way (PUBREC), leave the QoS 1 one unacknowledged.
    s.send(&Packet::PubRec(Ack::new(second.packet_id, 0))).await;
    assert_eq!(
        s.recv().await,
        Packet::PubRel(Ack::new(second.packet_id, 0))
    );
    drop(s);

    let (mut s, ack) =
        RawClient::connect_with(addr, connect_packet(Protocol::V311, "forgetful", false)).await;
    assert!(ack.session_present);
    let again = s.recv_publish().await;
    assert!(again.dup);
    assert_eq!(
        (again.packet_id, &again.payload[..]),
        (first.packet_id, &b"one"[..])
    );
    assert_eq!(
        s.recv().await,
        Packet::PubRel(Ack::new(second.packet_id, 0))
    );
    s.send(&Packet::PubAck(Ack::new(again.packet_id, 0))).await;
    s.send(&Packet::PubComp(Ack::new(second.packet_id, 0)))
        .await;
    s.expect_silence(Duration::from_millis(200)).await;
    assert!(
        node.broker()
            .sessions
            .get("forgetful")
            .unwrap()
            .state
            .lock()
            .inflight
            .is_empty()
    );
}

#[tokio::test]
async fn inbound_qos2_is_delivered_once_even_when_resent() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut s = RawClient::connect(addr, Protocol::V311, "s", true).await;
    s.subscribe("x", QoS::AtMostOnce).await;
    let mut p = RawClient::connect(addr, Protocol::V311, "p", true).await;
    p.publish("x", b"once", QoS::ExactlyOnce, false, 7).await;
    assert_eq!(p.recv().await, Packet::PubRec(Ack::new(7, 0)));
    p.publish("x", b"once", QoS::ExactlyOnce, false, 7).await;
    assert_eq!(p.recv().await, Packet::PubRec(Ack::new(7, 0)));
    p.send(&Packet::PubRel(Ack::new(7, 0))).await;
    assert_eq!(p.recv().await, Packet::PubComp(Ack::new(7, 0)));
    assert_eq!(&s.recv_publish().await.payload[..], b"once");
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn second_connection_with_the_same_client_id_takes_over() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut first = RawClient::connect(addr, Protocol::V311, "twin", true).await;
    let mut second = RawClient::connect(addr, Protocol::V311, "twin", true).await;
    assert_eq!(
        first.expect_closed().await,
        None,
        "v3 has no server DISCONNECT"
    );
    second.send(&Packet::PingReq).await;
    assert_eq!(second.recv().await, Packet::PingResp);
}

#[tokio::test]
async fn client_id_rules_and_protocol_levels() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    // Empty id with clean session: accepted.
    let (_c, ack) = RawClient::connect_with(addr, connect_packet(Protocol::V311, "", true)).await;
    assert_eq!(ack.code, v3_return::ACCEPTED);
    // Empty id without clean session: identifier rejected.
    let (mut c, ack) =
        RawClient::connect_with(addr, connect_packet(Protocol::V311, "", false)).await;
    assert_eq!(ack.code, v3_return::IDENTIFIER_REJECTED);
    c.expect_closed().await;
    // MQTT 3.1 ("MQIsdp", level 3) works.
    let mut old = RawClient::connect(addr, Protocol::V31, "old-device", true).await;
    old.subscribe("legacy", QoS::AtLeastOnce).await;
    old.publish("legacy", b"hi", QoS::AtLeastOnce, false, 1)
        .await;
    let mut got = [old.recv().await, old.recv().await];
    got.sort_by_key(|p| p.kind());
    assert!(matches!(&got[0], Packet::PubAck(_)));
    assert!(matches!(&got[1], Packet::Publish(p) if &p.payload[..] == b"hi"));
    // Unsupported level: CONNACK 0x01 and close.
    let mut c = RawClient::open(addr, Protocol::V311).await;
    c.send_raw(b"\x10\x0d\x00\x04MQTT\x07\x02\x00\x3c\x00\x01a")
        .await;
    match c.recv().await {
        Packet::ConnAck(a) => assert_eq!(a.code, v3_return::UNACCEPTABLE_PROTOCOL_VERSION),
        other => panic!("{other:?}"),
    }
    c.expect_closed().await;
}

#[tokio::test]
async fn keep_alive_above_the_cap_is_refused_for_v3() {
    let node = start(|c| c.mqtt.max_keepalive = 30).await;
    let mut c = connect_packet(Protocol::V311, "k", true);
    c.keep_alive = 60;
    let (_c, ack) = RawClient::connect_with(node.mqtt_addr(), c).await;
    assert_eq!(ack.code, v3_return::IDENTIFIER_REJECTED);
}

#[tokio::test]
async fn silent_client_is_dropped_after_one_and_a_half_keep_alives() {
    let node = start(|_| {}).await;
    let mut c = connect_packet(Protocol::V311, "quiet", true);
    c.keep_alive = 1;
    let (mut c, _) = RawClient::connect_with(node.mqtt_addr(), c).await;
    let started = std::time::Instant::now();
    assert_eq!(c.expect_closed().await, None);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "closed too early: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_fan_in_faster_than_the_subscriber_is_held_back_not_dropped() {
    // A queue bound of 50 and ten publishers that do not wait for acknowledgements: the
    // broker reads from them only as fast as the subscriber takes messages.
    let node = start(|c| c.mqtt.max_queued_messages = 50).await;
    let addr = node.mqtt_addr();
    let mut s = RawClient::connect(addr, Protocol::V311, "sink", true).await;
    s.subscribe("in/+", QoS::AtLeastOnce).await;
    const PER: u16 = 300;
    let mut publishers = Vec::new();
    for p in 0..10u16 {
        publishers.push(tokio::spawn(async move {
            let mut c = RawClient::connect(addr, Protocol::V311, &format!("src-{p}"), true).await;
            let mut bytes = bytes::BytesMut::new();
            for i in 1..=PER {
                let publish = vibemq::codec::Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: format!("in/{p}"),
                    packet_id: i,
                    payload: bytes::Bytes::copy_from_slice(&[p as u8, (i >> 8) as u8, i as u8]),
                    properties: Default::default(),
                };
                vibemq::codec::encode_packet(&Packet::Publish(publish), Protocol::V311, &mut bytes);
            }
            c.send_raw(&bytes).await;
            for _ in 0..PER {
                assert!(matches!(c.recv().await, Packet::PubAck(_)));
            }
        }));
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 10 * usize::from(PER) {
        let m = s.recv_publish().await;
        assert!(seen.insert(m.payload.to_vec()), "duplicate");
        s.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
        if seen.len() % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await; // a slower consumer
        }
    }
    for p in publishers {
        p.await.unwrap();
    }
    assert_eq!(Metrics::get(&node.broker().metrics.dropped_queue_full), 0);
}
