//! The cluster: several nodes acting as one broker. Membership is chitchat gossip (`membership`,
//! over `transport`); each node advertises the filters it serves (`routes`), found through
//! seeds (`discovery`); publishes travel over authenticated TCP links (`link` outbound,
//! `inbound` accepting, `wire` format) only to the nodes whose routes match, retained messages
//! to every node. The broker sees all this only through the `ClusterHook` trait.

mod discovery;
mod inbound;
mod link;
mod membership;
pub mod routes;
mod transport;
pub mod wire;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use parking_lot::{Mutex, RwLock};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, watch};

use crate::broker::{Broker, ClusterHook, Forwarded, Message, Metrics, now_ms};
use crate::codec::QoS;
use crate::config::ClusterConfig;
use link::Link;
use routes::{LocalRoutes, RemoteRoutes};
use wire::{Frame, WireMessage};

/// A failed node's link and when it was suspended.
type SuspendedLink = (Arc<Link>, std::time::Instant);

/// How long a failed node's link and queue are kept in case it comes back.
const SUSPENDED_GRACE: Duration = Duration::from_secs(30);

/// Counters for operators (see README, Operations).
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub nodes_joined: AtomicU64,
    pub nodes_left: AtomicU64,
    pub nodes_failed: AtomicU64,
    pub nodes_updated: AtomicU64,
    pub frames_forwarded: AtomicU64,
    pub frames_received: AtomicU64,
    /// Frames dropped: a full link queue, no link to a node that has routes, or a node that
    /// failed with frames queued for it.
    pub relay_dropped: AtomicU64,
    pub link_reconnects: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Gossip datagrams refused for not being sealed with this cluster's secret.
    pub gossip_rejected: Arc<AtomicU64>,
}

/// One peer as seen from this node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerInfo {
    pub node_id: Arc<str>,
    /// The run of the node: milliseconds since the epoch when it started.
    pub generation: u64,
    pub gossip_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// "connected", "connecting" (link not up yet, or reconnecting) or "suspended" (declared
    /// failed, queue kept for a while in case it comes back).
    pub status: &'static str,
    /// The link is up and authenticated.
    pub connected: bool,
    /// Frames waiting to be sent or acknowledged.
    pub queued: usize,
}

impl PeerInfo {
    fn of(link: &Link, suspended: bool) -> PeerInfo {
        let connected = link.is_connected();
        PeerInfo {
            node_id: link.node_id.clone(),
            generation: link.generation,
            gossip_addr: link.gossip_addr,
            peer_addr: link.addr,
            status: if suspended {
                "suspended"
            } else if connected {
                "connected"
            } else {
                "connecting"
            },
            connected: connected && !suspended,
            queued: link.depth(),
        }
    }
}

pub struct Cluster {
    pub node_id: Arc<str>,
    /// Distinguishes this run of the node from earlier ones (chitchat generation).
    pub generation: u64,
    pub name: String,
    pub gossip_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    config: ClusterConfig,
    key: Option<[u8; 32]>,
    broker: Weak<Broker>,
    pub local: LocalRoutes,
    pub remote: RemoteRoutes,
    links: RwLock<HashMap<Arc<str>, Arc<Link>>>,
    /// Links to nodes the failure detector gave up on, kept (queue and all) for
    /// `SUSPENDED_GRACE` in case the node was only slow: it then resumes where it stopped.
    suspended: Mutex<HashMap<Arc<str>, SuspendedLink>>,
    /// How far each peer's incoming link has been processed.
    progress: RelayProgress,
    group_cursor: AtomicUsize,
    routes_dirty: Notify,
    /// Other nodes chitchat sees as live.
    members: AtomicUsize,
    routes_pending: AtomicUsize,
    pub metrics: ClusterMetrics,
    chitchat: Mutex<Option<ChitchatHandle>>,
    shutdown: watch::Sender<bool>,
}

/// How far the newest link from one peer run has been processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LinkProgress {
    epoch: u64,
    last: u64,
}

/// Per (peer, peer generation): the epoch of its newest incoming link and the last reliable
/// sequence number processed on it. Resumption is keyed on the link's incarnation, so it can
/// neither skip (a new link counting from 1 under an old link's mark) nor go back (a stale
/// link moving the mark of a newer one).
#[derive(Default)]
struct RelayProgress(Mutex<HashMap<(Arc<str>, u64), LinkProgress>>);

