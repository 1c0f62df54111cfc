//! The cluster: several nodes acting as one broker. Membership is chitchat gossip (`membership`,
//! over `transport`); each node advertises the filters it serves (`routes`), found through
//! seeds (`discovery`); publishes travel over authenticated TCP links (`link` outbound,
//! `inbound` accepting, `wire` format) only to the nodes whose routes match, retained messages
//! to every node. The broker sees all this only through the `ClusterHook` trait (`forward`).
//! With persistence on, each link's unacknowledged frames and each peer's progress are kept
//! in the store (`link_store`, `progress`), so a node restarted even after kill -9 resumes its
//! links, and its peers resume theirs to it, without losing or repeating a frame.

pub(crate) mod address;
mod dial;
mod discovery;
mod forward;
mod group_rescue;
mod groups;
mod handover;
mod inbound;
mod inbound_marks;
mod link;
mod link_store;
mod membership;
mod metrics;
pub mod peer_tls;
mod progress;
mod recovery;
mod replica_store;
mod replicas;
pub mod routes;
mod seal;
#[cfg(test)]
mod sim;
mod transport;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use parking_lot::{Mutex, RwLock};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{Notify, watch};

use crate::broker::{Broker, Message, Metrics, now_ms};
use crate::codec::QoS;
use crate::config::ClusterConfig;
use crate::store::{RestoredLink, RestoredRelay, Store};
use address::advertised;
pub use address::node_id;
use link::{Link, LinkTo};
pub use metrics::ClusterMetrics;
use progress::{RelayProgress, Turn};
use routes::{LocalRoutes, RemoteRoutes};
use wire::WireMessage;

/// Why a peer connection made under a secret a reload withdrew closes.
pub(crate) const SECRET_WITHDRAWN: &str =
    "the cluster secret this peer connection was made under is no longer in force: reconnecting";

/// A connection to a peer's relay port: a TCP stream in production, a simulated one in the
/// simulation.
pub(crate) trait PeerIo:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> PeerIo for T {}
pub(crate) type PeerStream = Box<dyn PeerIo>;
/// Opens a connection to a peer's relay address.
pub(crate) type Dialer = Arc<
    dyn Fn(SocketAddr) -> Pin<Box<dyn Future<Output = std::io::Result<PeerStream>> + Send>>
        + Send
        + Sync,
>;

/// The production dialer: TCP, without Nagle's delay; in TLS with `cluster.tls`.
fn tcp_dialer(tls: Option<tokio_rustls::TlsConnector>) -> Dialer {
    Arc::new(move |addr| {
        let tls = tls.clone();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            match tls {
                None => Ok(Box::new(stream) as PeerStream),
                Some(connector) => {
                    let stream = connector
                        .connect(peer_tls::PeerTls::peer_name(), stream)
                        .await?;
                    Ok(Box::new(stream) as PeerStream)
                }
            }
        })
    })
}

/// One peer as seen from this node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerInfo {
    pub node_id: Arc<str>,
    /// The run of the node: milliseconds since the epoch when it started.
    pub generation: u64,
    pub gossip_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// "connected" (delivering), "stalled" (connected, but nothing acknowledged for a while
    /// with frames waiting), "connecting" (link not up yet, or reconnecting) or "suspended"
    /// (declared failed; its messages are held for `cluster.hold_secs` in case it comes back).
    pub status: &'static str,
    /// The link is up, authenticated and delivering.
    pub connected: bool,
    /// Frames waiting to be sent or acknowledged.
    pub queued: usize,
    /// What they weigh against `cluster.hold_bytes`.
    pub queued_bytes: usize,
    /// Milliseconds since the peer last acknowledged anything while frames wait.
    pub stalled_ms: u64,
}

impl PeerInfo {
    fn of(link: &Link) -> PeerInfo {
        let connected = link.is_connected();
        let suspended = link.suspended_since().is_some();
        let healthy = link.is_healthy();
        PeerInfo {
            node_id: link.node_id.clone(),
            generation: link.generation,
            gossip_addr: link.gossip_addr,
            peer_addr: link.addr,
            status: if suspended {
                "suspended"
            } else if healthy {
                "connected"
            } else if connected {
                "stalled"
            } else {
                "connecting"
            },
            connected: healthy,
            queued: link.depth(),
            queued_bytes: link.queued_bytes(),
            stalled_ms: link.stalled_for().as_millis() as u64,
        }
    }
}

