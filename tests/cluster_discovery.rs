//! Seed discovery through a real DNS server: nodes on their own loopback addresses share a
//! gossip port, one name resolves to several of them (as a Kubernetes headless service does),
//! and a node added to DNS later is found without restarting anyone.

mod common;

use common::cluster::{node, wait_linked};
use common::dns::Dnsmasq;
use common::process::free_port;

const NAME: &str = "seeds.vibemq.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_each_other_through_dns_and_re_resolve_it() {
    let ips = ["127.77.0.1", "127.77.0.2", "127.77.0.3"];
    let dns = Dnsmasq::start(&[(ips[0], NAME)]).await;
    let gossip_port = free_port();
    let seed = [format!("{NAME}:{gossip_port}")];
    let on = |ip: &str, dns: &Dnsmasq, seeds: &[String]| {
        let (ip, dns_server, seeds) = (ip.to_string(), dns.addr.to_string(), seeds.to_vec());
        move |c: &mut vibemq::Config| {
            c.cluster.gossip_addr = format!("{ip}:{gossip_port}").parse().unwrap();
            c.cluster.peer_addr = format!("{ip}:0").parse().unwrap();
            c.cluster.seeds = seeds;
            c.cluster.dns_server = dns_server;
            c.cluster.dns_refresh_interval = 1;
        }
    };
    // node1 and node2 find each other through the name (it resolves to node1).
    let n1 = node("node1", &[], on(ips[0], &dns, &seed)).await;
    let n2 = node("node2", &[], on(ips[1], &dns, &seed)).await;
    wait_linked(&n1, 1).await;
    wait_linked(&n2, 1).await;

    // node3 knows nobody and is in no seed list: it joins once DNS lists it, because the
    // others re-resolve the name and gossip with every address it has.
    let n3 = node("node3", &[], on(ips[2], &dns, &[])).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        n3.cluster().unwrap().peers().is_empty(),
        "not in DNS yet, so not found"
    );
    dns.set_records(&[(ips[0], NAME), (ips[1], NAME), (ips[2], NAME)]);
    wait_linked(&n3, 2).await;
    wait_linked(&n1, 2).await;
}
