//! The built `vibemq` binary driven by mosquitto_pub and mosquitto_sub (Debian's
//! mosquitto-clients) over MQTT 3.1.1 and 5.0: QoS 0/1/2, wildcards, retained, will.
//! Subscriptions are made ready deterministically: a persistent session is created with
//! `mosquitto_sub -c -E` (exit once subscribed), messages are published, then read back.

mod common;

use std::time::Duration;

use common::process::{BrokerProcess, run, spawn};
use tokio::io::{AsyncBufReadExt, BufReader};

const LIMIT: Duration = Duration::from_secs(15);
const VERSIONS: [&str; 2] = ["mqttv311", "mqttv5"];

/// `-h 127.0.0.1 -p PORT -V VERSION` followed by `rest`.
fn args(b: &BrokerProcess, version: &str, rest: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = ["-h", "127.0.0.1", "-p", &b.port(), "-V", version]
        .map(String::from)
        .to_vec();
    all.extend(rest.iter().map(|s| s.to_string()));
    all
}

async fn mosquitto(program: &str, b: &BrokerProcess, version: &str, rest: &[&str]) -> String {
    let all = args(b, version, rest);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    run(program, &all, LIMIT).await
}

/// Creates a persistent subscription for `id` and returns once the broker acknowledged it.
async fn subscribe_persistent(b: &BrokerProcess, version: &str, id: &str, filter: &str, qos: &str) {
    mosquitto(
        "mosquitto_sub",
        b,
        version,
        &["-c", "-i", id, "-t", filter, "-q", qos, "-E"],
    )
    .await;
}

/// Reconnects `id` and prints `count` messages as "topic retain qos payload".
async fn receive(
    b: &BrokerProcess,
    version: &str,
    id: &str,
    filter: &str,
    qos: &str,
    count: usize,
) -> Vec<String> {
    let count = count.to_string();
    let rest = [
        "-c",
        "-i",
        id,
        "-t",
        filter,
        "-q",
        qos,
        "-C",
        &count,
        "-W",
        "10",
        "-F",
        "%t %r %q %p",
    ];
    let out = mosquitto("mosquitto_sub", b, version, &rest).await;
    out.lines().map(str::to_string).collect()
}

async fn publish(b: &BrokerProcess, version: &str, rest: &[&str]) {
    mosquitto("mosquitto_pub", b, version, rest).await;
}

#[tokio::test]
async fn qos_1_and_2_through_persistent_sessions() {
    let b = BrokerProcess::start(&[]).await;
    for version in VERSIONS {
        let id = format!("sub-{version}");
        subscribe_persistent(&b, version, &id, "interop/#", "2").await;
        publish(&b, version, &["-t", "interop/q1", "-m", "one", "-q", "1"]).await;
        publish(&b, version, &["-t", "interop/q2", "-m", "two", "-q", "2"]).await;
        let got = receive(&b, version, &id, "interop/#", "2", 2).await;
        assert_eq!(
            got,
            ["interop/q1 0 1 one", "interop/q2 0 2 two"],
            "{version}"
        );
    }
}

#[tokio::test]
async fn qos_0_to_a_live_subscriber() {
    let b = BrokerProcess::start(&[]).await;
    for version in VERSIONS {
        let sub_args = args(&b, version, &["-t", "live/#", "-F", "%t %q %p"]);
        let sub_args: Vec<&str> = sub_args.iter().map(String::as_str).collect();
        let mut sub = spawn("mosquitto_sub", &sub_args);
        let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
        // Probe until the subscription is in place, then send the real message.
        let probe = async {
            loop {
                publish(&b, version, &["-t", "live/probe", "-m", "p"]).await;
                if let Ok(Ok(Some(line))) =
                    tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await
                {
                    assert_eq!(line, "live/probe 0 p");
                    return;
                }
            }
        };
        tokio::time::timeout(LIMIT, probe)
            .await
            .expect("subscriber ready in time");
        publish(&b, version, &["-t", "live/data", "-m", "zero"]).await;
        let line = loop {
            let line = tokio::time::timeout(LIMIT, lines.next_line())
                .await
                .expect("in time")
                .unwrap()
                .unwrap();
            if line != "live/probe 0 p" {
                break line;
            }
        };
        assert_eq!(line, "live/data 0 zero", "{version}");
        sub.kill().await.unwrap();
    }
}

