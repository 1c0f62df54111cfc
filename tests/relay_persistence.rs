//! The cluster relay across kill -9, with persistence on and real processes: a node killed
//! with frames it acknowledged to its publishers but had not yet relayed sends them after its
//! restart, and a node killed while receiving under QoS 1 and QoS 2 load gets, after its
//! restart, every message its peer acknowledged (QoS 2: exactly once). Counted per
//! (publisher, sequence number) by a persistent raw-client subscriber (`Keeper`).

mod common;

use std::time::Duration;

use common::keeper::Keeper;
use common::nodes::{ProcessNode, acked_by_publisher, load, wait_routed};
use vibemq::codec::QoS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_a_killed_node_acknowledged_but_had_not_relayed_arrive_after_its_restart() {
    let receiving = ProcessNode::start(1, 0).await;
    let mut sending = ProcessNode::start(2, receiving.gossip).await;
    receiving.wait_linked(1).await;
    sending.wait_linked(1).await;
    let keeper = Keeper::start(
        receiving.mqtt_addr().parse().unwrap(),
        "relay/#",
        QoS::AtLeastOnce,
    );
    keeper.wait_connected().await;
    wait_routed(&sending, &receiving, "relay/probe").await;
    // The receiving node stops dead: the sending node acknowledges its publishers (the
    // frames are on its disk) while nothing it relays is acknowledged.
    receiving.freeze().await;
    let summary = load(
        &sending,
        &[
            "--publishers",
            "2",
            "--topic",
            "relay/%i",
            "--qos",
            "1",
            "--rate",
            "500",
            "--duration",
            "3",
        ],
    )
    .await
    .unwrap();
    let acked = acked_by_publisher(&summary);
    let total: u64 = acked.iter().sum();
    assert!(total >= 500, "the load ran: {summary}");
    // Killed with all of it unacknowledged by its peer, started again, and the peer thawed.
    sending.restart().await;
    receiving.thaw().await;
    let missing = keeper.wait_for(&acked, Duration::from_secs(40)).await;
    let seen = keeper.stop().await;
    println!(
        "{total} acknowledged while the peer was frozen, {} received after the restart, {missing} missing, {} duplicates",
        seen.counts.len(),
        seen.duplicates()
    );
    assert_eq!(missing, 0, "acknowledged messages lost: {summary}");
    assert_eq!(
        sending.metric("vibemq_cluster_relay_dropped").await,
        0.0,
        "the restarted node resumed its link instead of dropping what it had stored"
    );
}

/// QoS `qos` load published on node 1 for a persistent subscriber on node 2; node 2 is
/// killed with SIGKILL in the middle and started again. Returns (acknowledged, duplicates).
async fn receiver_killed_under_load(qos: QoS) -> (u64, u64) {
    let big_queues = vec![
        (
            "VIBEMQ_MQTT_MAX_QUEUED_MESSAGES".to_string(),
            "2000000".to_string(),
        ),
        (
            "VIBEMQ_MQTT_MAX_QUEUED_BYTES".to_string(),
            "1000000000".to_string(),
        ),
    ];
    let sending = ProcessNode::start(1, 0).await;
    let mut receiving =
        ProcessNode::start_with(2, sending.gossip, common::process::free_port(), big_queues).await;
    sending.wait_linked(1).await;
    receiving.wait_linked(1).await;
    let keeper = Keeper::start(receiving.mqtt_addr().parse().unwrap(), "load/#", qos);
    keeper.wait_connected().await;
    wait_routed(&sending, &receiving, "load/probe").await;
    let q = (qos as u8).to_string();
    let running = load(
        &sending,
        &[
            "--publishers",
            "4",
            "--topic",
            "load/%i",
            "--qos",
            &q,
            "--rate",
            "600",
            "--duration",
            "5",
        ],
    );
    // Killed while the load arrives: well after it started, well before it ends.
    receiving
        .wait_metric_above("vibemq_cluster_messages_from_peers", 3000.0, "load relayed")
        .await;
    receiving.restart().await;
    let summary = running.await.unwrap();
    let acked = acked_by_publisher(&summary);
    let total: u64 = acked.iter().sum();
    assert!(total >= 6000, "the load ran: {summary}");
    let missing = keeper.wait_for(&acked, Duration::from_secs(60)).await;
    let seen = keeper.stop().await;
    println!(
        "QoS {q}: {total} acknowledged on node 1, {} received on node 2, {missing} missing, {} duplicates, session present: {:?}",
        seen.counts.len(),
        seen.duplicates(),
        seen.session_present
    );
    assert_eq!(missing, 0, "acknowledged messages lost: {summary}");
    assert!(
        seen.session_present.iter().skip(1).all(|p| *p),
        "the session was there after the restart: {:?}",
        seen.session_present
    );
    assert_eq!(
        sending.metric("vibemq_cluster_relay_dropped").await,
        0.0,
        "node 1 kept its link to the restarted node 2"
    );
    (total, seen.duplicates())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_receiving_qos1_loses_nothing_its_peer_acknowledged() {
    // Duplicates are what MQTT allows for QoS 1 (a DUP resend of what was in flight).
    receiver_killed_under_load(QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_receiving_qos2_loses_nothing_and_repeats_nothing() {
    let (_, duplicates) = receiver_killed_under_load(QoS::ExactlyOnce).await;
    assert_eq!(duplicates, 0, "QoS 2 delivered twice across the restart");
}
