//! Membership: follows chitchat's view of live nodes and turns it into links and routes. A node
//! that appears gets an outbound link and its gossiped routes; one that restarts (a new
//! generation) gets a fresh link; one that disappears is reported as left (it said it was
//! leaving: its routes and link go) or failed (the failure detector gave up on it: its link
//! and routes stay, suspended, holding its messages for `cluster.hold_secs` in case it comes
//! back as the same run). A node that keeps a store (its relay run outlives its process) is
//! held the same way when it leaves, and when it comes back as a new process of the same run
//! its link carries on with what it held. Each event is logged once, counted, and published on
//! `$SYS/vibemq/cluster/events`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use chitchat::{ChitchatId, NodeState};
use tokio::sync::watch;

use super::Cluster;
use super::dial;
use super::link::LinkTo;
use super::routes::parse_chunks;
use crate::broker::Metrics;

pub const KEY_PEER_ADDR: &str = "peer_addr";
pub const KEY_STATUS: &str = "status";
/// The node's relay run (see `Cluster::run`).
pub const KEY_RELAY_RUN: &str = "relay_run";
pub const KEY_ROUTES_VERSION: &str = "routes.v";
pub const KEY_ROUTES_CHUNKS: &str = "routes.n";
pub const STATUS_LEAVING: &str = "leaving";

pub fn routes_chunk_key(i: usize) -> String {
    format!("routes.{i}")
}

/// What this node last saw of another.
pub(crate) struct Known {
    generation: u64,
    /// Its relay run outlives its process (it keeps a store).
    durable: bool,
    routes_version: Option<u64>,
    leaving: bool,
    peer_addr: SocketAddr,
}

/// Runs until shutdown, applying every change of chitchat's live-node view.
pub async fn watch(
    cluster: Arc<Cluster>,
    mut live: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut known: HashMap<Arc<str>, Known> = HashMap::new();
    // One timer for the whole run: membership changes (which may come more often than it
    // ticks) must not keep resetting it.
    let mut expiry = tokio::time::interval(std::time::Duration::from_secs(1));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let snapshot = live.borrow_and_update().clone();
        apply(&cluster, &snapshot, &mut known);
        tokio::select! {
            changed = live.changed() => if changed.is_err() { break },
            _ = expiry.tick() => cluster.expire_suspended(),
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
    for (node, _) in known.drain() {
        cluster.drop_node(&node);
    }
}

/// One other node as the membership source (chitchat, or a simulation) reports it.
#[derive(Debug, Clone)]
pub(crate) struct MemberView {
    pub node_id: Arc<str>,
    pub generation: u64,
    /// Its relay run: its generation unless it keeps a store.
    pub run: u64,
    pub gossip_addr: SocketAddr,
    /// None until it has announced its relay address.
    pub peer_addr: Option<SocketAddr>,
    pub leaving: bool,
    /// Its gossiped routes, (version, route set), when they may be news to this node.
    pub routes: Option<(u64, std::collections::HashSet<String>)>,
}

fn apply(
    cluster: &Arc<Cluster>,
    snapshot: &BTreeMap<ChitchatId, NodeState>,
    known: &mut HashMap<Arc<str>, Known>,
) {
    // The newest generation of each node id (a restarted node's old one lingers until it is
    // declared dead).
    let mut newest: HashMap<&str, (&ChitchatId, &NodeState)> = HashMap::new();
    for (id, state) in snapshot {
        if *id.node_id == *cluster.node_id {
            continue;
        }
        // Not a node id any node of ours could have (a stranger on a cluster without a
        // secret): ignored.
        if !super::address::valid_node_id(&id.node_id) {
            tracing::debug!(node_id = %crate::limits::printable(&id.node_id), "gossip from a node whose id is not valid: ignored");
            continue;
        }
        let slot = newest.entry(&id.node_id).or_insert((id, state));
        if id.generation_id > slot.0.generation_id {
            *slot = (id, state);
        }
    }
    let views: Vec<MemberView> = newest
        .into_iter()
        .map(|(node_id, (id, state))| {
            // Parsed only when new to this node: chitchat reports often, routes change rarely.
            let seen = known
                .get(node_id)
                .filter(|k| k.generation == id.generation_id)
                .and_then(|k| k.routes_version);
            let routes = state
                .get(KEY_ROUTES_VERSION)
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| seen != Some(*v))
                .map(|v| {
                    let n = state
                        .get(KEY_ROUTES_CHUNKS)
                        .and_then(|n| n.parse::<usize>().ok())
                        .unwrap_or(0);
                    let keys: Vec<String> = (0..n).map(routes_chunk_key).collect();
                    (v, parse_chunks(keys.iter().filter_map(|k| state.get(k))))
                });
            MemberView {
                node_id: Arc::from(node_id),
                generation: id.generation_id,
                run: state
                    .get(KEY_RELAY_RUN)
                    .and_then(|r| r.parse::<u64>().ok())
                    .unwrap_or(id.generation_id),
                gossip_addr: id.gossip_advertise_addr,
                peer_addr: state
                    .get(KEY_PEER_ADDR)
                    .and_then(|a| a.parse::<SocketAddr>().ok()),
                leaving: state.get(KEY_STATUS) == Some(STATUS_LEAVING),
                routes,
            }
        })
        .collect();
    observe(cluster, views, known);
}

