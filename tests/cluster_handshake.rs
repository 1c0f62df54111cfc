//! The peer handshake, attacked as someone on the path or on the network would, with real
//! processes: an on-path proxy altering the accepting node's answer to the proof (where the
//! dialer resumes) while QoS 1 traffic crosses the link is refused, counted, and nothing
//! acknowledged is lost; a stranger announcing a huge frame before any proof is cut off at
//! once (a frame of a plausible size is waited for, the control); connections from one
//! address past its share of `cluster.max_pending_handshakes` are closed at once and counted
//! (another address still gets a place, the control); and a SIGHUP that takes a secret out of force closes the links made under it
//! (one that keeps it closes nothing, the control), the links coming back under the secret
//! left.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::nodes::{LIMIT, ProcessNode, assert_nothing_acknowledged_lost, qos1_pubsub};
use common::process::{free_port, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_answer_to_the_proof_is_refused_and_nothing_is_lost() {
    // node2 dials node1 through the proxy: the proxy sees node1's answers.
    let (n1, proxy) = ProcessNode::start_behind_proxy(1, 0, Vec::new()).await;
    let n2 = ProcessNode::start(2, n1.gossip).await;
    n1.wait_linked(1).await;
    n2.wait_linked(1).await;
    let load = qos1_pubsub(&n2, &n1, "ready", 6);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let failures = n2.metric("vibemq_cluster_auth_failures").await;
        // The next connection's Ready altered on the way, then the link cut to make one.
        proxy.tamper_next_handshake_answer();
        proxy.cut();
        n2.wait_metric_above(
            "vibemq_cluster_auth_failures",
            failures,
            "the altered answer was not refused",
        )
        .await;
    }
    let summary = load.await.unwrap();
    println!("altered handshake answers: {summary}");
    assert_nothing_acknowledged_lost(&summary, "altered handshake answers");
    n2.wait_linked(1).await;
}

/// A connection to `peer` from the loopback address `from` (each address has its own share
/// of the places for connections authenticating).
async fn connect_from(from: &str, peer: &str) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(peer.parse().unwrap()).await
}

/// Whether the server closes `stream` within `wait` (reads nothing but the end).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("the node sent something to a stranger"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn strangers_get_no_memory_and_no_more_than_their_share_of_handshakes() {
    let env = vec![(
        "VIBEMQ_CLUSTER_MAX_PENDING_HANDSHAKES".to_string(),
        "4".to_string(),
    )];
    let n1 = ProcessNode::start_with(1, 0, free_port(), env).await;
    let peer = format!("127.0.0.1:{}", n1.peer);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while connect_from("127.0.0.4", &peer).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "no peer port");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A frame announced at 256 MiB before any proof: cut off at once, nothing buffered.
    let mut huge = connect_from("127.0.0.3", &peer).await.unwrap();
    huge.write_all(&(256u32 << 20).to_be_bytes()).await.unwrap();
    let _ = huge.write_all(&[0u8; 4096]).await;
    assert!(
        closed_within(&mut huge, LIMIT).await,
        "a 256 MiB Hello was waited for"
    );
    // The control: a frame of a plausible size, half sent, is waited for.
    let mut plausible = connect_from("127.0.0.5", &peer).await.unwrap();
    plausible.write_all(&200u32.to_be_bytes()).await.unwrap();
    plausible.write_all(&[0u8; 100]).await.unwrap();
    assert!(!closed_within(&mut plausible, Duration::from_millis(500)).await);
    drop(plausible);
    // Ten silent connections at once from one address: it gets a quarter of the four places
    // (one) and the other nine are closed at once, counted.
    let refused_before = n1.metric("vibemq_cluster_handshakes_refused").await;
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(&peer).await.unwrap());
    }
    n1.wait_metric_above(
        "vibemq_cluster_handshakes_refused",
        refused_before + 8.0,
        "connections past the bound were not refused",
    )
    .await;
    let mut kept = 0;
    for s in &mut silent {
        if !closed_within(s, Duration::from_millis(200)).await {
            kept += 1;
        }
    }
    assert_eq!(kept, 1, "one address gets its share of the places");
    // The control: another address still gets a place while that one holds its share.
    let mut other = connect_from("127.0.0.2", &peer).await.unwrap();
    assert!(
        !closed_within(&mut other, Duration::from_millis(500)).await,
        "another address was refused"
    );
    drop(silent);
}

fn secret_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vibemq-handshake-{}-{name}", std::process::id()))
}

const OLD: &str = "b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZC1zZWNyZXQ=";
const NEW: &str = "bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldy1zZWNyZXQ=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_taken_out_of_force_closes_the_links_made_under_it() {
    let env = |n: usize| {
        std::fs::write(secret_file(&n.to_string()), format!("{OLD}\n{NEW}\n")).unwrap();
        vec![
            ("VIBEMQ_CLUSTER_SECRET".to_string(), String::new()),
            (
                "VIBEMQ_CLUSTER_SECRET_FILE".to_string(),
                secret_file(&n.to_string()).display().to_string(),
            ),
        ]
    };
    let n1 = ProcessNode::start_with(1, 0, free_port(), env(1)).await;
    let n2 = ProcessNode::start_with(2, n1.gossip, free_port(), env(2)).await;
    n1.wait_linked(1).await;
    n2.wait_linked(1).await;
    let hup = |node: &ProcessNode| {
        let pid = node.child.id().expect("running").to_string();
        async move { run("kill", &["-HUP", &pid], LIMIT).await }
    };
    let closed = async |node: &ProcessNode| {
        node.metric("vibemq_cluster_links_closed_secret_withdrawn")
            .await
    };
    // The control: the sealing secret changes, the old one stays accepted: nothing closes.
    for n in 1..=2 {
        std::fs::write(secret_file(&n.to_string()), format!("{NEW}\n{OLD}\n")).unwrap();
    }
    hup(&n1).await;
    hup(&n2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(closed(&n1).await + closed(&n2).await, 0.0);
    // The old secret out of force: the links made under it close, and come back under NEW.
    for n in 1..=2 {
        std::fs::write(secret_file(&n.to_string()), format!("{NEW}\n")).unwrap();
    }
    hup(&n1).await;
    hup(&n2).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while closed(&n1).await + closed(&n2).await < 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the links made under the withdrawn secret stayed up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n1.wait_linked(1).await;
    n2.wait_linked(1).await;
    // And they carry messages again.
    let port = n1.port();
    let mut sub = common::process::spawn(
        "mosquitto_sub",
        &[
            "-p", &port, "-t", "after/x", "-C", "1", "-W", "20", "-q", "1",
        ],
    );
    let deadline = tokio::time::Instant::now() + LIMIT;
    while sub.try_wait().unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing crossed the new links"
        );
        run(
            "mosquitto_pub",
            &["-p", &n2.port(), "-t", "after/x", "-m", "m", "-q", "1"],
            LIMIT,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sub.wait().await.unwrap().success());
    for n in 1..=2 {
        let _ = std::fs::remove_file(secret_file(&n.to_string()));
    }
}
