//! The broker: sessions by client id, the router, retained messages and counters, and the
//! session lifecycle (attach on CONNECT, detach on close, expiry, wills). It speaks in
//! messages and sessions, never in sockets or bytes: `mqtt` drives it, `cluster` will feed it.

mod attach;
pub mod clock;
mod copies_wait;
pub mod handover;
mod hook;
pub mod journal;
mod message;
mod metrics;
pub mod packet_ids;
mod persist;
pub mod pressure;
pub mod queue;
pub mod replica;
mod retained;
mod route_gate;
mod router;
pub mod session;
mod shared_leave;
pub mod shared_pick;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;

pub use attach::{AttachRefused, Attached};
pub use copies_wait::{CopiesWait, PeerWait, Unconfirmed};
pub use handover::{Claim, ClaimOrder, SessionImage};
pub use hook::{BoxFuture, ClusterHook};
pub use message::{Delivery, Message, now_ms};
pub use metrics::Metrics;
pub use pressure::{Backlog, Held};
pub use retained::{RetainOutcome, RetainedLimits, RetainedStore};
pub use route_gate::{RouteGate, SubscribeAckTimeouts};
pub use router::{Audience, Fanned, GroupPick, Router};
use session::PendingWill;
pub use session::{ConnectionControl, Session};

use crate::codec::{QoS, SubscriptionOptions};
use crate::config::{Config, SlowSubscriber};
use crate::limits::{Limit, LimitCounters};
use crate::topic::{self, SharedFilter};

/// How long a new connection waits for the connection it takes over from to finish closing.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// A session ended for its owner's clean start: the owner, and when.
type EndedForOwner = (Arc<str>, std::time::Instant);

/// What became of a publish that entered here.
#[derive(Clone)]
pub struct Published {
    /// Sessions here, and nodes elsewhere, it was queued for.
    pub matched: usize,
    /// The last store op that keeps it (retained, or queued for a persistent session); an
    /// acknowledgement to its publisher waits for it with `persistence.sync = "always"`.
    /// 0: nothing was stored.
    pub ticket: u64,
    /// With session copies on other nodes: their confirmation of the changes it made, which
    /// an acknowledgement to its publisher waits for (`copies_wait`).
    pub copies: Option<CopiesWait>,
}

/// What the cluster did with a message that entered here.
#[derive(Default)]
pub struct Forwarded {
    /// The shared groups (`$share/{group}/{filter}`) this node delivers the message to.
    pub local_groups: Vec<Arc<str>>,
    /// Other nodes it was queued for because they have subscribers for it (not counting
    /// nodes that only store it as retained).
    pub remote_nodes: usize,
    /// One of those nodes took it within its link's window: the message is flowing, so
    /// holding the publisher back would starve that node's subscribers.
    pub remote_flowing: bool,
    /// Links to subscribed nodes that were past their window: the message is queued there,
    /// and the publisher waits for them when nothing else took it.
    pub full_links: Vec<Arc<dyn Backlog>>,
    /// With persistence on: the ticket of the last store write that keeps it for a peer
    /// (the publisher's acknowledgement waits for it).
    pub ticket: u64,
}

pub struct Broker {
    pub config: Arc<Config>,
    /// This node's id in the cluster (empty on a single node).
    pub node_id: Arc<str>,
    cluster: std::sync::OnceLock<Arc<dyn ClusterHook>>,
    pub sessions: DashMap<Arc<str>, Arc<Session>>,
    pub router: Router,
    pub retained: RetainedStore,
    /// Stamps this node's retained writes (and learns from other nodes' stamps).
    pub clock: clock::Hlc,
    pub metrics: Metrics,
    pub limits: LimitCounters,
    /// Who may connect (the front end asks; the broker itself never looks at credentials).
    pub auth: Arc<crate::auth::Authenticator>,
    /// The embedded store, when `persistence.enabled` (set once at start, before serving).
    store: std::sync::OnceLock<Arc<crate::store::Store>>,
    next_connection_id: AtomicU64,
    /// The reason a graceful stop gives its clients, set when the stop begins: 0x9C (use
    /// another server) while other nodes serve, else 0x8B (server shutting down).
    stop_reason: std::sync::OnceLock<u8>,
    /// Sessions ended here for an owner's clean start, with when (see `handover`): for a
    /// moment the client id stays theirs, while their new session is being made elsewhere.
    ended_for_owner: parking_lot::Mutex<std::collections::HashMap<Arc<str>, EndedForOwner>>,
    me: Weak<Broker>,
}

