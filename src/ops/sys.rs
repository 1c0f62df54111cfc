//! `$SYS` topics: every `mqtt.sys_interval` seconds, retained `$SYS/broker/...` figures in the
//! layout mosquitto users know, plus `$SYS/vibemq/cluster/...`. Each node publishes its own
//! figures to its own clients; they are not relayed or replicated to other nodes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::OpsState;
use crate::broker::{Message, Metrics};
use crate::codec::QoS;

/// The figures published now, as (topic, value).
pub fn figures(ops: &OpsState) -> Vec<(String, String)> {
    let b = &ops.broker;
    let m = &b.metrics;
    let mut out = vec![
        (
            "$SYS/broker/version".into(),
            format!("vibemq {}", env!("CARGO_PKG_VERSION")),
        ),
        (
            "$SYS/broker/uptime".into(),
            format!("{} seconds", ops.uptime_secs()),
        ),
        (
            "$SYS/broker/clients/connected".into(),
            Metrics::get(&m.connections_current).to_string(),
        ),
        (
            "$SYS/broker/clients/total".into(),
            b.sessions.len().to_string(),
        ),
        (
            "$SYS/broker/messages/received".into(),
            Metrics::sum(&m.messages_received).to_string(),
        ),
        (
            "$SYS/broker/messages/sent".into(),
            Metrics::sum(&m.messages_sent).to_string(),
        ),
        (
            "$SYS/broker/bytes/received".into(),
            Metrics::get(&m.bytes_received).to_string(),
        ),
        (
            "$SYS/broker/bytes/sent".into(),
            Metrics::get(&m.bytes_sent).to_string(),
        ),
        (
            "$SYS/broker/subscriptions/count".into(),
            b.router.filter_count().to_string(),
        ),
        (
            "$SYS/broker/retained messages/count".into(),
            b.retained.len().to_string(),
        ),
        ("$SYS/broker/messages/dropped".into(), {
            let d = [
                &m.dropped_queue_full,
                &m.dropped_qos0_offline,
                &m.dropped_expired,
                &m.dropped_too_large,
            ];
            d.iter().map(|c| Metrics::get(c)).sum::<u64>().to_string()
        }),
    ];
    if let Some(c) = &ops.cluster {
        let peers = c.peers();
        out.push(("$SYS/vibemq/cluster/node_id".into(), c.node_id.to_string()));
        out.push((
            "$SYS/vibemq/cluster/members".into(),
            (c.live_members() + 1).to_string(),
        ));
        out.push((
            "$SYS/vibemq/cluster/links_up".into(),
            peers.iter().filter(|p| p.connected).count().to_string(),
        ));
    }
    out
}

/// Publishes the figures every `interval` until shutdown.
pub async fn run(ops: Arc<OpsState>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        for (topic, value) in figures(&ops) {
            let m = Message::new(
                topic.into(),
                value.into(),
                QoS::AtMostOnce,
                true,
                Default::default(),
                None,
            );
            ops.broker.publish_local(Arc::new(m));
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}
