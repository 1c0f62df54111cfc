//! Cluster nodes as real `vibemq` processes, started from the shipped config/nodeN.toml (ports,
//! seeds, secret and a short gossip interval overridden through VIBEMQ_* variables), which a
//! test can kill -9, restart, freeze (SIGSTOP) and thaw (SIGCONT), and whose metrics it reads
//! over HTTP; plus `vibemq-bench` runs whose JSON summary counts what was sent, acknowledged,
//! delivered, lost and duplicated.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::process::{free_port, run};

pub const LIMIT: Duration = Duration::from_secs(20);
pub const SECRET: &str = "dmliZW1xLXByb2Nlc3MtdGVzdC1zZWNyZXQtMzJiISE=";

pub struct ProcessNode {
    pub n: usize,
    pub mqtt: u16,
    pub gossip: u16,
    pub peer: u16,
    pub http: u16,
    pub seed: u16,
    /// Extra VIBEMQ_* settings this node runs with (kept for restarts).
    pub env: Vec<(String, String)>,
    /// Its store's directory (config/nodeN.toml turns persistence on), its own for this test
    /// and kept across restarts.
    pub data: std::path::PathBuf,
    pub child: Child,
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

impl ProcessNode {
    fn spawn_with(
        n: usize,
        ports: [u16; 4],
        seed: u16,
        env: Vec<(String, String)>,
        data: std::path::PathBuf,
    ) -> ProcessNode {
        let [mqtt, gossip, peer, http] = ports;
        ProcessNode {
            n,
            mqtt,
            gossip,
            peer,
            http,
            seed,
            child: Self::spawn_child(n, ports, seed, &env, &data),
            env,
            data,
        }
    }

    /// The process of node `n` on `ports`, its store in `data`.
    fn spawn_child(
        n: usize,
        ports: [u16; 4],
        seed: u16,
        env: &[(String, String)],
        data: &std::path::Path,
    ) -> Child {
        let [mqtt, gossip, peer, http] = ports;
        let config = format!("{}/config/node{n}.toml", env!("CARGO_MANIFEST_DIR"));
        // TEST_NODE_LOG=info (or debug) shows what the nodes did when a test fails.
        let log_level = std::env::var("TEST_NODE_LOG").unwrap_or_else(|_| "warn".into());
        Command::new(env!("CARGO_BIN_EXE_vibemq"))
            .args(["--config", &config, "--log-level", &log_level])
            .env("VIBEMQ_SERVER_BIND", format!("127.0.0.1:{mqtt}"))
            .env("VIBEMQ_HTTP_BIND", format!("127.0.0.1:{http}"))
            .env("VIBEMQ_CLUSTER_GOSSIP_ADDR", format!("127.0.0.1:{gossip}"))
            .env("VIBEMQ_CLUSTER_PEER_ADDR", format!("127.0.0.1:{peer}"))
            .env(
                "VIBEMQ_CLUSTER_SEEDS",
                if seed == 0 {
                    String::new()
                } else {
                    format!("127.0.0.1:{seed}")
                },
            )
            .env("VIBEMQ_CLUSTER_SECRET", SECRET)
            .env("VIBEMQ_CLUSTER_GOSSIP_INTERVAL_MS", "100")
            .env("VIBEMQ_PERSISTENCE_DIR", data)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start vibemq")
    }

    /// Node `n` joining through the gossip port `seed` (0: the first node), listening.
    pub async fn start(n: usize, seed: u16) -> ProcessNode {
        Self::start_with(n, seed, free_port(), Vec::new()).await
    }

    /// As `start`, with the peer port given (a proxy may stand in front of it) and extra
    /// VIBEMQ_* settings.
    pub async fn start_with(
        n: usize,
        seed: u16,
        peer: u16,
        env: Vec<(String, String)>,
    ) -> ProcessNode {
        let ports = [free_port(), free_port(), peer, free_port()];
        // Named by the node's MQTT port: unique among the nodes running at once.
        let data = std::env::temp_dir().join(format!(
            "vibemq-node{n}-{}-{}",
            std::process::id(),
            ports[0]
        ));
        let _ = std::fs::remove_dir_all(&data);
        let node = ProcessNode::spawn_with(n, ports, seed, env, data);
        node.wait_listening().await;
        node
    }

