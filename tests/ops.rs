//! Operations as an operator meets them: the HTTP endpoints (health, readiness with its
//! reasons, Prometheus metrics, cluster and clients API), `$SYS` figures, a graceful stop
//! that hands wills on and flushes the relay, and JSON logs.

mod common;

use std::time::Duration;

use common::cluster::{gossip_addr, node, three};
use common::http::{get, json};
use common::*;
use vibemq::codec::{Packet, Protocol, QoS, Will};

#[tokio::test]
async fn health_ready_metrics_and_clients() {
    let node = start(|_| {}).await;
    let http = node.http_addr().expect("HTTP enabled by default");
    assert_eq!(get(http, "/health").await.0, 200);
    let (status, body) = get(http, "/ready").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["status"], "ready");

    let mut a = RawClient::connect(node.mqtt_addr(), Protocol::V5, "alpha", true).await;
    a.subscribe("m/#", QoS::AtLeastOnce).await;
    let _b = RawClient::connect(node.mqtt_addr(), Protocol::V311, "bravo", true).await;
    a.publish("m/x", b"1", QoS::AtLeastOnce, false, 1).await;
    let _ = a.recv().await;
    let _ = a.recv().await;

    let (status, text) = get(http, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "vibemq_connections 2",
        "vibemq_messages_received_total{qos=\"1\"} 1",
        "vibemq_messages_sent_total{qos=\"1\"} 1",
        "vibemq_subscription_filters 1",
        "vibemq_messages_dropped_total{reason=\"queue_full\"} 0",
        "# TYPE vibemq_retained_messages gauge",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }

    let (_, body) = get(http, "/api/v1/clients?per_page=1&page=2").await;
    let v = json(&body);
    assert_eq!(v["total"], 2);
    assert_eq!(v["clients"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["clients"][0]["client_id"], "bravo",
        "sorted by client id, second page"
    );
    assert_eq!(v["clients"][0]["protocol"], "3.1.1");
    let (_, body) = get(http, "/api/v1/clients").await;
    let v = json(&body);
    assert_eq!(v["clients"][0]["client_id"], "alpha");
    assert_eq!(v["clients"][0]["subscriptions"], 1);
    assert_eq!(v["clients"][0]["protocol"], "5.0");
    let (_, body) = get(http, "/api/v1/cluster").await;
    assert_eq!(json(&body)["enabled"], false);
}

