//! The router: which sessions a topic goes to. It keeps the subscription trie (ordinary
//! subscriptions keyed by client id, shared subscriptions as groups) and fans a message out to
//! the matching sessions, merging overlapping subscriptions of one client into one delivery
//! with the highest QoS and every subscription identifier.
//!
//! Lock order: the trie lock is taken before any session lock, never after; code holding a
//! session lock must not call into the router.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;
use smallvec::SmallVec;

use super::pressure::Held;
use super::session::Offer;
use super::shared_pick::{Candidate, GroupTurn, SharedStrategy};
use super::{Delivery, Message, Metrics, Session};
use crate::codec::{QoS, SubscriptionOptions};
use crate::topic::{SharedFilter, Trie};

#[derive(Debug, Clone)]
struct Subscriber {
    session: Arc<Session>,
    options: SubscriptionOptions,
    id: Option<u32>,
}

#[derive(Debug)]
struct SharedGroup {
    /// `$share/{group}/{filter}`, carried by deliveries so they can be handed on.
    key: Arc<str>,
    members: Vec<Subscriber>,
    /// What the strategy remembers (turn, sticky pick).
    turn: parking_lot::Mutex<GroupTurn>,
}

#[derive(Debug, Default)]
struct SubscriberSet {
    clients: HashMap<Arc<str>, Subscriber>,
    shared: HashMap<Box<str>, SharedGroup>,
}

impl SubscriberSet {
    fn is_empty(&self) -> bool {
        self.clients.is_empty() && self.shared.is_empty()
    }
}

impl SharedGroup {
    /// The member that gets a message of `publisher` by `strategy`, connected ones first;
    /// `skip` excludes one client.
    fn pick(
        &self,
        strategy: SharedStrategy,
        skip: Option<&str>,
        publisher: Option<&str>,
    ) -> Option<&Subscriber> {
        let members: SmallVec<[&Subscriber; 8]> = self
            .members
            .iter()
            .filter(|m| Some(&*m.session.client_id) != skip)
            .collect();
        let candidates: SmallVec<[Candidate<'_>; 8]> = members
            .iter()
            .map(|m| Candidate {
                key: &m.session.client_id,
                ready: m.session.is_online(),
                local: true,
            })
            .collect();
        let i = self.turn.lock().choose(strategy, &candidates, publisher)?;
        Some(members[i])
    }
}

#[derive(Default)]
pub struct Router {
    trie: RwLock<Trie<SubscriberSet>>,
    shared_groups: AtomicUsize,
    /// `mqtt.slow_subscriber = "disconnect"`.
    slow_subscriber_disconnect: bool,
    /// `mqtt.shared_subscription_strategy`.
    shared_strategy: SharedStrategy,
}

/// Which of the matching subscribers a publish goes to.
#[derive(Debug, Clone, Copy)]
pub struct Audience<'a> {
    /// Ordinary (non-shared) subscriptions.
    pub normal: bool,
    pub groups: GroupPick<'a>,
}

impl Audience<'_> {
    /// Everyone: a single node, or a message this node alone serves.
    pub const ALL: Audience<'static> = Audience {
        normal: true,
        groups: GroupPick::All,
    };
}

/// Which shared groups get a copy.
#[derive(Debug, Clone, Copy)]
pub enum GroupPick<'a> {
    All,
    /// Only these `$share/{group}/{filter}` keys (the cluster chose this node for them).
    Only(&'a [Arc<str>]),
}

/// What a publish did here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fanned {
    /// Sessions it was queued for.
    pub queued: usize,
    /// A connected session (or a consumer elsewhere, as the caller said) took it.
    pub online: bool,
    /// The last store op that keeps it for a persistent session (0: none stored it).
    pub ticket: u64,
}

/// What a subscribe changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The client already had this filter (its options were replaced).
    pub replaced: bool,
    /// First subscriber for this filter (or shared group) on this node: a new route.
    pub route_added: bool,
}

/// What an unsubscribe changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribed {
    pub existed: bool,
    /// Last subscriber for this filter (or shared group) on this node is gone.
    pub route_removed: bool,
}

