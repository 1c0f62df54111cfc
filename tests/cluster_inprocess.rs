//! Several nodes in one process behaving as one broker: cross-node delivery at every QoS,
//! wildcards, retained messages everywhere, shared groups across nodes, route withdrawal,
//! node failure and secrets. Real sockets on loopback; each node has its own ports.

mod common;

use std::time::Duration;

use common::cluster::{gossip_addr, node, three, wait_linked, wait_route};
use common::*;
use vibemq::codec::{Ack, Packet, Protocol, QoS};

#[tokio::test]
async fn a_message_published_on_one_node_reaches_subscribers_on_the_others() {
    let [n1, n2, n3] = three().await;
    let mut s1 = RawClient::connect(n1.mqtt_addr(), Protocol::V311, "s1", true).await;
    s1.subscribe("x/+", QoS::ExactlyOnce).await;
    let mut s3 = RawClient::connect(n3.mqtt_addr(), Protocol::V5, "s3", true).await;
    s3.subscribe("x/#", QoS::AtLeastOnce).await;
    wait_route(&n2, "x/y", 2).await;

    let mut p = RawClient::connect(n2.mqtt_addr(), Protocol::V311, "p", true).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let id = i as u16 + 1;
        p.publish("x/y", &[i as u8], qos, false, id).await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => assert_eq!(p.recv().await, Packet::PubAck(Ack::new(id, 0))),
            QoS::ExactlyOnce => {
                assert_eq!(p.recv().await, Packet::PubRec(Ack::new(id, 0)));
                p.send(&Packet::PubRel(Ack::new(id, 0))).await;
                assert_eq!(p.recv().await, Packet::PubComp(Ack::new(id, 0)));
            }
        }
        let m1 = s1.recv_publish().await;
        assert_eq!(
            (m1.topic.as_str(), &m1.payload[..], m1.qos),
            ("x/y", &[i as u8][..], qos)
        );
        let m3 = s3.recv_publish().await;
        assert_eq!(&m3.payload[..], &[i as u8]);
        assert_eq!(m3.qos, qos.min(QoS::AtLeastOnce));
        for (s, m) in [(&mut s1, &m1), (&mut s3, &m3)] {
            match m.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => s.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await,
                QoS::ExactlyOnce => {
                    s.send(&Packet::PubRec(Ack::new(m.packet_id, 0))).await;
                    assert_eq!(s.recv().await, Packet::PubRel(Ack::new(m.packet_id, 0)));
                    s.send(&Packet::PubComp(Ack::new(m.packet_id, 0))).await;
                }
            }
        }
    }
    // Nothing is delivered twice (no loops between nodes).
    s1.expect_silence(Duration::from_millis(300)).await;
    s3.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn retained_messages_reach_every_node_including_one_that_joins_later() {
    let [n1, n2, _n3] = three().await;
    let mut p = RawClient::connect(n2.mqtt_addr(), Protocol::V311, "p", true).await;
    p.publish("status/door", b"open", QoS::AtLeastOnce, true, 1)
        .await;
    assert!(matches!(p.recv().await, Packet::PubAck(_)));
    eventually("retained replicated to node1", || {
        n1.broker().retained.len() == 1
    })
    .await;
    let mut s1 = RawClient::connect(n1.mqtt_addr(), Protocol::V311, "s1", true).await;
    s1.subscribe("status/#", QoS::AtLeastOnce).await;
    let m = s1.recv_publish().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.retain),
        ("status/door", &b"open"[..], true)
    );

    // A node that joins afterwards fetches the retained set from a peer.
    let n4 = node("node4", &[gossip_addr(&n1)], |_| {}).await;
    wait_linked(&n4, 3).await;
    eventually("retained fetched by node4", || {
        n4.broker().retained.len() == 1
    })
    .await;
    let mut s4 = RawClient::connect(n4.mqtt_addr(), Protocol::V5, "s4", true).await;
    s4.subscribe("status/+", QoS::AtMostOnce).await;
    assert_eq!(&s4.recv_publish().await.payload[..], b"open");

    // An empty retained payload deletes it everywhere.
    p.publish("status/door", b"", QoS::AtLeastOnce, true, 2)
        .await;
    assert!(matches!(p.recv().await, Packet::PubAck(_)));
    eventually("delete replicated", || {
        n1.broker().retained.is_empty() && n4.broker().retained.is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_shared_group_with_members_on_two_nodes_gets_each_message_once() {
    let [n1, n2, n3] = three().await;
    let mut a = RawClient::connect(n1.mqtt_addr(), Protocol::V5, "worker-a", true).await;
    let mut b = RawClient::connect(n3.mqtt_addr(), Protocol::V5, "worker-b", true).await;
    a.subscribe("$share/workers/jobs/#", QoS::AtMostOnce).await;
    b.subscribe("$share/workers/jobs/#", QoS::AtMostOnce).await;
    let cluster2 = n2.cluster().unwrap().clone();
    eventually("group routes on node2", || {
        cluster2
            .remote
            .match_topic("jobs/1")
            .groups
            .first()
            .is_some_and(|(_, nodes)| nodes.len() == 2)
    })
    .await;
    let mut p = RawClient::connect(n2.mqtt_addr(), Protocol::V311, "p", true).await;
    const N: u8 = 40;
    for i in 0..N {
        p.publish("jobs/1", &[i], QoS::AtMostOnce, false, 0).await;
    }
    let mut got = Vec::new();
    for c in [&mut a, &mut b] {
        while let Ok(Some(Packet::Publish(m))) = c.try_recv_within(Duration::from_millis(300)).await
        {
            got.push(m.payload[0]);
        }
    }
    got.sort();
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "each message exactly once across the group"
    );
}

#[tokio::test]
async fn routes_are_withdrawn_when_the_last_subscriber_leaves() {
    let [n1, n2, _n3] = three().await;
    let mut s = RawClient::connect(n1.mqtt_addr(), Protocol::V311, "s", true).await;
    let mut t = RawClient::connect(n1.mqtt_addr(), Protocol::V311, "t", true).await;
    s.subscribe("w/#", QoS::AtMostOnce).await;
    t.subscribe("w/#", QoS::AtMostOnce).await;
    wait_route(&n2, "w/x", 1).await;
    s.disconnect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        n2.cluster().unwrap().remote.match_topic("w/x").nodes.len(),
        1,
        "t still subscribed"
    );
    t.disconnect().await;
    wait_route(&n2, "w/x", 0).await;
}