/// What a closing connection leaves behind for its session.
pub struct Detach {
    /// Session Expiry Interval now in force (0 ends the session; u32::MAX never expires).
    pub expiry_interval: u32,
    /// The will to publish (None after a normal DISCONNECT).
    pub will: Option<PendingWill>,
}

impl Broker {
    pub fn new(config: Config, node_id: Arc<str>) -> Arc<Broker> {
        let retained_limits = RetainedLimits {
            max_messages: config.mqtt.max_retained_messages,
            max_bytes: config.mqtt.max_retained_bytes,
            // Deletes need tombstones only to order writes between nodes.
            tombstones: config.cluster.enabled,
        };
        let slow_disconnect = config.mqtt.slow_subscriber == SlowSubscriber::Disconnect;
        let shared_strategy = config.mqtt.shared_subscription_strategy;
        let auth = crate::auth::Authenticator::from_config(&config.auth, config.certificates_name_users()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot load the password file: refusing every client until it loads (SIGHUP)");
            crate::auth::Authenticator::deny_all(&config.auth)
        });
        Arc::new_cyclic(|me| Broker {
            config: Arc::new(config),
            retained: RetainedStore::with_limits(node_id.clone(), retained_limits),
            node_id,
            cluster: std::sync::OnceLock::new(),
            sessions: DashMap::new(),
            router: Router::new(slow_disconnect, shared_strategy),
            clock: clock::Hlc::default(),
            metrics: Metrics::default(),
            limits: LimitCounters::default(),
            auth: Arc::new(auth),
            store: std::sync::OnceLock::new(),
            next_connection_id: AtomicU64::new(1),
            stop_reason: std::sync::OnceLock::new(),
            ended_for_owner: Default::default(),
            me: me.clone(),
        })
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sets the reason code this node's graceful stop gives its clients; later calls are
    /// ignored.
    pub fn set_stop_reason(&self, code: u8) {
        let _ = self.stop_reason.set(code);
    }

    /// The reason code a connection ended by a graceful stop gets.
    pub fn stop_reason(&self) -> u8 {
        self.stop_reason
            .get()
            .copied()
            .unwrap_or(crate::codec::reason::SERVER_SHUTTING_DOWN)
    }

    /// Connects the cluster; later calls are ignored.
    pub fn set_cluster(&self, cluster: Arc<dyn ClusterHook>) {
        let _ = self.cluster.set(cluster);
    }

    /// Publishes a message that entered at this node: stores or clears it as retained when
    /// flagged, routes it here and hands it to the cluster. Returns the number of local
    /// sessions it was queued for, or the limit that refused it (a retained message the
    /// store has no room for is neither stored nor delivered).
    pub fn publish(&self, message: Arc<Message>) -> Result<usize, Limit> {
        self.publish_noting(message, &mut None).map(|p| p.matched)
    }