pub struct Cluster {
    pub node_id: Arc<str>,
    /// Distinguishes this run of the node from earlier ones (chitchat generation).
    pub generation: u64,
    /// This node's relay run: with persistence on, the id its store keeps, so peers resume
    /// their links to it after a restart (it reads back its side of them too); without, the
    /// generation: every start is a new run.
    pub run: u64,
    pub name: String,
    pub gossip_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    config: ClusterConfig,
    /// The cluster secrets (none: links and gossip in the clear).
    secrets: Arc<seal::Secrets>,
    broker: Weak<Broker>,
    pub local: LocalRoutes,
    pub remote: RemoteRoutes,
    /// One link per known node. A node the failure detector gives up on keeps its link (queue,
    /// routes and all, marked suspended) for `cluster.hold_secs` in case it was only frozen or
    /// cut off: it then resumes where it stopped. (Ordered, so iteration is the same on
    /// every run: the simulation replays exactly.)
    links: RwLock<BTreeMap<Arc<str>, Arc<Link>>>,
    /// How links reach their peers.
    dial: Dialer,
    /// How far each peer's incoming link has been processed.
    progress: RelayProgress,
    /// The store, with persistence on: links keep their frames and progress there.
    pub(crate) store: Option<Arc<Store>>,
    /// Links read back from the store, until their peer shows up (as the run they were for:
    /// resumed; as another: their frames are dropped and counted).
    stored_links: Mutex<HashMap<Arc<str>, RestoredLink>>,
    /// When this node started: stored links whose peer has not shown up within
    /// `cluster.hold_secs` of it are given up on, as a failed node's link is.
    started: tokio::time::Instant,
    /// Per shared group: what its strategy remembers about the nodes serving it.
    group_turns: Mutex<HashMap<Arc<str>, crate::broker::shared_pick::GroupTurn>>,
    /// `mqtt.shared_subscription_strategy`.
    shared_strategy: crate::config::SharedStrategy,
    routes_dirty: Notify,
    /// Session claims and handovers under way (`handover`).
    handover: handover::Handover,
    /// How far each peer processed the others' links to it (`recovery`).
    processed_marks: recovery::ProcessedMarks,
    /// Copies of sessions other nodes hold (`replicas`).
    pub(crate) replicas: replicas::Replicas,
    /// Other nodes chitchat sees as live.
    members: AtomicUsize,
    /// A link to another node has delivered since this node started (readiness).
    linked_once: AtomicBool,
    routes_pending: AtomicUsize,
    pub metrics: ClusterMetrics,
    chitchat: Mutex<Option<ChitchatHandle>>,
    shutdown: watch::Sender<bool>,
}

/// Who a node is on the network.
struct Identity {
    secrets: Arc<seal::Secrets>,
    generation: u64,
    /// What the store kept of the relay (nothing without persistence).
    relay: RestoredRelay,
    gossip_addr: SocketAddr,
    peer_addr: SocketAddr,
}

