//! Bad input closes only the offending connection, with the right v5 reason code, and harms
//! nobody else: malformed packets, wrong flags, invalid UTF-8, oversized packets, packets
//! before CONNECT, random garbage, and a subscriber that stops reading.

mod common;

use std::time::Duration;

use common::*;
use vibemq::broker::Metrics;
use vibemq::codec::{Packet, Protocol, QoS, reason};

#[tokio::test]
async fn packet_before_connect_closes_without_connack() {
    let node = start(|_| {}).await;
    let mut c = RawClient::open(node.mqtt_addr(), Protocol::V311).await;
    c.send_raw(b"\xc0\x00").await; // PINGREQ
    assert_eq!(c.expect_closed().await, None);
    let mut c = RawClient::open(node.mqtt_addr(), Protocol::V311).await;
    c.send_raw(b"\x10\x0c\x00\x04HTTP\x04\x02\x00\x3c\x00\x00")
        .await; // unknown protocol name
    assert_eq!(c.expect_closed().await, None);
}

#[tokio::test]
async fn v5_violations_get_their_reason_codes() {
    let node = start(|c| c.mqtt.max_packet_size = 1024).await;
    let addr = node.mqtt_addr();
    let cases: &[(&str, &[u8], u8)] = &[
        (
            "SUBSCRIBE with flags 0000",
            b"\x80\x06\x00\x01\x00\x01a\x00",
            reason::MALFORMED_PACKET,
        ),
        (
            "invalid UTF-8 topic",
            b"\x30\x05\x00\x02\xc3\x28\x00",
            reason::MALFORMED_PACKET,
        ),
        (
            "PUBLISH with QoS 3",
            b"\x36\x06\x00\x01t\x00\x01\x00",
            reason::MALFORMED_PACKET,
        ),
        (
            "remaining length over max_packet_size",
            b"\x30\xff\x7f",
            reason::PACKET_TOO_LARGE,
        ),
        (
            "second CONNECT",
            b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00",
            reason::PROTOCOL_ERROR,
        ),
        (
            "wildcard in a PUBLISH topic",
            b"\x30\x05\x00\x02a#\x00",
            reason::TOPIC_NAME_INVALID,
        ),
        ("AUTH without a method", b"\xf0\x00", reason::PROTOCOL_ERROR),
        (
            "reserved packet type 0",
            b"\x00\x00",
            reason::MALFORMED_PACKET,
        ),
        (
            "duplicate property",
            b"\x30\x0e\x00\x01t\x0a\x02\x00\x00\x00\x01\x02\x00\x00\x00\x01",
            reason::PROTOCOL_ERROR,
        ),
    ];
    for (what, bytes, want) in cases {
        let mut c = RawClient::connect(addr, Protocol::V5, "bad", true).await;
        c.send_raw(bytes).await;
        assert_eq!(c.expect_closed().await, Some(*want), "{what}");
    }
    assert!(Metrics::get(&node.broker().metrics.protocol_errors) >= cases.len() as u64);
}

#[tokio::test]
async fn v3_violations_close_without_a_disconnect_packet() {
    let node = start(|_| {}).await;
    let mut c = RawClient::connect(node.mqtt_addr(), Protocol::V311, "bad", true).await;
    c.send_raw(b"\x62\x03\x00\x01\x00").await; // PUBREL one byte too long for 3.1.1
    assert_eq!(c.expect_closed().await, None);
}