#[tokio::test]
async fn a_node_with_another_secret_never_joins() {
    let secret_a = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string();
    let secret_b = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA=".to_string();
    let n1 = node("node1", &[], |c| c.cluster.secret = secret_a.clone()).await;
    let seed = [gossip_addr(&n1)];
    let n2 = node("node2", &seed, |c| c.cluster.secret = secret_a.clone()).await;
    let intruder = node("intruder", &seed, |c| c.cluster.secret = secret_b.clone()).await;
    wait_linked(&n1, 1).await;
    wait_linked(&n2, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in [&n1, &n2] {
        let peers = n.cluster().unwrap().peers();
        assert!(peers.iter().all(|p| &*p.node_id != "intruder"), "{peers:?}");
    }
    assert!(intruder.cluster().unwrap().peers().is_empty());
    // Messages flow between the two that share the secret, not to the intruder.
    let mut s = RawClient::connect(n1.mqtt_addr(), Protocol::V311, "s", true).await;
    s.subscribe("#", QoS::AtMostOnce).await;
    let mut spy = RawClient::connect(intruder.mqtt_addr(), Protocol::V311, "spy", true).await;
    spy.subscribe("#", QoS::AtMostOnce).await;
    wait_route(&n2, "secret/x", 1).await;
    let mut p = RawClient::connect(n2.mqtt_addr(), Protocol::V311, "p", true).await;
    p.publish("secret/x", b"s", QoS::AtMostOnce, false, 0).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"s");
    spy.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_node_that_leaves_is_seen_to_leave_and_its_routes_go() {
    let [n1, n2, n3] = three().await;
    let mut s3 = RawClient::connect(n3.mqtt_addr(), Protocol::V311, "s3", true).await;
    s3.subscribe("gone/#", QoS::AtMostOnce).await;
    wait_route(&n1, "gone/x", 1).await;
    let mut events = RawClient::connect(n1.mqtt_addr(), Protocol::V311, "events", true).await;
    events
        .subscribe("$SYS/vibemq/cluster/events", QoS::AtMostOnce)
        .await;
    drop(s3);
    n3.shutdown(Duration::from_secs(1)).await;
    wait_route(&n1, "gone/x", 0).await;
    let e = events.recv_publish().await;
    let text = String::from_utf8_lossy(&e.payload).to_string();
    assert!(
        text.contains(r#""event":"left""#) && text.contains(r#""node":"node3""#),
        "{text}"
    );
    wait_linked(&n1, 1).await;
    wait_linked(&n2, 1).await;
}