impl RelayProgress {
    /// A link from `peer` authenticated with `epoch`: where it resumes. The same epoch (a
    /// reconnect of the same link) resumes after what was processed; a new epoch (a link the
    /// peer made anew) starts from zero, and from then on the old epoch cannot move the mark.
    fn begin(&self, peer: &Arc<str>, generation: u64, epoch: u64) -> u64 {
        let mut p = self.0.lock();
        // Older generations of this peer will never come back.
        p.retain(|(n, g), _| n != peer || *g >= generation);
        let entry = p
            .entry((peer.clone(), generation))
            .or_insert(LinkProgress { epoch, last: 0 });
        if entry.epoch != epoch {
            *entry = LinkProgress { epoch, last: 0 };
        }
        entry.last
    }

    /// Records what a link processed, if it is still the peer's newest link.
    fn record(&self, peer: &Arc<str>, generation: u64, epoch: u64, seq: u64) {
        let mut p = self.0.lock();
        if let Some(entry) = p.get_mut(&(peer.clone(), generation))
            && entry.epoch == epoch
        {
            entry.last = seq;
        }
    }
}

/// This node's id: the configured one, else the host name.
pub fn node_id(config: &ClusterConfig) -> Arc<str> {
    if config.node_id.is_empty() {
        gethostname::gethostname()
            .to_string_lossy()
            .into_owned()
            .into()
    } else {
        config.node_id.as_str().into()
    }
}

/// The address others reach a socket bound at `bound` by: the configured advertise address,
/// else the bound one, with an unspecified IP replaced by this host's address.
async fn advertised(configured: &str, bound: SocketAddr, key: &str) -> anyhow::Result<SocketAddr> {
    if !configured.is_empty() {
        let mut addrs = tokio::net::lookup_host(configured)
            .await
            .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        let addr = addrs
            .next()
            .ok_or_else(|| anyhow::anyhow!("{key}: {configured} has no address"))?;
        // Port 0 in the advertised address means "the port actually bound".
        return Ok(if addr.port() == 0 {
            SocketAddr::new(addr.ip(), bound.port())
        } else {
            addr
        });
    }
    if !bound.ip().is_unspecified() {
        return Ok(bound);
    }
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let ip = tokio::net::lookup_host((host.as_str(), 0))
        .await
        .ok()
        .and_then(|mut a| a.find(|a| !a.ip().is_loopback()).map(|a| a.ip()))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    Ok(SocketAddr::new(ip, bound.port()))
}

