//! Three processes of the real `vibemq` binary, started from the shipped config/nodeN.toml
//! (ports, seeds, secret and a short gossip interval overridden through VIBEMQ_* variables),
//! driven with mosquitto_pub and mosquitto_sub: cross-node QoS 0/1/2 and wildcards for
//! MQTT 3.1.1 and 5.0, retained messages on every node, `kill -9` of a node with traffic
//! still flowing between the others, and the killed node restarted and rejoining.

mod common;

use std::time::Duration;

use common::nodes::{LIMIT, ProcessNode, bench};
use common::process::{run, spawn};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

async fn three() -> [ProcessNode; 3] {
    let n1 = ProcessNode::start(1, 0).await;
    let n2 = ProcessNode::start(2, n1.gossip).await;
    let n3 = ProcessNode::start(3, n1.gossip).await;
    [n1, n2, n3]
}

/// A live mosquitto_sub printing "topic qos retain payload" lines.
struct LiveSub {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl LiveSub {
    fn start(node: &ProcessNode, version: &str, filter: &str, qos: &str) -> LiveSub {
        let port = node.port();
        let args = [
            "-p",
            port.as_str(),
            "-V",
            version,
            "-t",
            filter,
            "-q",
            qos,
            "-F",
            "%t %q %r %p",
        ];
        let mut child = spawn("mosquitto_sub", &args);
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        LiveSub { child, lines }
    }

    async fn next(&mut self) -> String {
        tokio::time::timeout(LIMIT, self.lines.next_line())
            .await
            .expect("a message in time")
            .unwrap()
            .expect("open")
    }