/// Waits (bounded by `limit`) until `/ready` at `http` answers `status`; the last body.
async fn wait_ready_status(http: std::net::SocketAddr, status: u16, limit: Duration) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (now, body) = get(http, "/ready").await;
        if now == status {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/ready did not answer {status} within {limit:?}: {now} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_seeded_node_waits_to_join_then_serves_alone_after_the_join_timeout() {
    // A seed nobody answers at: not ready while the join timeout (10 s by default) runs.
    let lonely = node("lonely", &["127.0.0.1:9".to_string()], |_| {}).await;
    let (status, body) = get(lonely.http_addr().unwrap(), "/ready").await;
    assert_eq!(status, 503);
    let v = json(&body);
    assert_eq!(v["status"], "not ready");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("cluster.join_timeout_ms"),
        "{v}"
    );
    assert_eq!(v["node_id"], "lonely");
    // The issue's case: a node whose only seed is its own gossip address (a headless service
    // with one pod) is ready once its join timeout has passed, and serves MQTT.
    let port = common::process::free_port();
    let own = format!("127.0.0.1:{port}");
    let alone = node("alone", std::slice::from_ref(&own), |c| {
        c.cluster.gossip_addr = own.parse().unwrap();
        c.cluster.join_timeout_ms = 300;
    })
    .await;
    let body = wait_ready_status(alone.http_addr().unwrap(), 200, WAIT).await;
    assert_eq!(json(&body)["peers_connected"], 0, "{body}");
    let mut c = RawClient::connect(alone.mqtt_addr(), Protocol::V5, "served", true).await;
    c.subscribe("alone/#", QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn joining_makes_a_node_ready_and_it_stays_ready_as_the_last_one_left() {
    let first = node("first", &[], |_| {}).await;
    // A join timeout far beyond the test: only linking can make it ready.
    let second = node("second", &[gossip_addr(&first)], |c| {
        c.cluster.join_timeout_ms = 3_600_000;
    })
    .await;
    let http = second.http_addr().unwrap();
    wait_ready_status(http, 200, WAIT).await;
    // The other node goes (a scale-down, a drain): the survivor keeps serving, or the load
    // balancer would have no endpoint left.
    first.shutdown(Duration::from_secs(5)).await;
    let cluster = second.cluster().unwrap().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cluster.live_members() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the survivor still sees the other node"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get(http, "/ready").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_api_and_metrics_show_members_and_links() {
    let [n1, _n2, _n3] = three().await;
    let http = n1.http_addr().unwrap();
    let v = json(&get(http, "/api/v1/cluster").await.1);
    let members = v["members"].as_array().unwrap();
    let ids: Vec<&str> = members
        .iter()
        .map(|m| m["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["node1", "node2", "node3"]);
    for m in &members[1..] {
        assert_eq!(m["status"], "connected");
        assert_eq!(m["link"], "up");
        assert!(m["generation"].as_u64().unwrap() > 0);
        assert!(m["peer_addr"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    // No secret here: said in the API, the metrics (and the log at start).
    assert_eq!(v["secret"], false);
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("cluster.secret"),
        "{v}"
    );
    let text = get(http, "/metrics").await.1;
    for needle in [
        "vibemq_cluster_unauthenticated 1",
        "vibemq_ready 1",
        "vibemq_cluster_members 2",
        "vibemq_cluster_links_up 2",
        "vibemq_cluster_link_up{peer=\"node2\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[tokio::test]
async fn sys_topics_carry_the_figures_mosquitto_users_know() {
    let node = start(|c| c.mqtt.sys_interval = 1).await;
    let mut s = RawClient::connect(node.mqtt_addr(), Protocol::V311, "watcher", true).await;
    s.subscribe("$SYS/broker/#", QoS::AtMostOnce).await;
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 11 {
        let m = s.recv_publish().await;
        assert!(m.retain, "the first copy of each figure is retained");
        seen.insert(
            m.topic.clone(),
            String::from_utf8(m.payload.to_vec()).unwrap(),
        );
    }
    assert_eq!(
        seen["$SYS/broker/version"],
        format!("vibemq {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"));
    // The next round counts the watcher itself.
    let clients = loop {
        let m = s.recv_publish().await;
        if m.topic == "$SYS/broker/clients/connected" {
            break String::from_utf8(m.payload.to_vec()).unwrap();
        }
    };
    assert_eq!(clients, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_hands_wills_to_other_nodes_and_is_seen_as_leaving() {
    let [n1, n2, n3] = three().await;
    let mut watcher = RawClient::connect(n2.mqtt_addr(), Protocol::V311, "watcher", true).await;
    watcher.subscribe("wills/#", QoS::AtLeastOnce).await;
    watcher
        .subscribe("$SYS/vibemq/cluster/events", QoS::AtMostOnce)
        .await;
    common::cluster::wait_route(&n1, "wills/x", 1).await;
    let mut c = connect_packet(Protocol::V5, "device", true);
    c.will = Some(Will {
        topic: "wills/device".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    let (mut device, _) = RawClient::connect_with(n1.mqtt_addr(), c).await;
    n1.shutdown(Duration::from_secs(5)).await;
    // Other nodes serve on: the client is told to use one of them.
    assert_eq!(
        device.expect_closed().await,
        Some(vibemq::codec::reason::USE_ANOTHER_SERVER)
    );
    // The will went out over the relay before node1 stopped, and node2 saw node1 leave.
    let mut will = None;
    let mut left = false;
    while will.is_none() || !left {
        match watcher.recv().await {
            Packet::Publish(p) if p.topic == "wills/device" => will = Some(p),
            Packet::Publish(p) if p.topic.starts_with("$SYS") => {
                let text = String::from_utf8_lossy(&p.payload).to_string();
                left |= text.contains(r#""event":"left""#) && text.contains(r#""node":"node1""#);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(&will.unwrap().payload[..], b"gone");
    drop(n3);
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    use std::process::Stdio;
    let port = common::process::free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vibemq"))
        .args([
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--http-bind",
            "127.0.0.1:0",
            "--log-format",
            "json",
            // Under any open-file limit: no start-up warning about it comes first.
            "--max-connections",
            "1000",
        ])
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stderr.take().unwrap()));
    // Every line is one JSON object, up to the one that says the node listens (before it
    // may come "raised the open-file limit", where the soft limit was below the hard one).
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("a log line")
            .unwrap()
            .expect("the node logs until it listens");
        let v = json(&line);
        let message = v["fields"]["message"].as_str().unwrap().to_string();
        if message.contains("listening") {
            assert_eq!(v["level"], "INFO", "{line}");
            break;
        }
        seen.push(line);
        assert!(seen.len() < 5, "no `listening` line: {seen:?}");
    }
    child.kill().await.unwrap();
}

#[tokio::test]
async fn the_admin_api_and_protected_metrics_require_the_token() {
    let node = common::start(|c| {
        c.http.api_token = "s3cret-token".into();
        c.http.protect_metrics = true;
    })
    .await;
    let http = node.http_addr().unwrap();
    for path in ["/api/v1/cluster", "/api/v1/clients", "/metrics"] {
        assert_eq!(get(http, path).await.0, 401, "{path} without the token");
        let wrong =
            common::http::get_with(http, path, &["Authorization: Bearer s3cret-toke"]).await;
        assert_eq!(wrong.0, 401, "{path} with a wrong token");
        let right =
            common::http::get_with(http, path, &["Authorization: Bearer s3cret-token"]).await;
        assert_eq!(right.0, 200, "{path} with the token");
    }
    // Probes never need it.
    assert_eq!(get(http, "/health").await.0, 200);
    assert_eq!(get(http, "/ready").await.0, 200);
}
