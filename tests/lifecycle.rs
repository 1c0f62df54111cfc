//! Session and will lifecycle rules found wrong by reading the code (issue 8), each checked
//! the way a client sees it: QoS 2 shared deliveries, wills on takeover and at expiry,
//! resuming with a smaller Receive Maximum, Response Topic and client id rules, refusals
//! within the client's Maximum Packet Size, and a client subscribed to its own topic.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use vibemq::codec::{Ack, Packet, Properties, Protocol, QoS, SubscriptionOptions, Will};

fn will(topic: &str, delay: u32) -> Will {
    Will {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(delay),
            ..Properties::default()
        },
    }
}

fn persistent(id: &str, expiry: u32) -> vibemq::codec::Connect {
    let mut c = connect_packet(Protocol::V5, id, false);
    c.properties.session_expiry_interval = Some(expiry);
    c
}

#[tokio::test]
async fn a_shared_qos2_message_once_sent_stays_with_its_session() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        ..Default::default()
    };
    let mut members = Vec::new();
    for id in ["m1", "m2"] {
        let (mut c, _) = RawClient::connect_with(addr, persistent(id, 60)).await;
        c.subscribe_with("$share/g/q2", options, Properties::default())
            .await;
        members.push(c);
    }
    let mut p = RawClient::connect(addr, Protocol::V5, "p", true).await;
    p.publish("q2", b"once", QoS::ExactlyOnce, false, 1).await;
    assert!(matches!(p.recv().await, Packet::PubRec(_)));
    // Whoever got it does not answer and goes away.
    let mut got = None;
    for (i, m) in members.iter_mut().enumerate() {
        if let Ok(Some(Packet::Publish(publish))) =
            m.try_recv_within(Duration::from_millis(300)).await
        {
            got = Some((i, publish));
        }
    }
    let (holder, first) = got.expect("one member got it");
    let holder_id = ["m1", "m2"][holder];
    let mut holder_conn = members.remove(holder);
    let mut other = members.pop().unwrap();
    drop(holder_conn.stream);
    // Not sent to the other member (MQTT-4.8.2-5)...
    other.expect_silence(Duration::from_millis(500)).await;
    // ...but completed with the member it was sent to, when it returns (MQTT-4.8.2-4).
    let (mut back, ack) = RawClient::connect_with(addr, persistent(holder_id, 60)).await;
    assert!(ack.session_present);
    let again = back.recv_publish().await;
    assert!(again.dup);
    assert_eq!(
        (again.packet_id, &again.payload),
        (first.packet_id, &first.payload)
    );
    holder_conn = back;
    holder_conn
        .send(&Packet::PubRec(Ack::new(again.packet_id, 0)))
        .await;
    assert!(matches!(holder_conn.recv().await, Packet::PubRel(_)));
}

#[tokio::test]
async fn a_clean_start_takeover_publishes_the_delayed_will() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut watcher = RawClient::connect(addr, Protocol::V311, "watcher", true).await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;
    let mut c = persistent("w", 60);
    c.will = Some(will("wills/w", 30));
    let (_old, _) = RawClient::connect_with(addr, c).await;
    // The same id with clean start: the old session ends, so its will is due now, not in 30 s.
    let (_new, ack) = RawClient::connect_with(addr, connect_packet(Protocol::V5, "w", true)).await;
    assert_eq!(ack.code, 0);
    let m = watcher.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("wills/w", &b"gone"[..])
    );

    // Resuming instead (clean start 0) is within the will delay: the will is cancelled.
    let mut c = persistent("r", 60);
    c.will = Some(will("wills/r", 30));
    let (_old, _) = RawClient::connect_with(addr, c).await;
    let (_new, ack) = RawClient::connect_with(addr, persistent("r", 60)).await;
    assert!(ack.session_present);
    watcher.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_will_delay_longer_than_the_session_fires_at_expiry() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut watcher = RawClient::connect(addr, Protocol::V311, "watcher", true).await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;
    let mut c = persistent("short", 1);
    c.will = Some(will("wills/short", 600));
    let (conn, _) = RawClient::connect_with(addr, c).await;
    let started = std::time::Instant::now();
    drop(conn);
    let m = watcher.recv_publish().await;
    assert_eq!(m.topic, "wills/short");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(4),
        "at the 1 s expiry, not the 600 s delay: {after:?}"
    );
    assert!(node.broker().sessions.get("short").is_none());
}