    /// Waits for a `$SYS/vibemq/cluster/events` line reporting `event` for `node`.
    async fn wait_event(&mut self, event: &str, node: &str) {
        let (event_field, node_field) = (
            format!(r#""event":"{event}""#),
            format!(r#""node":"{node}""#),
        );
        let seen = async {
            loop {
                let line = self.next().await;
                if line.contains(&event_field) && line.contains(&node_field) {
                    return;
                }
            }
        };
        tokio::time::timeout(LIMIT, seen)
            .await
            .unwrap_or_else(|_| panic!("no {event} event for {node}"));
    }

    /// Publishes `probe_topic` on `via` until this subscriber sees it: the route is in place.
    async fn wait_routed(&mut self, via: &ProcessNode, version: &str, probe_topic: &str) {
        let probe = async {
            loop {
                publish(via, version, &["-t", probe_topic, "-m", "probe"]).await;
                if let Ok(Ok(Some(line))) =
                    tokio::time::timeout(Duration::from_millis(300), self.lines.next_line()).await
                {
                    assert!(line.starts_with(probe_topic), "unexpected {line}");
                    return;
                }
            }
        };
        tokio::time::timeout(LIMIT, probe)
            .await
            .expect("route in place in time");
        // Drain probes still in flight.
        while let Ok(Ok(Some(_))) =
            tokio::time::timeout(Duration::from_millis(300), self.lines.next_line()).await
        {}
    }
}

impl Drop for LiveSub {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn publish(node: &ProcessNode, version: &str, rest: &[&str]) {
    let port = node.port();
    let mut args = vec!["-p", port.as_str(), "-V", version];
    args.extend_from_slice(rest);
    run("mosquitto_pub", &args, LIMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_behave_as_one_broker_for_mosquitto_clients() {
    let [n1, n2, n3] = three().await;
    for version in ["mqttv311", "mqttv5"] {
        let mut sub = LiveSub::start(&n1, version, &format!("{version}/+/data/#"), "2");
        sub.wait_routed(&n2, version, &format!("{version}/probe/data"))
            .await;
        // (node, topic under the version, payload, QoS): the c/other one matches no filter.
        let sends = [
            (&n2, "a/data", "q0", "0"),
            (&n2, "b/data/x", "q1", "1"),
            (&n3, "c/data", "q2", "2"),
        ];
        let more = [(&n3, "c/other", "no", "1"), (&n2, "d/data", "last", "1")];
        for (node, topic, payload, qos) in sends.into_iter().chain(more) {
            publish(
                node,
                version,
                &[
                    "-t",
                    &format!("{version}/{topic}"),
                    "-m",
                    payload,
                    "-q",
                    qos,
                ],
            )
            .await;
        }
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(sub.next().await);
        }
        got.sort();
        let want = [
            format!("{version}/a/data 0 0 q0"),
            format!("{version}/b/data/x 1 0 q1"),
            format!("{version}/c/data 2 0 q2"),
            format!("{version}/d/data 1 0 last"),
        ];
        assert_eq!(got, want, "{version}");
    }

    // Retained on node2: a later subscriber on node1 and on node3 gets it.
    publish(
        &n2,
        "mqttv311",
        &["-t", "config/site", "-m", "v1", "-r", "-q", "1"],
    )
    .await;
    // Replication is asynchronous: each node has it within a bounded time, not at once.
    for node in [&n1, &n3] {
        let port = node.port();
        let args = [
            "-p",
            port.as_str(),
            "-t",
            "config/site",
            "-C",
            "1",
            "-W",
            "1",
            "-F",
            "%t %r %p",
        ];
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let out = tokio::process::Command::new("mosquitto_sub")
                .args(args)
                .output();
            let out = tokio::time::timeout(LIMIT, out)
                .await
                .expect("in time")
                .expect("runs");
            let text = String::from_utf8_lossy(&out.stdout);
            if !text.trim().is_empty() {
                assert_eq!(text.trim(), "config/site 1 v1", "node{}", node.n);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node{} never got the retained message",
                node.n
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_does_not_stop_the_others_and_rejoins_after_restart() {
    let [n1, n2, mut n3] = three().await;
    let mut events = LiveSub::start(&n1, "mqttv311", "$SYS/vibemq/cluster/events", "0");
    // QoS 1 from node2 and from node3 (the one killed) to a subscriber on node1, counted by
    // vibemq-bench; node3 is killed with traffic flowing both ways and started again.
    let hosts = format!("{},127.0.0.1:{}", n2.mqtt_addr(), n3.mqtt);
    let sub_host = n1.mqtt_addr();
    let args = [
        "pubsub",
        "--pub-host",
        &hosts,
        "--sub-host",
        &sub_host,
        "--publishers",
        "2",
        "--topic",
        "k/%i",
        "--sub-topic",
        "k/+",
        "--qos",
        "1",
        "--rate",
        "100",
        "--duration",
        "8",
        "--drain",
        "10",
    ]
    .map(String::from);
    let load = tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bench(&args, Duration::from_secs(60)).await
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    n3.kill9().await;
    events.wait_event("failed", "node3").await;
    n3.restart().await;
    events.wait_event("joined", "node3").await;
    let summary = load.await.unwrap();
    println!("kill -9 of node3 under load: {summary}");
    let by = |key: &str, p: usize| summary[key][p].as_u64().unwrap();
    // Every message node2 acknowledged reached node1, none twice.
    assert!(by("acked_by_publisher", 0) > 500, "{summary}");
    assert_eq!(by("lost_acked_by_publisher", 0), 0, "{summary}");
    assert_eq!(summary["duplicates"], 0, "{summary}");
    // node3 acknowledged messages until it died; the ones it had not yet sent on died with it
    // (in memory only until persistence): a few milliseconds' worth at most.
    assert!(by("acked_by_publisher", 1) > 100, "{summary}");
    assert!(by("lost_acked_by_publisher", 1) <= 20, "{summary}");

    // The restarted node serves subscribers again: everything node1 and node2 acknowledge
    // for a subscriber on node3 arrives.
    let mut sub3 = LiveSub::start(&n3, "mqttv311", "k/#", "1");
    sub3.wait_routed(&n1, "mqttv311", "k/probe3").await;
    drop(sub3);
    let hosts = format!("{},{}", n1.mqtt_addr(), n2.mqtt_addr());
    let summary = bench(
        &[
            "pubsub",
            "--pub-host",
            &hosts,
            "--sub-host",
            &n3.mqtt_addr(),
            "--publishers",
            "2",
            "--topic",
            "back/%i",
            "--sub-topic",
            "back/+",
            "--qos",
            "1",
            "--rate",
            "200",
            "--duration",
            "2",
        ],
        Duration::from_secs(60),
    )
    .await;
    println!("to the restarted node: {summary}");
    assert!(summary["acked"].as_u64().unwrap() > 500, "{summary}");
    assert_eq!(summary["lost_acked"], 0, "{summary}");
    assert_eq!(summary["duplicates"], 0, "{summary}");
}
