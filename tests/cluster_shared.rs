//! Shared subscription strategies across three in-process nodes (`mqtt.shared_subscription_strategy`),
//! one group member on each node, raw MQTT 5 clients: every message reaches exactly one member,
//! and each strategy's choice shows (one member per publisher with `hash_clientid`, the
//! publisher's own node with `local_first`, one member until it leaves with `sticky`, all of them
//! with `random`), and a member that is offline (its session kept) has no turns while another
//! member is connected.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::cluster::{gossip_addr, node, wait_linked};
use common::nodes::LIMIT;
use common::*;
use vibemq::Node;
use vibemq::codec::{Ack, Packet, Protocol, QoS};
use vibemq::config::SharedStrategy;

const GROUP: &str = "$share/g/jobs/#";

async fn three_with(strategy: SharedStrategy) -> [Node; 3] {
    let n1 = node("node1", &[], |c| {
        c.mqtt.shared_subscription_strategy = strategy
    })
    .await;
    let seed = [gossip_addr(&n1)];
    let n2 = node("node2", &seed, |c| {
        c.mqtt.shared_subscription_strategy = strategy
    })
    .await;
    let n3 = node("node3", &seed, |c| {
        c.mqtt.shared_subscription_strategy = strategy
    })
    .await;
    let nodes = [n1, n2, n3];
    for n in &nodes {
        wait_linked(n, 2).await;
    }
    nodes
}

/// A member of the group on each node, "m1" to "m3" (each SUBACK waits for every node to know
/// the route, `cluster.subscribe_ack`).
async fn members(nodes: &[Node; 3]) -> Vec<RawClient> {
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut m =
            RawClient::connect(n.mqtt_addr(), Protocol::V5, &format!("m{}", i + 1), true).await;
        assert_eq!(m.subscribe(GROUP, QoS::AtLeastOnce).await, vec![1]);
        out.push(m);
    }
    out
}

/// Waits until `node`'s member has left the group (its DISCONNECT is processed).
async fn left_group(node: &Node) {
    let broker = node.broker().clone();
    eventually("the member left the group", || {
        broker.router.matching_groups("jobs/x").is_empty()
    })
    .await;
}