#[tokio::test]
async fn a_connection_that_never_sends_connect_is_closed_after_the_connect_timeout() {
    let node = start(|c| c.server.connect_timeout = 1).await;
    let mut c = RawClient::open(node.mqtt_addr(), Protocol::V311).await;
    c.send_raw(b"\x10").await; // a first byte and nothing more
    let started = std::time::Instant::now();
    assert_eq!(c.expect_closed().await, None);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// xorshift64*: deterministic garbage without a dependency.
fn garbage(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed >> 12;
            *seed ^= *seed << 25;
            *seed ^= *seed >> 27;
            (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

#[tokio::test]
async fn garbage_from_many_clients_harms_no_one_else() {
    let node = start(|c| c.mqtt.max_packet_size = 4096).await;
    let addr = node.mqtt_addr();
    let mut healthy_sub = RawClient::connect(addr, Protocol::V5, "healthy-sub", true).await;
    healthy_sub.subscribe("ok/#", QoS::AtLeastOnce).await;
    let mut healthy_pub = RawClient::connect(addr, Protocol::V311, "healthy-pub", true).await;

    let mut attackers = Vec::new();
    for i in 0..40u64 {
        attackers.push(tokio::spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15 ^ i;
            let protocol = if i % 2 == 0 {
                Protocol::V5
            } else {
                Protocol::V311
            };
            let mut c = if i % 4 < 2 {
                RawClient::connect(addr, protocol, &format!("fuzz-{i}"), true).await
            } else {
                RawClient::open(addr, protocol).await
            };
            for _ in 0..20 {
                let bytes = garbage(&mut seed, 64);
                if tokio::io::AsyncWriteExt::write_all(&mut c.stream, &bytes)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            // Whatever it sent, the broker ends up closing it or leaves it waiting; either way
            // it must not take the process down.
            let _ = c.try_recv_within(Duration::from_millis(500)).await;
        }));
    }
    for i in 1..=50u16 {
        healthy_pub
            .publish("ok/data", &i.to_be_bytes(), QoS::AtLeastOnce, false, i)
            .await;
        assert!(matches!(healthy_pub.recv().await, Packet::PubAck(_)));
        let m = healthy_sub.recv_publish().await;
        assert_eq!(&m.payload[..], &i.to_be_bytes());
        healthy_sub
            .send(&Packet::PubAck(vibemq::codec::Ack::new(m.packet_id, 0)))
            .await;
    }
    for a in attackers {
        a.await.expect("attacker task finished");
    }
    // The broker still accepts new clients.
    let mut late = RawClient::connect(addr, Protocol::V311, "late", true).await;
    late.send(&Packet::PingReq).await;
    assert_eq!(late.recv().await, Packet::PingResp);
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_costs_bounded_memory_and_slows_no_one() {
    const MESSAGES: u16 = 3000;
    let node = start(|c| c.mqtt.max_queued_messages = 1000).await;
    let addr = node.mqtt_addr();
    // Subscribes, then never reads its socket again.
    let mut stuck = RawClient::connect(addr, Protocol::V311, "stuck", true).await;
    stuck.subscribe("flood", QoS::AtMostOnce).await;
    let mut fine = RawClient::connect(addr, Protocol::V311, "fine", true).await;
    fine.subscribe("flood", QoS::AtLeastOnce).await;
    let mut p = RawClient::connect(addr, Protocol::V311, "p", true).await;
    let payload = vec![7u8; 16 * 1024];
    let reader = tokio::spawn(async move {
        for i in 1..=MESSAGES {
            let m = fine.recv_publish().await;
            assert_eq!(&m.payload[..2], &i.to_be_bytes(), "in order, none lost");
            fine.send(&Packet::PubAck(vibemq::codec::Ack::new(m.packet_id, 0)))
                .await;
        }
    });
    let mut payload = payload;
    for i in 1..=MESSAGES {
        payload[..2].copy_from_slice(&i.to_be_bytes());
        p.publish("flood", &payload, QoS::AtLeastOnce, false, i)
            .await;
        assert!(matches!(p.recv().await, Packet::PubAck(_)));
    }
    // ~48 MB went out; the reading subscriber got all of it.
    tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("in time")
        .unwrap();
    let session = node.broker().sessions.get("stuck").unwrap().clone();
    assert!(session.state.lock().queue.len() <= 1000, "queue bounded");
    // The reading subscriber kept up, so the stuck one is a slow subscriber: its overflow
    // is dropped and counted, in the broker's figures and against its own client id.
    let dropped = Metrics::get(&node.broker().metrics.dropped_slow_subscriber);
    assert!(dropped > 0, "drops counted");
    assert_eq!(
        session.dropped.load(std::sync::atomic::Ordering::Relaxed),
        dropped
    );
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_qos1_subscriber_holds_publishers_back_only_briefly() {
    let node = start(|c| c.mqtt.max_queued_messages = 100).await;
    let addr = node.mqtt_addr();
    // Subscribes at QoS 1 and never reads again.
    let mut stuck = RawClient::connect(addr, Protocol::V311, "stuck", true).await;
    stuck.subscribe("hold", QoS::AtLeastOnce).await;
    let mut p = RawClient::connect(addr, Protocol::V311, "p", true).await;
    let started = std::time::Instant::now();
    for i in 1..=1000u16 {
        p.publish("hold", &[0u8; 32], QoS::AtLeastOnce, false, i)
            .await;
        match p.try_recv_within(Duration::from_secs(10)).await {
            Ok(Some(Packet::PubAck(_))) => {}
            other => panic!("publisher stuck behind a stalled subscriber at {i}: {other:?}"),
        }
    }
    // Held back at most about the stall time once, then messages to the stalled one are dropped.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert!(Metrics::get(&node.broker().metrics.dropped_queue_full) > 0);
    let queued = node
        .broker()
        .sessions
        .get("stuck")
        .unwrap()
        .state
        .lock()
        .queue
        .len();
    // The soft bound plus the one message that started the hold: holding the publisher
    // is what bounds the queue, and a stalled subscriber gets drops instead.
    assert!(queued <= 101, "bounded: {queued}");
    drop(stuck);
}