/// Applies one view of the other live nodes: joins, restarts, failures, departures and route
/// changes, each logged, counted and published once. Shared by chitchat and the simulation.
pub(crate) fn observe(
    cluster: &Arc<Cluster>,
    views: Vec<MemberView>,
    known: &mut HashMap<Arc<str>, Known>,
) {
    let gone: Vec<Arc<str>> = known
        .keys()
        .filter(|n| !views.iter().any(|v| v.node_id == **n))
        .cloned()
        .collect();
    for node in gone {
        let k = known.remove(&node).expect("listed above");
        let event = if k.leaving { "left" } else { "failed" };
        if k.leaving && k.durable {
            // It keeps a store: most likely a restart (a rolling update). Its messages wait
            // for it as for a failed node, and its link resumes when it is back.
            let queued = cluster.suspend_node(&node);
            Metrics::add(&cluster.metrics.nodes_left, 1);
            tracing::info!(
                node = %node, generation = k.generation, queued,
                hold_secs = cluster.config.hold_secs,
                "cluster node left; it keeps a store, so its messages are held in case it comes back"
            );
        } else if k.leaving {
            let dropped = cluster.drop_node(&node);
            Metrics::add(&cluster.metrics.nodes_left, 1);
            tracing::info!(node = %node, generation = k.generation, dropped, "cluster node left");
        } else {
            let queued = cluster.suspend_node(&node);
            Metrics::add(&cluster.metrics.nodes_failed, 1);
            tracing::warn!(
                node = %node, generation = k.generation, queued,
                hold_secs = cluster.config.hold_secs,
                "cluster node failed; holding its messages in case it comes back"
            );
        }
        cluster.publish_event(event, &node, k.generation);
    }

    cluster
        .members
        .store(views.len(), std::sync::atomic::Ordering::Relaxed);
    for view in views {
        let Some(peer_addr) = view.peer_addr else {
            continue; // not fully announced yet
        };
        let node = view.node_id.clone();
        let leaving = view.leaving;
        match known.get_mut(&node) {
            Some(k) if k.generation == view.generation && k.peer_addr == peer_addr => {
                if leaving && !k.leaving {
                    tracing::info!(node = %node, "cluster node is leaving");
                }
                k.leaving = leaving;
            }
            previous => {
                let restarted = previous.is_some();
                let to = LinkTo {
                    node_id: node.clone(),
                    generation: view.generation,
                    run: view.run,
                    addr: peer_addr,
                    gossip_addr: view.gossip_addr,
                };
                // A node that comes back as the same relay run keeps its link: the same
                // process thought failed, or a restart with its store.
                let resumed = cluster.resume_node(&to);
                let (event, what) = if restarted {
                    if !resumed {
                        cluster.drop_node(&node);
                    }
                    Metrics::add(&cluster.metrics.nodes_updated, 1);
                    ("updated", "cluster node restarted or moved")
                } else {
                    Metrics::add(&cluster.metrics.nodes_joined, 1);
                    (
                        "joined",
                        if resumed {
                            "cluster node is back"
                        } else {
                            "cluster node joined"
                        },
                    )
                };
                tracing::info!(node = %node, generation = view.generation, %peer_addr, "{what}");
                cluster.publish_event(event, &node, view.generation);
                if !resumed {
                    let l = cluster.open_link(to);
                    cluster.remote.add_node(&node);
                    cluster.links.write().insert(node.clone(), l.clone());
                    tokio::spawn(dial::run(l, cluster.clone()));
                }
                let k = Known {
                    generation: view.generation,
                    durable: view.run != view.generation,
                    routes_version: None,
                    leaving,
                    peer_addr,
                };
                known.insert(node.clone(), k);
            }
        }
        let k = known.get_mut(&node).expect("inserted above");
        if let Some((v, routes)) = view.routes
            && k.routes_version != Some(v)
        {
            tracing::debug!(node = %node, version = v, routes = routes.len(), "routes gossiped");
            cluster.remote.apply_gossip(&node, v, routes);
            k.routes_version = Some(v);
        }
    }
    let pending = known
        .values()
        .filter(|k| k.routes_version.is_none())
        .count();
    cluster
        .routes_pending
        .store(pending, std::sync::atomic::Ordering::Relaxed);
}
