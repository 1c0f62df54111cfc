//! Sessions that follow their client across three real `vibemq` processes: a session left
//! offline on one node resumes on another with Session Present and everything queued
//! (mosquitto clients, and a raw v5 client), a live connection is taken over from another
//! node (0x8E, its unacknowledged message resent with DUP, no will), a clean start elsewhere
//! ends the old session, a session outlives kill -9 of its node and of its copy's node
//! together (the copy read back from the store) while a stored copy of a session that ended
//! meanwhile is dropped, two connects racing on two nodes end with
//! exactly one connected, and
//! `cluster.allow_connect_during_partition = false` refuses connects while a node is away.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::RawClient;
use common::nodes::ProcessNode;
use common::process::run;
use vibemq::codec::{Ack, Packet, Properties, Protocol, QoS, Will, reason};

fn persistent(id: &str, expiry: u32) -> vibemq::codec::Connect {
    let mut c = common::connect_packet(Protocol::V5, id, false);
    c.properties.session_expiry_interval = Some(expiry);
    c
}

/// mosquitto_sub with a persistent session (`-c`, QoS 1) for `id` on `filter` at `node`,
/// then `then` (`-E`: subscribe and go; `-C N -W S`: take N messages); its output.
async fn persistent_sub(node: &ProcessNode, id: &str, filter: &str, then: &[&str]) -> String {
    let port = node.port();
    let mut args = vec!["-p", &port, "-i", id, "-c", "-q", "1", "-t", filter];
    args.extend_from_slice(then);
    run("mosquitto_sub", &args, Duration::from_secs(30)).await
}

