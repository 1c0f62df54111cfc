//! The broker's way into the cluster (`ClusterHook`): which nodes a message published here
//! goes to (those whose routes match, every node for a retained write, one node per shared
//! group), queued on their links with the store ticket its publisher's acknowledgement waits
//! for; and route changes (with the marks of shared groups with a member connected here)
//! pushed to every peer ahead of gossip.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::link::Queued;
use super::routes::{NodeList, RemoteGroup};
use super::wire::{self, WireMessage};
use super::{Cluster, groups};
use crate::broker::replica::{ReplicaNode, ReplicaOp};
use crate::broker::{
    BoxFuture, Claim, ClaimOrder, ClusterHook, Forwarded, Message, Metrics, RouteGate,
};
use crate::codec::QoS;
use crate::config::SubscribeAck;

impl ClusterHook for Cluster {
    fn forward(&self, message: &Arc<Message>, local_groups: Vec<(Arc<str>, bool)>) -> Forwarded {
        let matched = self.remote.match_topic(&message.topic);
        if matched.nodes.is_empty() && matched.groups.is_empty() && !message.retain {
            return Forwarded {
                local_groups: local_groups.into_iter().map(|(g, _)| g).collect(),
                ..Forwarded::default()
            };
        }
        let links = self.links.read();
        // node -> (ordinary subscribers wanted, shared groups it delivers)
        let mut targets: BTreeMap<Arc<str>, (bool, Vec<String>)> = BTreeMap::new();
        for n in &matched.nodes {
            targets.entry(n.clone()).or_default().0 = true;
        }
        if message.retain {
            // Retained messages are stored on every node, suspended ones included.
            for n in links.keys() {
                targets.entry(n.clone()).or_default();
            }
        }
        let mut forwarded = Forwarded::default();
        let chooser = groups::Chooser {
            strategy: self.shared_strategy,
            local_id: &self.node_id,
            publisher: message.publisher.as_deref(),
        };
        let picks = groups::pick_nodes(
            &mut self.group_turns.lock(),
            &chooser,
            local_groups,
            matched.groups,
            |n| links.get(n).is_some_and(|l| l.is_healthy()),
        );
        for (key, node) in picks {
            match node {
                None => forwarded.local_groups.push(key),
                Some(node) => targets.entry(node).or_default().1.push(key.to_string()),
            }
        }
        if targets.is_empty() {
            return forwarded;
        }
        let Some(wire) = WireMessage::from_message(message, &self.node_id) else {
            return forwarded;
        };
        let encoded = wire::encode_message(&wire);
        // Retained writes are reliable whatever their QoS: every node's store must get them.
        let reliable = message.qos != QoS::AtMostOnce || message.retain;
        for (node, (normal, groups)) in targets {
            let subscribed = normal || !groups.is_empty();
            let Some(link) = links.get(&node) else {
                Metrics::add(&self.metrics.relay_dropped, 1);
                tracing::debug!(node = %node, "routes for a node without a link; message not forwarded");
                continue;
            };
            let (queued, ticket) = link.send_publish(reliable, normal, groups, encoded.clone());
            forwarded.ticket = forwarded.ticket.max(ticket);
            if queued == Queued::Dropped {
                // Counted here, logged by the link once per episode.
                Metrics::add(&self.metrics.relay_dropped, 1);
                continue;
            }
            if !subscribed {
                continue;
            }
            forwarded.remote_nodes += 1;
            match queued {
                Queued::Flowing => forwarded.remote_flowing = true,
                Queued::PastWindow => forwarded.full_links.push(link.clone()),
                Queued::Parked | Queued::Dropped => {}
            }
        }
        forwarded
    }

    fn route_changed(&self, key: &str) {
        let Some(broker) = self.broker() else { return };
        // What is pushed is the router's state when the push is made, read under the routes'
        // lock, and pushes go out in version order: a concurrent last-unsubscribe and
        // first-subscribe of one filter cannot leave it advertised as absent.
        self.local.update(
            key,
            || broker.router.has_route(key),
            |version, present| self.push_route(version, key, present),
        );
        self.routes_dirty.notify_one();
    }

    fn group_presence_changed(&self, key: &str) {
        let Some(broker) = self.broker() else { return };
        let mark = super::routes::connected_mark(key);
        self.local.update_if_changed(
            &mark,
            || broker.router.group_connected(key),
            |version, present| self.push_route(version, &mark, present),
        );
        self.routes_dirty.notify_one();
    }

