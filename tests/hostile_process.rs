//! The memory side of the hostile-client attacks, measured where it is real: the resident
//! set (RSS) of a `vibemq` process, before and after each attack. Before issue 8, the
//! retained-flood SUBSCRIBE grew RSS by 1.26 GB and the deep filter aborted the process.

mod common;

use std::time::Duration;

use common::process::BrokerProcess;
use common::*;
use vibemq::codec::{Packet, Protocol, QoS};

/// Resident set size of a process, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_leave_the_process_alive_and_its_memory_bounded() {
    let broker = BrokerProcess::start(&[]).await;
    let pid = broker.child.id().expect("running");
    let addr = broker.addr;

    // 1. The 65,000-level filter, then a disconnect: refused, process alive.
    let mut deep = RawClient::connect(addr, Protocol::V311, "deep", true).await;
    deep.send(&subscribe_packet(vec!["/".repeat(65_000)], QoS::AtMostOnce))
        .await;
    assert!(matches!(deep.recv().await, Packet::SubAck(s) if s.reason_codes == [0x80]));
    drop(deep);
    probe(addr).await;

    // 2. 200 retained messages of 1 KB, then SUBSCRIBEs that repeat `#` 60,000 times and
    //    overlap five ways, twenty times over, from clients that never read.
    let mut p = RawClient::connect(addr, Protocol::V311, "p", true).await;
    retain_messages(&mut p, 200, 1024).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kb(pid);
    let mut idle = Vec::new();
    for n in 0..5 {
        let mut c = RawClient::connect(addr, Protocol::V311, &format!("flood-{n}"), true).await;
        c.send(&subscribe_packet(
            vec!["#".to_string(); 60_000],
            QoS::AtMostOnce,
        ))
        .await;
        let overlapping: Vec<String> = ["#", "r/#", "+/#", "r/+", "+/+"].map(String::from).into();
        for _ in 0..20 {
            c.send(&subscribe_packet(overlapping.clone(), QoS::AtMostOnce))
                .await;
        }
        idle.push(c);
    }
    probe(addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss_kb(pid).saturating_sub(before);
    println!("retained flood: RSS grew by {grown} kB");
    assert!(grown < 64 * 1024, "RSS grew by {grown} kB");

    // 3. An offline session offered 200 MB: held to mqtt.max_queued_bytes (16 MiB).
    let mut s = RawClient::connect(addr, Protocol::V311, "offline", false).await;
    s.subscribe("big", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let before = rss_kb(pid);
    let payload = vec![7u8; 1024 * 1024 - 64];
    for i in 1..=200u16 {
        p.publish("big", &payload, QoS::AtLeastOnce, false, i).await;
        assert!(matches!(p.recv().await, Packet::PubAck(_)));
    }
    probe(addr).await;
    let grown = rss_kb(pid).saturating_sub(before);
    println!("200 MB to an offline session: RSS grew by {grown} kB");
    assert!(grown < 96 * 1024, "RSS grew by {grown} kB");
    drop(idle);
}