#[tokio::test]
async fn resuming_with_a_smaller_receive_maximum_resends_within_it() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut c = persistent("rm", 60);
    c.properties.receive_maximum = Some(10);
    let (mut s, _) = RawClient::connect_with(addr, c).await;
    s.subscribe("rm", QoS::AtLeastOnce).await;
    let mut p = RawClient::connect(addr, Protocol::V5, "p", true).await;
    for i in 1..=5u16 {
        p.publish("rm", &i.to_be_bytes(), QoS::AtLeastOnce, false, i)
            .await;
        assert!(matches!(p.recv().await, Packet::PubAck(_)));
    }
    let first: Vec<_> = recv_publishes(&mut s, 5).await;
    drop(s);
    let mut c = persistent("rm", 60);
    c.properties.receive_maximum = Some(2);
    let (mut s, ack) = RawClient::connect_with(addr, c).await;
    assert!(ack.session_present);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let two: Vec<_> = recv_publishes(&mut s, 1).await;
        let m = &two[0];
        assert!(m.dup);
        seen.push(m.payload.clone());
        // Never more than two unacknowledged.
        let pending = node
            .broker()
            .sessions
            .get("rm")
            .unwrap()
            .state
            .lock()
            .inflight
            .iter()
            .filter(|f| f.sent)
            .count();
        assert!(pending <= 2, "{pending} outstanding");
        s.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
    }
    let originally: Vec<_> = first.iter().map(|m| m.payload.clone()).collect();
    assert_eq!(seen, originally, "all resent, in order");
    s.expect_silence(Duration::from_millis(200)).await;
}

async fn recv_publishes(c: &mut RawClient, n: usize) -> Vec<vibemq::codec::Publish> {
    let mut out = Vec::new();
    while out.len() < n {
        out.push(c.recv_publish().await);
    }
    out
}

#[tokio::test]
async fn a_response_topic_with_wildcards_is_a_protocol_error() {
    let node = start(|_| {}).await;
    let mut c = RawClient::connect(node.mqtt_addr(), Protocol::V5, "rt", true).await;
    let properties = Properties {
        response_topic: Some("replies/#".into()),
        ..Properties::default()
    };
    c.publish_with("req", b"x", QoS::AtMostOnce, false, 0, properties)
        .await;
    assert_eq!(c.expect_closed().await, Some(0x82));
}

#[tokio::test]
async fn a_refusal_fits_the_clients_maximum_packet_size() {
    let node = start(|c| c.mqtt.allow_zero_length_clientid = false).await;
    let addr = node.mqtt_addr();
    // v5 clients obey allow_zero_length_clientid too.
    let mut c = connect_packet(Protocol::V5, "", true);
    let (_, ack) = RawClient::connect_with(addr, c.clone()).await;
    assert_eq!(ack.code, 0x85);
    assert!(ack.properties.reason_string.is_some());
    c.properties.maximum_packet_size = Some(20);
    let (_, ack) = RawClient::connect_with(addr, c).await;
    assert_eq!(ack.code, 0x85);
    assert_eq!(
        ack.properties.reason_string, None,
        "no reason string past the client's Maximum Packet Size (MQTT-3.2.2-19)"
    );
}

#[tokio::test]
async fn a_client_subscribed_to_its_own_topic_never_deadlocks() {
    const N: u16 = 2000;
    let node = start(|c| c.mqtt.max_queued_messages = 10).await;
    let addr = node.mqtt_addr();
    let mut c = RawClient::connect(addr, Protocol::V311, "self", true).await;
    c.subscribe("self", QoS::AtLeastOnce).await;
    // Everything written at once: the broker must keep reading this client's PUBACKs
    // while its own queue is full.
    let mut burst = bytes::BytesMut::new();
    for i in 1..=N {
        vibemq::codec::encode_packet(
            &Packet::Publish(vibemq::codec::Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "self".into(),
                packet_id: i,
                payload: Bytes::from_static(b"me"),
                properties: Properties::default(),
            }),
            Protocol::V311,
            &mut burst,
        );
    }
    c.send_raw(&burst).await;
    let mut acked = 0;
    while acked < N {
        // Held back by its own full queue, it would move again only after the 2 s stall rule.
        match c.try_recv_within(Duration::from_millis(1500)).await {
            Ok(Some(Packet::PubAck(_))) => acked += 1,
            Ok(Some(Packet::Publish(m))) => c.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await,
            other => panic!("stuck after {acked} PUBACKs: {other:?}"),
        }
    }
    probe(addr).await;
}

#[tokio::test]
async fn a_v311_persistent_session_expires_after_the_cap() {
    let node = start(|c| c.mqtt.max_session_expiry = 1).await;
    let addr = node.mqtt_addr();
    let c = RawClient::connect(addr, Protocol::V311, "v3", false).await;
    c.disconnect().await;
    assert!(node.broker().sessions.get("v3").is_some());
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(node.broker().sessions.get("v3").is_none(), "expired");
    let (_, ack) = RawClient::connect_with(addr, connect_packet(Protocol::V311, "v3", false)).await;
    assert!(!ack.session_present);
}