    fn hand_to_group(&self, message: &Arc<Message>, key: &str) -> bool {
        let Some(group) = self
            .remote
            .match_topic(&message.topic)
            .groups
            .into_iter()
            .find(|g| &*g.key == key)
        else {
            return false;
        };
        let links = self.links.read();
        let ready: NodeList = group
            .connected
            .into_iter()
            .filter(|n| links.get(n).is_some_and(|l| l.is_healthy()))
            .collect();
        if ready.is_empty() {
            return false;
        }
        let chooser = groups::Chooser {
            strategy: self.shared_strategy,
            local_id: &self.node_id,
            publisher: message.publisher.as_deref(),
        };
        let only_ready = RemoteGroup {
            key: group.key,
            connected: ready.clone(),
            nodes: ready,
        };
        let picks = groups::pick_nodes(
            &mut self.group_turns.lock(),
            &chooser,
            Vec::new(),
            vec![only_ready],
            |_| true,
        );
        let Some((_, Some(node))) = picks.into_iter().next() else {
            return false;
        };
        let (Some(link), Some(wire)) = (
            links.get(&node),
            WireMessage::from_message(message, &self.node_id),
        ) else {
            return false;
        };
        let encoded = wire::encode_message(&wire);
        let reliable = message.qos != QoS::AtMostOnce;
        let (queued, _) = link.send_publish(reliable, false, vec![key.to_string()], encoded);
        queued != Queued::Dropped
    }

    fn route_gate(&self, keys: &[&str]) -> Option<RouteGate> {
        if self.config.subscribe_ack == SubscribeAck::Local {
            return None;
        }
        self.handover_gate(keys)
    }

    fn handover_gate(&self, keys: &[&str]) -> Option<RouteGate> {
        for key in keys {
            // A subscriber that came second while the first one's route push is under way
            // (the router has the route, the push is not queued yet): push it again here,
            // so this SUBACK waits for it too. Pushes are idempotent.
            if !self.local.contains(key) {
                self.route_changed(key);
            }
        }
        let waits: Vec<_> = self
            .links
            .read()
            .values()
            .filter_map(|link| link.route_wait())
            .collect();
        if waits.is_empty() {
            return None;
        }
        Some(RouteGate {
            waits,
            deadline: tokio::time::Instant::now()
                + Duration::from_millis(self.config.subscribe_ack_timeout_ms),
            timeouts: self.metrics.subscribe_ack_timeouts.clone(),
        })
    }

    fn claim<'a>(
        &'a self,
        client_id: &'a Arc<str>,
        clean_start: bool,
        identity: Option<&'a str>,
    ) -> BoxFuture<'a, Claim> {
        Box::pin(self.claim_client(client_id, clean_start, identity))
    }

    fn release<'a>(
        &'a self,
        node: &'a Arc<str>,
        client_id: &'a str,
        order: &'a ClaimOrder,
    ) -> BoxFuture<'a, crate::broker::handover::Released> {
        Box::pin(self.release_from(node, client_id, order))
    }

    fn drain<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.drain_from_peers(None, client_id))
    }

    fn settle_claim(&self, client_id: &str, order: &ClaimOrder, identity: Option<&str>) -> bool {
        Cluster::settle_claim(self, client_id, order, identity)
    }

    fn admits_connect(&self) -> bool {
        Cluster::admits_connect(self)
    }

    fn replica_count(&self) -> usize {
        Cluster::replica_count(self)
    }

    fn replica_nodes(&self, client_id: &str) -> Vec<ReplicaNode> {
        Cluster::replica_nodes(self, client_id)
    }

    fn live_runs(&self) -> Vec<ReplicaNode> {
        Cluster::live_runs(self)
    }

    fn replicate(&self, nodes: &[ReplicaNode], client_id: &str, op: ReplicaOp) -> bool {
        Cluster::replicate(self, nodes, client_id, op)
    }

    fn note_stale_replica(&self) {
        self.replicas
            .stale
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn take_stale_replicas(&self) -> bool {
        self.replicas
            .stale
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    fn copies_wait(&self) -> Option<crate::broker::CopiesWait> {
        Cluster::copies_wait(self)
    }
}

impl Cluster {
    /// Pushes a change of this node's route `key` to every peer, counting a link that
    /// cannot take it (gossip repairs it).
    fn push_route(&self, version: u64, key: &str, present: bool) {
        for link in self.links.read().values() {
            if !link.send_route(version, key, present) {
                Metrics::add(&self.metrics.relay_dropped, 1);
            }
        }
    }
}
