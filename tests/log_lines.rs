//! What a client or a stranger sends never forges a line of the text log: a client id holding
//! CR/LF and a fake log line, used for a takeover and a refused connect, and a node id holding
//! the same in a peer Hello before any proof, come out escaped on the line that names them
//! (the control: that line is there), never as a line of their own.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::nodes::LIMIT;
use common::process::free_port;
use common::*;
use tokio::io::AsyncWriteExt;
use vibemq::codec::Protocol;

const FORGED: &str = "2026-01-01T00:00:00.000000Z  INFO forged: admin logged in";

/// A node logging text at info into `log`, with `env`; its MQTT address.
async fn node(log: &Path, env: &[(&str, String)]) -> (tokio::process::Child, std::net::SocketAddr) {
    let mqtt = free_port();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vibemq"));
    cmd.args([
        "--bind",
        &format!("127.0.0.1:{mqtt}"),
        "--http-bind",
        "127.0.0.1:0",
        "--log-level",
        "info",
        "--log-format",
        "text",
    ])
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(log).unwrap())
    .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{mqtt}").parse().unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "not listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, addr)
}

/// Waits (bounded) until the log has a line containing `marker`; then checks that no line
/// starts with the forged text.
async fn check_log(log: &Path, marker: &str) -> String {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap();
        if text.lines().any(|l| l.contains(marker)) {
            for line in text.lines() {
                assert!(!line.starts_with(FORGED), "a forged line: {text}");
                assert!(!line.contains('\r'), "a raw CR: {text}");
            }
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{marker}` in: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_client_id_cannot_forge_a_log_line() {
    let dir = std::env::temp_dir().join(format!("vibemq-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("client.log");
    let (_node, addr) = node(&log, &[]).await;
    let id = format!("dev\r\n{FORGED}");
    // A takeover logs the client id.
    let _first = RawClient::connect(addr, Protocol::V5, &id, true).await;
    let _second = RawClient::connect(addr, Protocol::V5, &id, true).await;
    let text = check_log(&log, "taken over by a new connection").await;
    assert!(text.contains("dev\\r\\n2026-01-01T00"), "escaped: {text}");
    // A refused connect logs it too (v3.1.1, keep alive 0 while the node caps it).
    let log2 = dir.join("refused.log");
    let (_capped, addr) = node(&log2, &[("VIBEMQ_MQTT_MAX_KEEPALIVE", "60".into())]).await;
    let mut c = connect_packet(Protocol::V311, &id, true);
    c.keep_alive = 0;
    let (_, ack) = RawClient::connect_with(addr, c).await;
    assert_ne!(ack.code, 0);
    let text = check_log(&log2, "refusing connection").await;
    assert!(text.contains("dev\\r\\n2026-01-01T00"), "escaped: {text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_node_id_before_any_proof_cannot_forge_a_log_line() {
    let dir = std::env::temp_dir().join(format!("vibemq-logs-peer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("peer.log");
    let peer = free_port();
    let env = [
        ("VIBEMQ_CLUSTER_ENABLED", "true".to_string()),
        (
            "VIBEMQ_CLUSTER_GOSSIP_ADDR",
            format!("127.0.0.1:{}", free_port()),
        ),
        ("VIBEMQ_CLUSTER_PEER_ADDR", format!("127.0.0.1:{peer}")),
        ("VIBEMQ_CLUSTER_JOIN_TIMEOUT_MS", "0".to_string()),
    ];
    let (_node, _) = node(&log, &env).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut stream = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", peer)).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "no peer port: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    // A Hello from a "node" of another cluster: refused, and logged with its id.
    let hello = vibemq::cluster::wire::Frame::Hello {
        version: vibemq::cluster::wire::PROTOCOL_VERSION,
        cluster: "another".into(),
        node_id: format!("evil\r\n{FORGED}"),
        generation: 1,
        link_epoch: 1,
        nonce: [7; 32],
    };
    let bytes = vibemq::cluster::wire::frame_bytes(&hello).unwrap();
    stream.write_all(&bytes).await.unwrap();
    let text = check_log(&log, "refused peer link").await;
    assert!(text.contains("evil\\r\\n2026-01-01T00"), "escaped: {text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
