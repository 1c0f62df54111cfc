//! The configuration sections as typed structs, one per TOML table, with the helpers that
//! read derived values (the TLS address, the admin token, the cluster secret) out of them.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{ConfigError, err};

/// `[tls]`: the certificate TLS listeners present, and the CA client certificates must come
/// from (mTLS) when set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: String,
    pub key_file: String,
    pub client_ca_file: String,
    /// mTLS: the client certificate's Common Name is the user name (as mosquitto's option).
    pub use_identity_as_username: bool,
}

/// The MQTT listeners a node may open, each with its `[server]` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    Tcp,
    Tls,
    WebSocket,
    WebSocketTls,
}

impl ListenerKind {
    pub const ALL: [ListenerKind; 4] = [
        ListenerKind::Tcp,
        ListenerKind::Tls,
        ListenerKind::WebSocket,
        ListenerKind::WebSocketTls,
    ];

    /// The key that sets its address.
    pub fn key(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "server.bind",
            ListenerKind::Tls => "server.tls_bind",
            ListenerKind::WebSocket => "server.ws_bind",
            ListenerKind::WebSocketTls => "server.wss_bind",
        }
    }

    /// Its name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::WebSocket => "ws",
            ListenerKind::WebSocketTls => "wss",
        }
    }

    /// Whether it needs the `[tls]` certificate.
    pub fn uses_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::WebSocketTls)
    }

    /// Whether it speaks WebSocket.
    pub fn uses_websocket(self) -> bool {
        matches!(self, ListenerKind::WebSocket | ListenerKind::WebSocketTls)
    }

    fn example(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "0.0.0.0:1883",
            ListenerKind::Tls => "0.0.0.0:8883",
            ListenerKind::WebSocket => "0.0.0.0:8083",
            ListenerKind::WebSocketTls => "0.0.0.0:8084",
        }
    }
}

impl ServerConfig {
    fn bind_text(&self, kind: ListenerKind) -> &str {
        match kind {
            ListenerKind::Tcp => &self.bind,
            ListenerKind::Tls => &self.tls_bind,
            ListenerKind::WebSocket => &self.ws_bind,
            ListenerKind::WebSocketTls => &self.wss_bind,
        }
    }

    /// One listener's address, if it is on (its key is not empty).
    pub fn listener_addr(&self, kind: ListenerKind) -> Result<Option<SocketAddr>, ConfigError> {
        let text = self.bind_text(kind).trim();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            err(format!(
                "{}: expected host:port such as {}, or \"\" for off, got `{text}`",
                kind.key(),
                kind.example()
            ))
        })
    }

    /// Every listener that is on, with its address.
    pub fn listeners(&self) -> Result<Vec<(ListenerKind, SocketAddr)>, ConfigError> {
        let mut on = Vec::new();
        for kind in ListenerKind::ALL {
            if let Some(addr) = self.listener_addr(kind)? {
                on.push((kind, addr));
            }
        }
        Ok(on)
    }
}

/// `[auth]`: who may connect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `true`, `false`, or unset ("auto": on loopback listeners only, and only without a
    /// password file).
    pub allow_anonymous: String,
    /// mosquitto_passwd's format; `vibemq passwd FILE USER` writes argon2id entries.
    pub password_file: String,
    /// mosquitto's acl_file syntax.
    pub acl_file: String,
    /// Password hashes verified at once, at most (0: as many as the machine has cores).
    pub max_concurrent_hashes: usize,
    /// Password checks of one source address waiting or running at once, at most.
    pub max_hashes_per_ip: usize,
    /// Whether a client id belongs to the identity that made its session.
    pub clientid_ownership: ClientIdOwnership,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: "auto".into(),
            password_file: String::new(),
            acl_file: String::new(),
            max_concurrent_hashes: 0,
            max_hashes_per_ip: 8,
            clientid_ownership: ClientIdOwnership::Enforce,
        }
    }
}

