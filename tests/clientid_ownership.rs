//! Client ids belong to the identity that made their session (`auth.clientid_ownership`):
//! user bob connecting with user alice's client id, with mosquitto_sub as an attacker would,
//! is refused (v5 0x87, v3 0x05) and counted, on the node that holds alice's session and on
//! another node of the cluster, while alice stays connected and keeps her session; with
//! ownership off (the control) the same connect takes the session over. And what is resent
//! from a session taken over passes the read check of the client now connected.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::nodes::{LIMIT, ProcessNode};
use common::process::{BrokerProcess, free_port, run, spawn};
use common::*;
use vibemq::codec::{Packet, Properties, Protocol, QoS, reason};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vibemq-owner-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A password file with alice and bob (password "pw"), and an ACL where alice alone reads
/// `private/#` and both use `shared/#`.
async fn users(dir: &Path) -> (String, String) {
    let passwords = dir.join("passwords").display().to_string();
    run(
        "mosquitto_passwd",
        &["-c", "-b", &passwords, "alice", "pw"],
        LIMIT,
    )
    .await;
    run("mosquitto_passwd", &["-b", &passwords, "bob", "pw"], LIMIT).await;
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "user alice\ntopic readwrite private/#\ntopic readwrite shared/#\n\
         user bob\ntopic readwrite shared/#\n",
    )
    .unwrap();
    (passwords, acl.display().to_string())
}

/// The settings of a cluster node with these files and `auth.clientid_ownership`.
fn auth_env(passwords: &str, acl: &str, ownership: &str) -> Vec<(String, String)> {
    vec![
        (
            "VIBEMQ_AUTH_PASSWORD_FILE".to_string(),
            passwords.to_string(),
        ),
        ("VIBEMQ_AUTH_ACL_FILE".to_string(), acl.to_string()),
        (
            "VIBEMQ_AUTH_CLIENTID_OWNERSHIP".to_string(),
            ownership.to_string(),
        ),
    ]
}

/// A v5 CONNECT as `user` for client id `id`, keeping its session for 300 s.
fn connect_as(user: &str, id: &str, clean_start: bool) -> vibemq::codec::Connect {
    let mut c = connect_packet(Protocol::V5, id, clean_start);
    c.username = Some(user.into());
    c.password = Some(Bytes::from_static(b"pw"));
    c.properties.session_expiry_interval = Some(300);
    c
}

