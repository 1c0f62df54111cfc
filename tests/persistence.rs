//! Persistence with the real binary, killed with SIGKILL and started again on the same
//! directory: QoS 1 and QoS 2 load counted by sequence number (every message acknowledged to
//! its publisher reaches the persistent subscriber; QoS 2 never twice), 5,000 queued messages
//! and 100 retained ones back with Session Present, a directory held by a running node, and a
//! disk that fills up or turns read-only under a running node (0x97, metrics, the node keeps
//! serving, and it recovers by itself once the disk does).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::RawClient;
use common::keeper::Keeper;
use common::nodes::{LIMIT, bench};
use common::process::{free_port, run};
use tokio::process::{Child, Command};
use vibemq::codec::{Packet, Protocol, QoS, reason};

/// A `vibemq` process with persistence on in `dir`, restartable on the same ports.
struct PersistentBroker {
    child: Child,
    mqtt: u16,
    http: u16,
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl PersistentBroker {
    async fn start(dir: &Path, env: &[(&'static str, &str)]) -> PersistentBroker {
        let env: Vec<_> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let (mqtt, http) = (free_port(), free_port());
        let broker = PersistentBroker {
            child: spawn_broker(dir, mqtt, http, &env),
            mqtt,
            http,
            dir: dir.to_path_buf(),
            env,
        };
        broker.wait_listening().await;
        broker
    }

    fn addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.mqtt).parse().unwrap()
    }

    async fn metric(&self, name: &str) -> f64 {
        let http = format!("127.0.0.1:{}", self.http).parse().unwrap();
        common::http::metric(http, name).await
    }

    /// SIGKILL, then the same node started again on the same directory and ports.
    async fn kill9_and_restart(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reaped");
        self.child = spawn_broker(&self.dir, self.mqtt, self.http, &self.env);
        self.wait_listening().await;
    }

    async fn wait_listening(&self) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while tokio::net::TcpStream::connect(self.addr()).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "vibemq did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until metric `name` satisfies `ok`; `what` says what that means when it does not.
    async fn wait_metric(&self, name: &str, what: &str, ok: impl Fn(f64) -> bool) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let v = self.metric(name).await;
            if ok(v) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {name} is {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn spawn_broker(dir: &Path, mqtt: u16, http: u16, env: &[(&'static str, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vibemq"))
        .args(["--bind", &format!("127.0.0.1:{mqtt}")])
        .args(["--http-bind", &format!("127.0.0.1:{http}")])
        .args(["--log-level", "warn"])
        .env("VIBEMQ_PERSISTENCE_ENABLED", "true")
        .env("VIBEMQ_PERSISTENCE_DIR", dir.join("data"))
        .env("VIBEMQ_MQTT_SYS_INTERVAL", "0")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start vibemq")
}

/// QoS `qos` load from four unpaced publishers (vibemq-bench) into one node, a persistent
/// subscriber taking it, the node killed with SIGKILL in the middle and started again: every
/// message a publisher was acknowledged reaches the subscriber. Returns (acknowledged,
/// duplicates).
async fn kill9_under_load(name: &str, qos: QoS) -> (u64, u64) {
    let dir = common::certs::scratch(name);
    let mut broker = PersistentBroker::start(
        &dir,
        &[
            ("VIBEMQ_MQTT_MAX_QUEUED_MESSAGES", "2000000"),
            ("VIBEMQ_MQTT_MAX_QUEUED_BYTES", "1000000000"),
        ],
    )
    .await;
    let keeper = Keeper::start(broker.addr(), "load/#", qos);
    keeper.wait_connected().await;
    broker
        .wait_metric("vibemq_subscription_filters", "keeper subscribed", |v| {
            v >= 1.0
        })
        .await;
    let addr = broker.addr().to_string();
    let q = (qos as u8).to_string();
    let args = [
        "pub",
        "--host",
        addr.as_str(),
        "--publishers",
        "4",
        "--topic",
        "load/%i",
        "--qos",
        q.as_str(),
        "--duration",
        "6",
        "--drain",
        "0",
    ];
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let load = tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bench(&args, Duration::from_secs(60)).await
    });
    // Killed while the load runs: well after it started, well before it ends.
    broker
        .wait_metric("vibemq_messages_received", "load arriving", |v| v >= 3000.0)
        .await;
    broker.kill9_and_restart().await;
    let summary = load.await.unwrap();
    let acked: Vec<u64> = summary["acked_by_publisher"]
        .as_array()
        .expect("acknowledged per publisher")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let total: u64 = acked.iter().sum();
    // Killed after 3,000 arrived: most of them acknowledged by then.
    assert!(total >= 1000, "the load ran: {summary}");
    let missing = keeper.wait_for(&acked, Duration::from_secs(30)).await;
    let seen = keeper.stop().await;
    println!(
        "QoS {q}: {total} acknowledged before the kill, {} received, {} missing, {} duplicates, sessions present after reconnects: {:?}",
        seen.counts.len(),
        missing,
        seen.duplicates(),
        seen.session_present
    );
    assert_eq!(missing, 0, "acknowledged messages lost: {summary}");
    assert!(
        seen.session_present.len() >= 2,
        "the keeper reconnected to the restarted node: {:?}",
        seen.session_present
    );
    assert!(
        seen.session_present.iter().skip(1).all(|p| *p),
        "the session was there after the restart: {:?}",
        seen.session_present
    );
    (total, seen.duplicates())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_qos1_load_loses_nothing_acknowledged() {
    // Duplicates are what MQTT allows for QoS 1 (a DUP resend of what was in flight).
    kill9_under_load("persist-kill-qos1", QoS::AtLeastOnce).await;
}

/// QoS 2: nothing lost, nothing twice. (Before a QoS 2 PUBLISH waited for its packet id to be
/// kept, a kill between the two made the restart send it again under a new id: a repeat, or a
/// loss when the new id was one the receiver still held for another message.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_qos2_load_loses_nothing_and_repeats_nothing() {
    let (_, duplicates) = kill9_under_load("persist-kill-qos2", QoS::ExactlyOnce).await;
    assert_eq!(duplicates, 0, "QoS 2 delivered a message twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_and_retained_messages_survive_kill9_with_the_session() {
    let dir = common::certs::scratch("persist-queued");
    let mut broker =
        PersistentBroker::start(&dir, &[("VIBEMQ_MQTT_MAX_QUEUED_MESSAGES", "10000")]).await;
    let port = broker.mqtt.to_string();
    // A persistent session subscribed to q/#, then offline: everything for it is queued.
    let subscribe = [
        "-p",
        &port,
        "-c",
        "-i",
        "queue-keeper",
        "-q",
        "1",
        "-t",
        "q/#",
        "-E",
    ];
    run("mosquitto_sub", &subscribe, LIMIT).await;
    // mosquitto_pub at QoS 1 exits once every PUBACK is in: all of it is acknowledged.
    let publish = format!(
        "seq 1 5000 | mosquitto_pub -p {port} -q 1 -t q/a -l && \
         for i in $(seq 1 100); do mosquitto_pub -p {port} -q 1 -r -t ret/$i -m retained-$i || exit 1; done"
    );
    run("sh", &["-c", &publish], Duration::from_secs(60)).await;
    broker.kill9_and_restart().await;

    let mut sub = common::V4Client::connect(broker.addr(), "queue-keeper", false, |_| {}).await;
    assert!(sub.ack.session_present, "session present after the restart");
    for i in 1..=5000 {
        let p = sub.next().await;
        assert_eq!(p.topic, "q/a");
        assert_eq!(
            String::from_utf8_lossy(&p.payload),
            i.to_string(),
            "queued messages in order"
        );
    }
    sub.expect_none(Duration::from_millis(300)).await;
    let retained = run(
        "mosquitto_sub",
        &["-p", &port, "-t", "ret/#", "-v", "-C", "100", "-W", "10"],
        LIMIT,
    )
    .await;
    let mut lines: Vec<_> = retained.lines().collect();
    lines.sort_by_key(|l| l[4..].split(' ').next().unwrap().parse::<u32>().unwrap());
    let expected: Vec<String> = (1..=100).map(|i| format!("ret/{i} retained-{i}")).collect();
    assert_eq!(lines, expected);
    // Delivered and acknowledged: gone from the store too.
    broker.kill9_and_restart().await;
    let mut sub = common::V4Client::connect(broker.addr(), "queue-keeper", false, |_| {}).await;
    assert!(sub.ack.session_present);
    sub.expect_none(Duration::from_millis(500)).await;
}

/// A small tmpfs mounted for one test (CI runs as root), lazily unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    async fn mount(name: &str, size: &str) -> Tmpfs {
        let dir = common::certs::scratch(name);
        let options = format!("size={size}");
        let dir_text = dir.display().to_string();
        run(
            "mount",
            &["-t", "tmpfs", "-o", &options, "tmpfs", &dir_text],
            LIMIT,
        )
        .await;
        Tmpfs(dir)
    }

    /// Remounts it read-only (`ro`) or writable (`rw`).
    async fn remount(&self, mode: &str) {
        let options = format!("remount,{mode}");
        run(
            "mount",
            &["-o", &options, &self.0.display().to_string()],
            LIMIT,
        )
        .await;
    }

    /// Fills what is left of it with a file (`dd` stops at ENOSPC).
    async fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let of = format!("of={}", filler.display());
        let _ = Command::new("dd")
            .args(["if=/dev/zero", &of, "bs=64k"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Publishes 64 KB QoS 1 messages to `topic` as an MQTT 5 client until one is answered with
/// `want` (at most 200); returns how many it took.
async fn publish_until(c: &mut RawClient, topic: &str, want: u8) -> u16 {
    let payload = vec![b'x'; 64 * 1024];
    for id in 1..=200u16 {
        c.publish(topic, &payload, QoS::AtLeastOnce, false, id)
            .await;
        match c.recv().await {
            Packet::PubAck(a) if a.reason == want => return id,
            Packet::PubAck(_) => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    panic!("no PUBACK with reason {want:#04x} in 200 publishes to {topic}");
}

/// Runs a node on `dir` expecting it to stop at start-up; its one line of error output.
async fn start_fails(dir: &Path) -> String {
    let node = Command::new(env!("CARGO_BIN_EXE_vibemq"))
        .args(["--bind", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-bind", "127.0.0.1:0"])
        // Under any open-file limit: the error is the only line (no warning about the limit).
        .args(["--max-connections", "1000"])
        .env("VIBEMQ_PERSISTENCE_ENABLED", "true")
        .env("VIBEMQ_PERSISTENCE_DIR", dir.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(LIMIT, node)
        .await
        .expect("the node stops at once")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("persistence.dir"), "{stderr}");
    stderr
}

#[tokio::test]
async fn a_directory_held_by_a_running_node_stops_a_second_one_with_one_line() {
    let dir = common::certs::scratch("persist-lock");
    let _first = PersistentBroker::start(&dir, &[]).await;
    let line = start_fails(&dir).await;
    assert!(line.contains("held by another running node"), "{line}");
}

/// Disk full under a running node: persistent writes are refused (v5 0x97; 3.1.1
/// disconnected), counted and logged, what needs no disk is served, and the store recovers by
/// itself once there is space. A read-only directory stops start-up with one line (the node
/// cannot read its sessions back and keep them): no silent start without its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_what_needs_it_serves_the_rest_and_recovers() {
    let disk = Tmpfs::mount("persist-full", "24m").await;
    std::fs::create_dir_all(disk.0.join("data")).unwrap();
    disk.remount("ro").await;
    let line = start_fails(&disk.0).await;
    assert!(line.contains("Read-only file system"), "{line}");
    disk.remount("rw").await;
    let mut broker = PersistentBroker::start(&disk.0, &[]).await;
    let port = broker.mqtt.to_string();
    let subscribe = [
        "-p", &port, "-c", "-i", "kept", "-q", "1", "-t", "q/#", "-E",
    ];
    run("mosquitto_sub", &subscribe, LIMIT).await;
    let mut publisher = RawClient::connect(broker.addr(), Protocol::V5, "p5", true).await;
    publish_until(&mut publisher, "q/before", reason::SUCCESS).await;

    // Disk full: publishes for the persistent session are refused with 0x97.
    let filler = disk.fill().await;
    publish_until(&mut publisher, "q/full", reason::QUOTA_EXCEEDED).await;
    broker
        .wait_metric("vibemq_store_failing", "store failing", |v| v == 1.0)
        .await;
    assert!(broker.metric("vibemq_store_write_errors").await >= 1.0);
    assert!(broker.metric("vibemq_publishes_refused_store").await >= 1.0);
    // What needs no disk is served: a clean subscriber gets QoS 1 messages, acknowledged.
    let mut live = RawClient::connect(broker.addr(), Protocol::V5, "live", true).await;
    assert_eq!(live.subscribe("live/#", QoS::AtLeastOnce).await, [1]);
    publisher
        .publish("live/x", b"no disk needed", QoS::AtLeastOnce, false, 900)
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubAck(a) if a.reason == reason::SUCCESS));
    assert_eq!(&live.recv_publish().await.payload[..], b"no disk needed");
    // A 3.1.1 publisher has no refusal code: it is disconnected without its PUBACK.
    let mut v3 = RawClient::connect(broker.addr(), Protocol::V311, "p3", true).await;
    v3.publish("q/v3", &[b'y'; 64 * 1024], QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(v3.expect_closed().await, None, "closed, no PUBACK");

    // Space again: the store recovers by itself and takes writes.
    std::fs::remove_file(&filler).unwrap();
    broker
        .wait_metric("vibemq_store_failing", "store recovered", |v| v == 0.0)
        .await;
    publish_until(&mut publisher, "q/after-full", reason::SUCCESS).await;

    // What was acknowledged after the recoveries is on disk.
    broker.kill9_and_restart().await;
    let args = [
        "-p", &port, "-c", "-i", "kept", "-q", "1", "-t", "q/#", "-W", "3", "-F", "%t",
    ];
    let topics = run(
        "sh",
        &["-c", &format!("mosquitto_sub {} ; true", args.join(" "))],
        LIMIT,
    )
    .await;
    for topic in ["q/before", "q/after-full"] {
        assert!(topics.lines().any(|t| t == topic), "{topic} in {topics}");
    }
}

/// Two cluster nodes from config/nodeN.toml (persistence on): a persistent session on node2
/// survives node2's kill -9, its route is advertised again by the restarted node, and a
/// message published on node1 afterwards is queued for it on node2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cluster_node_advertises_its_restored_sessions_routes() {
    use common::nodes::ProcessNode;
    let n1 = ProcessNode::start(1, 0).await;
    let mut n2 = ProcessNode::start(2, n1.gossip).await;
    n1.wait_linked(1).await;
    n2.wait_linked(1).await;
    let port2 = n2.port();
    let subscribe = [
        "-p",
        &port2,
        "-c",
        "-i",
        "cluster-keeper",
        "-q",
        "1",
        "-t",
        "c/#",
        "-E",
    ];
    run("mosquitto_sub", &subscribe, LIMIT).await;
    n2.restart().await;
    n2.wait_linked(1).await;
    n1.wait_linked(1).await;
    // Node1 forwards to node2 once it knows node2's restored route again.
    let port1 = n1.port();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while n2.metric("vibemq_cluster_messages_from_peers").await == 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node1 never routed to the restored session on node2"
        );
        let probe = ["-p", &port1, "-q", "1", "-t", "c/probe", "-m", "probe"];
        run("mosquitto_pub", &probe, LIMIT).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = ["-p", &port1, "-q", "1", "-t", "c/final", "-m", "final"];
    run("mosquitto_pub", &last, LIMIT).await;
    let receive =
        format!("mosquitto_sub -p {port2} -c -i cluster-keeper -q 1 -t 'c/#' -v -W 3; true");
    let got = run("sh", &["-c", &receive], LIMIT).await;
    assert!(got.lines().any(|l| l == "c/final final"), "{got}");
}
