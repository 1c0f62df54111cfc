//! The cluster's security with real processes and real sockets: the secret rotated across
//! three nodes under QoS 1 traffic (file by file, SIGHUP by SIGHUP, every peer connection cut
//! after each step so each step's links are made under its secrets) losing nothing
//! acknowledged, after which a node with only the old secret cannot join; a bit flipped in a
//! sealed peer connection rejected, counted, and recovered from without loss; a captured
//! gossip datagram replayed to a node dropped and counted; and a tcpdump capture of the peer
//! ports during a cross-node publish showing neither payload nor topic (where the same
//! capture of a cluster without a secret shows both); and peer links in TLS (`cluster.tls`)
//! that a node with another CA's certificate cannot make.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::nodes::{LIMIT, ProcessNode, assert_nothing_acknowledged_lost, qos1_pubsub};
use common::process::{free_port, run};

const OLD: &str = "b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZC1zZWNyZXQ=";
const NEW: &str = "bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldy1zZWNyZXQ=";

fn secret_file(n: usize) -> PathBuf {
    std::env::temp_dir().join(format!("vibemq-secrets-{}-{n}", std::process::id()))
}

/// Settings for a node whose secrets come from its own file.
fn from_file(n: usize, extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("VIBEMQ_CLUSTER_SECRET".to_string(), String::new()),
        (
            "VIBEMQ_CLUSTER_SECRET_FILE".to_string(),
            secret_file(n).display().to_string(),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    env
}

async fn sighup(node: &ProcessNode) {
    let pid = node.child.id().expect("running").to_string();
    run("kill", &["-HUP", &pid], LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_rotates_across_three_nodes_under_traffic_losing_nothing() {
    for n in 1..=4 {
        std::fs::write(secret_file(n), format!("{OLD}\n")).unwrap();
    }
    // node1's peer port behind a proxy, so every connection to it can be cut.
    let (n1, proxy) = ProcessNode::start_behind_proxy(1, 0, from_file(1, &[])).await;
    let n2 = ProcessNode::start_with(2, n1.gossip, free_port(), from_file(2, &[])).await;
    let mut n3 = ProcessNode::start_with(3, n1.gossip, free_port(), from_file(3, &[])).await;
    for n in [&n1, &n2, &n3] {
        n.wait_linked(2).await;
    }
    let traffic = qos1_pubsub(&n2, &n1, "rotate", 12);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reconnects_before = n2.metric("vibemq_cluster_link_reconnects").await;
    // The three steps, each on every node in turn: the new secret accepted, then sealing,
    // then the old one gone. Cutting the links after each step makes new ones under it.
    for step in [
        format!("{OLD}\n{NEW}\n"),
        format!("{NEW}\n{OLD}\n"),
        format!("{NEW}\n"),
    ] {
        for (n, node) in [(1, &n1), (2, &n2), (3, &n3)] {
            std::fs::write(secret_file(n), &step).unwrap();
            sighup(node).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let summary = traffic.await.unwrap();
    println!("secret rotated under traffic: {summary}");
    assert_nothing_acknowledged_lost(&summary, "rotation");
    assert!(
        n2.metric("vibemq_cluster_link_reconnects").await >= reconnects_before + 3.0,
        "node2's link to node1 was remade after each step"
    );
    assert_eq!(n1.metric("vibemq_cluster_auth_failures").await, 0.0);
    assert_eq!(n2.metric("vibemq_cluster_auth_failures").await, 0.0);
    // A node restarted now has only the new secret, and joins.
    n3.restart().await;
    n1.wait_linked(2).await;
    n3.wait_linked(2).await;
    // One with only the old secret does not: its gossip is refused.
    let refused_before = n1.metric("vibemq_cluster_gossip_rejected").await;
    std::fs::write(secret_file(4), format!("{OLD}\n")).unwrap();
    // (node3's shipped config under another name: there are three.)
    let name = [("VIBEMQ_CLUSTER_NODE_ID", "node4".to_string())];
    let stale = ProcessNode::start_with(3, n1.gossip, free_port(), from_file(4, &name)).await;
    n1.wait_metric_above(
        "vibemq_cluster_gossip_rejected",
        refused_before,
        "the stale node's gossip never came",
    )
    .await;
    let (_, cluster) = common::http::get(n1.http_addr(), "/api/v1/cluster").await;
    assert!(!cluster.contains("node4"), "{cluster}");
    drop(stale);
    for n in 1..=4 {
        let _ = std::fs::remove_file(secret_file(n));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_peer_connection_is_rejected_and_recovered_from() {
    let (n1, proxy) = ProcessNode::start_behind_proxy(1, 0, Vec::new()).await;
    let n2 = ProcessNode::start(2, n1.gossip).await;
    n1.wait_linked(1).await;
    n2.wait_linked(1).await;
    let traffic = qos1_pubsub(&n2, &n1, "tamper", 6);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.tamper_next();
    }
    let summary = traffic.await.unwrap();
    println!("tampered connections: {summary}");
    assert_nothing_acknowledged_lost(&summary, "tampering");
    let rejected = n1.metric("vibemq_cluster_frames_rejected").await;
    assert!(rejected >= 3.0, "each flipped bit refused ({rejected})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_gossip_datagram_is_dropped() {
    // node2 joins through a UDP relay in front of node1's gossip port, which keeps a copy of
    // the last datagram node2 sent. (Not the first: node1's MQTT port accepts connections
    // before its gossip socket is bound, so node2's first datagram may never reach it, and
    // its replay would be news to node1.)
    let n1 = ProcessNode::start(1, 0).await;
    let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay_port = relay.local_addr().unwrap().port();
    let n1_gossip: std::net::SocketAddr = format!("127.0.0.1:{}", n1.gossip).parse().unwrap();
    let last = std::sync::Arc::new(std::sync::Mutex::new(None::<Vec<u8>>));
    let last_forwarded = last.clone();
    let relaying = tokio::spawn(async move {
        let mut client = None;
        let mut buf = vec![0u8; 65_536];
        // Bounded by the test, which aborts it at the end.
        while let Ok((len, from)) = relay.recv_from(&mut buf).await {
            if from == n1_gossip {
                if let Some(c) = client {
                    let _ = relay.send_to(&buf[..len], c).await;
                }
                continue;
            }
            client = Some(from);
            let _ = relay.send_to(&buf[..len], n1_gossip).await;
            *last_forwarded.lock().unwrap() = Some(buf[..len].to_vec());
        }
    });
    let n2 = ProcessNode::start(2, relay_port).await;
    n1.wait_linked(1).await;
    n2.wait_linked(1).await;
    // Forwarded to node1 ahead of the replay below, on the same loopback path: node1 has it.
    let datagram = last
        .lock()
        .unwrap()
        .clone()
        .expect("node2 gossiped to its seed through the relay");
    // The same bytes again, from elsewhere, and a copy with one bit flipped.
    let replayed_before = n1.metric("vibemq_cluster_gossip_replayed").await;
    let rejected_before = n1.metric("vibemq_cluster_gossip_rejected").await;
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    attacker.send_to(&datagram, n1_gossip).await.unwrap();
    let mut forged = datagram.clone();
    *forged.last_mut().unwrap() ^= 1;
    attacker.send_to(&forged, n1_gossip).await.unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let replayed = n1.metric("vibemq_cluster_gossip_replayed").await;
        let rejected = n1.metric("vibemq_cluster_gossip_rejected").await;
        if replayed > replayed_before && rejected > rejected_before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replayed {replayed_before} -> {replayed}, rejected {rejected_before} -> {rejected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The replayed Syn drew no reply.
    let mut buf = [0u8; 2048];
    let reply =
        tokio::time::timeout(Duration::from_millis(500), attacker.recv_from(&mut buf)).await;
    assert!(reply.is_err(), "a replayed datagram must not be answered");
    relaying.abort();
}

/// tcpdump on loopback, writing every packet of `ports` to `file` as it comes.
async fn capture(file: &std::path::Path, ports: &[u16]) -> tokio::process::Child {
    let filter = ports
        .iter()
        .map(|p| format!("tcp port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let mut child = tokio::process::Command::new("tcpdump")
        // --immediate-mode: packets reach tcpdump as they come (not in blocks every second,
        // which a stop could cut off); -U: each written at once; -Z root: keep the right to
        // write where we ask.
        .args([
            "-i",
            "lo",
            "--immediate-mode",
            "-U",
            "-Z",
            "root",
            "-w",
            &file.display().to_string(),
            &filter,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tcpdump (scripts/test.sh installs it)");
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = tokio::time::timeout(LIMIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("listening on") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(listening, Ok(true), "tcpdump did not start capturing");
    // Keep reading what it says: a closed pipe would end it at its next word.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    // It says so a moment before its filter is in place.
    tokio::time::sleep(Duration::from_secs(1)).await;
    child
}

/// Publishes `payload` on `topic` at `from`, received by a subscriber at `to`; returns the
/// bytes tcpdump captured on both peer ports meanwhile.
async fn captured_cross_node_publish(
    from: &ProcessNode,
    to: &ProcessNode,
    topic: &str,
    payload: &str,
) -> Vec<u8> {
    let file = std::env::temp_dir().join(format!(
        "vibemq-capture-{}-{}.pcap",
        std::process::id(),
        to.peer
    ));
    let mut tcpdump = capture(&file, &[from.peer, to.peer]).await;
    let port = to.port();
    let sub = common::process::spawn(
        "mosquitto_sub",
        &["-p", &port, "-t", topic, "-C", "1", "-W", "10", "-q", "1"],
    );
    // The route reaches the publishing node before the publish.
    from.wait_metric_above("vibemq_cluster_remote_routes", 0.0, "no route reached it")
        .await;
    run(
        "mosquitto_pub",
        &["-p", &from.port(), "-t", topic, "-m", payload, "-q", "1"],
        LIMIT,
    )
    .await;
    let out = tokio::time::timeout(LIMIT, sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), payload);
    // What is still on its way through the capture.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = tcpdump.id().expect("running").to_string();
    run("kill", &["-TERM", &pid], LIMIT).await;
    let _ = tokio::time::timeout(LIMIT, tcpdump.wait()).await;
    let bytes = std::fs::read(&file).expect("the capture");
    let _ = std::fs::remove_file(&file);
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_of_the_peer_ports_shows_no_payload_in_clear() {
    let payload = format!("canary-payload-{}", std::process::id());
    let topic = format!("canary/topic-{}", std::process::id());
    // With the secret (as the shipped configs run): nothing readable on the wire.
    let n1 = ProcessNode::start(1, 0).await;
    let n2 = ProcessNode::start(2, n1.gossip).await;
    n1.wait_linked(1).await;
    n2.wait_linked(1).await;
    let sealed = captured_cross_node_publish(&n2, &n1, &topic, &payload).await;
    assert!(
        sealed.len() > 1000,
        "the capture saw the link ({} bytes)",
        sealed.len()
    );
    assert!(!contains(&sealed, payload.as_bytes()), "payload in clear");
    assert!(!contains(&sealed, topic.as_bytes()), "topic in clear");
    drop((n1, n2));
    // The same capture of a cluster without a secret does show them: the check can fail.
    let open = || vec![("VIBEMQ_CLUSTER_SECRET".to_string(), String::new())];
    let n1 = ProcessNode::start_with(1, 0, free_port(), open()).await;
    let n2 = ProcessNode::start_with(2, n1.gossip, free_port(), open()).await;
    n1.wait_linked(1).await;
    n2.wait_linked(1).await;
    let clear = captured_cross_node_publish(&n2, &n1, &topic, &payload).await;
    assert!(
        contains(&clear, payload.as_bytes()),
        "control: payload visible without a secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_links_in_tls_accept_only_certificates_of_the_cluster_ca() {
    use common::certs::{make_ca, make_cert_with, scratch};
    let dir = scratch("peer-tls");
    // The nodes' CA, the devices' CA (tls.client_ca_file: MQTT clients' certificates), and
    // one nobody here trusts.
    make_ca(&dir, "cluster-ca").await;
    make_ca(&dir, "device-ca").await;
    make_ca(&dir, "other-ca").await;
    let named = |dns: &str| format!("subjectAltName=DNS:{dns},IP:127.0.0.1\n");
    for (name, ca, dns) in [
        ("node1", "cluster-ca", "node1.peers.test"),
        ("node2", "cluster-ca", "node2.peers.test"),
        ("outsider", "other-ca", "outsider.peers.test"),
        ("device", "device-ca", "device.peers.test"),
        ("misnamed", "cluster-ca", "misnamed.elsewhere.test"),
    ] {
        make_cert_with(&dir, name, ca, 2, Some(&named(dns))).await;
    }
    let tls = |name: &str| {
        let file = |f: String| dir.join(f).display().to_string();
        vec![
            ("VIBEMQ_CLUSTER_TLS".to_string(), "true".to_string()),
            (
                "VIBEMQ_CLUSTER_CA_FILE".to_string(),
                file("cluster-ca.pem".into()),
            ),
            (
                "VIBEMQ_CLUSTER_TLS_PEER_NAME".to_string(),
                "*.peers.test".to_string(),
            ),
            (
                "VIBEMQ_TLS_CERT_FILE".to_string(),
                file(format!("{name}.pem")),
            ),
            (
                "VIBEMQ_TLS_KEY_FILE".to_string(),
                file(format!("{name}.key")),
            ),
            (
                "VIBEMQ_TLS_CLIENT_CA_FILE".to_string(),
                file("device-ca.pem".into()),
            ),
        ]
    };
    let n1 = ProcessNode::start_with(1, 0, free_port(), tls("node1")).await;
    let n2 = ProcessNode::start_with(2, n1.gossip, free_port(), tls("node2")).await;
    n1.wait_linked(1).await;
    n2.wait_linked(1).await;
    let payload = "over-tls";
    let port = n1.port();
    let sub = common::process::spawn(
        "mosquitto_sub",
        &["-p", &port, "-t", "tls/x", "-C", "1", "-W", "10", "-q", "1"],
    );
    n2.wait_metric_above("vibemq_cluster_remote_routes", 0.0, "no route reached it")
        .await;
    run(
        "mosquitto_pub",
        &["-p", &n2.port(), "-t", "tls/x", "-m", payload, "-q", "1"],
        LIMIT,
    )
    .await;
    let out = tokio::time::timeout(LIMIT, sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), payload);
    // Nodes whose certificates another CA signed (same secret, so gossip reaches them) get
    // no link: their TLS handshakes fail and are counted. A device's client certificate (the
    // CA of tls.client_ca_file) is not a node's; nor is one of the cluster's CA without the
    // name cluster.tls_peer_name requires.
    for name in ["outsider", "device", "misnamed"] {
        let failures_before = n1.metric("vibemq_cluster_auth_failures").await;
        let mut env = tls(name);
        env.push(("VIBEMQ_CLUSTER_NODE_ID".to_string(), name.to_string()));
        let stranger = ProcessNode::start_with(3, n1.gossip, free_port(), env).await;
        n1.wait_metric_above(
            "vibemq_cluster_auth_failures",
            failures_before,
            &format!("{name} never tried to link"),
        )
        .await;
        let (_, cluster) = common::http::get(stranger.http_addr(), "/api/v1/cluster").await;
        assert!(!cluster.contains("\"link\":\"up\""), "{name}: {cluster}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
