//! In-process cluster nodes on loopback with short gossip intervals, so a cluster forms in
//! well under a second; and waits on what each node believes.

use std::time::Duration;

use vibemq::Node;

use super::WAIT;

/// A cluster node named `id` joining through `seeds` (gossip addresses).
pub async fn node(id: &str, seeds: &[String], edit: impl FnOnce(&mut vibemq::Config)) -> Node {
    super::start(|c| {
        c.cluster.enabled = true;
        c.cluster.node_id = id.into();
        c.cluster.gossip_addr = "127.0.0.1:0".parse().unwrap();
        c.cluster.peer_addr = "127.0.0.1:0".parse().unwrap();
        c.cluster.seeds = seeds.to_vec();
        c.cluster.gossip_interval_ms = 100;
        c.cluster.failure_max_interval_ms = 2000;
        edit(c);
    })
    .await
}

pub fn gossip_addr(node: &Node) -> String {
    node.cluster()
        .expect("cluster enabled")
        .gossip_addr
        .to_string()
}

/// Three nodes, the second and third seeded with the first, all linked to each other.
pub async fn three() -> [Node; 3] {
    let n1 = node("node1", &[], |_| {}).await;
    let seed = [gossip_addr(&n1)];
    let n2 = node("node2", &seed, |_| {}).await;
    let n3 = node("node3", &seed, |_| {}).await;
    let nodes = [n1, n2, n3];
    for n in &nodes {
        wait_linked(n, 2).await;
    }
    nodes
}

/// Waits until `node` has `count` peer links up.
pub async fn wait_linked(node: &Node, count: usize) {
    let cluster = node.cluster().expect("cluster enabled").clone();
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let up = cluster.peers().iter().filter(|p| p.connected).count();
        if up == count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: {up} of {count} peer links up: {:?}",
            cluster.node_id,
            cluster.peers()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `node` routes `topic` to `peers` other nodes.
pub async fn wait_route(node: &Node, topic: &str, peers: usize) {
    let cluster = node.cluster().expect("cluster enabled").clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    while cluster.remote.match_topic(topic).nodes.len() != peers {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: no route for {topic} to {peers} nodes",
            cluster.node_id
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
