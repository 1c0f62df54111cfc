//! What a dead holder's session had not received yet: recovering it from the other nodes'
//! links when the session comes back from its copy. A node relays a QoS 1/2 message to the
//! holder and keeps it until the holder acknowledges it; the holder acknowledges a batch only
//! once its copies have the changes it made (`inbound`, synchronous replication) and tells
//! every peer how far it processed each link (`SessionMessage::Processed`). So when the
//! holder dies, every message acknowledged to its publisher is either in the copy or still
//! queued on some node's link to the holder, after the mark the copy's node was told. The node
//! that brings the copy back asks every live peer (and looks itself) for those messages that
//! match the session's subscriptions, and adds them to the session behind the copy's own; the
//! same goes for what was published while the holder was down, which the other nodes queued
//! for it (within `cluster.hold_bytes`). Marks are per link epoch: an unknown or older mark
//! means "all of it", at-least-once rather than lost.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use super::Cluster;
use super::handover::SessionMessage;
use super::wire::{self, WireMessage};
use crate::broker::handover::SessionImage;
use crate::broker::{CopiesWait, Delivery, Metrics};
use crate::codec::QoS;
use crate::config::SessionReplication;
use crate::store::StoredSubscription;

/// The most a recovery answer carries, in payload bytes; past it the rest is counted as
/// dropped and logged (the frame limit is above it).
const ANSWER_BYTES: usize = 128 * 1024 * 1024;

/// How far a node processed each peer's link to it: peer -> (link epoch, last sequence).
type LinkMarks = HashMap<Arc<str>, (u64, u64)>;

/// Per holder node, its `LinkMarks`.
#[derive(Default)]
pub(crate) struct ProcessedMarks {
    marks: Mutex<HashMap<Arc<str>, LinkMarks>>,
}

impl ProcessedMarks {
    pub(crate) fn note(&self, holder: &Arc<str>, peer: &str, epoch: u64, last: u64) {
        let mut marks = self.marks.lock();
        let of_holder = marks.entry(holder.clone()).or_default();
        match of_holder.get_mut(peer) {
            Some(mark) if mark.0 == epoch => mark.1 = mark.1.max(last),
            Some(mark) => *mark = (epoch, last),
            None => {
                of_holder.insert(Arc::from(peer), (epoch, last));
            }
        }
    }

    fn of(&self, holder: &str, peer: &str) -> Option<(u64, u64)> {
        self.marks.lock().get(holder)?.get(peer).copied()
    }
}

impl Cluster {
    /// The holder processed `peer`'s link up to `last` (in link epoch `epoch`).
    pub(crate) fn note_processed(&self, holder: &Arc<str>, peer: &str, epoch: u64, last: u64) {
        self.processed_marks.note(holder, peer, epoch, last);
    }

    /// Tells every live peer how far this node processed `peer`'s link: they keep it for the
    /// day this node dies holding sessions they keep copies of. Returns their confirmation
    /// of everything queued for them up to this mark (what acknowledging those frames to
    /// `peer` waits for, with `cluster.session_replication = "sync"`). Nothing while this
    /// node replicates no session.
    pub(crate) fn announce_processed(
        &self,
        peer: &str,
        epoch: u64,
        last: u64,
    ) -> Option<CopiesWait> {
        if !self.replicas.replicating.load(Ordering::Relaxed) {
            return None;
        }
        let body = super::handover::encode(&SessionMessage::Processed {
            peer: peer.to_string(),
            epoch,
            last,
        })?;
        let links = self.copy_links();
        for l in &links {
            l.send_session(body.clone());
        }
        self.copies_wait_on(&links)
    }

    /// What a PUBACK for a message published here waits for (see `broker::copies_wait`).
    pub(crate) fn copies_wait(&self) -> Option<CopiesWait> {
        if !self.replicas.replicating.load(Ordering::Relaxed)
            || self.config.session_replication == SessionReplication::Async
        {
            return None;
        }
        self.copies_wait_on(&self.copy_links())
    }

    /// The links to the live nodes this node has sent session changes to.
    fn copy_links(&self) -> Vec<Arc<super::link::Link>> {
        let targets = self.replicas.targets.read();
        self.links
            .read()
            .iter()
            .filter(|(node, l)| targets.contains(*node) && l.is_live())
            .map(|(_, l)| l.clone())
            .collect()
    }

    fn copies_wait_on(&self, links: &[Arc<super::link::Link>]) -> Option<CopiesWait> {
        let waits: Vec<_> = links.iter().filter_map(|l| l.session_wait()).collect();
        (!waits.is_empty()).then(|| CopiesWait {
            waits,
            unconfirmed: self.metrics.replication_unconfirmed.clone(),
        })
    }