    /// As `publish`, and pushes onto `pressure` what holds the publishing connection back
    /// (full local sessions, peer links past their window): it waits for their room before
    /// reading more.
    pub fn publish_noting(
        &self,
        message: Arc<Message>,
        pressure: &mut Option<&mut Held>,
    ) -> Result<Published, Limit> {
        Metrics::add(&self.metrics.messages_received[message.qos as usize], 1);
        let mut message = message;
        let mut ticket = 0;
        // Every message gets a stamp of its own: it orders retained writes, and it names the
        // message when a session moves between nodes (see `handover`).
        Arc::make_mut(&mut message).stamp = self.clock.now();
        if message.retain {
            ticket = self.retain(&message)?;
        }
        let Some(cluster) = self.cluster.get() else {
            let fanned =
                self.router
                    .publish_noting(&message, Audience::ALL, &self.metrics, pressure, false);
            return Ok(Published {
                matched: fanned.queued,
                ticket: ticket.max(fanned.ticket),
                copies: None,
            });
        };
        let local_groups = if self.router.has_shared() {
            self.router.matching_groups(&message.topic)
        } else {
            Vec::new()
        };
        let forwarded = cluster.forward(&message, local_groups);
        let audience = Audience {
            normal: true,
            groups: GroupPick::Only(&forwarded.local_groups),
        };
        let local = self.router.publish_noting(
            &message,
            audience,
            &self.metrics,
            pressure,
            forwarded.remote_flowing,
        );
        // As with local sessions: the publisher waits for full links only when no consumer
        // took the message, here or on another node.
        if !local.online
            && let Some(p) = pressure
        {
            for link in forwarded.full_links {
                p.push(link);
            }
        }
        // Subscribers on other nodes are subscribers too: a v5 publisher hears "no matching
        // subscribers" only when there are none anywhere.
        // Sessions here (the publisher's own, for its QoS 2 state) may be copied elsewhere:
        // the acknowledgement waits for the copies.
        let copies = (message.qos != QoS::AtMostOnce)
            .then(|| cluster.copies_wait())
            .flatten();
        Ok(Published {
            matched: local.queued + forwarded.remote_nodes,
            ticket: ticket.max(local.ticket).max(forwarded.ticket),
            copies,
        })
    }

    /// Stores or clears a retained message; a write past the store's bounds is counted,
    /// logged once per episode and refused. The ticket of the store op that keeps it (0:
    /// persistence is off, or nothing changed).
    fn retain(&self, message: &Arc<Message>) -> Result<u64, Limit> {
        match self.retained.set(message.clone()) {
            RetainOutcome::Refused(limit) => {
                let who = message.publisher.as_deref().unwrap_or("(a peer)");
                self.limits.hit(limit, who, "retained message refused");
                Err(limit)
            }
            RetainOutcome::Applied => Ok(self.store().map_or(0, |s| s.last_ticket())),
            RetainOutcome::Stale => Ok(0),
        }
    }

    /// Publishes a message relayed by another node: stored as retained if it is the latest
    /// write, delivered here to the audience that node chose, never forwarded again. Full
    /// sessions that hold the link back go into `pressure`, as for a local publisher: the link
    /// reads no more (and so acknowledges no more) until one has room.
    pub fn publish_from_peer(
        &self,
        message: Arc<Message>,
        normal: bool,
        groups: &[Arc<str>],
        pressure: &mut Held,
    ) -> usize {
        Metrics::add(&self.metrics.messages_from_peers, 1);
        if message.retain {
            self.clock.observe(message.stamp);
        }
        if message.retain && self.retain(&message).is_err() {
            // Refused here as at its origin had this node been full: not delivered either.
            return 0;
        }
        if !normal && groups.is_empty() {
            return 0;
        }
        let audience = Audience {
            normal,
            groups: GroupPick::Only(groups),
        };
        self.router
            .publish_noting(
                &message,
                audience,
                &self.metrics,
                &mut Some(pressure),
                false,
            )
            .queued
    }

    /// Publishes a message made by this node for its own clients only (never forwarded).
    pub fn publish_local(&self, message: Arc<Message>) -> usize {
        let mut message = message;
        if message.retain {
            Arc::make_mut(&mut message).stamp = self.clock.now();
        }
        if message.retain && self.retain(&message).is_err() {
            return 0;
        }
        self.router.publish(&message, Audience::ALL, &self.metrics)
    }

    /// Gives `message` to a connected member of shared group `group` on this node; false
    /// when none is connected here.
    pub fn deliver_to_local_group(&self, message: &Arc<Message>, group: &str) -> bool {
        if !self.router.group_connected(group) {
            return false;
        }
        let groups = [Arc::<str>::from(group)];
        let audience = Audience {
            normal: false,
            groups: GroupPick::Only(&groups),
        };
        self.router.publish(message, audience, &self.metrics) > 0
    }

