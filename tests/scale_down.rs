//! A node stopped the way an autoscaler or a node drain stops it (SIGTERM to a real `vibemq`
//! process in a three-node cluster), seen from its clients and its peers: it turns not ready
//! and keeps serving for `server.shutdown_delay`, tells its v5 clients to use another server
//! (DISCONNECT 0x9C with `server.server_reference`) one after another rather than all at
//! once, waits for a persistent client's session to be
//! taken by the node it reconnects to, and leaves (its peers count it as left, not failed);
//! the client's session, with what was queued for it, goes on at another node.

mod common;

use std::time::Duration;

use common::RawClient;
use common::http::{get, json};
use common::nodes::ProcessNode;
use vibemq::codec::{Ack, Packet, Protocol, QoS, reason};

fn persistent(id: &str) -> vibemq::codec::Connect {
    let mut c = common::connect_packet(Protocol::V5, id, false);
    c.properties.session_expiry_interval = Some(300);
    c
}

/// Publishes `topic` QoS 1 messages `m{from}..=m{to}`, each acknowledged.
async fn publish_acknowledged(p: &mut RawClient, topic: &str, from: u16, to: u16) {
    for i in from..=to {
        let payload = format!("m{i}");
        p.publish(topic, payload.as_bytes(), QoS::AtLeastOnce, false, i)
            .await;
        match p.recv().await {
            Packet::PubAck(a) => assert_eq!((a.packet_id, a.reason), (i, 0)),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

/// Receives messages `m{from}..=m{to}` in order, acknowledging each.
async fn receive_in_order(c: &mut RawClient, from: u16, to: u16) {
    for i in from..=to {
        let m = c.recv_publish().await;
        assert_eq!(m.payload, format!("m{i}").as_bytes(), "message {i}");
        c.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_moves_clients_and_their_sessions_to_the_other_nodes() {
    let env = vec![
        ("VIBEMQ_SERVER_SHUTDOWN_DELAY".to_string(), "2".to_string()),
        // The whole stop must cover its phases: 2 + 5 + 5.
        (
            "VIBEMQ_SERVER_SHUTDOWN_TIMEOUT".to_string(),
            "12".to_string(),
        ),
        (
            "VIBEMQ_SERVER_SERVER_REFERENCE".to_string(),
            "vibemq.mqtt.svc:1883".to_string(),
        ),
    ];
    let [n1, n2, mut n3] = ProcessNode::three(env).await;
    // These nodes share a secret (common::nodes::SECRET).
    assert_eq!(n1.metric("vibemq_cluster_unauthenticated").await, 0.0);
    let (_, cluster) = get(n1.http_addr(), "/api/v1/cluster").await;
    assert_eq!(json(&cluster)["secret"], true, "{cluster}");
    let (mut mover, ack) = RawClient::connect_with(n3.addr(), persistent("mover")).await;
    assert!(!ack.session_present);
    mover.subscribe("move/#", QoS::AtLeastOnce).await;
    common::nodes::wait_routed(&n1, &n3, "move/probe").await;
    // The probes reached the subscriber too: take them first.
    while let Ok(Some(Packet::Publish(p))) = mover.try_recv_within(Duration::from_millis(500)).await
    {
        if p.qos != QoS::AtMostOnce {
            mover.send(&Packet::PubAck(Ack::new(p.packet_id, 0))).await;
        }
    }
    let mut publisher = RawClient::connect(n1.addr(), Protocol::V5, "pub1", true).await;
    publish_acknowledged(&mut publisher, "move/x", 1, 20).await;
    receive_in_order(&mut mover, 1, 20).await;

    // Idle clients beside it, each noting when it is told to go.
    let mut told = Vec::new();
    for i in 0..40 {
        let id = format!("idle-{i}");
        let (mut c, _) =
            RawClient::connect_with(n3.addr(), common::connect_packet(Protocol::V5, &id, true))
                .await;
        told.push(tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(20), c.recv()).await {
                Ok(Packet::Disconnect(d)) => (d.reason, tokio::time::Instant::now()),
                other => panic!("{id}: expected DISCONNECT, got {other:?}"),
            }
        }));
    }

    sigterm(&n3);
    // During server.shutdown_delay: not ready, and still serving (the endpoint is being
    // removed; clients that got here meanwhile are served, not refused).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let body = loop {
        let (status, body) = get(n3.http_addr(), "/ready").await;
        if status == 503 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready still {status} after SIGTERM: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(json(&body)["reason"], "shutting down", "{body}");
    let (mut late, late_ack) = RawClient::connect_with(
        n3.addr(),
        common::connect_packet(Protocol::V5, "late", true),
    )
    .await;
    assert_eq!(late_ack.code, 0, "a connect during the delay is served");
    late.subscribe("late/#", QoS::AtMostOnce).await;

    // Then the clients are told to go elsewhere, and where.
    let disconnect = match tokio::time::timeout(Duration::from_secs(10), mover.recv()).await {
        Ok(Packet::Disconnect(d)) => d,
        Ok(other) => panic!("expected DISCONNECT, got {other:?}"),
        Err(_) => panic!("no DISCONNECT within 10 s of SIGTERM"),
    };
    assert_eq!(disconnect.reason, reason::USE_ANOTHER_SERVER);
    assert_eq!(
        disconnect.properties.server_reference.as_deref(),
        Some("vibemq.mqtt.svc:1883")
    );
    // The clients are told one after another over half of shutdown_clients_timeout (5 s),
    // not all at once: the other nodes get their reconnects spread out.
    let mut times = Vec::new();
    for t in told {
        let (code, at) = t.await.expect("idle client");
        assert_eq!(code, reason::USE_ANOTHER_SERVER);
        times.push(at);
    }
    let first = *times.iter().min().unwrap();
    let last = *times.iter().max().unwrap();
    assert!(
        last - first >= Duration::from_secs(1),
        "40 clients told to go within {:?}: not spread",
        last - first
    );
    // It does: its session comes along, and it gets what is published from then on.
    let (mut moved, ack) = RawClient::connect_with(n2.addr(), persistent("mover")).await;
    assert!(ack.session_present, "the session moved with its client");
    publish_acknowledged(&mut publisher, "move/x", 21, 60).await;
    receive_in_order(&mut moved, 21, 60).await;

    // Its peers saw it leave, not fail.
    wait_left(&mut n3, &n1).await;
    assert_eq!(node_events(&n1, "failed").await, 0.0);
    assert!(n2.metric("vibemq_sessions_migrated_in").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_session_of_a_removed_node_gets_what_was_published_after_it_left() {
    let [n1, n2, mut n3] = ProcessNode::three(Vec::new()).await;
    // A device with a persistent session on node3 goes offline.
    let (mut device, _) = RawClient::connect_with(n3.addr(), persistent("sleeper")).await;
    device.subscribe("sleep/#", QoS::AtLeastOnce).await;
    common::nodes::wait_routed(&n1, &n3, "sleep/probe").await;
    drop(device);
    let mut publisher = RawClient::connect(n1.addr(), Protocol::V5, "pub-s", true).await;
    publish_acknowledged(&mut publisher, "sleep/x", 1, 10).await;
    // node3 is removed (SIGTERM) while the device sleeps, and is gone.
    sigterm(&n3);
    wait_left(&mut n3, &n1).await;
    // More is published for it after its node left, each acknowledged to its publisher.
    publish_acknowledged(&mut publisher, "sleep/x", 11, 20).await;
    // The device wakes up and connects to another node: its session, with all of it.
    let (mut back, ack) = RawClient::connect_with(n2.addr(), persistent("sleeper")).await;
    assert!(
        ack.session_present,
        "the session survived its node's removal"
    );
    let mut got = Vec::new();
    while got.len() < 21 {
        match back.try_recv_within(Duration::from_secs(10)).await {
            Ok(Some(Packet::Publish(m))) => {
                if m.qos != QoS::AtMostOnce {
                    back.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
                }
                got.push(String::from_utf8_lossy(&m.payload).into_owned());
            }
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            _ => break,
        }
    }
    for i in 1..=20 {
        assert!(got.contains(&format!("m{i}")), "m{i} missing; got {got:?}");
    }
}

/// SIGTERM to `node`'s process: the stop Kubernetes begins a pod's removal with.
fn sigterm(node: &ProcessNode) {
    let pid = node.child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits for `node` to exit 0 within its shutdown budget, then for `peer` to count it as left.
async fn wait_left(node: &mut ProcessNode, peer: &ProcessNode) {
    let exit = tokio::time::timeout(Duration::from_secs(20), node.child.wait())
        .await
        .expect("the node exits within its shutdown budget")
        .expect("reaped");
    assert_eq!(exit.code(), Some(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while node_events(peer, "left").await == 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node{} never saw node{} leave",
            peer.n,
            node.n
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `vibemq_cluster_node_events_total{event="..."}` at `node`.
async fn node_events(node: &ProcessNode, event: &str) -> f64 {
    let (_, text) = get(node.http_addr(), "/metrics").await;
    let prefix = format!("vibemq_cluster_node_events_total{{event=\"{event}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
}