    /// The messages this node still holds for `holder` after `after` whose topic one of
    /// `filters` matches, as they would arrive now (expired ones left out).
    fn held_for(
        &self,
        holder: &str,
        after: Option<(u64, u64)>,
        filters: &[String],
    ) -> Vec<WireMessage> {
        let Some(link) = self.links.read().get(holder).cloned() else {
            return Vec::new();
        };
        let mut bytes = 0;
        let mut out = Vec::new();
        for (encoded, held_ms) in link.unacknowledged_publishes(after) {
            let Ok(m) = wire::decode_message(&encoded) else {
                continue;
            };
            if m.qos == 0 || !filters.iter().any(|f| crate::topic::matches(f, &m.topic)) {
                continue;
            }
            let Some(m) = wire::after_holding(m, held_ms) else {
                continue;
            };
            bytes += m.payload.len() + m.topic.len();
            if bytes > ANSWER_BYTES {
                Metrics::add(&self.metrics.recovery_dropped, 1);
                continue;
            }
            out.push(m);
        }
        out
    }

    /// A peer asks for what this node holds for `holder` (see `held_for`).
    pub(crate) fn answer_recover(
        self: &Arc<Self>,
        peer: &Arc<str>,
        request: u64,
        holder: &str,
        after: Option<(u64, u64)>,
        filters: &[String],
    ) {
        let messages = self.held_for(holder, after, filters);
        self.answer(peer, SessionMessage::Recovered { request, messages });
    }

    /// Adds to `image`, brought back from this node's copy of a session `holder` held, what
    /// the live nodes (this one included) still hold for `holder` and the session wants,
    /// behind what the copy has; each message once.
    pub(crate) async fn recover_into(
        &self,
        holder: &Arc<str>,
        client: &str,
        image: &mut SessionImage,
    ) {
        let filters: Vec<String> = image
            .subscriptions
            .iter()
            .filter(|(f, _)| !f.starts_with("$share/"))
            .map(|(f, _)| f.clone())
            .collect();
        if filters.is_empty() {
            return;
        }
        let peers: Vec<Arc<str>> = self
            .links
            .read()
            .iter()
            .filter(|(node, l)| **node != *holder && l.is_healthy())
            .map(|(node, _)| node.clone())
            .collect();
        let deadline = tokio::time::Instant::now() + self.takeover_timeout();
        let mut asked = Vec::new();
        for node in peers {
            let after = self.processed_marks.of(holder, &node);
            let ask = |request| SessionMessage::Recover {
                request,
                holder: holder.to_string(),
                after,
                filters: filters.clone(),
            };
            match self.ask(&node, ask) {
                Some((request, rx)) => asked.push((node, request, rx)),
                None => self.note_unanswered(client, &node, "recovery not sent"),
            }
        }
        let mut found = self.held_for(
            holder,
            self.processed_marks.of(holder, &self.node_id),
            &filters,
        );
        for (node, request, rx) in asked {
            match self.answer_from(&node, rx, deadline).await {
                Some(SessionMessage::Recovered { messages, .. }) => found.extend(messages),
                _ => {
                    self.handover.waiting.lock().remove(&request);
                    self.note_unanswered(client, &node, "no recovery answer in time");
                }
            }
        }
        let recovered = add_recovered(image, client, found);
        if recovered > 0 {
            Metrics::add(&self.metrics.recovered_messages, recovered as u64);
            tracing::info!(client_id = %crate::limits::printable(client), holder = %holder, messages = recovered, "messages the dead holder had not taken yet recovered from the other nodes' links");
        }
    }
}

/// Adds `found` to `image` as deliveries under its subscriptions (as the router would make
/// them), leaving out what the image has and repeats; returns how many were added.
fn add_recovered(image: &mut SessionImage, client: &str, found: Vec<WireMessage>) -> usize {
    // A message's identity across the cluster: its origin's stamp and the origin.
    let mut seen: HashSet<(u64, Option<String>)> = image
        .deliveries
        .iter()
        .map(|(d, _)| (d.message.stamp, d.message.origin.clone()))
        .collect();
    let mut added = 0;
    for m in found {
        if !seen.insert((m.stamp, Some(m.origin.clone()))) {
            continue;
        }
        let message = Arc::new(m.into_message());
        let Some(delivery) = delivery_for(&image.subscriptions, client, message) else {
            continue;
        };
        image
            .deliveries
            .push((crate::broker::replica::stored_delivery("", &delivery), None));
        added += 1;
    }
    added
}

/// The delivery the session's (non-shared) subscriptions make of `message`: the highest QoS
/// among those that match, Retain As Published if any says so, all their identifiers.
fn delivery_for(
    subscriptions: &[(String, StoredSubscription)],
    client: &str,
    message: Arc<crate::broker::Message>,
) -> Option<Delivery> {
    let own = message.publisher.as_deref() == Some(client);
    let mut best: Option<Delivery> = None;
    for (filter, sub) in subscriptions {
        if filter.starts_with("$share/")
            || !crate::topic::matches(filter, &message.topic)
            || (sub.no_local && own)
        {
            continue;
        }
        let qos = QoS::from_u8(sub.qos)
            .unwrap_or(QoS::AtMostOnce)
            .min(message.qos);
        let d = best.get_or_insert_with(|| Delivery {
            message: message.clone(),
            qos,
            retain: false,
            subscription_ids: Default::default(),
            shared_group: None,
            store_seq: 0,
        });
        d.qos = d.qos.max(qos);
        d.retain |= sub.retain_as_published && message.retain;
        d.subscription_ids.extend(sub.id);
    }
    best.filter(|d| d.qos != QoS::AtMostOnce)
}