impl Cluster {
    /// Binds the gossip and peer sockets, joins through the seeds and connects `broker`.
    pub async fn start(
        config: ClusterConfig,
        broker: &Arc<Broker>,
        relay: RestoredRelay,
    ) -> anyhow::Result<Arc<Cluster>> {
        let secrets = Arc::new(seal::Secrets::new(
            config.secret_keys().map_err(|e| anyhow::anyhow!("{e}"))?,
        ));
        let peer_tls = match config.tls {
            true => Some(
                peer_tls::PeerTls::load(&broker.config.tls, &config)
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            ),
            false => None,
        };
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
        let run = if relay.run != 0 {
            relay.run
        } else {
            generation
        };
        let initial = vec![
            (membership::KEY_PEER_ADDR.to_string(), peer_addr.to_string()),
            (membership::KEY_STATUS.to_string(), "up".to_string()),
            (membership::KEY_RELAY_RUN.to_string(), run.to_string()),
        ];
        let metrics = ClusterMetrics::default();
        let transport = transport::GossipTransport::new(
            gossip_socket,
            secrets.clone(),
            transport::GossipCounters {
                rejected: metrics.gossip_rejected.clone(),
                replayed: metrics.gossip_replayed.clone(),
            },
        );
        let handle = spawn_chitchat(chitchat_config, initial, &transport).await?;
        let live = handle.chitchat().lock().await.live_nodes_watcher();

        let cluster = Cluster::assemble(
            config,
            broker,
            Identity {
                secrets,
                generation,
                relay,
                gossip_addr,
                peer_addr,
            },
            metrics,
            tcp_dialer(peer_tls.as_ref().map(|t| t.connector.clone())),
        );
        let chitchat = handle.chitchat();
        *cluster.chitchat.lock() = Some(handle);
        // The routes of sessions read back from the store go into the first routes this node
        // gossips: a restarted node that first gossiped none would have its peers forget the
        // routes they kept for it, and skip it for messages meanwhile.
        broker.set_cluster(cluster.clone());
        broker.announce_restored_routes();
        broker.keep_replicas();
        cluster.keep_sweeping_replicas();

        tokio::spawn(inbound::serve(
            peer_listener,
            cluster.clone(),
            cluster.shutdown.subscribe(),
            peer_tls.map(|t| t.acceptor),
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
        tracing::info!(
            node = %cluster.node_id, generation, run = cluster.run, %gossip_addr, %peer_addr,
            secret = cluster.secrets.is_set(), tls = cluster.config.tls, "cluster node started"
        );
        if !cluster.secured() {
            tracing::warn!(
                "cluster mode without cluster.secret: any host that reaches the gossip and peer ports can join this cluster and read every message; set cluster.secret or cluster.secret_file (README, Security)"
            );
        }
        Ok(cluster)
    }

    /// Whether links and gossip are authenticated with a cluster secret.
    pub fn secured(&self) -> bool {
        self.secrets.is_set()
    }

    /// Reads `cluster.secret_file` again and puts its secrets in force for new links and
    /// gossip (SIGHUP). Links up now keep the keys they were made with. Returns how many
    /// secrets are in force; on an error the ones in force stay.
    pub fn reload_secrets(&self) -> Result<usize, String> {
        if self.config.secret_file.is_empty() {
            return Ok(self.secrets.current().len());
        }
        let keys = self.config.secret_keys().map_err(|e| e.to_string())?;
        let count = keys.len();
        self.secrets.replace(keys)?;
        Ok(count)
    }

    /// The cluster's state, before anything runs: `start` adds chitchat and the tasks, the
    /// simulation its own.
    fn assemble(
        config: ClusterConfig,
        broker: &Arc<Broker>,
        id: Identity,
        metrics: ClusterMetrics,
        dial: Dialer,
    ) -> Arc<Cluster> {
        let store = broker.store().cloned();
        let progress = RelayProgress::default();
        for (peer, mark) in &id.relay.marks {
            progress.restore(peer, mark.epoch, mark.last);
        }
        let stored_links = id
            .relay
            .links
            .into_iter()
            .map(|l| (l.peer.clone(), l))
            .collect();
        Arc::new(Cluster {
            node_id: broker.node_id.clone(),
            generation: id.generation,
            run: match (&store, id.relay.run) {
                (Some(_), run) if run != 0 => run,
                _ => id.generation,
            },
            name: config.name.clone(),
            gossip_addr: id.gossip_addr,
            peer_addr: id.peer_addr,
            secrets: id.secrets,
            broker: Arc::downgrade(broker),
            local: LocalRoutes::default(),
            remote: RemoteRoutes::default(),
            links: RwLock::new(BTreeMap::new()),
            dial,
            progress,
            store,
            stored_links: Mutex::new(stored_links),
            started: tokio::time::Instant::now(),
            group_turns: Mutex::new(HashMap::new()),
            shared_strategy: broker.config.mqtt.shared_subscription_strategy,
            routes_dirty: Notify::new(),
            handover: handover::Handover::default(),
            processed_marks: recovery::ProcessedMarks::default(),
            replicas: replicas::Replicas::with_copies(replica_store::restored_copies(
                id.relay.copies,
            )),
            members: AtomicUsize::new(0),
            linked_once: AtomicBool::new(false),
            routes_pending: AtomicUsize::new(0),
            metrics,
            chitchat: Mutex::new(None),
            shutdown: watch::channel(false).0,
            config,
        })
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
            .map(|l| PeerInfo::of(l))
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }

    /// The bounds every link gets, from the configuration.
    fn link_bounds(&self) -> link::LinkBounds {
        link::LinkBounds {
            window_bytes: self.config.link_window_bytes,
            hold_bytes: self.config.hold_bytes,
            timeout: Duration::from_millis(self.config.link_timeout_ms),
        }
    }

    /// Whether this node has linked another node since it started, or waited
    /// `cluster.join_timeout_ms` for one: from then on it serves, alone if need be.
    pub fn joined_or_gave_up(&self) -> bool {
        self.linked_once.load(Ordering::Relaxed)
            || self.started.elapsed() >= Duration::from_millis(self.config.join_timeout_ms)
    }

    /// A link to another node came up.
    pub(super) fn note_linked(&self) {
        self.linked_once.store(true, Ordering::Relaxed);
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
        let pending = || -> usize {
            self.links
                .read()
                .values()
                .filter(|l| l.is_connected())
                .map(|l| l.depth())
                .sum()
        };
        let flushed = async {
            while pending() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout_at(until, flushed).await.is_err() {
            tracing::warn!(
                frames = pending(),
                kept_in_store_for_next_run = self.store.is_some(),
                "server.shutdown_cluster_timeout passed with relay queues not empty"
            );
        }
        // Gossip rounds for the "leaving" status to reach the others, within the deadline.
        let spread = Duration::from_millis(self.config.gossip_interval_ms * 3);
        tokio::time::sleep_until(until.min(tokio::time::Instant::now() + spread)).await;
        self.shutdown.send_replace(true);
        for link in std::mem::take(&mut *self.links.write()).into_values() {
            link.close();
        }
        let handle = self.chitchat.lock().take();
        if let Some(handle) = handle {
            let _ = handle.shutdown().await;
        }
    }

    pub(crate) fn enter_link(&self, peer: &Arc<str>, generation: u64) -> Option<Turn> {
        self.progress.enter(peer, generation)
    }

    fn begin_link(&self, peer: &Arc<str>, epoch: u64) -> u64 {
        self.progress.begin(peer, epoch)
    }

    fn set_processed(&self, peer: &Arc<str>, epoch: u64, seq: u64) {
        self.progress.record(peer, epoch, seq)
    }

    /// A link to the peer at `to`: the one the store kept for that run of it, if any (the
    /// peer resumes it where it stopped), else a new one. Frames kept for another run of the
    /// peer (it lost its store, or runs without one) are dropped, counted and logged.
    fn open_link(&self, to: LinkTo) -> Arc<Link> {
        let stored = self.stored_links.lock().remove(&to.node_id);
        if let (Some(stored), Some(store)) = (stored, &self.store) {
            let frames = stored.frames.len();
            if stored.record.peer_run == to.run {
                tracing::info!(peer = %to.node_id, frames, "peer link read back from the store: resuming it");
                return Link::restored(stored, to, self.link_bounds(), store);
            }
            if frames > 0 {
                Metrics::add(&self.metrics.relay_dropped, frames as u64);
                tracing::warn!(peer = %to.node_id, frames, "node came back as a new run (without its store): messages stored for the old one are dropped");
            }
        }
        Link::new(to, self.link_bounds(), self.store.as_ref())
    }

    /// Stops the link to a node and forgets its routes; returns how many frames were dropped.
    /// That run of the node is over, perhaps with retained writes that reached some nodes and
    /// not others: every other link resends the ones this node has from it.
    fn drop_node(&self, node: &Arc<str>) -> usize {
        let link = self.links.write().remove(node);
        if let Some(link) = &link {
            self.progress.retire(node, link.generation);
            // At shutdown the store keeps the link for this node's next run.
            if !*self.shutdown.borrow() {
                link.forget();
            }
        }
        // What goes to other group members is not dropped.
        let rescued = match &link {
            Some(l) if !*self.shutdown.borrow() => self.rescue_all_group_messages(l),
            _ => 0,
        };
        let dropped = link.map_or(0, |l| l.close()).saturating_sub(rescued);
        for link in self.links.read().values() {
            link.resync_origin(node);
        }
        Metrics::add(&self.metrics.relay_dropped, dropped as u64);
        self.remote.remove_node(node);
        dropped
    }

    /// A node the failure detector declared failed: its link keeps its queue, its routes and
    /// its reconnect attempts for `cluster.hold_secs`, so messages for its subscribers wait
    /// for it. Returns how many frames wait.
    fn suspend_node(&self, node: &Arc<str>) -> usize {
        let Some(link) = self.links.read().get(node).cloned() else {
            return 0;
        };
        link.set_suspended(true);
        let rescued = self.rescue_unsent_group_messages(&link);
        if rescued > 0 {
            tracing::info!(node = %node, rescued, "shared-group messages queued for the failed node went to members elsewhere");
        }
        link.depth()
    }

    /// Takes back the link to a node that returned as the same relay run: a suspended one
    /// as it is if it is the same process at the same address, else (it restarted with its
    /// store) a link that carries this one's queue over to the new process. A link to
    /// another run is dropped, with what it held.
    fn resume_node(self: &Arc<Self>, to: &LinkTo) -> bool {
        let node = &to.node_id;
        let link = self.links.read().get(node).cloned();
        match link {
            Some(link) if link.generation == to.generation && link.addr == to.addr => {
                link.set_suspended(false);
                true
            }
            Some(link) if link.run == to.run => {
                self.progress.retire(node, link.generation);
                // Under the links' write lock: a publish being forwarded holds the read lock
                // while it queues, so none can land on the old link after its queue moved.
                let carried = {
                    let mut links = self.links.write();
                    let carried = link.carry_to(to.clone());
                    links.insert(node.clone(), carried.clone());
                    carried
                };
                tracing::info!(node = %node, old_generation = link.generation, generation = to.generation, queued = carried.depth(), "node restarted with its store: its link resumes with what it held");
                self.remote.new_run(node);
                tokio::spawn(dial::run(carried, self.clone()));
                true
            }
            Some(link) => {
                let dropped = self.drop_node(node);
                if dropped > 0 {
                    tracing::warn!(node = %node, old_generation = link.generation, dropped, "node came back as a new run; messages queued for the old one are dropped");
                }
                false
            }
            None => false,
        }
    }

    /// Gives up on nodes suspended for longer than `cluster.hold_secs`, counting and logging
    /// what their links still held.
    fn expire_suspended(&self) {
        let hold = Duration::from_secs(self.config.hold_secs);
        let expired: Vec<Arc<str>> = self
            .links
            .read()
            .values()
            .filter(|l| l.suspended_since().is_some_and(|t| t.elapsed() >= hold))
            .map(|l| l.node_id.clone())
            .collect();
        for node in expired {
            let dropped = self.drop_node(&node);
            tracing::warn!(node = %node, dropped, hold_secs = self.config.hold_secs, "gave up on failed node (cluster.hold_secs); messages held for it are dropped");
        }
        if self.started.elapsed() >= hold && !self.stored_links.lock().is_empty() {
            let unclaimed: Vec<RestoredLink> =
                self.stored_links.lock().drain().map(|(_, l)| l).collect();
            for link in unclaimed {
                let dropped = link.frames.len();
                Metrics::add(&self.metrics.relay_dropped, dropped as u64);
                if let Some(store) = &self.store {
                    store.submit(crate::store::Op::Relay(crate::store::RelayOp::Gone(
                        link.peer.clone(),
                    )));
                }
                tracing::warn!(node = %link.peer, dropped, hold_secs = self.config.hold_secs, "gave up on a node this one had messages stored for: it has not shown up since the restart (cluster.hold_secs); they are dropped");
            }
        }
    }

    fn apply_retained(&self, messages: Vec<WireMessage>) {
        let Some(broker) = self.broker() else { return };
        for m in messages {
            broker.clock.observe(m.stamp);
            broker.retained.set(Arc::new(m.into_message()));
        }
    }

    /// This node's retained messages and tombstones (those that entered at the `scope` nodes,
    /// or all), in batches for `Retained` frames.
    fn retained_batches(&self, scope: link::RetainedScope<'_>) -> Vec<Vec<WireMessage>> {
        let Some(broker) = self.broker() else {
            return Vec::new();
        };
        // Each node's $SYS figures are its own: never replicated.
        let all: Vec<WireMessage> = broker
            .retained
            .snapshot()
            .iter()
            .filter(|m| !m.topic.starts_with("$SYS/"))
            .filter(|m| {
                scope.is_none_or(|origins| {
                    let origin = m.origin.as_deref().unwrap_or(&self.node_id);
                    origins.iter().any(|o| **o == *origin)
                })
            })
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
