//! A connection attaching to its client id's session (CONNECT): the claim on the client id
//! across the cluster, the ownership check (`auth.clientid_ownership`), taking the session
//! over from a connection that has it here, or making a new one, owned by the identity that
//! made it.

use std::sync::Arc;

use super::handover::Released;
use super::session::{self, PendingWill};
use super::{Broker, ConnectionControl, Metrics, Session, TAKEOVER_WAIT, journal, queue};
use crate::codec::reason;

/// The result of attaching a connection to a session.
pub struct Attached {
    pub session: Arc<Session>,
    pub session_present: bool,
}

/// Why a connection could not attach to its client id's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachRefused {
    /// The session (live or stored, here or on another node) belongs to another identity
    /// (`auth.clientid_ownership = "enforce"`).
    OwnedByAnother,
}

/// What a connection attaching brings (see `Broker::attach`).
pub(super) struct Attaching<'a> {
    clean_start: bool,
    control: &'a Arc<ConnectionControl>,
    expiry_interval: u32,
    will: Option<&'a PendingWill>,
    identity: Option<&'a Arc<str>>,
    /// Who owns the session if this attach makes it.
    owner: Option<Arc<str>>,
}

impl Broker {
    /// Attaches connection `control` to the session for `client_id`, taking it over from any
    /// connection that has it, and starting a new session when asked or when none exists.
    /// `expiry_interval` and `will` are the connection's: with persistence on, a session that
    /// outlives its connection is stored from now on, with them.
    /// In a cluster the client id is claimed from every live node first: a connection for it
    /// elsewhere is closed (0x8E), and a session held elsewhere comes here (or ends there, for
    /// a clean start).
    /// `identity` is the connection's verified user name (None: anonymous): with
    /// `auth.clientid_ownership = "enforce"` a session made under another identity, here or
    /// on any node, is left alone and the connection refused, before anything is touched.
    pub async fn attach(
        &self,
        client_id: &Arc<str>,
        clean_start: bool,
        control: &Arc<ConnectionControl>,
        (expiry_interval, will): (u32, Option<&PendingWill>),
        identity: Option<&Arc<str>>,
    ) -> Result<Attached, AttachRefused> {
        let started = tokio::time::Instant::now();
        if self.owned_by_another(client_id, identity.map(|i| &**i)) {
            return Err(AttachRefused::OwnedByAnother);
        }
        let cluster = self.cluster.get().cloned();
        let claim = match &cluster {
            Some(cluster) => {
                let claim = cluster
                    .claim(client_id, clean_start, identity.map(|i| &**i))
                    .await;
                if claim.owned_elsewhere || claim.contested {
                    // Another user's session elsewhere (or another user's connect claiming the
                    // id at the same moment, whose session may be on its way) refuses this
                    // connect, unless this connect has shown the id is its to take: a session
                    // it may take here, one offered elsewhere, or one ended for its clean start.
                    // Two sessions under two users for one client id (made on either side of a
                    // partition) each stay their owner's.
                    let shown = self.takeable_here(client_id, identity.map(|i| &**i))
                        || !claim.holders.is_empty()
                        || claim.ended;
                    if !shown {
                        cluster.settle_claim(client_id, &claim.order, identity.map(|i| &**i));
                        return Err(AttachRefused::OwnedByAnother);
                    }
                    if claim.owned_elsewhere {
                        tracing::warn!(client_id = %crate::limits::printable(client_id), "another user's session for this client id is held at another node (made there during a partition?): each stays its owner's");
                    }
                }
                Some(claim)
            }
            None => None,
        };
        // A session brought from other nodes keeps its owner: the connecting user's if any of
        // them was theirs (the others belong to nobody), else nobody's; a new one is the
        // connecting user's.
        let owner = match claim.as_ref().map(|c| &c.holders) {
            Some(holders) if !holders.is_empty() => identity
                .filter(|i| holders.iter().any(|(_, _, o)| o.as_deref() == Some(&***i)))
                .cloned(),
            _ => identity.cloned(),
        };
        let attaching = Attaching {
            clean_start,
            control,
            expiry_interval,
            will,
            identity,
            owner,
        };
        let mut attached = match self.attach_here(client_id, &attaching).await {
            Ok(attached) => attached,
            Err(refused) => {
                if let (Some(cluster), Some(claim)) = (&cluster, &claim) {
                    cluster.settle_claim(client_id, &claim.order, identity.map(|i| &**i));
                }
                return Err(refused);
            }
        };
        let (Some(cluster), Some(claim)) = (cluster, claim) else {
            return Ok(attached);
        };
        attached.session.state.lock().claim = Some(claim.order.clone());
        // A session this claim was offered and then did not get: a newer claim took it (of
        // another user, whose claim did not supersede this one): this connection goes.
        let mut taken = false;
        if !claim.superseded {
            for (node, subscriptions, _) in &claim.holders {
                self.subscribe_for_handover(&cluster, &attached.session, subscriptions)
                    .await;
                let released = cluster.release(node, client_id, &claim.order).await;
                if matches!(released, Released::Gone) {
                    taken = self.ownership_enforced();
                }
                if let Released::Image(image) = released {
                    let moved = self.adopt(&attached.session, image);
                    // Copies of the image's messages still on their way here are dropped
                    // until every peer has sent all it sent before now.
                    let (cluster, session) = (cluster.clone(), attached.session.clone());
                    tokio::spawn(async move {
                        cluster.drain(&session.client_id).await;
                        session.state.lock().moved_in = None;
                    });
                    tracing::info!(client_id = %crate::limits::printable(client_id), from = %node, deliveries = moved, ms = started.elapsed().as_millis() as u64, "session moved here from another node");
                    attached.session_present = true;
                }
            }
        }
        if !cluster.settle_claim(client_id, &claim.order, identity.map(|i| &**i))
            || claim.superseded
            || taken
        {
            self.claim_lost(client_id, control.id);
        }
        Ok(attached)
    }