/// A client's merged view of all its subscriptions matching one topic.
struct Merged<'a> {
    subscriber: &'a Subscriber,
    qos: QoS,
    retain_as_published: bool,
    ids: SmallVec<[u32; 1]>,
}

impl Router {
    pub fn new(slow_subscriber_disconnect: bool, shared_strategy: SharedStrategy) -> Router {
        Router {
            trie: Default::default(),
            shared_groups: Default::default(),
            slow_subscriber_disconnect,
            shared_strategy,
        }
    }

    /// Number of distinct filters (shared groups counted under their filter).
    pub fn filter_count(&self) -> usize {
        self.trie.read().len()
    }

    /// Adds or replaces a subscription (`filter` as subscribed, `$share/...` included).
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        shared: Option<&SharedFilter<'_>>,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> Subscribed {
        let subscriber = Subscriber {
            session: session.clone(),
            options,
            id,
        };
        let mut trie = self.trie.write();
        match shared {
            None => {
                let set = trie.get_or_insert_with(filter, SubscriberSet::default);
                let route_added = set.clients.is_empty();
                let replaced = set
                    .clients
                    .insert(session.client_id.clone(), subscriber)
                    .is_some();
                Subscribed {
                    replaced,
                    route_added,
                }
            }
            Some(sf) => {
                let set = trie.get_or_insert_with(sf.filter, SubscriberSet::default);
                let route_added = !set.shared.contains_key(sf.group);
                let group = set
                    .shared
                    .entry(sf.group.into())
                    .or_insert_with(|| SharedGroup {
                        key: filter.into(),
                        members: Vec::new(),
                        turn: Default::default(),
                    });
                let existing = group
                    .members
                    .iter_mut()
                    .find(|m| m.session.client_id == session.client_id);
                let replaced = match existing {
                    Some(m) => {
                        *m = subscriber;
                        true
                    }
                    None => {
                        group.members.push(subscriber);
                        false
                    }
                };
                if route_added {
                    self.shared_groups.fetch_add(1, Ordering::Relaxed);
                }
                Subscribed {
                    replaced,
                    route_added,
                }
            }
        }
    }

    /// Removes a client's subscription.
    pub fn unsubscribe(
        &self,
        client_id: &str,
        filter: &str,
        shared: Option<&SharedFilter<'_>>,
    ) -> Unsubscribed {
        let mut trie = self.trie.write();
        let mut out = Unsubscribed {
            existed: false,
            route_removed: false,
        };
        let inner = shared.map_or(filter, |s| s.filter);
        trie.edit(inner, |set| {
            match shared {
                None => {
                    out.existed = set.clients.remove(client_id).is_some();
                    out.route_removed = out.existed && set.clients.is_empty();
                }
                Some(sf) => {
                    if let Some(group) = set.shared.get_mut(sf.group) {
                        let before = group.members.len();
                        group.members.retain(|m| &*m.session.client_id != client_id);
                        out.existed = group.members.len() != before;
                        if group.members.is_empty() {
                            set.shared.remove(sf.group);
                            out.route_removed = true;
                            self.shared_groups.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            set.is_empty()
        });
        out
    }

    /// Whether any shared subscription exists on this node.
    pub fn has_shared(&self) -> bool {
        self.shared_groups.load(Ordering::Relaxed) > 0
    }

    /// The shared groups (`$share/{group}/{filter}`) with members here that match `topic`,
    /// each with whether one of its members is connected.
    pub fn matching_groups(&self, topic: &str) -> Vec<(Arc<str>, bool)> {
        let trie = self.trie.read();
        let mut out = Vec::new();
        trie.for_each_match(topic, |set| {
            out.extend(set.shared.values().map(|g| {
                let online = g.members.iter().any(|m| m.session.is_online());
                (g.key.clone(), online)
            }))
        });
        out
    }

    /// Whether shared group `key` (`$share/{group}/{filter}`) has a member connected here.
    pub fn group_connected(&self, key: &str) -> bool {
        let Ok(Some(shared)) = crate::topic::parse_shared(key) else {
            return false;
        };
        let trie = self.trie.read();
        trie.get(shared.filter)
            .and_then(|set| set.shared.get(shared.group))
            .is_some_and(|g| g.members.iter().any(|m| m.session.is_online()))
    }

    /// Whether `key` (a filter, or `$share/{group}/{filter}`) has subscribers here.
    pub fn has_route(&self, key: &str) -> bool {
        let shared = crate::topic::parse_shared(key).ok().flatten();
        let filter = shared.as_ref().map_or(key, |s| s.filter);
        let trie = self.trie.read();
        trie.get(filter).is_some_and(|set| match &shared {
            None => !set.clients.is_empty(),
            Some(sf) => set.shared.contains_key(sf.group),
        })
    }

    /// Delivers `message` to the matching sessions `audience` selects; returns how many it was
    /// queued for.
    pub fn publish(
        &self,
        message: &Arc<Message>,
        audience: Audience<'_>,
        metrics: &Metrics,
    ) -> usize {
        self.publish_noting(message, audience, metrics, &mut None, false)
            .queued
    }

    /// As `publish`, for a message whose publisher can be held back: `pressure` receives the
    /// sessions it must wait for (see `Fanout::finish`). `taken_elsewhere`: a consumer outside
    /// this router (another node) took the message, so holding the publisher would starve it.
    pub fn publish_noting(
        &self,
        message: &Arc<Message>,
        audience: Audience<'_>,
        metrics: &Metrics,
        pressure: &mut Option<&mut Held>,
        taken_elsewhere: bool,
    ) -> Fanned {
        let trie = self.trie.read();
        let mut sets: SmallVec<[&SubscriberSet; 8]> = SmallVec::new();
        trie.for_each_match(&message.topic, |set| sets.push(set));
        let own = |client: &str| message.publisher.as_deref() == Some(client);
        let mut fanout = Fanout {
            message,
            metrics,
            queued: 0,
            online_queued: taken_elsewhere,
            full: SmallVec::new(),
            ticket: 0,
        };

        let with_clients = if audience.normal {
            sets.iter().filter(|s| !s.clients.is_empty()).count()
        } else {
            0
        };
        if with_clients == 1 {
            // The common case: one matching filter, no overlap to merge.
            let set = sets
                .iter()
                .find(|s| !s.clients.is_empty())
                .expect("counted above");
            for (client, sub) in &set.clients {
                if sub.options.no_local && own(client) {
                    continue;
                }
                fanout.offer(Merged {
                    subscriber: sub,
                    qos: sub.options.qos,
                    retain_as_published: sub.options.retain_as_published,
                    ids: sub.id.into_iter().collect(),
                });
            }
        } else if with_clients > 1 {
            let mut merged: HashMap<&str, Merged<'_>> = HashMap::new();
            for set in &sets {
                for (client, sub) in &set.clients {
                    // No Local on one subscription does not stop another that matches.
                    if sub.options.no_local && own(client) {
                        continue;
                    }
                    let entry = merged.entry(client).or_insert_with(|| Merged {
                        subscriber: sub,
                        qos: QoS::AtMostOnce,
                        retain_as_published: false,
                        ids: SmallVec::new(),
                    });
                    if sub.options.qos >= entry.qos {
                        entry.subscriber = sub;
                    }
                    entry.qos = entry.qos.max(sub.options.qos);
                    entry.retain_as_published |= sub.options.retain_as_published;
                    entry.ids.extend(sub.id);
                }
            }
            for m in merged.into_values() {
                fanout.offer(m);
            }
        }

        for set in &sets {
            for group in set.shared.values() {
                if let GroupPick::Only(keys) = audience.groups
                    && !keys.iter().any(|k| **k == *group.key)
                {
                    continue;
                }
                if let Some(member) =
                    group.pick(self.shared_strategy, None, message.publisher.as_deref())
                {
                    let delivery = Delivery {
                        message: message.clone(),
                        qos: message.qos.min(member.options.qos),
                        retain: member.options.retain_as_published && message.retain,
                        subscription_ids: member.id.into_iter().collect(),
                        shared_group: Some(group.key.clone()),
                        store_seq: 0,
                    };
                    fanout.deliver(&member.session, delivery);
                }
            }
        }
        fanout.finish(self.slow_subscriber_disconnect, pressure)
    }

    /// Hands a shared-subscription delivery that `from` did not receive to another member of
    /// its group. Gives it back when no other member is connected.
    pub fn reassign_shared(
        &self,
        from: &str,
        delivery: Delivery,
        metrics: &Metrics,
    ) -> Option<Delivery> {
        let key = delivery.shared_group.clone()?;
        let Ok(Some(sf)) = crate::topic::parse_shared(&key) else {
            return Some(delivery);
        };
        let trie = self.trie.read();
        let target = trie
            .get(sf.filter)
            .and_then(|set| set.shared.get(sf.group))
            .and_then(|g| {
                g.pick(
                    self.shared_strategy,
                    Some(from),
                    delivery.message.publisher.as_deref(),
                )
            })
            .filter(|m| m.session.is_online())
            .cloned();
        drop(trie);
        match target {
            Some(member) => {
                // A copy of its own for the new member (stored in its journal, if any).
                let d = Delivery {
                    qos: delivery.message.qos.min(member.options.qos),
                    store_seq: 0,
                    ..delivery
                };
                // Already admitted once: it may not hold anyone back now.
                member.session.offer(d, false, metrics);
                None
            }
            None => Some(delivery),
        }
    }
}

/// One message on its way to the matching sessions: who queued it, and who was full.
struct Fanout<'m> {
    message: &'m Arc<Message>,
    metrics: &'m Metrics,
    queued: usize,
    /// A connected session queued it: holding the publisher back would starve that one.
    online_queued: bool,
    full: SmallVec<[(Arc<Session>, Delivery); 2]>,
    /// The last store op among the sessions that stored it.
    ticket: u64,
}

impl Fanout<'_> {
    fn offer(&mut self, m: Merged<'_>) {
        let delivery = Delivery {
            message: self.message.clone(),
            qos: self.message.qos.min(m.qos),
            retain: m.retain_as_published && self.message.retain,
            subscription_ids: m.ids,
            shared_group: None,
            store_seq: 0,
        };
        self.deliver(&m.subscriber.session, delivery);
    }

    fn deliver(&mut self, session: &Arc<Session>, delivery: Delivery) {
        // A client is never held back by its own session: it would stop reading the very
        // acknowledgements that make room there.
        let may_hold = self.message.publisher.as_deref() != Some(&*session.client_id);
        match session.offer(delivery, may_hold, self.metrics) {
            Offer::Queued { online, ticket } => {
                self.queued += 1;
                self.online_queued |= online;
                self.ticket = self.ticket.max(ticket);
            }
            Offer::Full(d) => self.full.push((session.clone(), d)),
            Offer::Dropped | Offer::SessionEnded => {}
        }
    }

    /// Settles the sessions that were full. When no connected session took the message,
    /// holding the publisher back starves nobody: the full ones queue it past their bound (up
    /// to the hard cap) and go into `pressure`, and the publisher is read again once one of
    /// them has room. (A message with no connection to hold, from a peer or the broker itself,
    /// queues the same way.) When another connected session took it, the full ones are slow
    /// subscribers: their copy is dropped (or they are disconnected) so they cannot slow the
    /// others down.
    fn finish(mut self, slow_disconnect: bool, pressure: &mut Option<&mut Held>) -> Fanned {
        let mut queued = self.queued;
        let hold = !self.online_queued;
        for (session, delivery) in std::mem::take(&mut self.full) {
            if !hold {
                session.overflow(delivery, slow_disconnect, self.metrics);
                continue;
            }
            if let Some(ticket) = session.admit_under_pressure(delivery, self.metrics) {
                queued += 1;
                self.ticket = self.ticket.max(ticket);
                if let Some(p) = pressure {
                    p.push(session);
                }
            }
        }
        Fanned {
            queued,
            online: self.online_queued,
            ticket: self.ticket,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::queue::QueueBounds;
    use crate::broker::session::ConnectionControl;
    use crate::codec::Properties;
    use bytes::Bytes;

    fn online(id: &str) -> Arc<Session> {
        let s = Session::new(id.into(), QueueBounds::messages(100), false);
        s.state.lock().connection = Some(ConnectionControl::new(1));
        s.set_online(true);
        s
    }

    fn msg(topic: &str, qos: QoS, publisher: Option<&str>) -> Arc<Message> {
        Arc::new(Message::new(
            topic.into(),
            Bytes::from_static(b"p"),
            qos,
            true,
            Properties::default(),
            publisher.map(Arc::from),
        ))
    }

    fn opts(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            ..Default::default()
        }
    }

    fn queued(s: &Session) -> Vec<Delivery> {
        s.state.lock().queue.extract(|_| true)
    }

    #[test]
    fn overlapping_subscriptions_merge_into_one_delivery() {
        let r = Router::default();
        let m = Metrics::default();
        let a = online("a");
        r.subscribe(&a, "x/+", None, opts(QoS::AtMostOnce), Some(1));
        r.subscribe(&a, "x/#", None, opts(QoS::ExactlyOnce), Some(2));
        assert_eq!(
            r.publish(&msg("x/y", QoS::ExactlyOnce, None), Audience::ALL, &m),
            1
        );
        let got = queued(&a);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].qos, QoS::ExactlyOnce);
        let mut ids = got[0].subscription_ids.to_vec();
        ids.sort();
        assert_eq!(ids, [1, 2]);
        assert!(!got[0].retain, "retain cleared without Retain As Published");
    }

    #[test]
    fn qos_is_the_minimum_of_publish_and_subscription() {
        let r = Router::default();
        let m = Metrics::default();
        let a = online("a");
        r.subscribe(&a, "t", None, opts(QoS::AtLeastOnce), None);
        r.publish(&msg("t", QoS::ExactlyOnce, None), Audience::ALL, &m);
        r.publish(&msg("t", QoS::AtMostOnce, None), Audience::ALL, &m);
        let got: Vec<QoS> = queued(&a).iter().map(|d| d.qos).collect();
        assert_eq!(got, [QoS::AtLeastOnce, QoS::AtMostOnce]);
    }

    #[test]
    fn no_local_and_retain_as_published() {
        let r = Router::default();
        let m = Metrics::default();
        let a = online("a");
        let o = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: 0,
        };
        r.subscribe(&a, "t", None, o, None);
        assert_eq!(
            r.publish(&msg("t", QoS::AtLeastOnce, Some("a")), Audience::ALL, &m),
            0
        );
        assert_eq!(
            r.publish(&msg("t", QoS::AtLeastOnce, Some("b")), Audience::ALL, &m),
            1
        );
        assert!(queued(&a)[0].retain);
    }

    #[test]
    fn route_transitions_are_reported_once_per_filter() {
        let r = Router::default();
        let (a, b) = (online("a"), online("b"));
        assert!(
            r.subscribe(&a, "t/#", None, opts(QoS::AtMostOnce), None)
                .route_added
        );
        assert!(
            !r.subscribe(&b, "t/#", None, opts(QoS::AtMostOnce), None)
                .route_added
        );
        let again = r.subscribe(&b, "t/#", None, opts(QoS::AtLeastOnce), None);
        assert_eq!(
            again,
            Subscribed {
                replaced: true,
                route_added: false
            }
        );
        assert!(!r.unsubscribe("a", "t/#", None).route_removed);
        assert!(r.unsubscribe("b", "t/#", None).route_removed);
        let sf = SharedFilter {
            group: "g",
            filter: "t/#",
        };
        assert!(
            r.subscribe(&a, "$share/g/t/#", Some(&sf), opts(QoS::AtMostOnce), None)
                .route_added
        );
        assert!(r.has_shared());
        assert_eq!(
            r.matching_groups("t/x"),
            vec![(Arc::<str>::from("$share/g/t/#"), true)]
        );
        assert!(r.has_route("$share/g/t/#"));
        assert!(!r.has_route("$share/h/t/#"));
        assert!(!r.has_route("t/#"), "its ordinary subscribers are gone");
        a.set_online(false);
        assert_eq!(
            r.matching_groups("t/x"),
            vec![(Arc::<str>::from("$share/g/t/#"), false)],
            "no member connected"
        );
        assert!(r.unsubscribe("a", "$share/g/t/#", Some(&sf)).route_removed);
        assert!(!r.has_shared());
        assert!(!r.has_route("$share/g/t/#"));
    }

    #[test]
    fn audience_selects_normal_and_groups() {
        let r = Router::default();
        let m = Metrics::default();
        let (a, b) = (online("a"), online("b"));
        r.subscribe(&a, "t", None, opts(QoS::AtMostOnce), None);
        let sf = SharedFilter {
            group: "g",
            filter: "t",
        };
        r.subscribe(&b, "$share/g/t", Some(&sf), opts(QoS::AtMostOnce), None);
        let none: [Arc<str>; 0] = [];
        let only_normal = Audience {
            normal: true,
            groups: GroupPick::Only(&none),
        };
        assert_eq!(
            r.publish(&msg("t", QoS::AtMostOnce, None), only_normal, &m),
            1
        );
        let g = [Arc::<str>::from("$share/g/t")];
        let only_group = Audience {
            normal: false,
            groups: GroupPick::Only(&g),
        };
        assert_eq!(
            r.publish(&msg("t", QoS::AtMostOnce, None), only_group, &m),
            1
        );
        assert_eq!((queued(&a).len(), queued(&b).len()), (1, 1));
    }

    #[test]
    fn shared_groups_get_one_copy_each_spread_over_members() {
        let r = Router::default();
        let m = Metrics::default();
        let (a, b, c) = (online("a"), online("b"), online("c"));
        let sf = SharedFilter {
            group: "g",
            filter: "s/+",
        };
        r.subscribe(&a, "$share/g/s/+", Some(&sf), opts(QoS::AtLeastOnce), None);
        r.subscribe(&b, "$share/g/s/+", Some(&sf), opts(QoS::AtLeastOnce), None);
        r.subscribe(&c, "s/+", None, opts(QoS::AtLeastOnce), None);
        for _ in 0..10 {
            r.publish(&msg("s/1", QoS::AtLeastOnce, None), Audience::ALL, &m);
        }
        let (na, nb, nc) = (queued(&a).len(), queued(&b).len(), queued(&c).len());
        assert_eq!(na + nb, 10);
        assert_eq!((na, nb), (5, 5), "round robin");
        assert_eq!(nc, 10);
        // An offline member is skipped while another is online.
        b.set_online(false);
        for _ in 0..4 {
            r.publish(&msg("s/1", QoS::AtLeastOnce, None), Audience::ALL, &m);
        }
        assert_eq!(queued(&a).len(), 4);
        let gone = |existed, route_removed| Unsubscribed {
            existed,
            route_removed,
        };
        assert_eq!(
            r.unsubscribe("a", "$share/g/s/+", Some(&sf)),
            gone(true, false)
        );
        assert_eq!(
            r.unsubscribe("b", "$share/g/s/+", Some(&sf)),
            gone(true, true)
        );
        assert_eq!(
            r.unsubscribe("b", "$share/g/s/+", Some(&sf)),
            gone(false, false)
        );
        assert_eq!(r.filter_count(), 1);
    }

    #[test]
    fn reassign_moves_a_shared_delivery_to_another_online_member() {
        let r = Router::default();
        let m = Metrics::default();
        let (a, b) = (online("a"), online("b"));
        let sf = SharedFilter {
            group: "g",
            filter: "s",
        };
        r.subscribe(&a, "$share/g/s", Some(&sf), opts(QoS::AtLeastOnce), None);
        r.subscribe(&b, "$share/g/s", Some(&sf), opts(QoS::AtLeastOnce), None);
        r.publish(&msg("s", QoS::AtLeastOnce, None), Audience::ALL, &m);
        let (from, to) = if a.state.lock().queue.is_empty() {
            (&b, &a)
        } else {
            (&a, &b)
        };
        let d = queued(from).pop().unwrap();
        assert!(r.reassign_shared(&from.client_id, d, &m).is_none());
        assert_eq!(queued(to).len(), 1);
        to.set_online(false);
        let d = Delivery {
            message: msg("s", QoS::AtLeastOnce, None),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: SmallVec::new(),
            shared_group: Some("$share/g/s".into()),
            store_seq: 0,
        };
        assert!(
            r.reassign_shared(&from.client_id, d, &m).is_some(),
            "no other online member"
        );
    }
}