#[tokio::test]
async fn wildcards_route_only_matching_topics() {
    let b = BrokerProcess::start(&[]).await;
    for version in VERSIONS {
        let id = format!("wild-{version}");
        subscribe_persistent(&b, version, &id, "a/+/c", "1").await;
        publish(&b, version, &["-t", "a/b/d", "-m", "no", "-q", "1"]).await;
        publish(&b, version, &["-t", "a/b/c/d", "-m", "no", "-q", "1"]).await;
        publish(&b, version, &["-t", "a/x/c", "-m", "yes", "-q", "1"]).await;
        let got = receive(&b, version, &id, "a/+/c", "1", 1).await;
        assert_eq!(got, ["a/x/c 0 1 yes"], "{version}");
    }
}

#[tokio::test]
async fn retained_message_reaches_a_later_subscriber_and_is_deleted() {
    let b = BrokerProcess::start(&[]).await;
    for version in VERSIONS {
        let topic = format!("ret/{version}");
        publish(&b, version, &["-t", &topic, "-m", "kept", "-r", "-q", "1"]).await;
        let out = mosquitto(
            "mosquitto_sub",
            &b,
            version,
            &["-t", &topic, "-C", "1", "-W", "10", "-F", "%t %r %p"],
        )
        .await;
        assert_eq!(out.trim(), format!("{topic} 1 kept"));
        publish(&b, version, &["-t", &topic, "-n", "-r"]).await;
        // Nothing retained now: a subscriber with a 1 s timeout is subscribed (its debug
        // output shows the SUBACK, so the broker is up and answering) and sees no message.
        // (mosquitto_sub exits non-zero on its -W timeout, so this one is not `run`.)
        let rest = [
            "-d",
            "-t",
            &topic,
            "-C",
            "1",
            "-W",
            "1",
            "-F",
            "MESSAGE %t %p",
        ];
        let out = tokio::process::Command::new("mosquitto_sub")
            .args(args(&b, version, &rest))
            .output();
        let out = tokio::time::timeout(LIMIT, out)
            .await
            .expect("in time")
            .expect("runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("received SUBACK"),
            "{version}: the subscriber never got subscribed: {text}"
        );
        assert!(
            !text.contains("MESSAGE "),
            "{version}: deleted retained message still delivered: {text}"
        );
    }
}

#[tokio::test]
async fn will_is_published_when_a_client_dies() {
    let b = BrokerProcess::start(&[]).await;
    for version in VERSIONS {
        let watcher = format!("watch-{version}");
        subscribe_persistent(&b, version, &watcher, "will/#", "1").await;
        let will_topic = format!("will/{version}");
        // stdbuf: mosquitto_sub's -d lines are block-buffered on a pipe otherwise.
        let rest = [
            "-t",
            "nothing",
            "-d",
            "--will-topic",
            &will_topic,
            "--will-payload",
            "died",
            "--will-qos",
            "1",
        ];
        let mut doomed_args = vec!["-oL".to_string(), "mosquitto_sub".to_string()];
        doomed_args.extend(args(&b, version, &rest));
        let doomed_args: Vec<&str> = doomed_args.iter().map(String::as_str).collect();
        let mut doomed = spawn("stdbuf", &doomed_args);
        let mut lines = BufReader::new(doomed.stdout.take().unwrap()).lines();
        let connected = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("SUBACK") {
                    return;
                }
            }
            panic!("doomed client exited before SUBACK");
        };
        tokio::time::timeout(LIMIT, connected)
            .await
            .expect("doomed client subscribed in time");
        doomed.start_kill().unwrap(); // SIGKILL: no DISCONNECT
        doomed.wait().await.unwrap();
        let got = receive(&b, version, &watcher, "will/#", "1", 1).await;
        assert_eq!(got, [format!("{will_topic} 0 1 died")], "{version}");
    }
}