    /// Whether a connection may attach now: in a cluster with
    /// `cluster.allow_connect_during_partition = false`, only while every known node is live.
    pub fn admits_connect(&self) -> bool {
        let admitted = self.cluster.get().is_none_or(|c| c.admits_connect());
        if !admitted {
            Metrics::add(&self.metrics.connects_refused_partition, 1);
        }
        admitted
    }

    /// Attaches on this node alone (see `attach`).
    async fn attach_here(
        &self,
        client_id: &Arc<str>,
        a: &Attaching<'_>,
    ) -> Result<Attached, AttachRefused> {
        let (clean_start, control, expiry_interval, will) =
            (a.clean_start, a.control, a.expiry_interval, a.will);
        let enforce = self.ownership_enforced();
        let identity = a.identity.map(|i| &**i);
        // Whether a session (its state locked) is another identity's: checked at every step
        // that would touch it, so a session made or resumed meanwhile is never taken.
        let foreign = |st: &session::SessionState| {
            enforce && !st.ended && !session::may_take(st.owner.as_deref(), identity)
        };
        loop {
            let existing = self.sessions.get(client_id).map(|s| s.clone());
            if let Some(session) = &existing {
                let previous = {
                    let mut st = session.state.lock();
                    // Before the connection there is closed: a CONNECT under another
                    // identity neither takes the session nor ends it.
                    if foreign(&st) {
                        return Err(AttachRefused::OwnedByAnother);
                    }
                    match &st.connection {
                        Some(c) if c.id != control.id => st.connection.take(),
                        _ => None,
                    }
                };
                if let Some(previous) = previous {
                    tracing::info!(client_id = %crate::limits::printable(client_id), "client id taken over by a new connection");
                    previous.kick(reason::SESSION_TAKEN_OVER);
                    let _ = tokio::time::timeout(TAKEOVER_WAIT, previous.closed()).await;
                    continue;
                }
            }
            let resumable = existing.filter(|s| !clean_start && !s.state.lock().ended);
            let (session, session_present) = match resumable {
                Some(session) => (session, true),
                None => {
                    if let Some(old) = self.sessions.get(client_id).map(|s| s.clone()) {
                        if foreign(&old.state.lock()) {
                            return Err(AttachRefused::OwnedByAnother);
                        }
                        self.end_session(&old);
                    }
                    let mqtt = &self.config.mqtt;
                    let bounds = queue::QueueBounds {
                        max_messages: mqtt.max_queued_messages,
                        max_bytes: mqtt.max_queued_bytes,
                    };
                    let session = Session::new(client_id.clone(), bounds, mqtt.queue_qos0_offline);
                    // Owned from its first moment in the map: nobody sees it unowned.
                    session.state.lock().owner = a.owner.clone();
                    match self.sessions.entry(client_id.clone()) {
                        dashmap::Entry::Vacant(slot) => {
                            slot.insert(session.clone());
                        }
                        // Another connect made one meanwhile: judged again from the top.
                        dashmap::Entry::Occupied(_) => continue,
                    }
                    (session, false)
                }
            };
            let mut st = session.state.lock();
            if foreign(&st) {
                return Err(AttachRefused::OwnedByAnother);
            }
            if st.connection.is_some() || st.ended {
                // Another connection got in between; go round again.
                continue;
            }
            st.connection = Some(control.clone());
            st.generation += 1;
            // A new connection before the will delay elapsed cancels the will (MQTT-3.1.3-9),
            // and the session no longer expires.
            st.will = None;
            if let Some(timer) = st.timer.take() {
                timer.abort();
            }
            st.expiry_interval = expiry_interval;
            if st.journal.is_none() && expiry_interval > 0 {
                let replicas = self.replica_line();
                if self.store().is_some() || replicas.is_some() {
                    let store = self.store().cloned();
                    st.journal = Some(Box::new(journal::Journal::new(
                        store,
                        client_id.clone(),
                        1,
                        replicas,
                    )));
                }
            }
            if let Some(j) = &st.journal {
                j.meta(expiry_interval, true, will, st.owner.as_deref());
            }
            if let Some(hook) = self.cluster.get() {
                self.reconcile_session(&**hook, client_id, &mut st);
            }
            drop(st);
            self.set_online(&session, true);
            return Ok(Attached {
                session,
                session_present,
            });
        }
    }
}
