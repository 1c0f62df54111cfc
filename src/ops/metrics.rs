//! Prometheus metrics in text format (prometheus-client): a collector that reads the broker's
//! and the cluster's counters at scrape time, so the publish path keeps its plain atomics.

use std::fmt::Write as _;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::OpsState;
use crate::broker::Metrics;

#[derive(Debug)]
struct StateCollector(Arc<OpsStateRef>);

/// `OpsState` is not `Debug`; the collector needs to be.
struct OpsStateRef(Arc<OpsState>);

impl std::fmt::Debug for OpsStateRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpsState")
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn vibemq_open_files_limit() -> i64 {
    i64::try_from(crate::fd_limit::current()).unwrap_or(i64::MAX)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

fn labelled(
    e: &mut DescriptorEncoder,
    kind: MetricType,
    name: &str,
    help: &str,
    label: &str,
    values: &[(String, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (l, v) in values {
        let labels = vec![(label.to_string(), l.clone())];
        let mut f = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => f.encode_counter::<NoLabelSet, _, u64>(v, None)?,
            _ => f.encode_gauge(&(*v as i64))?,
        }
    }
    Ok(())
}

fn by_qos(counters: &[std::sync::atomic::AtomicU64; 3]) -> Vec<(String, u64)> {
    counters
        .iter()
        .enumerate()
        .map(|(q, c)| (q.to_string(), Metrics::get(c)))
        .collect()
}

/// The embedded store's figures (persistence on).
fn encode_store(e: &mut DescriptorEncoder, store: &crate::store::Store) -> std::fmt::Result {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &store.metrics;
    counter(
        e,
        "vibemq_store_ops_written",
        "Changes written to the store",
        m.ops_written.load(Relaxed),
    )?;
    counter(
        e,
        "vibemq_store_commits",
        "Group commits (each one fsync with persistence.sync = \"always\")",
        m.commits.load(Relaxed),
    )?;
    counter(
        e,
        "vibemq_store_write_errors",
        "Store writes or syncs that failed (disk full, read-only, I/O error)",
        m.write_errors.load(Relaxed),
    )?;
    counter(
        e,
        "vibemq_store_ops_lost",
        "Changes not kept while the store could not write, past the million it holds for then",
        m.ops_lost.load(Relaxed),
    )?;
    gauge(
        e,
        "vibemq_store_failing",
        "1 while the store cannot write (persistent writes refused), else 0",
        i64::from(store.is_failing()),
    )?;
    gauge(
        e,
        "vibemq_store_backlog",
        "Changes submitted and not yet written",
        store.backlog() as i64,
    )?;
    gauge(
        e,
        "vibemq_store_disk_bytes",
        "Bytes the store's files take on disk",
        m.disk_bytes.load(Relaxed) as i64,
    )
}

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.0.0;
        let b = &state.broker;
        let m = &b.metrics;
        gauge(
            &mut e,
            "vibemq_uptime_seconds",
            "Seconds since the node started",
            state.uptime_secs() as i64,
        )?;
        gauge(
            &mut e,
            "vibemq_connections",
            "Client connections open now",
            Metrics::get(&m.connections_current) as i64,
        )?;
        gauge(
            &mut e,
            "vibemq_connections_max",
            "Most client connections this node accepts (server.max_connections)",
            b.config.server.max_connections as i64,
        )?;
        gauge(
            &mut e,
            "vibemq_ready",
            "1 while /ready answers 200 (the node serves clients), else 0",
            i64::from(state.not_ready_reason().is_none()),
        )?;
        gauge(
            &mut e,
            "vibemq_open_files_limit",
            "The process's open-file limit after start-up raised it (0: not raised, an embedded node)",
            vibemq_open_files_limit(),
        )?;
        counter(
            &mut e,
            "vibemq_connections_accepted",
            "Client connections accepted",
            Metrics::get(&m.connections_total),
        )?;
        gauge(
            &mut e,
            "vibemq_sessions",
            "Sessions held (connected and offline persistent)",
            b.sessions.len() as i64,
        )?;
        let qos = MetricType::Counter;
        labelled(
            &mut e,
            qos,
            "vibemq_messages_received",
            "Messages published by this node's clients",
            "qos",
            &by_qos(&m.messages_received),
        )?;
        labelled(
            &mut e,
            qos,
            "vibemq_messages_sent",
            "PUBLISH packets sent to clients",
            "qos",
            &by_qos(&m.messages_sent),
        )?;
        counter(
            &mut e,
            "vibemq_bytes_received",
            "Bytes read from clients",
            Metrics::get(&m.bytes_received),
        )?;
        counter(
            &mut e,
            "vibemq_bytes_sent",
            "Bytes written to clients",
            Metrics::get(&m.bytes_sent),
        )?;
        let dropped = [
            ("queue_full", Metrics::get(&m.dropped_queue_full)),
            ("slow_subscriber", Metrics::get(&m.dropped_slow_subscriber)),
            ("session_ended", Metrics::get(&m.dropped_session_ended)),
            ("qos0_offline", Metrics::get(&m.dropped_qos0_offline)),
            ("expired", Metrics::get(&m.dropped_expired)),
            ("too_large", Metrics::get(&m.dropped_too_large)),
        ]
        .map(|(r, v)| (r.to_string(), v));
        labelled(
            &mut e,
            qos,
            "vibemq_messages_dropped",
            "Deliveries dropped, by reason",
            "reason",
            &dropped,
        )?;
        let hits: Vec<(String, u64)> = crate::limits::Limit::ALL
            .iter()
            .map(|l| (l.key().to_string(), b.limits.hits(*l)))
            .collect();
        labelled(
            &mut e,
            qos,
            "vibemq_limit_hits",
            "Times a configured limit was reached, by its config key",
            "limit",
            &hits,
        )?;
        counter(
            &mut e,
            "vibemq_publishes_refused_sys",
            "Client PUBLISH packets to $SYS topics refused",
            Metrics::get(&m.publishes_refused_sys),
        )?;
        let auth = [
            ("bad_credentials", Metrics::get(&m.auth_bad_credentials)),
            ("required", Metrics::get(&m.auth_required)),
            ("clientid_owned", Metrics::get(&m.auth_clientid_owned)),
        ]
        .map(|(r, v)| (r.to_string(), v));
        counter(
            &mut e,
            "vibemq_tls_handshake_failures",
            "TLS handshakes that failed or did not finish within server.connect_timeout",
            Metrics::get(&m.tls_handshake_failures),
        )?;
        counter(
            &mut e,
            "vibemq_websocket_upgrade_failures",
            "WebSocket upgrades refused (path other than /mqtt, no MQTT subprotocol) or not finished within server.connect_timeout",
            Metrics::get(&m.websocket_upgrade_failures),
        )?;
        counter(
            &mut e,
            "vibemq_proxy_header_failures",
            "Connections closed for a missing or malformed PROXY protocol header (server.proxy_protocol)",
            Metrics::get(&m.proxy_header_failures),
        )?;
        let acl = [
            ("publish", Metrics::get(&m.acl_denied_publish)),
            ("subscribe", Metrics::get(&m.acl_denied_subscribe)),
            ("receive", Metrics::get(&m.acl_denied_receive)),
        ]
        .map(|(r, v)| (r.to_string(), v));
        labelled(
            &mut e,
            qos,
            "vibemq_acl_denied",
            "What auth.acl_file refused: publishes (and wills), subscriptions, deliveries",
            "action",
            &acl,
        )?;
        labelled(
            &mut e,
            qos,
            "vibemq_auth_failures",
            "CONNECTs refused: credentials that do not match, or none where required",
            "reason",
            &auth,
        )?;
        gauge(
            &mut e,
            "vibemq_retained_bytes",
            "Topic and payload bytes of the retained messages stored",
            b.retained.bytes() as i64,
        )?;
        counter(
            &mut e,
            "vibemq_protocol_errors",
            "Connections closed for bad input",
            Metrics::get(&m.protocol_errors),
        )?;
        gauge(
            &mut e,
            "vibemq_subscription_filters",
            "Distinct subscription filters",
            b.router.filter_count() as i64,
        )?;
        gauge(
            &mut e,
            "vibemq_retained_messages",
            "Retained messages stored",
            b.retained.len() as i64,
        )?;
        counter(
            &mut e,
            "vibemq_publishes_refused_store",
            "QoS 1/2 publishes refused because the store could not keep them (v5 0x97; 3.1.1: disconnected unacknowledged)",
            Metrics::get(&m.publishes_refused_store),
        )?;
        counter(
            &mut e,
            "vibemq_shared_deliveries_handed_to_node",
            "Shared-subscription deliveries a departing member did not receive, handed to a member connected at another node",
            Metrics::get(&m.shared_handed_to_node),
        )?;
        counter(
            &mut e,
            "vibemq_session_takeovers_remote",
            "Connections closed (0x8E) because their client id connected at another node",
            Metrics::get(&m.takeovers_remote),
        )?;
        counter(
            &mut e,
            "vibemq_sessions_migrated_out",
            "Sessions handed over to the node their client connected to",
            Metrics::get(&m.sessions_handed_over),
        )?;
        counter(
            &mut e,
            "vibemq_sessions_migrated_in",
            "Sessions taken in from another node for a client that connected here",
            Metrics::get(&m.sessions_adopted),
        )?;
        counter(
            &mut e,
            "vibemq_clients_moved_at_stop",
            "Clients told at a graceful stop to use another server (v5 DISCONNECT 0x9C) while other nodes served",
            Metrics::get(&m.clients_moved_at_stop),
        )?;
        counter(
            &mut e,
            "vibemq_connects_refused_partition",
            "CONNECTs refused while a cluster node was unreachable (cluster.allow_connect_during_partition = false)",
            Metrics::get(&m.connects_refused_partition),
        )?;
        counter(
            &mut e,
            "vibemq_session_replica_snapshots",
            "Whole sessions sent to a node that became one of their replicas (catch-up)",
            Metrics::get(&m.replica_snapshots),
        )?;
        counter(
            &mut e,
            "vibemq_sessions_discarded_stale",
            "Copies of sessions resumed elsewhere while this node was away, discarded on its return",
            Metrics::get(&m.stale_sessions_discarded),
        )?;
        if let Some(store) = b.store() {
            encode_store(&mut e, store)?;
        }
        let Some(c) = &state.cluster else {
            return Ok(());
        };
        let cm = &c.metrics;
        counter(
            &mut e,
            "vibemq_cluster_messages_from_peers",
            "Messages relayed to this node",
            Metrics::get(&m.messages_from_peers),
        )?;
        gauge(
            &mut e,
            "vibemq_cluster_members",
            "Other nodes gossip sees as live",
            c.live_members() as i64,
        )?;
        gauge(
            &mut e,
            "vibemq_cluster_unauthenticated",
            "1 while this node runs in a cluster without cluster.secret: any host that reaches its gossip and peer ports can join and read every message",
            i64::from(!c.secured()),
        )?;
        let peers = c.peers();
        gauge(
            &mut e,
            "vibemq_cluster_links_up",
            "Peer links up",
            peers.iter().filter(|p| p.connected).count() as i64,
        )?;
        let up: Vec<(String, u64)> = peers
            .iter()
            .map(|p| (p.node_id.to_string(), u64::from(p.connected)))
            .collect();
        labelled(
            &mut e,
            MetricType::Gauge,
            "vibemq_cluster_link_up",
            "1 when the link to a peer is up",
            "peer",
            &up,
        )?;
        let depth: Vec<(String, u64)> = peers
            .iter()
            .map(|p| (p.node_id.to_string(), p.queued as u64))
            .collect();
        labelled(
            &mut e,
            MetricType::Gauge,
            "vibemq_cluster_relay_queue",
            "Frames queued for a peer",
            "peer",
            &depth,
        )?;
        let queued_bytes: Vec<(String, u64)> = peers
            .iter()
            .map(|p| (p.node_id.to_string(), p.queued_bytes as u64))
            .collect();
        gauge(
            &mut e,
            "vibemq_cluster_hold_bytes",
            "Bytes one peer's relay queue may hold before new messages for it are dropped (cluster.hold_bytes)",
            b.config.cluster.hold_bytes as i64,
        )?;
        labelled(
            &mut e,
            MetricType::Gauge,
            "vibemq_cluster_relay_queue_bytes",
            "Bytes queued for a peer (against cluster.hold_bytes)",
            "peer",
            &queued_bytes,
        )?;
        let stalled: Vec<(String, u64)> = peers
            .iter()
            .map(|p| (p.node_id.to_string(), p.stalled_ms))
            .collect();
        labelled(
            &mut e,
            MetricType::Gauge,
            "vibemq_cluster_link_stalled_ms",
            "Milliseconds a peer has acknowledged nothing while frames wait for it",
            "peer",
            &stalled,
        )?;
        counter(
            &mut e,
            "vibemq_cluster_frames_forwarded",
            "Frames written to peers",
            Metrics::get(&cm.frames_forwarded),
        )?;
        counter(
            &mut e,
            "vibemq_cluster_frames_received",
            "Publish frames received from peers",
            Metrics::get(&cm.frames_received),
        )?;
        counter(
            &mut e,
            "vibemq_cluster_relay_dropped",
            "Frames dropped (cluster.hold_bytes reached, no link, node given up on)",
            Metrics::get(&cm.relay_dropped),
        )?;
        counter(
            &mut e,
            "vibemq_cluster_subscribe_ack_timeouts",
            "SUBACKs sent before every live node applied the new routes (cluster.subscribe_ack_timeout_ms)",
            Metrics::get(&cm.subscribe_ack_timeouts.count),
        )?;
        counter(
            &mut e,
            "vibemq_cluster_takeover_timeouts",
            "Session claims or handovers that went without a live peer's answer (cluster.takeover_timeout_ms)",
            Metrics::get(&cm.takeover_timeouts),
        )?;
        let (replicas, replica_deliveries) = c.replicas.counts();
        gauge(
            &mut e,
            "vibemq_session_replicas",
            "Copies of sessions held on other nodes that this node keeps",
            replicas as i64,
        )?;
        gauge(
            &mut e,
            "vibemq_session_replica_messages",
            "QoS 1/2 messages queued or in flight in those copies",
            replica_deliveries as i64,
        )?;
        counter(
            &mut e,
            "vibemq_session_replicas_promoted",
            "Sessions brought back from a copy here after the node holding them died",
            Metrics::get(&cm.replicas_promoted),
        )?;
        counter(
            &mut e,
            "vibemq_session_messages_recovered",
            "Messages a dead node had not taken into a session yet, recovered from the other nodes' links to it when the session came back from a copy here",
            Metrics::get(&cm.recovered_messages),
        )?;
        counter(
            &mut e,
            "vibemq_session_recovery_dropped",
            "Such messages past the bound of one recovery answer (128 MiB): dropped",
            Metrics::get(&cm.recovery_dropped),
        )?;
        counter(
            &mut e,
            "vibemq_session_replication_unconfirmed",
            "Acknowledgements (to a publisher, or to a peer for relayed messages) given before every session copy confirmed what they acknowledge: a copy's node stopped answering",
            Metrics::get(&cm.replication_unconfirmed.count),
        )?;
        counter(
            &mut e,
            "vibemq_session_replicas_expired",
            "Copies dropped: their node stayed gone past the session's expiry",
            Metrics::get(&cm.replicas_expired),
        )?;
        counter(
            &mut e,
            "vibemq_cluster_group_messages_rescued",
            "Shared-group messages queued for a failed node that went to a member elsewhere",
            Metrics::get(&cm.group_messages_rescued),
        )?;
        counter(
            &mut e,
            "vibemq_session_replicas_stale_dropped",
            "Copies read back from the store and dropped: their holder is alive and did not send them again (the session is no longer there)",
            Metrics::get(&cm.replicas_stale_dropped),
        )?;
        counter(
            &mut e,
            "vibemq_cluster_replica_ops_dropped",
            "Changes to replicated sessions not sent (no link, or cluster.hold_bytes reached)",
            Metrics::get(&cm.replica_ops_dropped),
        )?;
        counter(
            &mut e,
            "vibemq_cluster_frames_rejected",
            "Peer connections closed for a sealed record that failed to open (forged, altered, replayed)",
            Metrics::get(&cm.frames_rejected),
        )?;
        counter(
            &mut e,
            "vibemq_cluster_link_timeouts",
            "Peer connections closed for silence past cluster.link_timeout_ms",
            Metrics::get(&cm.link_timeouts),
        )?;
        counter(
            &mut e,
            "vibemq_cluster_link_reconnects",
            "Peer link reconnects",
            Metrics::get(&cm.link_reconnects),
        )?;
        counter(
            &mut e,
            "vibemq_cluster_gossip_rejected",
            "Gossip datagrams refused: not sealed with this cluster's secret",
            Metrics::get(&cm.gossip_rejected),
        )?;
        counter(
            &mut e,
            "vibemq_cluster_gossip_replayed",
            "Sealed gossip datagrams refused: seen before (replayed) or stamped outside the 60 s window",
            Metrics::get(&cm.gossip_replayed),
        )?;
        counter(
            &mut e,
            "vibemq_cluster_auth_failures",
            "Peer links refused for authentication",
            Metrics::get(&cm.auth_failures),
        )?;
        counter(
            &mut e,
            "vibemq_cluster_links_closed_secret_withdrawn",
            "Peer connections closed because a reload took their cluster secret out of force",
            Metrics::get(&cm.links_closed_secret_withdrawn),
        )?;
        counter(
            &mut e,
            "vibemq_cluster_handshakes_refused",
            "Peer connections closed at once: cluster.max_pending_handshakes were still authenticating",
            Metrics::get(&cm.handshakes_refused),
        )?;
        let events = [
            ("joined", Metrics::get(&cm.nodes_joined)),
            ("left", Metrics::get(&cm.nodes_left)),
            ("failed", Metrics::get(&cm.nodes_failed)),
            ("updated", Metrics::get(&cm.nodes_updated)),
        ]
        .map(|(r, v)| (r.to_string(), v));
        labelled(
            &mut e,
            qos,
            "vibemq_cluster_node_events",
            "Membership events seen",
            "event",
            &events,
        )?;
        gauge(
            &mut e,
            "vibemq_cluster_local_routes",
            "Filters this node advertises",
            c.local.len() as i64,
        )?;
        gauge(
            &mut e,
            "vibemq_cluster_remote_routes",
            "Routes known for other nodes",
            c.remote.len() as i64,
        )?;
        // Converged: every live member is linked and has told us its routes.
        let converged = c.live_members() == peers.iter().filter(|p| p.connected).count()
            && c.routes_pending() == 0;
        gauge(
            &mut e,
            "vibemq_cluster_gossip_converged",
            "1 when every live member is linked and its routes are known",
            i64::from(converged),
        )?;
        Ok(())
    }
}

/// The registry the `/metrics` endpoint encodes.
pub fn registry(state: Arc<OpsState>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StateCollector(Arc::new(OpsStateRef(state)))));
    registry
}

/// The metrics in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        let _ = writeln!(out, "# metrics could not be encoded");
    }
    out
}