    /// What a SUBACK for subscriptions to `keys` waits for in a cluster (see `RouteGate`).
    pub fn route_gate(&self, keys: &[&str]) -> Option<RouteGate> {
        self.cluster.get()?.route_gate(keys)
    }

    fn report_route(&self, key: &str) {
        if let Some(cluster) = self.cluster.get() {
            cluster.route_changed(key);
        }
    }

    /// Tells the cluster that shared group `key` may have gained or lost its last connected
    /// member here (other nodes then give it turns, or stop).
    fn report_group_presence(&self, key: &str) {
        if let Some(cluster) = self.cluster.get() {
            cluster.group_presence_changed(key);
        }
    }

    /// Marks `session` connected here or not, and reports its shared groups' presence.
    pub(crate) fn set_online(&self, session: &Session, online: bool) {
        session.set_online(online);
        if self.cluster.get().is_none() {
            return;
        }
        let groups: Vec<String> = session
            .state
            .lock()
            .subscriptions
            .keys()
            .filter(|k| matches!(topic::parse_shared(k), Ok(Some(_))))
            .cloned()
            .collect();
        for key in groups {
            self.report_group_presence(&key);
        }
    }

    /// Called by a connection as it closes. Does nothing to the session if another connection
    /// has taken it over meanwhile, except publish the closing connection's own will.
    pub fn detach(&self, session: &Arc<Session>, control: &ConnectionControl, detach: Detach) {
        let mut st = session.state.lock();
        let owned = st.connection.as_ref().is_some_and(|c| c.id == control.id);
        if !owned {
            // Taken over. A will without delay goes out now. One with a delay waits in the
            // session: the new connection cancels it if it resumes the session, and it is
            // published if the session ends instead (a clean-start takeover).
            match detach.will {
                Some(w) if w.delay == 0 || st.ended => {
                    drop(st);
                    self.publish_will(&session.client_id, w);
                }
                Some(w) => st.will = Some(w),
                None => {}
            }
            return;
        }
        st.connection = None;
        st.generation += 1;
        let generation = st.generation;
        st.expiry_interval = detach.expiry_interval;
        let shared = st.take_shared_unacknowledged();
        let ends = detach.expiry_interval == 0;
        let mut will_now = None;
        match detach.will {
            Some(w) if w.delay == 0 || ends => will_now = Some(w),
            Some(w) => st.will = Some(w),
            None => {}
        }
        let will_delay = st.will.as_ref().map(|w| w.delay);
        if let Some(j) = st.journal.as_ref().filter(|_| !ends) {
            j.meta(
                detach.expiry_interval,
                false,
                st.will.as_ref(),
                st.owner.as_deref(),
            );
        }
        drop(st);
        self.set_online(session, false);

        let kept = self.reassign_shared(session, shared);
        if ends {
            self.end_session(session);
        } else if !kept.is_empty() {
            session.requeue_front(kept);
        }
        if let Some(w) = will_now {
            self.publish_will(&session.client_id, w);
        }
        if !ends {
            self.arm_timers(session, generation, detach.expiry_interval, will_delay);
        }
    }

    /// Arms the one timer a disconnected session has: the will delay (when it is shorter
    /// than the expiry; otherwise the will goes out when the session ends), then the expiry.
    /// A reconnect aborts it, so reconnect loops leave no sleeping tasks behind.
    fn arm_timers(
        &self,
        session: &Arc<Session>,
        generation: u64,
        expiry: u32,
        will_delay: Option<u32>,
    ) {
        let will_delay = will_delay.filter(|d| *d < expiry);
        if will_delay.is_none() && expiry == u32::MAX {
            return;
        }
        let (me, held) = (self.me.clone(), session.clone());
        let task = tokio::spawn(async move {
            let session = held;
            let started = tokio::time::Instant::now();
            if let Some(delay) = will_delay {
                tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                let Some(broker) = me.upgrade() else { return };
                let will = {
                    let mut st = session.state.lock();
                    if st.generation != generation {
                        return;
                    }
                    st.will.take()
                };
                if let Some(w) = will {
                    broker.publish_will(&session.client_id, w);
                }
            }
            if expiry == u32::MAX {
                return;
            }
            tokio::time::sleep_until(started + Duration::from_secs(u64::from(expiry))).await;
            let Some(broker) = me.upgrade() else { return };
            if session.state.lock().generation == generation {
                tracing::debug!(client_id = %crate::limits::printable(&session.client_id), "session expired");
                broker.end_session(&session);
            }
        });
        let mut st = session.state.lock();
        if st.generation == generation {
            if let Some(old) = st.timer.replace(task.abort_handle()) {
                old.abort();
            }
        } else {
            // Reattached meanwhile: this timer is not needed.
            task.abort();
        }
    }

