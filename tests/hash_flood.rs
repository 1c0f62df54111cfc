//! Password hashing cannot be turned against the node: 500 concurrent CONNECTs with wrong
//! passwords for a known user (argon2id, about 19 MiB and tens of milliseconds each) from one
//! address hash on at most `auth.max_concurrent_hashes` threads, at most
//! `auth.max_hashes_per_ip` of them queued (the rest refused at once with 0x89), so the node's
//! peak memory stays bounded and a client from another address, its password never checked
//! before, is served within a second in the middle of it. The controls: without the share
//! the same probe waits behind the flood; with many hashing slots the flood costs the node
//! hundreds of megabytes.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::process::{BrokerProcess, free_port};
use common::*;
use vibemq::codec::{Protocol, reason};

/// The node's peak resident memory so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc")
        * 1024
}

fn alice(id: &str, password: &'static [u8]) -> vibemq::codec::Connect {
    let mut c = connect_packet(Protocol::V5, id, true);
    c.username = Some("alice".into());
    c.password = Some(Bytes::from_static(password));
    c
}

/// `count` connections at once with a wrong password; resolves with their CONNACK codes.
fn flood(addr: std::net::SocketAddr, count: usize) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for i in 0..count {
            tasks.push(tokio::spawn(async move {
                let c = alice(&format!("flood-{i}"), b"wrong");
                let mut client = RawClient::open(addr, Protocol::V5).await;
                client
                    .send(&vibemq::codec::Packet::Connect(Box::new(c)))
                    .await;
                match client.try_recv_within(Duration::from_secs(60)).await {
                    Ok(Some(vibemq::codec::Packet::ConnAck(ack))) => ack.code,
                    other => panic!("expected a CONNACK, got {other:?}"),
                }
            }));
        }
        let mut codes = Vec::new();
        for t in tasks {
            codes.push(t.await.unwrap());
        }
        codes
    })
}

/// A RawClient connected from the loopback address `from`.
async fn open_from(from: &str, addr: std::net::SocketAddr) -> RawClient {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    RawClient {
        stream: socket.connect(addr).await.unwrap(),
        buf: bytes::BytesMut::new(),
        protocol: Protocol::V5,
    }
}

/// A node with alice in its password file, `slots` hashing slots and `per_ip` checks per
/// address; its growth in peak memory over the flood of `count`, how long alice took to be
/// served (from another address, her password never checked before) in the middle of it, and
/// how many of the flood were refused at once for their address's share.
async fn run_flood(dir: &Path, slots: usize, per_ip: usize, count: usize) -> Flooded {
    let config = dir.join(format!("vibemq-{slots}.toml"));
    std::fs::write(
        &config,
        format!(
            "[auth]\npassword_file = \"{}\"\nmax_concurrent_hashes = {slots}\nmax_hashes_per_ip = {per_ip}\n",
            dir.join("passwords").display()
        ),
    )
    .unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let b = BrokerProcess::start(&[
        "--config",
        &config.display().to_string(),
        "--http-bind",
        &http,
    ])
    .await;
    let pid = b.child.id().unwrap();
    let before = peak_rss(pid);
    let attack = flood(b.addr, count);
    // In the middle of it (the hashing slots busy), alice reconnects.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = common::http::get(http.parse().unwrap(), "/metrics").await;
        if metrics.contains("vibemq_auth_failures_total{reason=\"bad_credentials\"} ")
            && !metrics.contains("vibemq_auth_failures_total{reason=\"bad_credentials\"} 0\n")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood never got hashed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    let mut probe = open_from("127.0.0.2", b.addr).await;
    probe
        .send(&vibemq::codec::Packet::Connect(Box::new(alice(
            "probe", b"right",
        ))))
        .await;
    let code = match probe.recv().await {
        vibemq::codec::Packet::ConnAck(ack) => ack.code,
        other => panic!("expected a CONNACK, got {other:?}"),
    };
    let served = started.elapsed();
    let codes = attack.await.unwrap();
    assert_eq!(codes.len(), count);
    assert!(
        codes
            .iter()
            .all(|c| *c == reason::BAD_USER_NAME_OR_PASSWORD || *c == reason::SERVER_BUSY),
        "every wrong password refused: {codes:?}"
    );
    let busy = codes.iter().filter(|c| **c == reason::SERVER_BUSY).count();
    Flooded {
        grew: peak_rss(pid).saturating_sub(before),
        probe: (code, served),
        busy,
    }
}

/// What one flood did to a node.
struct Flooded {
    /// Growth of its peak memory.
    grew: u64,
    /// The probe client's CONNACK code, and how long it took.
    probe: (u8, Duration),
    /// CONNECTs of the flood refused at once (0x89) for their address's share.
    busy: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_hashes_in_bounded_memory_and_others_are_served() {
    let dir = std::env::temp_dir().join(format!("vibemq-hash-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    vibemq::auth::passwords::set_password(&dir.join("passwords"), "alice", b"right").unwrap();

    // Two slots, a share of 8 checks per address: memory bounded, the probe served at once.
    let shared = run_flood(&dir, 2, 8, 500).await;
    let (code, served) = shared.probe;
    println!(
        "2 slots, 8 per address, 500 wrong passwords ({} refused at once): peak memory grew {} MiB; a client from another address served in {served:?}",
        shared.busy,
        shared.grew >> 20
    );
    assert_eq!(code, 0);
    assert!(served < Duration::from_secs(1), "served in {served:?}");
    assert!(
        shared.busy > 400,
        "the flood's address got its share, no more ({} refused)",
        shared.busy
    );
    // Two slots of argon2 (19 MiB each), not one per CONNECT.
    assert!(
        shared.grew < 64 << 20,
        "peak memory grew {} MiB",
        shared.grew >> 20
    );
    // The control for the share: without it (two slots still) the probe waits behind the
    // flood's queue, or is refused as busy past server.connect_timeout.
    let unshared = run_flood(&dir, 2, 1000, 500).await;
    println!(
        "2 slots, no share per address: peak memory grew {} MiB; the probe got {:?}",
        unshared.grew >> 20,
        unshared.probe
    );
    assert!(unshared.grew < 64 << 20, "the slots bound memory alone");
    assert!(
        unshared.probe.1 > Duration::from_secs(1) || unshared.probe.0 == reason::SERVER_BUSY,
        "without a share the probe waited behind the flood: {:?}",
        unshared.probe
    );
    // The control for the slots: many of them, and memory goes with them.
    let wide = run_flood(&dir, 32, 1000, 200).await;
    println!(
        "32 slots, no share per address, 200 wrong passwords: peak memory grew {} MiB",
        wide.grew >> 20
    );
    assert!(
        wide.grew > unshared.grew + (200 << 20),
        "32 slots grew {} MiB, 2 slots {} MiB",
        wide.grew >> 20,
        unshared.grew >> 20
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
