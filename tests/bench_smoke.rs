//! A seconds-long smoke run of vibemq-bench against the vibemq binary, so the load generator
//! (and its JSON contract that scripts/bench.sh reads) keeps working. The full comparison with
//! mosquitto is scripts/bench.sh, not a test.

mod common;

use std::time::Duration;

use common::process::{BrokerProcess, run};

async fn bench(args: &[&str]) -> serde_json::Value {
    let out = run(
        env!("CARGO_BIN_EXE_vibemq-bench"),
        args,
        Duration::from_secs(60),
    )
    .await;
    let last = out.lines().last().expect("a JSON line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {last}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_conn_and_route_modes_report_what_scripts_read() {
    let b = BrokerProcess::start(&["--max-queued-messages", "1000000"]).await;
    let host = b.addr.to_string();
    let v = bench(&[
        "pubsub",
        "--host",
        &host,
        "--qos",
        "1",
        "--publishers",
        "3",
        "--topic",
        "s/%i",
        "--sub-topic",
        "s/+",
        "--count",
        "2000",
        "--duration",
        "10",
        "--json",
    ])
    .await;
    assert_eq!(v["sent"], 6000);
    assert_eq!(v["expected"], 6000);
    assert_eq!(v["received"], 6000);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["duplicates"], 0);
    assert!(v["msgs_per_sec"].as_f64().unwrap() > 0.0);
    for q in ["p50", "p90", "p99", "max"] {
        assert!(v["latency_us"][q].as_u64().unwrap() > 0, "{q}");
    }
    // One publisher, three subscribers: every delivery counted.
    let v = bench(&[
        "pubsub",
        "--host",
        &host,
        "--subscribers",
        "3",
        "--topic",
        "f",
        "--count",
        "500",
        "--json",
    ])
    .await;
    assert_eq!(
        (
            v["sent"].as_u64(),
            v["received"].as_u64(),
            v["lost"].as_u64()
        ),
        (Some(500), Some(1500), Some(0))
    );
    let v = bench(&[
        "conn",
        "--host",
        &host,
        "--clients",
        "50",
        "--duration",
        "0.5",
        "--json",
    ])
    .await;
    assert_eq!(v["connected"], 50);
    let v = bench(&["route", "--host", &host, "--rounds", "3", "--json"]).await;
    assert_eq!(v["failed"], 0);
}
