//! A shared group with a member on each of three real `vibemq` processes (persistence on, as
//! config/nodeN.toml ships), QoS 1 messages published on node 1 while node 3 is killed with
//! kill -9 and later restarted: every acknowledged message reaches exactly one member (a second
//! copy only as an MQTT redelivery, flagged DUP); and messages queued for a member's node
//! that froze and then died go to the members on the other nodes.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::RawClient;
use common::nodes::{LIMIT, ProcessNode};
use tokio::task::JoinHandle;
use vibemq::codec::{Ack, Packet, Protocol, QoS};

const GROUP: &str = "$share/g/work/#";
const MESSAGES: usize = 600;

fn addr(node: &ProcessNode) -> SocketAddr {
    node.mqtt_addr().parse().unwrap()
}

/// A member with a persistent session (or a clean one, `clean`): subscribed once, then
/// reading and acknowledging until `stop` or until its connection closes. Returns (payload,
/// DUP flag) of what it got.
async fn member(
    node: &ProcessNode,
    name: &str,
    subscribe: bool,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<HashSet<String>>>,
) -> JoinHandle<Vec<(String, bool)>> {
    member_with(node, name, subscribe, false, stop, seen).await
}

async fn member_with(
    node: &ProcessNode,
    name: &str,
    subscribe: bool,
    clean: bool,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<HashSet<String>>>,
) -> JoinHandle<Vec<(String, bool)>> {
    let mut c = RawClient::connect(addr(node), Protocol::V311, name, clean).await;
    if subscribe {
        assert_eq!(c.subscribe(GROUP, QoS::AtLeastOnce).await, vec![1]);
    }
    tokio::spawn(async move {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
            match c.try_recv_within(Duration::from_millis(200)).await {
                Ok(Some(Packet::Publish(p))) => {
                    c.send(&Packet::PubAck(Ack::new(p.packet_id, 0))).await;
                    let payload = String::from_utf8(p.payload.to_vec()).unwrap();
                    seen.lock().unwrap().insert(payload.clone());
                    got.push((payload, p.dup));
                }
                Ok(Some(_)) | Err(()) => {}
                Ok(None) => break,
            }
        }
        got
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_across_three_nodes_gets_each_message_once_through_a_node_kill() {
    let n1 = ProcessNode::start(1, 0).await;
    let n2 = ProcessNode::start(2, n1.gossip).await;
    let mut n3 = ProcessNode::start(3, n1.gossip).await;
    for n in [&n1, &n2, &n3] {
        n.wait_linked(2).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let m1 = member(&n1, "m1", true, stop.clone(), seen.clone()).await;
    let m2 = member(&n2, "m2", true, stop.clone(), seen.clone()).await;
    let m3 = member(&n3, "m3", true, stop.clone(), seen.clone()).await;
    let mut publisher = RawClient::connect(addr(&n1), Protocol::V311, "p", true).await;
    for i in 0..MESSAGES {
        if i == MESSAGES / 3 {
            n3.kill9().await;
        }
        let id = (i % 60_000) as u16 + 1;
        publisher
            .publish(
                "work/x",
                format!("s-{i}").as_bytes(),
                QoS::AtLeastOnce,
                false,
                id,
            )
            .await;
        match tokio::time::timeout(LIMIT, publisher.recv()).await {
            Ok(Packet::PubAck(a)) => assert_eq!(a.packet_id, id),
            other => panic!("message {i}: expected its PUBACK, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let m3_before = m3.await.unwrap();
    n3.restart().await;
    for n in [&n1, &n2, &n3] {
        n.wait_linked(2).await;
    }
    // m3 comes back to its session: what was queued for it on node3 (or held for node3) follows.
    let m3_after = member(&n3, "m3", false, stop.clone(), seen.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() < MESSAGES && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Room for a second copy to show, were one on its way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut by_member: BTreeMap<&str, Vec<(String, bool)>> = BTreeMap::new();
    by_member.insert("m1", m1.await.unwrap());
    by_member.insert("m2", m2.await.unwrap());
    let mut third = m3_before;
    third.extend(m3_after.await.unwrap());
    by_member.insert("m3", third);

    let mut copies: BTreeMap<&str, (usize, usize)> = BTreeMap::new(); // payload -> (all, DUP)
    for got in by_member.values() {
        for (payload, dup) in got {
            let e = copies.entry(payload.as_str()).or_default();
            e.0 += 1;
            e.1 += usize::from(*dup);
        }
    }
    let counts: Vec<(&str, usize)> = by_member.iter().map(|(m, g)| (*m, g.len())).collect();
    println!("deliveries per member: {counts:?}");
    let missing: Vec<usize> = (0..MESSAGES)
        .filter(|i| !copies.contains_key(format!("s-{i}").as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged and never delivered: {missing:?}"
    );
    let twice: Vec<(&&str, &(usize, usize))> = copies
        .iter()
        .filter(|(_, (all, dup))| *all > 1 + *dup)
        .collect();
    assert!(twice.is_empty(), "delivered twice without DUP: {twice:?}");
    for (m, n) in &counts {
        assert!(*n > 0, "{m} got no turn: {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_messages_queued_for_a_node_that_froze_and_died_reach_the_other_members() {
    // Node 1 gives up on a failed node a second after declaring it failed (cluster.hold_secs).
    let env = vec![("VIBEMQ_CLUSTER_HOLD_SECS".to_string(), "1".to_string())];
    let peer = || common::process::free_port();
    let n1 = ProcessNode::start_with(1, 0, peer(), env.clone()).await;
    let n2 = ProcessNode::start_with(2, n1.gossip, peer(), env.clone()).await;
    let mut n3 = ProcessNode::start_with(3, n1.gossip, peer(), env).await;
    for n in [&n1, &n2, &n3] {
        n.wait_linked(2).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(HashSet::new()));
    // Clean sessions: nothing of them is copied to node3, so no PUBACK waits for it.
    let m1 = member_with(&n1, "f1", true, true, stop.clone(), seen.clone()).await;
    let m2 = member_with(&n2, "f2", true, true, stop.clone(), seen.clone()).await;
    let m3 = member_with(&n3, "f3", true, true, stop.clone(), seen.clone()).await;
    let mut publisher = RawClient::connect(addr(&n1), Protocol::V311, "fp", true).await;
    // Node 3 stops dead before anything is published: what node 1 queues for it never
    // reaches its member. Then it dies.
    n3.freeze().await;
    const SENT: usize = 60;
    for i in 0..SENT {
        let id = i as u16 + 1;
        publisher
            .publish(
                "work/y",
                format!("f-{i}").as_bytes(),
                QoS::AtLeastOnce,
                false,
                id,
            )
            .await;
        match tokio::time::timeout(LIMIT, publisher.recv()).await {
            Ok(Packet::PubAck(a)) => assert_eq!(a.packet_id, id),
            other => panic!("message {i}: expected its PUBACK, got {other:?}"),
        }
    }
    n3.kill9().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while seen.lock().unwrap().len() < SENT && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Room for a second copy to show, were one on its way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (g1, g2, g3) = (m1.await.unwrap(), m2.await.unwrap(), m3.await.unwrap());
    assert!(g3.is_empty(), "node3 was frozen before the first: {g3:?}");
    let mut all: Vec<&String> = g1.iter().chain(&g2).map(|(p, _)| p).collect();
    all.sort();
    let mut want: Vec<String> = (0..SENT).map(|i| format!("f-{i}")).collect();
    want.sort();
    assert_eq!(
        all,
        want.iter().collect::<Vec<_>>(),
        "each acknowledged message once, at m1 or m2"
    );
    assert!(
        n1.metric("vibemq_cluster_group_messages_rescued_total")
            .await
            > 0.0,
        "some were queued for node3 and went elsewhere"
    );
}
