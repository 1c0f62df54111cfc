//! MQTT 5.0 behaviour: properties end to end (rumqttc's v5 client), subscription options,
//! identifiers, topic aliases both ways, message and session expiry, will delay, receive
//! maximum, maximum packet size, server keep alive, shared subscriptions and takeover.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::QoS as RQoS;
use rumqttc::v5::mqttbytes::v5::{
    Filter, PublishProperties, RetainForwardRule, SubscribeProperties,
};
use vibemq::codec::{
    Ack, Disconnect, Packet, Properties, Protocol, QoS, SubscriptionOptions, Will, reason,
};

#[tokio::test]
async fn publish_properties_reach_the_subscriber_with_its_subscription_id() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut sub = V5Client::connect(addr, "sub", true, |_| {}).await;
    let props = SubscribeProperties {
        id: Some(42),
        user_properties: vec![],
    };
    sub.client
        .subscribe_with_properties("props/+", RQoS::AtLeastOnce, props)
        .await
        .unwrap();
    let publisher = V5Client::connect(addr, "pub", true, |_| {}).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(300),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"corr-1")),
        user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties("props/a", RQoS::AtLeastOnce, false, "hello", props)
        .await
        .unwrap();
    let p = sub.next().await;
    let got = p.properties.expect("properties");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert!(matches!(got.message_expiry_interval, Some(299..=300)));
    assert_eq!(got.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(
        got.user_properties,
        vec![("k".into(), "v1".into()), ("k".into(), "v2".into())]
    );
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.subscription_identifiers, vec![42]);
}

#[tokio::test]
async fn no_local_retain_as_published_and_retain_handling() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut c = V5Client::connect(addr, "self", true, |_| {}).await;
    let mut no_local = Filter::new("nl", RQoS::AtLeastOnce);
    no_local.nolocal = true;
    let mut rap = Filter::new("rap", RQoS::AtLeastOnce);
    rap.preserve_retain = true;
    c.client.subscribe_many(vec![no_local, rap]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.client
        .publish("nl", RQoS::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    c.client
        .publish("rap", RQoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    let p = c.next().await;
    assert_eq!(
        (&p.topic[..], p.retain),
        (&b"rap"[..], true),
        "own message skipped, RETAIN kept"
    );

    // Retain handling: 0 sends retained, 1 only for a new subscription, 2 never.
    let mut s = V5Client::connect(addr, "rh", true, |_| {}).await;
    let mut f = Filter::new("rap", RQoS::AtLeastOnce);
    f.retain_forward_rule = RetainForwardRule::Never;
    s.client.subscribe_many(vec![f]).await.unwrap();
    s.expect_none(Duration::from_millis(200)).await;
    let mut f = Filter::new("rap", RQoS::AtLeastOnce);
    f.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    s.client.subscribe_many(vec![f]).await.unwrap();
    s.expect_none(Duration::from_millis(200)).await;
    s.client.subscribe("rap", RQoS::AtLeastOnce).await.unwrap();
    let p = s.next().await;
    assert_eq!((&p.payload[..], p.retain), (&b"kept"[..], true));
}

#[tokio::test]
async fn overlapping_subscriptions_give_one_message_with_all_ids() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut s = RawClient::connect(addr, Protocol::V5, "overlap", true).await;
    let opts = |qos| SubscriptionOptions {
        qos,
        ..Default::default()
    };
    let id = |n| Properties {
        subscription_identifiers: vec![n],
        ..Default::default()
    };
    s.subscribe_with("o/+", opts(QoS::AtMostOnce), id(1)).await;
    s.subscribe_with("o/#", opts(QoS::AtLeastOnce), id(2)).await;
    let mut p = RawClient::connect(addr, Protocol::V5, "p", true).await;
    p.publish("o/x", b"m", QoS::AtLeastOnce, false, 1).await;
    let m = s.recv_publish().await;
    assert_eq!(m.qos, QoS::AtLeastOnce);
    let mut ids = m.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, [1, 2]);
    s.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn topic_aliases_in_both_directions() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut c = connect_packet(Protocol::V5, "aliased", true);
    c.properties.topic_alias_maximum = Some(5);
    let (mut s, ack) = RawClient::connect_with(addr, c).await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(10));
    s.subscribe("al/#", QoS::AtMostOnce).await;

    let mut p = RawClient::connect(addr, Protocol::V5, "p", true).await;
    let alias = |a| Properties {
        topic_alias: Some(a),
        ..Default::default()
    };
    p.publish_with("al/long/topic", b"1", QoS::AtMostOnce, false, 0, alias(3))
        .await;
    p.publish_with("", b"2", QoS::AtMostOnce, false, 0, alias(3))
        .await;

    let first = s.recv_publish().await;
    assert_eq!(first.topic, "al/long/topic");
    let out_alias = first
        .properties
        .topic_alias
        .expect("broker assigns an alias");
    let second = s.recv_publish().await;
    assert_eq!(
        (second.topic.as_str(), second.properties.topic_alias),
        ("", Some(out_alias))
    );
    assert_eq!(&second.payload[..], b"2");

    // An alias never set, or above our maximum, closes the connection with the right reason.
    p.publish_with("", b"3", QoS::AtMostOnce, false, 0, alias(4))
        .await;
    assert_eq!(p.expect_closed().await, Some(reason::PROTOCOL_ERROR));
    let mut q = RawClient::connect(addr, Protocol::V5, "q", true).await;
    q.publish_with("al/x", b"4", QoS::AtMostOnce, false, 0, alias(11))
        .await;
    assert_eq!(q.expect_closed().await, Some(reason::TOPIC_ALIAS_INVALID));
}

