//! `cluster.subscribe_ack` with three real `vibemq` processes: a client that has its SUBACK
//! from one node receives a message published on another node at once, and a SUBACK whose
//! peers do not answer (a frozen node) still goes out after `cluster.subscribe_ack_timeout_ms`,
//! counted in `vibemq_cluster_subscribe_ack_timeouts_total`.

mod common;

use std::time::Duration;

use common::RawClient;
use common::nodes::{LIMIT, ProcessNode};
use vibemq::codec::{Packet, Protocol, QoS};

/// Waits for the PUBACK of packet `id`.
async fn puback(c: &mut RawClient, id: u16) {
    match c.recv().await {
        Packet::PubAck(a) => assert_eq!(a.packet_id, id),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_anywhere_right_after_the_suback_arrives() {
    let [n1, _n2, n3] = ProcessNode::three(Vec::new()).await;
    let mut sub = RawClient::connect(n1.addr(), Protocol::V5, "after-suback-sub", true).await;
    let mut publisher = RawClient::connect(n3.addr(), Protocol::V5, "after-suback-pub", true).await;
    const ROUNDS: u16 = 100;
    let mut missed = Vec::new();
    for round in 1..=ROUNDS {
        // A filter nobody had: its route is new to every node.
        let topic = format!("after-suback/{round}");
        assert_eq!(sub.subscribe(&topic, QoS::AtLeastOnce).await, vec![1]);
        publisher
            .publish(&topic, b"x", QoS::AtLeastOnce, false, round)
            .await;
        puback(&mut publisher, round).await;
        match sub.try_recv_within(Duration::from_secs(2)).await {
            Ok(Some(Packet::Publish(p))) => {
                assert_eq!(p.topic, topic);
                sub.send(&Packet::PubAck(vibemq::codec::Ack::new(p.packet_id, 0)))
                    .await;
            }
            Ok(other) => panic!("round {round}: expected the PUBLISH, got {other:?}"),
            Err(()) => missed.push(round),
        }
    }
    assert!(missed.is_empty(), "missed after their SUBACK: {missed:?}");
    assert_eq!(
        n1.metric("vibemq_cluster_subscribe_ack_timeouts_total")
            .await,
        0.0,
        "every SUBACK waited for the routes, none timed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suback_goes_out_after_the_timeout_when_a_node_does_not_answer() {
    let env = vec![(
        "VIBEMQ_CLUSTER_SUBSCRIBE_ACK_TIMEOUT_MS".to_string(),
        "300".to_string(),
    )];
    let [n1, n2, n3] = ProcessNode::three(env).await;
    let mut sub = RawClient::connect(n1.addr(), Protocol::V311, "frozen-peer-sub", true).await;
    // Frozen, its connections stay open: node1 still counts it live and waits for it.
    n2.freeze().await;
    let asked = tokio::time::Instant::now();
    let codes = tokio::time::timeout(LIMIT, sub.subscribe("frozen/+", QoS::AtLeastOnce))
        .await
        .expect("a SUBACK in time");
    let waited = asked.elapsed();
    assert_eq!(codes, vec![1]);
    assert!(
        waited >= Duration::from_millis(250),
        "the SUBACK waited for node2 ({waited:?})"
    );
    assert!(
        n1.metric("vibemq_cluster_subscribe_ack_timeouts_total")
            .await
            >= 1.0
    );
    // node3 applied the route: its publishes arrive.
    let mut publisher =
        RawClient::connect(n3.addr(), Protocol::V311, "frozen-peer-pub", true).await;
    publisher
        .publish("frozen/a", b"y", QoS::AtLeastOnce, false, 1)
        .await;
    puback(&mut publisher, 1).await;
    let p = sub.recv_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("frozen/a", &b"y"[..]));
    n2.thaw().await;
}