/// Whether a client id belongs to the identity that made its session
/// (`auth.clientid_ownership`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientIdOwnership {
    /// A CONNECT for a live or stored session made under another verified identity is
    /// refused (v5 0x87, v3 0x05); sessions made anonymously belong to nobody.
    Enforce,
    /// Any client may take any client id over (MQTT's own rule).
    Off,
}

impl AuthConfig {
    /// `allow_anonymous` as set: Some(yes or no), None for "auto"; Err for anything else.
    pub(crate) fn anonymous_setting(&self) -> Result<Option<bool>, ()> {
        match self.allow_anonymous.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(None),
            "true" | "1" | "yes" | "on" => Ok(Some(true)),
            "false" | "0" | "no" | "off" => Ok(Some(false)),
            _ => Err(()),
        }
    }

    /// How many password hashes may be verified at once (`max_concurrent_hashes`, or the
    /// number of cores for 0).
    pub fn hash_slots(&self) -> usize {
        match self.max_concurrent_hashes {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// How many password checks of one address may wait or run at once.
    pub fn hashes_per_ip(&self) -> usize {
        self.max_hashes_per_ip.max(1)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// MQTT over TCP, e.g. "0.0.0.0:1883"; empty: off.
    pub bind: String,
    /// MQTT over TLS, e.g. "0.0.0.0:8883"; empty: off.
    pub tls_bind: String,
    /// MQTT over WebSocket at /mqtt, e.g. "0.0.0.0:8083"; empty: off.
    pub ws_bind: String,
    /// MQTT over WebSocket with TLS, e.g. "0.0.0.0:8084"; empty: off.
    pub wss_bind: String,
    /// Every MQTT listener expects a PROXY protocol (v1 or v2) header first.
    pub proxy_protocol: bool,
    pub connect_timeout: u64,
    pub max_connections: usize,
    /// Open connections from one source IP (0: no limit).
    pub max_connections_per_ip: usize,
    /// New connections per second from one source IP (0: no limit).
    pub max_connection_rate_per_ip: u32,
    /// Seconds a graceful stop may take in all (its phases below must fit in it).
    pub shutdown_timeout: u64,
    /// Seconds a stopping node reports not ready while it keeps serving, so that load
    /// balancers and Kubernetes endpoints stop sending it clients first.
    pub shutdown_delay: u64,
    /// Seconds the clients get to be told to go and to close.
    pub shutdown_clients_timeout: u64,
    /// Seconds the relay queues get to flush and the gossip leave to spread.
    pub shutdown_cluster_timeout: u64,
    /// Given to v5 clients with DISCONNECT 0x9C (use another server) when this node stops
    /// while others serve; empty: 0x9C without it.
    pub server_reference: String,
    /// Browser origins a WebSocket upgrade may come from (empty: any).
    pub ws_allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: bool,
    pub bind: SocketAddr,
    /// Bearer token the admin API (`/api/...`) requires; empty: none.
    pub api_token: String,
    /// The same, read from a file (Kubernetes and Docker secrets).
    pub api_token_file: String,
    /// `/metrics` requires the token too.
    pub protect_metrics: bool,
}

impl HttpConfig {
    /// The admin token in force, from `api_token` or `api_token_file` (trimmed), if any.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        match (self.api_token.is_empty(), self.api_token_file.is_empty()) {
            (true, true) => Ok(None),
            (false, false) => Err(err(
                "http.api_token: set either api_token or api_token_file, not both",
            )),
            (false, true) => Ok(Some(self.api_token.clone())),
            (true, false) => {
                let text = std::fs::read_to_string(&self.api_token_file).map_err(|e| {
                    err(format!(
                        "http.api_token_file: cannot read {}: {e}",
                        self.api_token_file
                    ))
                })?;
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(err(format!(
                        "http.api_token_file: {} is empty",
                        self.api_token_file
                    )));
                }
                Ok(Some(token))
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub max_keepalive: u16,
    pub max_packet_size: u32,
    pub max_inflight: u16,
    pub max_queued_messages: usize,
    pub queue_qos0_offline: bool,
    pub max_topic_alias: u16,
    pub max_session_expiry: u32,
    pub sys_interval: u64,
    pub allow_zero_length_clientid: bool,
    pub max_topic_levels: usize,
    pub max_topic_length: usize,
    pub max_subscriptions_per_client: usize,
    pub max_sessions: usize,
    pub max_queued_bytes: usize,
    pub max_retained_messages: usize,
    pub max_retained_bytes: usize,
    /// PUBLISH packets per second per client (0: no limit).
    pub max_publish_rate: u32,
    /// PUBLISH bytes per second per client (0: no limit).
    pub max_publish_bytes_rate: u64,
    pub slow_subscriber: SlowSubscriber,
    /// Which member of a shared subscription group gets each message (across nodes too).
    pub shared_subscription_strategy: SharedStrategy,
}

/// How a shared subscription group's member is chosen for each message
/// (`mqtt.shared_subscription_strategy`); in a cluster the publishing node first chooses a
/// node with members the same way, then that node one of its members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedStrategy {
    /// Each member in turn.
    #[default]
    RoundRobin,
    /// A member at random.
    Random,
    /// A member on the node the message was published at when one is connected there, else
    /// in turn among the other nodes.
    LocalFirst,
    /// The member the publisher's client id hashes to (rendezvous hashing: the same member
    /// for a publisher while it stays, and only its publishers move when it goes).
    HashClientid,
    /// The member chosen last, while it stays connected; then another, in turn.
    Sticky,
}

/// What happens to a subscriber whose queue is full while others of the same messages keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowSubscriber {
    /// Its overflow is dropped and counted; it stays connected.
    Drop,
    /// It is disconnected (v5 reason 0x97 Quota exceeded); a persistent session keeps queueing.
    Disconnect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub enabled: bool,
    pub node_id: String,
    pub name: String,
    pub gossip_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub gossip_advertise_addr: String,
    pub peer_advertise_addr: String,
    pub seeds: Vec<String>,
    /// Base64 secrets, the sealing one first.
    pub secret: Vec<String>,
    pub secret_file: String,
    /// Run without a secret on addresses beyond loopback (refused otherwise).
    pub allow_insecure: bool,
    /// Peer connections authenticating at once, at most; further ones are closed at once.
    pub max_pending_handshakes: usize,
    /// Peer links in TLS with the `[tls]` certificate, verified against `ca_file`.
    pub tls: bool,
    /// The CA that signs the nodes' certificates (peer TLS), apart from the clients' CA.
    pub ca_file: String,
    /// A name a peer's certificate must carry (`*.` for one label); empty: any.
    pub tls_peer_name: String,
    pub gossip_interval_ms: u64,
    pub failure_phi_threshold: f64,
    pub failure_max_interval_ms: u64,
    pub dead_node_grace_period: u64,
    pub dns_refresh_interval: u64,
    pub dns_server: String,
    /// Bytes queued for one peer (unsent and unacknowledged) past which new messages for it
    /// are dropped and counted.
    pub hold_bytes: usize,
    /// Seconds a failed node's messages are held for its return.
    pub hold_secs: u64,
    /// Bytes in flight to one peer past which publishers whose messages only it wants wait.
    pub link_window_bytes: usize,
    /// Milliseconds of silence after which a peer connection is dead.
    pub link_timeout_ms: u64,
    /// When a SUBACK goes out: once every live node applied the new routes, or at once.
    pub subscribe_ack: SubscribeAck,
    /// The longest a SUBACK waits for the other nodes (`subscribe_ack = "cluster"`).
    pub subscribe_ack_timeout_ms: u64,
    /// The longest a connect waits for the other nodes to answer its claim on the client id,
    /// and then for the session one of them holds.
    pub takeover_timeout_ms: u64,
    /// Whether a client may connect while a known node is unreachable (its session there, if
    /// any, stays there), or is refused with "server unavailable".
    pub allow_connect_during_partition: bool,
    /// How many other nodes keep a copy of each persistent session (0: none).
    pub session_replicas: usize,
    /// Whether acknowledgements wait for the session copies (`sync`) or not (`async`).
    pub session_replication: SessionReplication,
    /// Milliseconds a node with seeds waits to link a peer before it serves alone (reports
    /// ready) anyway.
    pub join_timeout_ms: u64,
}