impl Cluster {
    /// Binds the gossip and peer sockets, joins through the seeds and connects `broker`.
    pub async fn start(
        config: ClusterConfig,
        broker: &Arc<Broker>,
    ) -> anyhow::Result<Arc<Cluster>> {
        let key = config.secret_key().map_err(|e| anyhow::anyhow!("{e}"))?;
        let gossip_socket = UdpSocket::bind(config.gossip_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cluster.gossip_addr {}: {e}", config.gossip_addr))?;
        let peer_listener = TcpListener::bind(config.peer_addr)
            .await
            .map_err(|e| anyhow::anyhow!("cluster.peer_addr {}: {e}", config.peer_addr))?;
        let gossip_bound = gossip_socket.local_addr()?;
        let gossip_addr = advertised(
            &config.gossip_advertise_addr,
            gossip_bound,
            "cluster.gossip_advertise_addr",
        )
        .await?;
        let peer_addr = advertised(
            &config.peer_advertise_addr,
            peer_listener.local_addr()?,
            "cluster.peer_advertise_addr",
        )
        .await?;

        let node_id = broker.node_id.clone();
        let generation = now_ms();
        let seeds = discovery::Seeds::new(&config)?;
        let first_seeds: Vec<String> = seeds
            .resolve()
            .await
            .into_iter()
            .filter(|a| *a != gossip_addr)
            .map(|a| a.to_string())
            .collect();
        let interval = Duration::from_millis(config.gossip_interval_ms);
        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId {
                node_id: node_id.clone(),
                generation_id: generation,
                gossip_advertise_addr: gossip_addr,
            },
            cluster_id: config.name.clone(),
            gossip_interval: interval,
            listen_addr: gossip_bound,
            seed_nodes: first_seeds,
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.failure_phi_threshold,
                sampling_window_size: 1000,
                max_interval: Duration::from_millis(config.failure_max_interval_ms),
                // Until it has samples the detector assumes this heartbeat gap; a tight value
                // makes a freshly joined node look dead at the first hiccup.
                initial_interval: interval * 10,
                dead_node_grace_period: Duration::from_secs(config.dead_node_grace_period),
            },
            marked_for_deletion_grace_period: Duration::from_secs(config.dead_node_grace_period),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let initial = vec![
            (membership::KEY_PEER_ADDR.to_string(), peer_addr.to_string()),
            (membership::KEY_STATUS.to_string(), "up".to_string()),
        ];
        let metrics = ClusterMetrics::default();
        let transport =
            transport::GossipTransport::new(gossip_socket, key, metrics.gossip_rejected.clone());
        let handle = spawn_chitchat(chitchat_config, initial, &transport).await?;
        let live = handle.chitchat().lock().await.live_nodes_watcher();

        let cluster = Arc::new(Cluster {
            node_id,
            generation,
            name: config.name.clone(),
            gossip_addr,
            peer_addr,
            key,
            broker: Arc::downgrade(broker),
            local: LocalRoutes::default(),
            remote: RemoteRoutes::default(),
            links: RwLock::new(HashMap::new()),
            suspended: Mutex::new(HashMap::new()),
            progress: RelayProgress::default(),
            group_cursor: AtomicUsize::new(0),
            routes_dirty: Notify::new(),
            members: AtomicUsize::new(0),
            routes_pending: AtomicUsize::new(0),
            metrics,
            chitchat: Mutex::new(None),
            shutdown: watch::channel(false).0,
            config,
        });
        let chitchat = handle.chitchat();
        *cluster.chitchat.lock() = Some(handle);

        tokio::spawn(inbound::serve(
            peer_listener,
            cluster.clone(),
            cluster.shutdown.subscribe(),
        ));
        tokio::spawn(membership::watch(
            cluster.clone(),
            live,
            cluster.shutdown.subscribe(),
        ));
        tokio::spawn(gossip_routes(cluster.clone(), chitchat));
        let dns_interval = Duration::from_secs(cluster.config.dns_refresh_interval);
        let for_gossip = Arc::downgrade(&cluster);
        let gossip_with = move |addr| {
            if let Some(c) = for_gossip.upgrade()
                && let Some(h) = c.chitchat.lock().as_ref()
            {
                let _ = h.gossip(addr);
            }
        };
        tokio::spawn(discovery::refresh(
            seeds,
            dns_interval,
            gossip_addr,
            gossip_with,
            cluster.shutdown.subscribe(),
        ));
        broker.set_cluster(cluster.clone());
        tracing::info!(
            node = %cluster.node_id, generation, %gossip_addr, %peer_addr,
            secret = cluster.key.is_some(), "cluster node started"
        );
        Ok(cluster)
    }

    pub(crate) fn broker(&self) -> Option<Arc<Broker>> {
        self.broker.upgrade()
    }

    /// The nodes this node links to, suspended ones included.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .links
            .read()
            .values()
            .map(|l| PeerInfo::of(l, false))
            .collect();
        out.extend(
            self.suspended
                .lock()
                .values()
                .map(|(l, _)| PeerInfo::of(l, true)),
        );
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    /// Other nodes chitchat sees as live.
    pub fn live_members(&self) -> usize {
        self.members.load(Ordering::Relaxed)
    }

    /// Live nodes whose routes have not reached this node yet.
    pub fn routes_pending(&self) -> usize {
        self.routes_pending.load(Ordering::Relaxed)
    }