/// Publishes `count` QoS 1 messages `{prefix}{i}` to `topic` and waits for each PUBACK.
async fn publish_acknowledged(p: &mut RawClient, topic: &str, prefix: &str, count: u16) {
    for i in 1..=count {
        let payload = format!("{prefix}{i}");
        p.publish(topic, payload.as_bytes(), QoS::AtLeastOnce, false, i)
            .await;
        match p.recv().await {
            Packet::PubAck(a) => assert_eq!(a.packet_id, i),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_session_resumes_on_another_node_with_everything_queued() {
    let [n1, n2, n3] = ProcessNode::three(Vec::new()).await;
    // mosquitto_sub with a persistent session (-c) subscribes at node1 and goes.
    persistent_sub(&n1, "roamer", "roam/#", &["-E"]).await;
    // 100 QoS 1 messages published at node3 while the client is away, each acknowledged:
    // queued in its session on node1.
    let mut p = RawClient::connect(n3.addr(), Protocol::V5, "roam-pub3", true).await;
    publish_acknowledged(&mut p, "roam/x", "m", 100).await;
    // The client comes back at node2: all 100, in order.
    let out = persistent_sub(&n2, "roamer", "roam/#", &["-C", "100", "-W", "20"]).await;
    let expected: Vec<String> = (1..=100).map(|i| format!("m{i}")).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
    // Once each: the session (still at node2) has nothing more for it.
    let mut again = RawClient::connect(n2.addr(), Protocol::V311, "roamer", false).await;
    again.expect_silence(Duration::from_millis(500)).await;
    again.disconnect().await;
    assert_eq!(n1.metric("vibemq_sessions_migrated_out_total").await, 1.0);
    assert_eq!(n2.metric("vibemq_sessions_migrated_in_total").await, 1.0);
    assert_eq!(
        n1.metric("vibemq_sessions").await,
        0.0,
        "node1 keeps no copy"
    );

    // The session lives at node2 now, subscriptions and all: a message published at node1
    // reaches it once, and the session is still there for the next visit.
    let mut v5 = RawClient::connect_with(n2.addr(), persistent("roamer-v5", 600))
        .await
        .0;
    v5.subscribe("roam5/#", QoS::AtLeastOnce).await;
    v5.disconnect().await;
    let mut p = RawClient::connect(n1.addr(), Protocol::V5, "roam-pub", true).await;
    publish_acknowledged(&mut p, "roam5/y", "q", 5).await;
    let (mut back, ack) = RawClient::connect_with(n3.addr(), persistent("roamer-v5", 600)).await;
    assert_eq!(ack.code, 0);
    assert!(ack.session_present, "Session Present = 1 at another node");
    for i in 1..=5 {
        let m = back.recv_publish().await;
        assert_eq!(&m.payload[..], format!("q{i}").as_bytes());
        back.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
    }
    publish_acknowledged(&mut p, "roam5/y", "after", 1).await;
    let m = back.recv_publish().await;
    assert_eq!(&m.payload[..], b"after1");
    back.expect_silence(Duration::from_millis(500)).await;
}

/// The sum of a metric over the nodes.
async fn total(nodes: &[&ProcessNode], name: &str) -> f64 {
    let mut sum = 0.0;
    for n in nodes {
        sum += n.metric(name).await;
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_kill_9_of_the_node_that_held_it() {
    let [mut n1, n2, n3] = ProcessNode::three(Vec::new()).await;
    persistent_sub(&n1, "keeper", "keep/#", &["-E"]).await;
    let mut p = RawClient::connect(n3.addr(), Protocol::V5, "keep-pub", true).await;
    publish_acknowledged(&mut p, "keep/x", "k", 100).await;
    // One other node keeps a copy (cluster.session_replicas = 1) with all 100 in it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let copies = total(&[&n2, &n3], "vibemq_session_replicas").await;
        let messages = total(&[&n2, &n3], "vibemq_session_replica_messages").await;
        if copies == 1.0 && messages == 100.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "copies {copies}, messages in them {messages}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n1.kill9().await;
    // The client comes back at node2, whichever node kept the copy: all 100, in order.
    let out = persistent_sub(&n2, "keeper", "keep/#", &["-C", "100", "-W", "20"]).await;
    let expected: Vec<String> = (1..=100).map(|i| format!("k{i}")).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
    assert_eq!(
        total(&[&n2, &n3], "vibemq_session_replicas_promoted_total").await,
        1.0
    );
    // The session lives at node2 now, and is copied again to the node left (node3).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while n3.metric("vibemq_session_replicas").await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new copy on node3"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The admin API says where the session is and where its copy is.
    let (status, body) = common::http::get(n2.http_addr(), "/api/v1/clients").await;
    assert_eq!(status, 200);
    let clients = common::http::json(&body);
    let keeper = clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "keeper")
        .expect("keeper listed at node2");
    assert_eq!(keeper["node"], "node2");
    assert_eq!(keeper["replicas"], serde_json::json!(["node3"]));
    publish_acknowledged(&mut p, "keep/x", "after", 1).await;
    let mut again = RawClient::connect(n2.addr(), Protocol::V311, "keeper", false).await;
    let m = again.recv_publish().await;
    assert_eq!(&m.payload[..], b"after1");
    again.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
    again.disconnect().await;

    // node1 comes back with its store, which still holds its old copy of the session: told
    // that the session was resumed elsewhere, it discards it, so the client never gets those
    // 100 messages a second time.
    n1.start_again().await;
    n1.wait_linked(2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while n1.metric("vibemq_sessions_discarded_stale_total").await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node1 kept its stale copy"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(n1.metric("vibemq_sessions").await, 0.0);
    let (mut last, ack) = RawClient::connect_with(
        n1.addr(),
        common::connect_packet(Protocol::V311, "keeper", false),
    )
    .await;
    assert!(ack.session_present);
    last.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_kill_9_of_its_node_and_its_copys_node_together() {
    let [mut n1, n2, n3] = ProcessNode::three(Vec::new()).await;
    persistent_sub(&n1, "twice", "twice/#", &["-E"]).await;
    let mut p = RawClient::connect(n3.addr(), Protocol::V5, "twice-pub", true).await;
    let mut others = [n2, n3];
    let written_before = [
        others[0].metric("vibemq_store_ops_written").await,
        others[1].metric("vibemq_store_ops_written").await,
    ];
    publish_acknowledged(&mut p, "twice/x", "t", 100).await;
    drop(p);
    // Which of node2 and node3 keeps the copy, with all 100 in it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let at = loop {
        let mut found = None;
        for (i, n) in others.iter().enumerate() {
            if n.metric("vibemq_session_replica_messages").await == 100.0 {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(tokio::time::Instant::now() < deadline, "no copy with 100");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Its store has taken the copy's records (sync = "always" commits them at once).
    let copy_node = &others[at];
    while copy_node.metric("vibemq_store_ops_written").await < written_before[at] + 100.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copy's records were not written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The holder and the copy's node die together; only the copy's node comes back, from
    // its store. The client connects at the third node.
    n1.kill9().await;
    others[at].kill9().await;
    others[at].start_again().await;
    let third = 1 - at;
    others[at].wait_linked(1).await;
    others[third].wait_linked(1).await;
    let out = persistent_sub(
        &others[third],
        "twice",
        "twice/#",
        &["-C", "100", "-W", "20"],
    )
    .await;
    let expected: Vec<String> = (1..=100).map(|i| format!("t{i}")).collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), expected);
    assert_eq!(
        others[at]
            .metric("vibemq_session_replicas_promoted_total")
            .await,
        1.0,
        "brought back from the copy read back from the store"
    );
}

/// Which of `nodes` keeps a copy (`vibemq_session_replicas` = 1), waiting for one.
async fn copy_holder(nodes: &[&ProcessNode]) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for (i, n) in nodes.iter().enumerate() {
            if n.metric("vibemq_session_replicas").await == 1.0 {
                return i;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no copy anywhere");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_copy_of_a_session_that_ended_meanwhile_is_dropped_not_resumed() {
    // node1 gives up on a failed node after a second (cluster.hold_secs), with what it held
    // for it.
    let env = vec![("VIBEMQ_CLUSTER_HOLD_SECS".to_string(), "1".to_string())];
    let [mut n1, n2, n3] = ProcessNode::three(env).await;
    persistent_sub(&n1, "ended", "ended/#", &["-E"]).await;
    let mut others = [n2, n3];
    let at = copy_holder(&[&others[0], &others[1]]).await;
    // The copy's node goes down with the copy on its disk; meanwhile the session ends (a
    // clean start at its node), and node1 gives up on telling the copy's node.
    others[at].kill9().await;
    let (clean, ack) = RawClient::connect_with(
        n1.addr(),
        common::connect_packet(Protocol::V311, "ended", true),
    )
    .await;
    assert!(!ack.session_present);
    clean.disconnect().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = common::http::get(n1.http_addr(), "/api/v1/cluster").await;
        let members = common::http::json(&body)["members"]
            .as_array()
            .map(Vec::len);
        if members == Some(2) {
            break; // itself and the third node: the link to the dead one is gone
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node1 did not give up on the dead node"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    others[at].start_again().await;
    others[at].wait_linked(2).await;
    // Its holder, alive, does not send it again: the copy read back is stale and dropped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while others[at]
        .metric("vibemq_session_replicas_stale_dropped_total")
        .await
        != 1.0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stale copy was kept"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(others[at].metric("vibemq_session_replicas").await, 0.0);
    // So when the node the client last used dies, the old session does not come back.
    n1.kill9().await;
    let third = 1 - at;
    let (_, ack) = RawClient::connect_with(
        others[third].addr(),
        common::connect_packet(Protocol::V311, "ended", false),
    )
    .await;
    assert!(!ack.session_present, "an ended session came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_connection_is_taken_over_from_another_node() {
    let [n1, n2, n3] = ProcessNode::three(Vec::new()).await;
    let mut watcher = RawClient::connect(n3.addr(), Protocol::V5, "watcher", true).await;
    watcher.subscribe("wills/#", QoS::AtMostOnce).await;
    let mut c = persistent("mover", 600);
    c.will = Some(Will {
        topic: "wills/mover".into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(30),
            ..Properties::default()
        },
    });
    let (mut old, _) = RawClient::connect_with(n1.addr(), c).await;
    old.subscribe("live/#", QoS::AtLeastOnce).await;
    let mut p = RawClient::connect(n3.addr(), Protocol::V5, "live-pub", true).await;
    publish_acknowledged(&mut p, "live/a", "x", 3).await;
    // The old connection receives all three and acknowledges only the first.
    let first = old.recv_publish().await;
    old.send(&Packet::PubAck(Ack::new(first.packet_id, 0)))
        .await;
    let unacked: Vec<_> = [old.recv_publish().await, old.recv_publish().await]
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(unacked, vec![Bytes::from("x2"), Bytes::from("x3")]);

    let (mut new, ack) = RawClient::connect_with(n2.addr(), persistent("mover", 600)).await;
    assert_eq!(ack.code, 0);
    assert!(ack.session_present);
    // Told before the new connection's CONNACK: it is waiting already.
    match old.try_recv_within(Duration::from_secs(1)).await {
        Ok(Some(Packet::Disconnect(d))) => assert_eq!(d.reason, reason::SESSION_TAKEN_OVER),
        other => panic!("expected DISCONNECT 0x8E within a second, got {other:?}"),
    }
    // What was in flight comes again, marked DUP, then what is published from now on. The
    // PUBACK for x1 went just before the takeover: if node1 had not read it yet, x1 is in
    // flight too and comes again as well, marked DUP (MQTT 4.4).
    let mut next = new.recv_publish().await;
    if &next.payload[..] == b"x1" {
        assert!(next.dup, "a resend of x1 is marked DUP");
        new.send(&Packet::PubAck(Ack::new(next.packet_id, 0))).await;
        next = new.recv_publish().await;
    }
    let mut next = Some(next);
    for expected in ["x2", "x3"] {
        let m = match next.take() {
            Some(m) => m,
            None => new.recv_publish().await,
        };
        assert_eq!(&m.payload[..], expected.as_bytes());
        assert!(m.dup, "a resend of {expected} is marked DUP");
        new.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
    }
    publish_acknowledged(&mut p, "live/b", "y", 2).await;
    for expected in ["y1", "y2"] {
        let m = new.recv_publish().await;
        assert_eq!(&m.payload[..], expected.as_bytes());
        assert!(!m.dup);
        new.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
    }
    new.expect_silence(Duration::from_millis(500)).await;
    // Resumed within the will delay: no will.
    watcher.expect_silence(Duration::from_secs(1)).await;
    assert_eq!(
        n1.metric("vibemq_session_takeovers_remote_total").await,
        1.0
    );
    assert_eq!(n1.metric("vibemq_sessions").await, 0.0);

    // A clean start at node3 ends the session (now at node2): its connection closes, and
    // nothing of it comes along.
    let (mut clean, ack) = RawClient::connect_with(
        n3.addr(),
        common::connect_packet(Protocol::V5, "mover", true),
    )
    .await;
    assert_eq!(ack.code, 0);
    assert!(!ack.session_present);
    assert_eq!(new.expect_closed().await, Some(reason::SESSION_TAKEN_OVER));
    publish_acknowledged(&mut p, "live/c", "z", 1).await;
    clean.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(n2.metric("vibemq_sessions").await, 0.0);
}

/// Reads and acknowledges PUBLISHes until the connection closes (or, with `want`, until the
/// union of `seen` and what this reads holds every one of 1..=want): (payload number, DUP).
async fn read_until(
    c: &mut RawClient,
    seen: &[(u32, bool)],
    want: Option<u32>,
) -> Vec<(u32, bool)> {
    let mut got: Vec<(u32, bool)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(want) = want {
            let all: std::collections::HashSet<u32> =
                seen.iter().chain(got.iter()).map(|(n, _)| *n).collect();
            if (1..=want).all(|n| all.contains(&n)) {
                return got;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all arrived in 60 s"
        );
        match c.try_recv_within(Duration::from_secs(10)).await {
            Ok(Some(Packet::Publish(p))) => {
                let n: u32 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                got.push((n, p.dup));
                c.send(&Packet::PubAck(Ack::new(p.packet_id, 0))).await;
            }
            Ok(Some(Packet::Disconnect(_))) | Ok(None) if want.is_none() => return got,
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_a_connection_moves_arrive_once() {
    const COUNT: u32 = 1500;
    // The publisher outruns the subscriber, so its session holds a backlog; while the session
    // moves it is offline, and its bound (mqtt.max_queued_messages, 1000) would drop the
    // overflow (counted and logged). Room for all here: this test is about copies and gaps.
    let env = vec![(
        "VIBEMQ_MQTT_MAX_QUEUED_MESSAGES".to_string(),
        "100000".to_string(),
    )];
    let [n1, n2, n3] = ProcessNode::three(env).await;
    let (mut old, _) = RawClient::connect_with(n1.addr(), persistent("busy", 600)).await;
    old.subscribe("busy/#", QoS::AtLeastOnce).await;
    let mut p = RawClient::connect(n3.addr(), Protocol::V5, "busy-pub", true).await;
    let publisher = tokio::spawn(async move {
        for i in 1..=COUNT {
            let id = (i % 60_000) as u16 + 1;
            p.publish(
                "busy/t",
                i.to_string().as_bytes(),
                QoS::AtLeastOnce,
                false,
                id,
            )
            .await;
            match p.recv().await {
                Packet::PubAck(a) => assert_eq!(a.packet_id, id),
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    });
    // The old connection reads a while; the client then connects at node2 mid-stream.
    let mut before = Vec::new();
    while before.len() < 200 {
        match old.try_recv_within(Duration::from_secs(10)).await {
            Ok(Some(Packet::Publish(m))) => {
                before.push((
                    std::str::from_utf8(&m.payload).unwrap().parse().unwrap(),
                    m.dup,
                ));
                old.send(&Packet::PubAck(Ack::new(m.packet_id, 0))).await;
            }
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }
    let old_reader = tokio::spawn(async move {
        let rest = read_until(&mut old, &[], None).await;
        before.extend(rest);
        before
    });
    let (mut new, ack) = RawClient::connect_with(n2.addr(), persistent("busy", 600)).await;
    assert!(ack.session_present);
    let on_old = tokio::time::timeout(Duration::from_secs(20), old_reader)
        .await
        .expect("the old connection closes")
        .unwrap();
    let on_new = read_until(&mut new, &on_old, Some(COUNT)).await;
    tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher done")
        .unwrap();
    new.expect_silence(Duration::from_millis(500)).await;
    // Every message arrived; none twice, except a resend of one in flight (marked DUP).
    let mut times = std::collections::HashMap::new();
    for (n, _) in on_old.iter().chain(on_new.iter()) {
        *times.entry(*n).or_insert(0) += 1;
    }
    assert_eq!(times.len() as u32, COUNT);
    let twice: Vec<_> = on_new
        .iter()
        .filter(|(n, dup)| !dup && times[n] > 1)
        .collect();
    assert!(twice.is_empty(), "delivered twice without DUP: {twice:?}");
    for n in [&n1, &n2, &n3] {
        assert_eq!(n.metric("vibemq_messages_dropped_total").await, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connects_racing_on_two_nodes_leave_exactly_one_connected() {
    let [n1, _n2, n3] = ProcessNode::three(Vec::new()).await;
    for round in 0..50 {
        let id = format!("racer-{round}");
        let (a, b) = tokio::join!(
            RawClient::connect_with(n1.addr(), persistent(&id, 60)),
            RawClient::connect_with(n3.addr(), persistent(&id, 60)),
        );
        // Every kick a claim makes is issued before its CONNACK: by now the loser has been
        // told, and a ping tells the survivor from it.
        let mut survivors = 0;
        for (mut c, ack) in [a, b] {
            assert_eq!(ack.code, 0, "round {round}");
            c.send(&Packet::PingReq).await;
            match c.try_recv_within(Duration::from_secs(5)).await {
                Ok(Some(Packet::PingResp)) => {
                    if let Ok(p) = c.try_recv_within(Duration::from_millis(200)).await {
                        panic!("round {round}: the survivor got {p:?}");
                    }
                    survivors += 1;
                }
                Ok(Some(Packet::Disconnect(d))) => {
                    assert_eq!(d.reason, reason::SESSION_TAKEN_OVER, "round {round}");
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(survivors, 1, "round {round}: exactly one stays connected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_are_refused_while_a_node_is_away_when_partitions_are_not_allowed() {
    let env = vec![(
        "VIBEMQ_CLUSTER_ALLOW_CONNECT_DURING_PARTITION".to_string(),
        "false".to_string(),
    )];
    let [n1, n2, _n3] = ProcessNode::three(env).await;
    // The CONNACK code; a connect waits up to a few seconds on a node that froze.
    let n1_addr = n1.addr();
    let attempt = move || async move {
        let mut c = RawClient::open(n1_addr, Protocol::V5).await;
        let connect = common::connect_packet(Protocol::V5, "careful", true);
        c.send(&Packet::Connect(Box::new(connect))).await;
        match c.try_recv_within(Duration::from_secs(15)).await {
            Ok(Some(Packet::ConnAck(ack))) => ack.code,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    };
    assert_eq!(attempt().await, 0);
    n2.freeze().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if attempt().await == reason::SERVER_UNAVAILABLE {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still admitted 30 s after node2 froze"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(n1.metric("vibemq_connects_refused_partition_total").await >= 1.0);
    // Ready means "a client connecting is served": not while connects are refused, so a load
    // balancer sends clients to a node that takes them.
    let (status, body) = common::http::get(n1.http_addr(), "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("allow_connect_during_partition"), "{body}");
    n2.thaw().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if attempt().await == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused 30 s after node2 came back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(common::http::get(n1.http_addr(), "/ready").await.0, 200);
}
