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

use super::session::Enqueued;
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
    cursor: AtomicUsize,
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
    /// Next member in turn, preferring connected ones; `skip` excludes one client.
    fn pick(&self, skip: Option<&str>) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let candidates = (0..n).map(|i| &self.members[(start + i) % n]);
        let mut fallback = None;
        for m in candidates {
            if Some(&*m.session.client_id) == skip {
                continue;
            }
            if m.session.is_online() {
                return Some(m);
            }
            fallback.get_or_insert(m);
        }
        fallback
    }
}

#[derive(Default)]
pub struct Router {
    trie: RwLock<Trie<SubscriberSet>>,
}

/// A client's merged view of all its subscriptions matching one topic.
struct Merged<'a> {
    subscriber: &'a Subscriber,
    qos: QoS,
    retain_as_published: bool,
    ids: SmallVec<[u32; 1]>,
}

impl Router {
    /// Number of distinct filters (shared groups counted under their filter).
    pub fn filter_count(&self) -> usize {
        self.trie.read().len()
    }

    /// Adds or replaces a subscription. Returns true if it replaced an existing one.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        shared: Option<&SharedFilter<'_>>,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> bool {
        let subscriber = Subscriber {
            session: session.clone(),
            options,
            id,
        };
        let mut trie = self.trie.write();
        match shared {
            None => {
                let set = trie.get_or_insert_with(filter, SubscriberSet::default);
                set.clients
                    .insert(session.client_id.clone(), subscriber)
                    .is_some()
            }
            Some(sf) => {
                let set = trie.get_or_insert_with(sf.filter, SubscriberSet::default);
                let group = set
                    .shared
                    .entry(sf.group.into())
                    .or_insert_with(|| SharedGroup {
                        key: filter.into(),
                        members: Vec::new(),
                        cursor: AtomicUsize::new(0),
                    });
                if let Some(m) = group
                    .members
                    .iter_mut()
                    .find(|m| m.session.client_id == session.client_id)
                {
                    *m = subscriber;
                    true
                } else {
                    group.members.push(subscriber);
                    false
                }
            }
        }
    }

    /// Removes a client's subscription; true if it existed.
    pub fn unsubscribe(
        &self,
        client_id: &str,
        filter: &str,
        shared: Option<&SharedFilter<'_>>,
    ) -> bool {
        let mut trie = self.trie.write();
        let mut existed = false;
        let inner = shared.map_or(filter, |s| s.filter);
        trie.edit(inner, |set| {
            match shared {
                None => existed = set.clients.remove(client_id).is_some(),
                Some(sf) => {
                    if let Some(group) = set.shared.get_mut(sf.group) {
                        let before = group.members.len();
                        group.members.retain(|m| &*m.session.client_id != client_id);
                        existed = group.members.len() != before;
                        if group.members.is_empty() {
                            set.shared.remove(sf.group);
                        }
                    }
                }
            }
            set.is_empty()
        });
        existed
    }

    /// Delivers `message` to every matching session; returns how many it was offered to.
    pub fn publish(&self, message: &Arc<Message>, metrics: &Metrics) -> usize {
        let trie = self.trie.read();
        let mut sets: SmallVec<[&SubscriberSet; 8]> = SmallVec::new();
        trie.for_each_match(&message.topic, |set| sets.push(set));
        let mut offered = 0;

        let with_clients = sets.iter().filter(|s| !s.clients.is_empty()).count();
        if with_clients == 1 {
            // The common case: one matching filter, no overlap to merge.
            let set = sets
                .iter()
                .find(|s| !s.clients.is_empty())
                .expect("counted above");
            for sub in set.clients.values() {
                let merged = Merged {
                    subscriber: sub,
                    qos: sub.options.qos,
                    retain_as_published: sub.options.retain_as_published,
                    ids: sub.id.into_iter().collect(),
                };
                offered += usize::from(Self::offer(message, merged, metrics));
            }
        } else if with_clients > 1 {
            let mut merged: HashMap<&str, Merged<'_>> = HashMap::new();
            for set in &sets {
                for (client, sub) in &set.clients {
                    let entry = merged.entry(client).or_insert_with(|| Merged {
                        subscriber: sub,
                        qos: QoS::AtMostOnce,
                        retain_as_published: false,
                        ids: SmallVec::new(),
                    });
                    // No Local on any matching subscription keeps its own rule.
                    if sub.options.no_local && message.publisher.as_deref() == Some(client) {
                        continue;
                    }
                    if sub.options.qos >= entry.qos {
                        entry.subscriber = sub;
                    }
                    entry.qos = entry.qos.max(sub.options.qos);
                    entry.retain_as_published |= sub.options.retain_as_published;
                    entry.ids.extend(sub.id);
                }
            }
            for m in merged.into_values() {
                offered += usize::from(Self::offer(message, m, metrics));
            }
        }

        for set in &sets {
            for group in set.shared.values() {
                if let Some(member) = group.pick(None) {
                    let delivery = Delivery {
                        message: message.clone(),
                        qos: message.qos.min(member.options.qos),
                        retain: member.options.retain_as_published && message.retain,
                        subscription_ids: member.id.into_iter().collect(),
                        shared_group: Some(group.key.clone()),
                    };
                    offered +=
                        usize::from(member.session.enqueue(delivery, metrics) == Enqueued::Queued);
                }
            }
        }
        offered
    }

    fn offer(message: &Arc<Message>, m: Merged<'_>, metrics: &Metrics) -> bool {
        let session = &m.subscriber.session;
        if m.subscriber.options.no_local
            && message.publisher.as_deref() == Some(&*session.client_id)
        {
            return false;
        }
        let delivery = Delivery {
            message: message.clone(),
            qos: message.qos.min(m.qos),
            retain: m.retain_as_published && message.retain,
            subscription_ids: m.ids,
            shared_group: None,
        };
        session.enqueue(delivery, metrics) == Enqueued::Queued
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
            .and_then(|g| g.pick(Some(from)))
            .filter(|m| m.session.is_online())
            .cloned();
        drop(trie);
        match target {
            Some(member) => {
                let d = Delivery {
                    qos: delivery.message.qos.min(member.options.qos),
                    ..delivery
                };
                member.session.enqueue(d, metrics);
                None
            }
            None => Some(delivery),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::session::ConnectionControl;
    use crate::codec::Properties;
    use bytes::Bytes;

    fn online(id: &str) -> Arc<Session> {
        let s = Session::new(id.into(), 100, false);
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
        s.state.lock().queue.drain(..).collect()
    }

    #[test]
    fn overlapping_subscriptions_merge_into_one_delivery() {
        let r = Router::default();
        let m = Metrics::default();
        let a = online("a");
        r.subscribe(&a, "x/+", None, opts(QoS::AtMostOnce), Some(1));
        r.subscribe(&a, "x/#", None, opts(QoS::ExactlyOnce), Some(2));
        assert_eq!(r.publish(&msg("x/y", QoS::ExactlyOnce, None), &m), 1);
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
        r.publish(&msg("t", QoS::ExactlyOnce, None), &m);
        r.publish(&msg("t", QoS::AtMostOnce, None), &m);
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
        assert_eq!(r.publish(&msg("t", QoS::AtLeastOnce, Some("a")), &m), 0);
        assert_eq!(r.publish(&msg("t", QoS::AtLeastOnce, Some("b")), &m), 1);
        assert!(queued(&a)[0].retain);
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
            r.publish(&msg("s/1", QoS::AtLeastOnce, None), &m);
        }
        let (na, nb, nc) = (queued(&a).len(), queued(&b).len(), queued(&c).len());
        assert_eq!(na + nb, 10);
        assert_eq!((na, nb), (5, 5), "round robin");
        assert_eq!(nc, 10);
        // An offline member is skipped while another is online.
        b.set_online(false);
        for _ in 0..4 {
            r.publish(&msg("s/1", QoS::AtLeastOnce, None), &m);
        }
        assert_eq!(queued(&a).len(), 4);
        assert!(r.unsubscribe("a", "$share/g/s/+", Some(&sf)));
        assert!(r.unsubscribe("b", "$share/g/s/+", Some(&sf)));
        assert!(!r.unsubscribe("b", "$share/g/s/+", Some(&sf)));
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
        r.publish(&msg("s", QoS::AtLeastOnce, None), &m);
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
        };
        assert!(
            r.reassign_shared(&from.client_id, d, &m).is_some(),
            "no other online member"
        );
    }
}