    /// Announces that this node is leaving, gives gossip time to spread it, sends what the
    /// relay queues still hold (until `until`), and stops.
    pub async fn leave(&self, until: tokio::time::Instant) {
        let chitchat = self.chitchat.lock().as_ref().map(ChitchatHandle::chitchat);
        if let Some(cc) = chitchat {
            cc.lock()
                .await
                .self_node_state()
                .set(membership::KEY_STATUS, membership::STATUS_LEAVING);
        }
        let flushed = async {
            loop {
                let pending: usize = self
                    .links
                    .read()
                    .values()
                    .filter(|l| l.is_connected())
                    .map(|l| l.depth())
                    .sum();
                if pending == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout_at(until, flushed).await.is_err() {
            tracing::warn!("shutdown deadline passed with relay queues not empty");
        }
        // Gossip rounds for the "leaving" status to reach the others, within the deadline.
        let spread = Duration::from_millis(self.config.gossip_interval_ms * 3);
        tokio::time::sleep_until(until.min(tokio::time::Instant::now() + spread)).await;
        self.shutdown.send_replace(true);
        for link in self.links.write().drain().map(|(_, l)| l) {
            link.close();
        }
        for (_, (link, _)) in self.suspended.lock().drain() {
            link.close();
        }
        let handle = self.chitchat.lock().take();
        if let Some(handle) = handle {
            let _ = handle.shutdown().await;
        }
    }

    fn begin_link(&self, peer: &Arc<str>, generation: u64, epoch: u64) -> u64 {
        self.progress.begin(peer, generation, epoch)
    }

    fn set_processed(&self, peer: &Arc<str>, generation: u64, epoch: u64, seq: u64) {
        self.progress.record(peer, generation, epoch, seq)
    }

    /// Stops the link to a node and forgets its routes; returns how many frames were dropped.
    fn drop_node(&self, node: &Arc<str>) -> usize {
        let active = self.links.write().remove(node);
        let suspended = self.suspended.lock().remove(node).map(|(l, _)| l);
        let dropped: usize = active.into_iter().chain(suspended).map(|l| l.close()).sum();
        Metrics::add(&self.metrics.relay_dropped, dropped as u64);
        self.remote.remove_node(node);
        dropped
    }

    /// A node the failure detector declared failed: no more routing to it, but its link keeps
    /// its queue (and keeps trying) for a while. Returns how many frames wait in it.
    fn suspend_node(&self, node: &Arc<str>) -> usize {
        self.remote.remove_node(node);
        let Some(link) = self.links.write().remove(node) else {
            return 0;
        };
        let queued = link.depth();
        self.suspended
            .lock()
            .insert(node.clone(), (link, std::time::Instant::now()));
        queued
    }

    /// Takes back a suspended link if the node returned as the same run at the same address.
    fn resume_node(&self, node: &Arc<str>, generation: u64, addr: SocketAddr) -> bool {
        let mut suspended = self.suspended.lock();
        match suspended.remove(node) {
            Some((link, _)) if link.generation == generation && link.addr == addr => {
                self.links.write().insert(node.clone(), link);
                true
            }
            Some((link, _)) => {
                let dropped = link.close();
                Metrics::add(&self.metrics.relay_dropped, dropped as u64);
                false
            }
            None => false,
        }
    }

    /// Closes suspended links older than the grace period, counting what they still held.
    fn expire_suspended(&self) {
        let mut suspended = self.suspended.lock();
        suspended.retain(|node, (link, since)| {
            if since.elapsed() < SUSPENDED_GRACE {
                return true;
            }
            let dropped = link.close();
            Metrics::add(&self.metrics.relay_dropped, dropped as u64);
            tracing::info!(node = %node, dropped, "gave up on failed node; its queued messages are dropped");
            false
        });
    }

    fn apply_retained(&self, messages: Vec<WireMessage>) {
        let Some(broker) = self.broker() else { return };
        for m in messages {
            broker.retained.set(Arc::new(m.into_message()));
        }
    }

    /// This node's retained messages and tombstones as snapshot frames.
    fn retained_frames(&self) -> Vec<Frame> {
        let Some(broker) = self.broker() else {
            return Vec::new();
        };
        // Each node's $SYS figures are its own: never replicated.
        let all: Vec<WireMessage> = broker
            .retained
            .snapshot()
            .iter()
            .filter(|m| !m.topic.starts_with("$SYS/"))
            .filter_map(|m| WireMessage::from_message(m, &self.node_id))
            .collect();
        wire::retained_batches(all, wire::RETAINED_BATCH_BYTES)
    }

    fn publish_event(&self, event: &str, node: &str, generation: u64) {
        let Some(broker) = self.broker() else { return };
        let payload = format!(
            r#"{{"event":"{event}","node":"{node}","generation":{generation},"observer":"{}"}}"#,
            self.node_id
        );
        let message = Message::new(
            "$SYS/vibemq/cluster/events".into(),
            payload.into(),
            QoS::AtMostOnce,
            false,
            Default::default(),
            None,
        );
        // Every node observes and reports for itself: delivered here only.
        broker.publish_local(Arc::new(message));
    }
}

impl ClusterHook for Cluster {
    fn forward(&self, message: &Arc<Message>, local_groups: Vec<Arc<str>>) -> Forwarded {
        let matched = self.remote.match_topic(&message.topic);
        let links = self.links.read();
        if matched.nodes.is_empty() && matched.groups.is_empty() && !message.retain {
            return Forwarded {
                local_groups,
                remote_nodes: 0,
            };
        }
        // node -> (ordinary subscribers wanted, shared groups it delivers)
        let mut targets: HashMap<Arc<str>, (bool, Vec<String>)> = HashMap::new();
        for n in &matched.nodes {
            targets.entry(n.clone()).or_default().0 = true;
        }
        if message.retain {
            // Retained messages are stored on every node.
            for n in links.keys() {
                targets.entry(n.clone()).or_default();
            }
        }
        // Each shared group gets one node, in turn: None is this node.
        let mut mine = Vec::new();
        type Candidates = Vec<Option<Arc<str>>>;
        let mut groups: Vec<(Arc<str>, Candidates)> =
            local_groups.into_iter().map(|g| (g, vec![None])).collect();
        for (key, nodes) in matched.groups {
            let candidates = nodes.into_iter().map(Some);
            match groups.iter_mut().find(|(g, _)| *g == key) {
                Some((_, c)) => c.extend(candidates),
                None => groups.push((key, candidates.collect())),
            }
        }
        for (key, candidates) in groups {
            let turn = self.group_cursor.fetch_add(1, Ordering::Relaxed) % candidates.len();
            match &candidates[turn] {
                None => mine.push(key),
                Some(node) => targets
                    .entry(node.clone())
                    .or_default()
                    .1
                    .push(key.to_string()),
            }
        }
        let mut forwarded = Forwarded {
            local_groups: mine,
            remote_nodes: 0,
        };
        if targets.is_empty() {
            return forwarded;
        }
        let Some(wire) = WireMessage::from_message(message, &self.node_id) else {
            return forwarded;
        };
        let encoded = wire::encode_message(&wire);
        let reliable = message.qos != QoS::AtMostOnce;
        for (node, (normal, groups)) in targets {
            let subscribed = normal || !groups.is_empty();
            let sent = links
                .get(&node)
                .is_some_and(|l| l.send_publish(reliable, normal, groups, encoded.clone()));
            if !sent {
                Metrics::add(&self.metrics.relay_dropped, 1);
                tracing::debug!(node = %node, topic = %message.topic, "relay queue full or no link; message not forwarded");
            } else if subscribed {
                forwarded.remote_nodes += 1;
            }
        }
        forwarded
    }

    fn route_changed(&self, key: &str, present: bool) {
        let version = self.local.update(key, present);
        let frame = Frame::Route {
            version,
            key: key.to_string(),
            present,
        };
        for link in self.links.read().values() {
            if !link.send_control(&frame) {
                Metrics::add(&self.metrics.relay_dropped, 1);
            }
        }
        self.routes_dirty.notify_one();
    }
}

/// Writes this node's routes into its gossip state whenever they change (batched: at most one
/// write per 50 ms). Chunks are written before the version, so a peer that sees the new
/// version has the chunks that go with it.
async fn gossip_routes(
    cluster: Arc<Cluster>,
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
) {
    let mut stop = cluster.shutdown.subscribe();
    let mut published = (u64::MAX, 0usize);
    loop {
        if published.0 == cluster.local.version() {
            tokio::select! {
                _ = cluster.routes_dirty.notified() => {}
                _ = crate::stopped(&mut stop) => return,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Summarising 100k routes takes a while: off the async workers, so gossip heartbeats
        // keep flowing meanwhile.
        let c = cluster.clone();
        let Ok((version, chunks)) =
            tokio::task::spawn_blocking(move || c.local.gossip_chunks()).await
        else {
            return;
        };
        let mut cc = chitchat.lock().await;
        let state = cc.self_node_state();
        for (i, chunk) in chunks.iter().enumerate() {
            state.set(membership::routes_chunk_key(i), chunk);
        }
        for i in chunks.len()..published.1 {
            state.set(membership::routes_chunk_key(i), "");
        }
        state.set(membership::KEY_ROUTES_CHUNKS, chunks.len());
        state.set(membership::KEY_ROUTES_VERSION, version);
        published = (version, chunks.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumption_is_keyed_on_the_link_epoch() {
        let progress = RelayProgress::default();
        let peer: Arc<str> = "n2".into();
        // A link processes up to 20,000, is cut, and reconnects: it resumes there.
        assert_eq!(progress.begin(&peer, 7, 100), 0);
        progress.record(&peer, 7, 100, 20_000);
        assert_eq!(progress.begin(&peer, 7, 100), 20_000);
        // The peer gave up on us and made a new link (the frozen-node case of issue 9): it
        // counts from 1 again and must not have its first 20,000 frames skipped.
        assert_eq!(progress.begin(&peer, 7, 200), 0);
        progress.record(&peer, 7, 200, 5);
        // A connection of the old link still draining cannot move the new link's mark.
        progress.record(&peer, 7, 100, 20_001);
        assert_eq!(progress.begin(&peer, 7, 200), 5);
        // A new run of the peer (generation) forgets the old one.
        assert_eq!(progress.begin(&peer, 8, 200), 0);
        assert_eq!(progress.0.lock().len(), 1);
    }
}