/// When an acknowledgement goes out with session copies on other nodes
/// (`cluster.session_replication`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionReplication {
    /// Once the nodes keeping copies applied what it acknowledges: nothing acknowledged is
    /// lost with the holder.
    Sync,
    /// At once: faster, and a message acknowledged within about a link round trip of the
    /// holder's death may be lost.
    Async,
}

/// When a SUBACK goes out in a cluster (`cluster.subscribe_ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscribeAck {
    /// Once every live node has applied the routes the SUBSCRIBE added (bounded by
    /// `subscribe_ack_timeout_ms`): a message published anywhere after it reaches the client.
    Cluster,
    /// At once: other nodes learn the route a few milliseconds later.
    Local,
}

impl ClusterConfig {
    /// The seeds as "host:port", with any "name@" prefix removed.
    pub fn seed_addresses(&self) -> Vec<String> {
        self.seeds
            .iter()
            .map(|s| s.split_once('@').map_or(s.as_str(), |(_, a)| a).to_string())
            .collect()
    }

    /// The 32-byte secrets from `secret` or `secret_file` (read again at each call), the
    /// sealing one first; empty when none is set.
    pub fn secret_keys(&self) -> Result<Vec<[u8; 32]>, ConfigError> {
        let configured: Vec<&String> = self
            .secret
            .iter()
            .filter(|s| !s.trim().is_empty())
            .collect();
        let (key, texts): (&str, Vec<String>) =
            match (configured.is_empty(), self.secret_file.is_empty()) {
                (true, true) => return Ok(Vec::new()),
                (false, false) => {
                    return Err(err(
                        "cluster.secret: set either secret or secret_file, not both",
                    ));
                }
                (false, true) => ("cluster.secret", configured.into_iter().cloned().collect()),
                (true, false) => {
                    let text = std::fs::read_to_string(&self.secret_file).map_err(|e| {
                        err(format!(
                            "cluster.secret_file: cannot read {}: {e}",
                            self.secret_file
                        ))
                    })?;
                    let lines: Vec<String> = text
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string)
                        .collect();
                    if lines.is_empty() {
                        return Err(err(format!(
                            "cluster.secret_file: {} holds no secret",
                            self.secret_file
                        )));
                    }
                    ("cluster.secret_file", lines)
                }
            };
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| decode_secret(&format!("{key}[{i}]"), text))
            .collect()
    }
}

/// One base64 secret of 32 bytes; errors name `key`.
fn decode_secret(key: &str, text: &str) -> Result<[u8; 32], ConfigError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| {
            err(format!(
                "{key}: not valid base64 (make one with `head -c32 /dev/urandom | base64`)"
            ))
        })?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| {
        err(format!(
            "{key}: must decode to 32 bytes, got {len} (make one with `head -c32 /dev/urandom | base64`)"
        ))
    })
}

/// `[persistence]`: the embedded store a node keeps its retained messages and persistent
/// sessions in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistenceConfig {
    pub enabled: bool,
    pub dir: String,
    pub sync: SyncMode,
    pub sync_interval_ms: u64,
}

/// When an acknowledged write is on disk (`persistence.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Acknowledged once fsynced (group commit).
    Always,
    /// Acknowledged once written to the operating system; fsynced every `sync_interval_ms`.
    Interval,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: String,
}