#[tokio::test]
async fn expired_messages_are_not_delivered_and_expiry_counts_down() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut c = connect_packet(Protocol::V5, "later", false);
    c.properties.session_expiry_interval = Some(60);
    let (mut s, _) = RawClient::connect_with(addr, c.clone()).await;
    s.subscribe("e", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let mut p = RawClient::connect(addr, Protocol::V5, "p", true).await;
    let expiry = |secs| Properties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    };
    p.publish_with("e", b"short", QoS::AtLeastOnce, false, 1, expiry(1))
        .await;
    p.publish_with("e", b"long", QoS::AtLeastOnce, false, 2, expiry(100))
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (mut s, ack) = RawClient::connect_with(addr, c).await;
    assert!(ack.session_present);
    let m = s.recv_publish().await;
    assert_eq!(&m.payload[..], b"long");
    let left = m.properties.message_expiry_interval.unwrap();
    assert!((97..=98).contains(&left), "expiry counted down: {left}");
}

#[tokio::test]
async fn session_expiry_and_its_change_on_disconnect() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let with_expiry = |id: &str, secs| {
        let mut c = connect_packet(Protocol::V5, id, false);
        c.properties.session_expiry_interval = Some(secs);
        c
    };
    // Expires after its interval.
    let (s, _) = RawClient::connect_with(addr, with_expiry("short", 1)).await;
    s.disconnect().await;
    let (s, ack) = RawClient::connect_with(addr, with_expiry("short", 1)).await;
    assert!(ack.session_present, "still there right away");
    s.disconnect().await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (_s, ack) = RawClient::connect_with(addr, with_expiry("short", 1)).await;
    assert!(!ack.session_present, "expired");

    // DISCONNECT with expiry 0 ends a session that would have lived.
    let (mut s, _) = RawClient::connect_with(addr, with_expiry("changer", 300)).await;
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(0);
    s.send(&Packet::Disconnect(d)).await;
    s.expect_closed().await;
    eventually("session removed", || {
        node.broker().sessions.get("changer").is_none()
    })
    .await;

    // Setting a non-zero expiry on DISCONNECT after CONNECT had 0 is a protocol error.
    let (mut s, _) = RawClient::connect_with(addr, with_expiry("zero", 0)).await;
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(30);
    s.send(&Packet::Disconnect(d)).await;
    assert_eq!(s.expect_closed().await, Some(reason::PROTOCOL_ERROR));
}