    pub async fn wait_listening(&self) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.mqtt))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node{} did not start",
                self.n
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The same node started again (a new run: new generation, same addresses).
    pub async fn restart(&mut self) {
        self.kill9().await;
        let ports = [self.mqtt, self.gossip, self.peer, self.http];
        self.child = Self::spawn_child(self.n, ports, self.seed, &self.env, &self.data);
        self.wait_listening().await;
    }

    /// A node stopped with `kill9` started again on its addresses and store (a new run).
    pub async fn start_again(&mut self) {
        let ports = [self.mqtt, self.gossip, self.peer, self.http];
        self.child = Self::spawn_child(self.n, ports, self.seed, &self.env, &self.data);
        self.wait_listening().await;
    }

    pub async fn kill9(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reaped");
    }

    /// SIGSTOP: the process stops dead (a VM pause, a long GC); its sockets stay open.
    /// Returns once every thread of it is stopped: on a loaded machine a thread can run on
    /// for a moment after the signal is sent.
    pub async fn freeze(&self) {
        self.signal("-STOP").await;
        let pid = self.child.id().expect("running");
        let deadline = tokio::time::Instant::now() + LIMIT;
        while !all_threads_stopped(pid) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node{} did not stop",
                self.n
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// SIGCONT after `freeze`.
    pub async fn thaw(&self) {
        self.signal("-CONT").await;
    }

    async fn signal(&self, which: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill")
            .args([which, &pid])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill {which} {pid}");
    }

    pub fn port(&self) -> String {
        self.mqtt.to_string()
    }

    /// Three nodes (node2 and node3 joining through node1) with `env`, all linked.
    pub async fn three(env: Vec<(String, String)>) -> [ProcessNode; 3] {
        let n1 = Self::start_with(1, 0, free_port(), env.clone()).await;
        let n2 = Self::start_with(2, n1.gossip, free_port(), env.clone()).await;
        let n3 = Self::start_with(3, n1.gossip, free_port(), env).await;
        for n in [&n1, &n2, &n3] {
            n.wait_linked(2).await;
        }
        [n1, n2, n3]
    }

    /// The MQTT address, for raw clients.
    pub fn addr(&self) -> SocketAddr {
        self.mqtt_addr().parse().unwrap()
    }

    pub fn mqtt_addr(&self) -> String {
        format!("127.0.0.1:{}", self.mqtt)
    }

    pub fn http_addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.http).parse().unwrap()
    }

    /// The value of a metric (summed over its labels; a counter's `_total` sample) in
    /// /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        super::http::metric(self.http_addr(), name).await
    }

    /// Node `n` (joining through `seed`, 0: first) whose relay port is reached only through a
    /// `CutProxy` the test can cut or tamper with; `env` as for `start_with`.
    pub async fn start_behind_proxy(
        n: usize,
        seed: u16,
        mut env: Vec<(String, String)>,
    ) -> (ProcessNode, super::proxy::CutProxy) {
        let peer = free_port();
        let proxy =
            super::proxy::CutProxy::start(format!("127.0.0.1:{peer}").parse().unwrap()).await;
        env.push((
            "VIBEMQ_CLUSTER_PEER_ADVERTISE_ADDR".to_string(),
            proxy.addr.to_string(),
        ));
        (ProcessNode::start_with(n, seed, peer, env).await, proxy)
    }

    /// Waits until `metric` exceeds `floor`; `what` says what that means when it does not.
    pub async fn wait_metric_above(&self, metric: &str, floor: f64, what: &str) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while self.metric(metric).await <= floor {
            assert!(
                tokio::time::Instant::now() < deadline,
                "node{}: {what} ({metric} stayed at {floor})",
                self.n
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until this node has `count` delivering links.
    pub async fn wait_linked(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let (status, body) = super::http::get(self.http_addr(), "/api/v1/cluster").await;
            if status == 200 {
                let v = super::http::json(&body);
                let up = v["members"]
                    .as_array()
                    .map_or(0, |m| m.iter().filter(|m| m["link"] == "up").count());
                if up >= count {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node{} did not link to {count} peers",
                self.n
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Fails unless a vibemq-bench summary shows messages acknowledged, none of them lost and no
/// duplicate.
pub fn assert_nothing_acknowledged_lost(summary: &serde_json::Value, what: &str) {
    let n = |k: &str| {
        summary[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {summary}"))
    };
    assert!(
        n("acked") > 0,
        "{what}: nothing was acknowledged: {summary}"
    );
    assert_eq!(
        n("lost_acked"),
        0,
        "{what}: acknowledged messages lost: {summary}"
    );
    assert_eq!(n("duplicates"), 0, "{what}: duplicates: {summary}");
}

/// Runs vibemq-bench with `args` (plus `--json`) within `limit`; returns its summary.
pub async fn bench(args: &[&str], limit: Duration) -> serde_json::Value {
    let child = Command::new(env!("CARGO_BIN_EXE_vibemq-bench"))
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start vibemq-bench");
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("vibemq-bench {args:?} did not finish within {limit:?}"))
        .expect("wait");
    assert!(
        out.status.success(),
        "vibemq-bench {args:?}: {}",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().expect("a summary line");
    super::http::json(last)
}

/// Publishes probes on `from` until `to` has received one from a peer: `from` knows `to`'s
/// route for `topic`.
pub async fn wait_routed(from: &ProcessNode, to: &ProcessNode, topic: &str) {
    let port = from.port();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while to.metric("vibemq_cluster_messages_from_peers").await == 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node{} never routed {topic} to node{}",
            from.n,
            to.n
        );
        let probe = ["-p", &port, "-q", "1", "-t", topic, "-m", "probe"];
        run("mosquitto_pub", &probe, LIMIT).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// QoS 1 from `from` (two publishers, 300 msg/s) to a subscriber on `to` for `secs`
/// seconds, in the background: vibemq-bench's summary (sent, acknowledged, delivered, lost).
pub fn qos1_pubsub(
    from: &ProcessNode,
    to: &ProcessNode,
    topic: &str,
    secs: u64,
) -> tokio::task::JoinHandle<serde_json::Value> {
    let (pub_host, sub_host) = (from.mqtt_addr(), to.mqtt_addr());
    let (topic, sub_topic) = (format!("{topic}/%i"), format!("{topic}/+"));
    let duration = secs.to_string();
    tokio::spawn(async move {
        bench(
            &[
                "pubsub",
                "--pub-host",
                &pub_host,
                "--sub-host",
                &sub_host,
                "--publishers",
                "2",
                "--topic",
                &topic,
                "--sub-topic",
                &sub_topic,
                "--qos",
                "1",
                "--rate",
                "300",
                "--duration",
                &duration,
                "--drain",
                "30",
            ],
            Duration::from_secs(120),
        )
        .await
    })
}

/// vibemq-bench publishing on `node` with these extra arguments, run in the background.
pub fn load(node: &ProcessNode, extra: &[&str]) -> tokio::task::JoinHandle<serde_json::Value> {
    load_on(&[node], extra)
}

/// As `load`, its publishers spread over `nodes`.
pub fn load_on(
    nodes: &[&ProcessNode],
    extra: &[&str],
) -> tokio::task::JoinHandle<serde_json::Value> {
    let hosts: Vec<String> = nodes.iter().map(|n| n.mqtt_addr()).collect();
    let mut args: Vec<String> = ["pub", "--host", &hosts.join(","), "--drain", "0"]
        .iter()
        .map(|a| a.to_string())
        .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bench(&args, Duration::from_secs(90)).await
    })
}

pub fn acked_by_publisher(summary: &serde_json::Value) -> Vec<u64> {
    summary["acked_by_publisher"]
        .as_array()
        .unwrap_or_else(|| panic!("acknowledged per publisher in {summary}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// Whether every thread of process `pid` is stopped (state `T` in /proc).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    })
}