    /// Discards a session: no more deliveries, its subscriptions removed, its pending will
    /// published, its shared-subscription messages handed to other members.
    pub fn end_session(&self, session: &Arc<Session>) {
        let (subscriptions, will, shared) = {
            let mut st = session.state.lock();
            if st.ended {
                return;
            }
            st.ended = true;
            st.generation += 1;
            if let Some(timer) = st.timer.take() {
                timer.abort();
            }
            let shared = st.take_shared_unacknowledged();
            let lost = st.queue.len() + st.inflight.len();
            Metrics::add(&self.metrics.dropped_session_ended, lost as u64);
            st.queue.clear();
            st.inflight.clear();
            st.unsent_inflight = 0;
            if let Some(j) = st.journal.take() {
                j.gone();
            }
            (
                std::mem::take(&mut st.subscriptions),
                st.will.take(),
                shared,
            )
        };
        self.sessions
            .remove_if(&session.client_id, |_, s| Arc::ptr_eq(s, session));
        for filter in subscriptions.keys() {
            self.remove_route_entry(&session.client_id, filter);
        }
        let lost = self.reassign_shared(session, shared).len();
        Metrics::add(&self.metrics.dropped_session_ended, lost as u64);
        if let Some(w) = will {
            self.publish_will(&session.client_id, w);
        }
    }

    pub fn publish_will(&self, client_id: &Arc<str>, pending: PendingWill) {
        let w = pending.will;
        tracing::debug!(client_id = %crate::limits::printable(client_id), topic = %crate::limits::printable(&w.topic), "publishing will");
        let message = Message::new(
            w.topic.into(),
            w.payload,
            w.qos,
            w.retain,
            w.properties,
            Some(client_id.clone()),
        );
        // A refusal (the retained store is full) is counted and logged by `publish`.
        let _ = self.publish(Arc::new(message));
    }

    /// Adds a subscription for a session. The ticket of the store op that keeps it (0: the
    /// session is not stored); a SUBACK waits for it with `persistence.sync = "always"`.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        filter: &str,
        shared: Option<&SharedFilter<'_>>,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> u64 {
        let record = session::SubscriptionRecord { options, id };
        let ticket = {
            let mut st = session.state.lock();
            st.subscriptions.insert(filter.to_string(), record);
            st.journal
                .as_ref()
                .map_or(0, |j| j.subscribed(filter, &record))
        };
        let outcome = self.router.subscribe(session, filter, shared, options, id);
        if outcome.route_added {
            self.report_route(filter);
        }
        if shared.is_some() {
            self.report_group_presence(filter);
        }
        ticket
    }

    /// Removes a subscription: whether it existed, and the ticket of the store op (0: none).
    pub fn unsubscribe(&self, session: &Arc<Session>, filter: &str) -> (bool, u64) {
        let (had, ticket) = {
            let mut st = session.state.lock();
            let had = st.subscriptions.remove(filter).is_some();
            let ticket = match (&st.journal, had) {
                (Some(j), true) => j.unsubscribed(filter),
                _ => 0,
            };
            (had, ticket)
        };
        self.remove_route_entry(&session.client_id, filter);
        (had, ticket)
    }

    pub(crate) fn remove_route_entry(&self, client_id: &str, filter: &str) {
        let shared = topic::parse_shared(filter).ok().flatten();
        if self
            .router
            .unsubscribe(client_id, filter, shared.as_ref())
            .route_removed
        {
            self.report_route(filter);
        }
        if shared.is_some() {
            self.report_group_presence(filter);
        }
    }
}