#[tokio::test]
async fn will_delay_waits_and_reconnecting_cancels_it() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut watcher = RawClient::connect(addr, Protocol::V5, "watcher", true).await;
    watcher.subscribe("lw/#", QoS::AtMostOnce).await;
    let connect = |id: &str| {
        let mut c = connect_packet(Protocol::V5, id, false);
        c.properties.session_expiry_interval = Some(60);
        c.will = Some(Will {
            topic: format!("lw/{id}"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties {
                will_delay_interval: Some(1),
                ..Default::default()
            },
        });
        c
    };
    let (gone, _) = RawClient::connect_with(addr, connect("gone")).await;
    let (back, _) = RawClient::connect_with(addr, connect("back")).await;
    drop(gone);
    drop(back);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_back, ack) = RawClient::connect_with(addr, connect("back")).await;
    assert!(ack.session_present);
    watcher.expect_silence(Duration::from_millis(400)).await;
    let w = watcher.recv_publish().await;
    assert_eq!(w.topic, "lw/gone");
    watcher.expect_silence(Duration::from_millis(1200)).await;
    // DISCONNECT with reason 0x04 sends the will.
    let mut c = connect_packet(Protocol::V5, "asks", true);
    c.will = Some(Will {
        topic: "lw/asks".into(),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    let (mut asks, _) = RawClient::connect_with(addr, c).await;
    asks.send(&Packet::Disconnect(Disconnect {
        reason: reason::DISCONNECT_WITH_WILL,
        ..Default::default()
    }))
    .await;
    assert_eq!(watcher.recv_publish().await.topic, "lw/asks");
}

#[tokio::test]
async fn receive_maximum_limits_what_is_in_flight_to_the_client() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut c = connect_packet(Protocol::V5, "narrow", true);
    c.properties.receive_maximum = Some(2);
    let (mut s, ack) = RawClient::connect_with(addr, c).await;
    assert_eq!(ack.properties.receive_maximum, Some(32));
    s.subscribe("w", QoS::AtLeastOnce).await;
    let mut p = RawClient::connect(addr, Protocol::V5, "p", true).await;
    for i in 1..=4u16 {
        p.publish("w", &[i as u8], QoS::AtLeastOnce, false, i).await;
    }
    let a = s.recv_publish().await;
    let b = s.recv_publish().await;
    s.expect_silence(Duration::from_millis(300)).await;
    s.send(&Packet::PubAck(Ack::new(a.packet_id, 0))).await;
    let c3 = s.recv_publish().await;
    assert_eq!(&c3.payload[..], &[3]);
    s.expect_silence(Duration::from_millis(200)).await;
    s.send(&Packet::PubAck(Ack::new(b.packet_id, 0))).await;
    assert_eq!(&s.recv_publish().await.payload[..], &[4]);
}

#[tokio::test]
async fn messages_over_the_client_maximum_packet_size_are_dropped_for_it() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut c = connect_packet(Protocol::V5, "small", true);
    c.properties.maximum_packet_size = Some(100);
    let (mut s, _) = RawClient::connect_with(addr, c).await;
    s.subscribe("m", QoS::AtLeastOnce).await;
    let mut p = RawClient::connect(addr, Protocol::V5, "p", true).await;
    p.publish("m", &[0u8; 200], QoS::AtLeastOnce, false, 1)
        .await;
    p.publish("m", b"fits", QoS::AtLeastOnce, false, 2).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"fits");
    assert_eq!(
        vibemq::broker::Metrics::get(&node.broker().metrics.dropped_too_large),
        1
    );
}

#[tokio::test]
async fn connack_tells_limits_assigned_id_and_server_keep_alive() {
    let node = start(|c| c.mqtt.max_keepalive = 20).await;
    let mut c = connect_packet(Protocol::V5, "", true);
    c.keep_alive = 120;
    let (_s, ack) = RawClient::connect_with(node.mqtt_addr(), c).await;
    assert_eq!(ack.code, 0);
    assert_eq!(ack.properties.server_keep_alive, Some(20));
    assert!(
        ack.properties
            .assigned_client_identifier
            .as_deref()
            .is_some_and(|id| id.starts_with("vibemq-"))
    );
    assert_eq!(ack.properties.maximum_packet_size, Some(1_048_576));
    for flag in [
        ack.properties.retain_available,
        ack.properties.wildcard_subscription_available,
        ack.properties.subscription_identifier_available,
        ack.properties.shared_subscription_available,
    ] {
        assert_eq!(flag, Some(1));
    }
    // Enhanced authentication is refused with Bad Authentication Method.
    let mut c = connect_packet(Protocol::V5, "auth", true);
    c.properties.authentication_method = Some("SCRAM-SHA-256".into());
    let (_s, ack) = RawClient::connect_with(node.mqtt_addr(), c).await;
    assert_eq!(ack.code, reason::BAD_AUTHENTICATION_METHOD);
    assert!(
        ack.properties
            .reason_string
            .is_some_and(|r| r.contains("authentication"))
    );
}