/// Publishes `payloads` at QoS 1 from `p`, each acknowledged before the next.
async fn publish_all(p: &mut RawClient, payloads: &[String]) {
    for (i, payload) in payloads.iter().enumerate() {
        let id = i as u16 + 1;
        p.publish("jobs/x", payload.as_bytes(), QoS::AtLeastOnce, false, id)
            .await;
        match p.recv().await {
            Packet::PubAck(a) => assert_eq!(a.packet_id, id),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

/// What each member received: member name -> payloads. Reads until `expected` messages came
/// and then all members were quiet for a round (so a duplicate would show), or until
/// `LIMIT` passed; a slow forward on a loaded machine is waited for, not counted as lost.
async fn drain(
    members: &mut [(&str, &mut RawClient)],
    expected: usize,
) -> BTreeMap<String, Vec<String>> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut total = 0;
    loop {
        let mut any = false;
        for (name, m) in members.iter_mut() {
            while let Ok(Some(Packet::Publish(p))) =
                m.try_recv_within(Duration::from_millis(100)).await
            {
                m.send(&Packet::PubAck(Ack::new(p.packet_id, 0))).await;
                got.entry(name.to_string())
                    .or_default()
                    .push(String::from_utf8(p.payload.to_vec()).unwrap());
                total += 1;
                any = true;
            }
        }
        let settled = total >= expected && !any;
        if settled || tokio::time::Instant::now() >= deadline {
            return got;
        }
    }
}

/// Every payload exactly once across the members.
fn assert_each_once(got: &BTreeMap<String, Vec<String>>, sent: &[String]) {
    let mut all: Vec<&String> = got.values().flatten().collect();
    all.sort();
    let mut want: Vec<&String> = sent.iter().collect();
    want.sort();
    assert_eq!(all, want, "each message exactly once in the group: {got:?}");
}

fn payloads(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_clientid_gives_each_publisher_one_member_across_nodes() {
    let nodes = three_with(SharedStrategy::HashClientid).await;
    let [mut m1, mut m2, mut m3]: [RawClient; 3] = members(&nodes).await.try_into().ok().unwrap();
    let mut sent = Vec::new();
    for p in 0..12 {
        let at = &nodes[p % 3];
        let mut publisher =
            RawClient::connect(at.mqtt_addr(), Protocol::V5, &format!("p{p}"), true).await;
        let mine = payloads(&format!("p{p}"), 5);
        publish_all(&mut publisher, &mine).await;
        sent.extend(mine);
    }
    let got = drain(
        &mut [("m1", &mut m1), ("m2", &mut m2), ("m3", &mut m3)],
        sent.len(),
    )
    .await;
    assert_each_once(&got, &sent);
    for p in 0..12 {
        let prefix = format!("p{p}-");
        let holders: BTreeSet<&String> = got
            .iter()
            .filter(|(_, v)| v.iter().any(|s| s.starts_with(&prefix)))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            holders.len(),
            1,
            "p{p}'s messages all went to one member: {got:?}"
        );
    }
    assert!(
        got.len() >= 2,
        "12 publishers spread over the members: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_keeps_messages_on_the_publishers_node_while_it_has_a_member() {
    let nodes = three_with(SharedStrategy::LocalFirst).await;
    let [mut m1, mut m2, mut m3]: [RawClient; 3] = members(&nodes).await.try_into().ok().unwrap();
    let mut publisher = RawClient::connect(nodes[1].mqtt_addr(), Protocol::V5, "p", true).await;
    let first = payloads("here", 10);
    publish_all(&mut publisher, &first).await;
    let got = drain(
        &mut [("m1", &mut m1), ("m2", &mut m2), ("m3", &mut m3)],
        first.len(),
    )
    .await;
    assert_each_once(&got, &first);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["m2"], "{got:?}");
    // Without a member on node2, the others take turns.
    m2.disconnect().await;
    left_group(&nodes[1]).await;
    let then = payloads("elsewhere", 10);
    publish_all(&mut publisher, &then).await;
    let got = drain(&mut [("m1", &mut m1), ("m3", &mut m3)], then.len()).await;
    assert_each_once(&got, &then);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["m1", "m3"], "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_stays_with_one_member_until_it_leaves() {
    let nodes = three_with(SharedStrategy::Sticky).await;
    let ms = members(&nodes).await;
    let mut ms: Vec<(String, RawClient)> = ms
        .into_iter()
        .enumerate()
        .map(|(i, m)| (format!("m{}", i + 1), m))
        .collect();
    let mut publisher = RawClient::connect(nodes[0].mqtt_addr(), Protocol::V5, "p", true).await;
    let first = payloads("first", 10);
    publish_all(&mut publisher, &first).await;
    let got = {
        let mut view: Vec<(&str, &mut RawClient)> =
            ms.iter_mut().map(|(n, m)| (n.as_str(), m)).collect();
        drain(&mut view, first.len()).await
    };
    assert_each_once(&got, &first);
    assert_eq!(got.len(), 1, "one member took them all: {got:?}");
    let chosen = got.keys().next().unwrap().clone();
    // The chosen one leaves: another one takes every later message.
    let at = ms.iter().position(|(n, _)| *n == chosen).unwrap();
    let (_, gone) = ms.remove(at);
    gone.disconnect().await;
    left_group(&nodes[at]).await;
    let then = payloads("then", 10);
    publish_all(&mut publisher, &then).await;
    let got = {
        let mut view: Vec<(&str, &mut RawClient)> =
            ms.iter_mut().map(|(n, m)| (n.as_str(), m)).collect();
        drain(&mut view, then.len()).await
    };
    assert_each_once(&got, &then);
    assert_eq!(got.len(), 1, "again one member: {got:?}");
    assert!(!got.contains_key(&chosen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reaches_every_member_and_each_message_once() {
    let nodes = three_with(SharedStrategy::Random).await;
    let [mut m1, mut m2, mut m3]: [RawClient; 3] = members(&nodes).await.try_into().ok().unwrap();
    let mut publisher = RawClient::connect(nodes[2].mqtt_addr(), Protocol::V5, "p", true).await;
    let sent = payloads("r", 60);
    publish_all(&mut publisher, &sent).await;
    let got = drain(
        &mut [("m1", &mut m1), ("m2", &mut m2), ("m3", &mut m3)],
        sent.len(),
    )
    .await;
    assert_each_once(&got, &sent);
    // Each of three members misses all of 60 random picks with odds of about 1 in 10^10.
    assert_eq!(got.len(), 3, "{got:?}");
}

/// Connects `id` at `node` with a session that outlives the connection, and subscribes it to
/// the group: whether the server had its session (Session Present), and the client.
async fn persistent_member(node: &Node, id: &str) -> (bool, RawClient) {
    let mut connect = connect_packet(Protocol::V5, id, false);
    connect.properties.session_expiry_interval = Some(300);
    let (mut m, ack) = RawClient::connect_with(node.mqtt_addr(), connect).await;
    assert_eq!(ack.code, 0);
    assert_eq!(m.subscribe(GROUP, QoS::AtLeastOnce).await, vec![1]);
    (ack.session_present, m)
}

/// Waits until `node` sees a member of the group connected at `peer` (`true`) or none.
async fn sees_connected(node: &Node, peer: &str, connected: bool) {
    let cluster = node.cluster().expect("cluster enabled").clone();
    eventually("a member at the peer seen as connected or not", || {
        cluster.remote.match_topic("jobs/x").groups.iter().any(|g| {
            g.nodes.iter().any(|n| &**n == peer)
                && g.connected.iter().any(|n| &**n == peer) == connected
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_member_gets_no_turns_while_another_is_connected() {
    let nodes = three_with(SharedStrategy::RoundRobin).await;
    let mut m1 = RawClient::connect(nodes[0].mqtt_addr(), Protocol::V5, "m1", true).await;
    assert_eq!(m1.subscribe(GROUP, QoS::AtLeastOnce).await, vec![1]);
    let (_, m2) = persistent_member(&nodes[1], "m2").await;
    let mut m3 = RawClient::connect(nodes[2].mqtt_addr(), Protocol::V5, "m3", true).await;
    assert_eq!(m3.subscribe(GROUP, QoS::AtLeastOnce).await, vec![1]);
    // m2 goes offline; its session, and with it its membership, stays on node2.
    m2.disconnect().await;
    sees_connected(&nodes[0], "node2", false).await;
    let mut publisher = RawClient::connect(nodes[0].mqtt_addr(), Protocol::V5, "p", true).await;
    let while_away = payloads("away", 30);
    publish_all(&mut publisher, &while_away).await;
    let got = drain(&mut [("m1", &mut m1), ("m3", &mut m3)], while_away.len()).await;
    assert_each_once(&got, &while_away);
    assert_eq!(got.keys().collect::<Vec<_>>(), ["m1", "m3"], "{got:?}");
    // Back: nothing waited in its session, and it has turns again.
    let (present, mut m2) = persistent_member(&nodes[1], "m2").await;
    assert!(present, "m2's session was kept while it was away");
    m2.expect_silence(Duration::from_millis(500)).await;
    sees_connected(&nodes[0], "node2", true).await;
    let back = payloads("back", 30);
    publish_all(&mut publisher, &back).await;
    let got = drain(
        &mut [("m1", &mut m1), ("m2", &mut m2), ("m3", &mut m3)],
        back.len(),
    )
    .await;
    assert_each_once(&got, &back);
    assert_eq!(got.len(), 3, "every member has turns again: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_departing_member_did_not_acknowledge_goes_to_a_member_at_another_node() {
    let nodes = three_with(SharedStrategy::LocalFirst).await;
    let mut m1 = RawClient::connect(nodes[0].mqtt_addr(), Protocol::V5, "m1", true).await;
    assert_eq!(m1.subscribe(GROUP, QoS::AtLeastOnce).await, vec![1]);
    let mut m3 = RawClient::connect(nodes[2].mqtt_addr(), Protocol::V5, "m3", true).await;
    assert_eq!(m3.subscribe(GROUP, QoS::AtLeastOnce).await, vec![1]);
    sees_connected(&nodes[0], "node3", true).await;
    // local_first: m1, on the publisher's node, gets them all and acknowledges none.
    let mut publisher = RawClient::connect(nodes[0].mqtt_addr(), Protocol::V5, "p", true).await;
    let sent = payloads("unacked", 5);
    publish_all(&mut publisher, &sent).await;
    for expected in &sent {
        assert_eq!(&m1.recv_publish().await.payload[..], expected.as_bytes());
    }
    // m1 leaves, its session with it: no member is left on node1, so m3 gets them.
    m1.disconnect().await;
    let got = drain(&mut [("m3", &mut m3)], sent.len()).await;
    assert_each_once(&got, &sent);
    let handed = &nodes[0].broker().metrics.shared_handed_to_node;
    assert_eq!(vibemq::broker::Metrics::get(handed), 5);
}
