//! A replicated session through the death of the node that held it, under load, with real
//! processes: a persistent subscriber connected to node 1 takes QoS 1 load from publishers
//! on node 1 itself and on node 3; node 1 is killed with SIGKILL mid-load; the subscriber
//! reconnects to node 2 and must get every message acknowledged to a publisher, counted per
//! (publisher, sequence number) by a raw client (`Keeper`). Acknowledgements wait for the
//! session's copy, and what other nodes still held for the dead node is recovered with it.

mod common;

use std::time::Duration;

use common::keeper::Keeper;
use common::nodes::{ProcessNode, acked_by_publisher, load_on, wait_routed};
use vibemq::codec::QoS;

/// The sum of a metric over the nodes.
async fn total(nodes: &[&ProcessNode], name: &str) -> f64 {
    let mut sum = 0.0;
    for n in nodes {
        sum += n.metric(name).await;
    }
    sum
}

/// QoS `qos` load from publishers on node 1 and node 3 into a session held at node 1, which
/// is killed mid-load; the client resumes at node 2. Returns (acknowledged, duplicates).
async fn holder_killed_under_load(qos: QoS) -> (u64, u64) {
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
    let [mut n1, n2, n3] = ProcessNode::three(big_queues).await;
    let keeper = Keeper::start_roaming(vec![n1.addr(), n2.addr()], "hold/#", qos);
    keeper.wait_connected().await;
    wait_routed(&n3, &n1, "hold/probe").await;
    // The session's copy is placed (node 2 or node 3, by the client id's hash).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while total(&[&n2, &n3], "vibemq_session_replicas").await != 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "no copy placed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Four publishers, two on node 1 (the session's node) and two on node 3.
    let running = load_on(
        &[&n1, &n3],
        &[
            "--publishers",
            "4",
            "--topic",
            "hold/%i",
            "--qos",
            &(qos as u8).to_string(),
            "--rate",
            "1000",
            "--duration",
            "4",
        ],
    );
    n1.wait_metric_above("vibemq_cluster_messages_from_peers", 1500.0, "load relayed")
        .await;
    n1.kill9().await;
    let summary = running.await.unwrap();
    let acked = acked_by_publisher(&summary);
    let sent: u64 = acked.iter().sum();
    assert!(sent >= 3000, "the load ran: {summary}");
    let missing = keeper.wait_for(&acked, Duration::from_secs(60)).await;
    let seen = keeper.stop().await;
    println!(
        "QoS {q}: {sent} acknowledged {acked:?}, {} received, {missing} missing, {} duplicates, session present: {:?}",
        seen.counts.len(),
        seen.duplicates(),
        seen.session_present,
        q = qos as u8
    );
    assert_eq!(missing, 0, "acknowledged messages lost: {summary}");
    assert_eq!(
        seen.session_present.last(),
        Some(&true),
        "the session resumed at node 2"
    );
    assert_eq!(
        total(&[&n2, &n3], "vibemq_session_replicas_promoted_total").await,
        1.0
    );
    (sent, seen.duplicates())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_at_qos1_is_lost_when_the_node_holding_a_session_dies_under_load() {
    holder_killed_under_load(QoS::AtLeastOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_stays_exactly_once_when_the_node_holding_a_session_dies_under_load() {
    let (_, duplicates) = holder_killed_under_load(QoS::ExactlyOnce).await;
    assert_eq!(duplicates, 0, "QoS 2 delivered twice");
}