#[tokio::test]
async fn takeover_tells_the_old_connection_session_taken_over() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut old = RawClient::connect(addr, Protocol::V5, "dup", true).await;
    let _new = RawClient::connect(addr, Protocol::V5, "dup", true).await;
    assert_eq!(old.expect_closed().await, Some(reason::SESSION_TAKEN_OVER));
}

#[tokio::test]
async fn keep_alive_timeout_is_told_to_v5_clients() {
    let node = start(|_| {}).await;
    let mut c = connect_packet(Protocol::V5, "quiet", true);
    c.keep_alive = 1;
    let (mut c, _) = RawClient::connect_with(node.mqtt_addr(), c).await;
    assert_eq!(c.expect_closed().await, Some(reason::KEEP_ALIVE_TIMEOUT));
}

#[tokio::test]
async fn puback_says_when_nobody_was_subscribed() {
    let node = start(|_| {}).await;
    let mut p = RawClient::connect(node.mqtt_addr(), Protocol::V5, "p", true).await;
    p.publish("nobody/home", b"x", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(
        p.recv().await,
        Packet::PubAck(Ack::new(1, reason::NO_MATCHING_SUBSCRIBERS))
    );
}

#[tokio::test]
async fn shared_subscription_spreads_and_hands_on_unacknowledged_messages() {
    let node = start(|_| {}).await;
    let addr = node.mqtt_addr();
    let mut a = RawClient::connect(addr, Protocol::V5, "worker-a", true).await;
    let mut b = RawClient::connect(addr, Protocol::V5, "worker-b", true).await;
    assert_eq!(
        a.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce).await,
        [1]
    );
    assert_eq!(
        b.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce).await,
        [1]
    );
    let mut p = RawClient::connect(addr, Protocol::V5, "p", true).await;
    for i in 1..=4u16 {
        p.publish("jobs/x", &[i as u8], QoS::AtLeastOnce, false, i)
            .await;
    }
    let mut at_a = Vec::new();
    for _ in 0..2 {
        let m = a.recv_publish().await;
        at_a.push(m.payload[0]);
    }
    let mut at_b = Vec::new();
    for _ in 0..2 {
        let m = b.recv_publish().await;
        at_b.push(m.payload[0]);
        b.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
    }
    let mut all: Vec<u8> = at_a.iter().chain(&at_b).copied().collect();
    all.sort();
    assert_eq!(all, [1, 2, 3, 4], "each message to exactly one member");
    // a goes away without acknowledging: its two messages go to b.
    drop(a);
    let mut handed = vec![
        b.recv_publish().await.payload[0],
        b.recv_publish().await.payload[0],
    ];
    handed.sort();
    at_a.sort();
    assert_eq!(handed, at_a);
    // Invalid shared filters are refused per filter.
    assert_eq!(
        b.subscribe("$share/bad+/x", QoS::AtMostOnce).await,
        [reason::TOPIC_FILTER_INVALID]
    );
}

#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let node = start(|_| {}).await;
    let mut s = RawClient::connect(node.mqtt_addr(), Protocol::V5, "s", true).await;
    let opts = SubscriptionOptions {
        no_local: true,
        ..Default::default()
    };
    s.send(&Packet::Subscribe(vibemq::codec::Subscribe {
        packet_id: 1,
        filters: vec![("$share/g/t".into(), opts)],
        properties: Properties::default(),
    }))
    .await;
    assert_eq!(s.expect_closed().await, Some(reason::PROTOCOL_ERROR));
}

#[tokio::test]
async fn unsubscribe_reports_per_filter() {
    let node = start(|_| {}).await;
    let mut s = RawClient::connect(node.mqtt_addr(), Protocol::V5, "s", true).await;
    s.subscribe("here", QoS::AtMostOnce).await;
    s.send(&Packet::Unsubscribe(vibemq::codec::Unsubscribe {
        packet_id: 2,
        filters: vec!["here".into(), "not-here".into()],
        properties: Properties::default(),
    }))
    .await;
    match s.recv().await {
        Packet::UnsubAck(u) => assert_eq!(
            u.reason_codes,
            [reason::SUCCESS, reason::NO_SUBSCRIPTION_EXISTED]
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(node.broker().router.filter_count(), 0);
}