/// mosquitto_sub as bob with `id` (persistent, -c): its exit code and what it said.
async fn bob_takes(port: &str, id: &str, version: &str) -> (Option<i32>, String) {
    let child = spawn(
        "mosquitto_sub",
        &[
            "-p", port, "-V", version, "-i", id, "-c", "-u", "bob", "-P", "pw", "-t", "shared/#",
            "-C", "1", "-W", "2",
        ],
    );
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("mosquitto_sub ends")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// alice publishes `payload` to `topic` at QoS 1 with mosquitto_pub, at MQTT port `port`.
async fn alice_publishes(port: &str, topic: &str, payload: &str) {
    let args = [
        "-p", port, "-u", "alice", "-P", "pw", "-t", topic, "-m", payload, "-q", "1",
    ];
    run("mosquitto_pub", &args, LIMIT).await;
}

/// The next packet `client` gets is a PUBLISH of `payload`.
async fn expect_payload(client: &mut RawClient, payload: &[u8]) {
    match client.recv().await {
        Packet::Publish(p) => assert_eq!(&p.payload[..], payload),
        other => panic!("expected a message, got {other:?}"),
    }
}

fn metric_line(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const OWNED: &str = "vibemq_auth_failures_total{reason=\"clientid_owned\"}";

#[tokio::test]
async fn another_user_cannot_take_a_client_id_on_one_node() {
    let dir = scratch("one-node");
    let (passwords, acl) = users(&dir).await;
    let http = free_port();
    let config = dir.join("vibemq.toml");
    let start = |ownership: &str| {
        std::fs::write(
            &config,
            format!(
                "[auth]\npassword_file = \"{passwords}\"\nacl_file = \"{acl}\"\nclientid_ownership = \"{ownership}\"\n"
            ),
        )
        .unwrap();
        let (config, http_bind) = (config.display().to_string(), format!("127.0.0.1:{http}"));
        async move { BrokerProcess::start(&["--config", &config, "--http-bind", &http_bind]).await }
    };
    let b = start("enforce").await;
    let (mut alice, ack) = RawClient::connect_with(b.addr, connect_as("alice", "dev1", true)).await;
    assert_eq!(ack.code, 0);
    alice.subscribe("private/#", QoS::AtLeastOnce).await;
    // bob, with mosquitto_sub, in both protocol versions: refused, and alice stays.
    for version in ["mqttv5", "mqttv311"] {
        let (code, said) = bob_takes(&b.port(), "dev1", version).await;
        assert_ne!(code, Some(0), "{version}: {said}");
        assert!(
            said.to_lowercase().contains("not authori"),
            "{version}: {said}"
        );
    }
    let (bob, ack) = RawClient::connect_with(b.addr, connect_as("bob", "dev1", false)).await;
    assert_eq!(ack.code, reason::NOT_AUTHORIZED);
    drop(bob);
    let (_, metrics) =
        common::http::get(format!("127.0.0.1:{http}").parse().unwrap(), "/metrics").await;
    assert_eq!(metric_line(&metrics, OWNED), 3.0, "each refusal counted");
    alice.expect_silence(Duration::from_millis(200)).await;
    // alice's connection and session are whole: a message for her arrives.
    alice_publishes(&b.port(), "private/x", "1").await;
    expect_payload(&mut alice, b"1").await;
    // Offline, her stored session is still hers: bob is refused, alice resumes it.
    drop(alice);
    let (_, ack) = RawClient::connect_with(b.addr, connect_as("bob", "dev1", false)).await;
    assert_eq!(ack.code, reason::NOT_AUTHORIZED);
    let (_, ack) = RawClient::connect_with(b.addr, connect_as("alice", "dev1", false)).await;
    assert_eq!((ack.code, ack.session_present), (0, true));
    drop(b);

    // The control: with ownership off, bob's connect takes the session over.
    let b = start("off").await;
    let (mut alice, _) = RawClient::connect_with(b.addr, connect_as("alice", "dev1", true)).await;
    let (code, said) = bob_takes(&b.port(), "dev1", "mqttv5").await;
    assert_eq!(code, Some(27), "connected, then timed out waiting: {said}");
    assert_eq!(
        alice.expect_closed().await,
        Some(reason::SESSION_TAKEN_OVER)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_take_a_client_id_across_the_cluster() {
    let dir = scratch("cluster");
    let (passwords, acl) = users(&dir).await;
    let env = |ownership: &str| auth_env(&passwords, &acl, ownership);
    let n1 = ProcessNode::start_with(1, 0, free_port(), env("enforce")).await;
    let n2 = ProcessNode::start_with(2, n1.gossip, free_port(), env("enforce")).await;
    n1.wait_linked(1).await;
    n2.wait_linked(1).await;
    let (mut alice, ack) =
        RawClient::connect_with(n1.addr(), connect_as("alice", "dev2", true)).await;
    assert_eq!(ack.code, 0);
    alice.subscribe("private/#", QoS::AtLeastOnce).await;
    // bob at the other node, live session and stored one alike.
    let (code, said) = bob_takes(&n2.port(), "dev2", "mqttv5").await;
    assert_ne!(code, Some(0), "{said}");
    assert!(said.to_lowercase().contains("not authori"), "{said}");
    assert!(
        n2.metric("vibemq_auth_failures_total{reason=\"clientid_owned\"}")
            .await
            >= 1.0
    );
    alice.expect_silence(Duration::from_millis(300)).await;
    drop(alice);
    // Offline at node1, queued for: bob at node2 is refused, alice at node2 resumes it all.
    alice_publishes(&n1.port(), "private/q", "queued").await;
    let (_, ack) = RawClient::connect_with(n2.addr(), connect_as("bob", "dev2", false)).await;
    assert_eq!(ack.code, reason::NOT_AUTHORIZED);
    let (mut alice, ack) =
        RawClient::connect_with(n2.addr(), connect_as("alice", "dev2", false)).await;
    assert_eq!((ack.code, ack.session_present), (0, true));
    expect_payload(&mut alice, b"queued").await;
    drop((alice, n1, n2));

    // The control: ownership off on both nodes, and bob at node2 takes alice's session.
    let n1 = ProcessNode::start_with(1, 0, free_port(), env("off")).await;
    let n2 = ProcessNode::start_with(2, n1.gossip, free_port(), env("off")).await;
    n1.wait_linked(1).await;
    n2.wait_linked(1).await;
    let (mut alice, _) =
        RawClient::connect_with(n1.addr(), connect_as("alice", "dev3", true)).await;
    let (bob, ack) = RawClient::connect_with(n2.addr(), connect_as("bob", "dev3", false)).await;
    assert_eq!((ack.code, ack.session_present), (0, true));
    assert_eq!(
        alice.expect_closed().await,
        Some(reason::SESSION_TAKEN_OVER)
    );
    drop(bob);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn what_is_resent_passes_the_read_check_of_the_client_now_connected() {
    let dir = scratch("resend");
    let (passwords, acl) = users(&dir).await;
    let http = free_port();
    let config = dir.join("vibemq.toml");
    // Ownership off: the one case where another user may take a session over (as MQTT says).
    std::fs::write(
        &config,
        format!(
            "[auth]\npassword_file = \"{passwords}\"\nacl_file = \"{acl}\"\nclientid_ownership = \"off\"\n"
        ),
    )
    .unwrap();
    let http_bind = format!("127.0.0.1:{http}");
    let b = BrokerProcess::start(&[
        "--config",
        &config.display().to_string(),
        "--http-bind",
        &http_bind,
    ])
    .await;
    let in_flight = |user: &'static str| {
        let addr = b.addr;
        async move {
            RawClient::connect_with(addr, connect_as(user, "dev4", false))
                .await
                .0
        }
    };
    // alice receives a private message and does not acknowledge it: it stays in flight.
    let (mut alice, _) = RawClient::connect_with(b.addr, connect_as("alice", "dev4", true)).await;
    alice.subscribe("private/#", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::connect_with(b.addr, connect_as("alice", "pub", true))
        .await
        .0;
    publisher
        .publish_with(
            "private/x",
            b"for alice",
            QoS::AtLeastOnce,
            false,
            7,
            Properties::default(),
        )
        .await;
    expect_payload(&mut alice, b"for alice").await;
    drop(alice);
    // bob takes the session: the message in flight is not resent to him, and that is counted.
    let mut bob = in_flight("bob").await;
    bob.expect_silence(Duration::from_millis(500)).await;
    let (_, metrics) = common::http::get(http_bind.parse().unwrap(), "/metrics").await;
    assert!(
        metrics.contains("vibemq_acl_denied_total{action=\"receive\"} 1"),
        "{metrics}"
    );
    drop(bob);
    // The control: alice back instead gets an in-flight message resent (a second one, since
    // bob's connection finished the first).
    let mut alice = in_flight("alice").await;
    alice.subscribe("private/#", QoS::AtLeastOnce).await;
    publisher
        .publish_with(
            "private/y",
            b"again",
            QoS::AtLeastOnce,
            false,
            8,
            Properties::default(),
        )
        .await;
    expect_payload(&mut alice, b"again").await;
    drop(alice);
    let mut alice = in_flight("alice").await;
    match alice.recv().await {
        Packet::Publish(p) => {
            assert!(p.dup, "a resend");
            assert_eq!(&p.payload[..], b"again");
        }
        other => panic!("expected the resend, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumed_from_its_copy_is_still_its_owners() {
    let dir = scratch("copy");
    let (passwords, acl) = users(&dir).await;
    let env = auth_env(&passwords, &acl, "enforce");
    let mut n1 = ProcessNode::start_with(1, 0, free_port(), env.clone()).await;
    let n2 = ProcessNode::start_with(2, n1.gossip, free_port(), env).await;
    n1.wait_linked(1).await;
    n2.wait_linked(1).await;
    // alice's session at node1, offline with a message queued; its copy at node2.
    let (mut alice, _) =
        RawClient::connect_with(n1.addr(), connect_as("alice", "dev5", true)).await;
    alice.subscribe("private/#", QoS::AtLeastOnce).await;
    drop(alice);
    alice_publishes(&n1.port(), "private/c", "kept").await;
    n2.wait_metric_above(
        "vibemq_session_replica_messages",
        0.0,
        "no copy of the message",
    )
    .await;
    // node1 dies; the copy at node2 is what is left of the session, and it is alice's.
    n1.kill9().await;
    let (_, ack) = RawClient::connect_with(n2.addr(), connect_as("bob", "dev5", false)).await;
    assert_eq!(ack.code, reason::NOT_AUTHORIZED, "the copy is alice's");
    let (mut alice, ack) =
        RawClient::connect_with(n2.addr(), connect_as("alice", "dev5", false)).await;
    assert_eq!((ack.code, ack.session_present), (0, true));
    expect_payload(&mut alice, b"kept").await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_claims_never_make_the_owner_lose_her_connect() {
    let dir = scratch("rival");
    let (passwords, acl) = users(&dir).await;
    let env = auth_env(&passwords, &acl, "enforce");
    let [n1, n2, n3] = ProcessNode::three(env).await;
    // alice's session at node1.
    let (alice, _) = RawClient::connect_with(n1.addr(), connect_as("alice", "dev6", true)).await;
    drop(alice);
    // bob claims her client id at node2 over and over, four connects at a time, while she
    // connects at node3, then at node2, then at node1 ..., every fourth time with a clean
    // start (which ends her session where it is): each of her connects must be served and stay
    // (no 0x87, no 0x8E for a rival claim), and bob must never get in.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rivals: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop) = (n2.addr(), stop.clone());
            tokio::spawn(async move {
                let mut refused = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (_, ack) =
                        RawClient::connect_with(addr, connect_as("bob", "dev6", false)).await;
                    assert_eq!(ack.code, reason::NOT_AUTHORIZED, "bob got in");
                    refused += 1;
                }
                refused
            })
        })
        .collect();
    for round in 0..16 {
        let at = [&n3, &n2, &n1][round % 3];
        let clean = round % 4 == 3;
        let (mut alice, ack) =
            RawClient::connect_with(at.addr(), connect_as("alice", "dev6", clean)).await;
        assert_eq!(
            (ack.code, ack.session_present),
            (0, !clean),
            "round {round}, clean start {clean}"
        );
        // Still connected a moment later: not taken over by a claim of bob's.
        alice.expect_silence(Duration::from_millis(300)).await;
        drop(alice);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut refused = 0;
    for r in rivals {
        refused += r.await.unwrap();
    }
    println!("bob was refused {refused} times while alice moved between the nodes");
    assert!(refused > 12, "bob's claims ran alongside ({refused})");
    std::fs::remove_dir_all(&dir).unwrap();
}
