//! How far one inbound link's processing is noted, and what may be acknowledged to the peer
//! that sent it: with persistence on, only what is on disk (the mark is stored with what the
//! frames stored); with session copies on other nodes (`cluster.session_replication =
//! "sync"`), only what those nodes confirmed. The copies' nodes are told how far this node
//! processed the peer's publishes (`recovery`) in announcements, one at a time: while one is
//! on its way, what is processed meanwhile waits for the next, which covers all of it (group
//! commit, so a link read in many small pieces costs one announcement per round trip, not one
//! per read).

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::watch;

use super::Cluster;
use crate::broker::CopiesWait;
use crate::config::SessionReplication;
use crate::store::{Op, RelayMark, RelayOp, Store};

pub(super) struct Marks {
    peer: Arc<str>,
    epoch: u64,
    /// Last sequence number noted.
    noted: u64,
    /// Last publish processed, and the last one announced to the copies' nodes.
    published: u64,
    announced: u64,
    /// The announcement on its way: the publish it covers and the copies' confirmation.
    announcing: Option<(u64, CopiesWait)>,
    /// The highest publish the copies confirmed (or that needed no confirmation).
    confirmed: u64,
    /// Acknowledgements wait for the copies (`cluster.session_replication = "sync"`).
    sync: bool,
    /// Marks not yet acknowledgeable, oldest first: (sequence, store ticket or 0, the publish
    /// the copies must confirm or 0).
    waiting: VecDeque<(u64, u64, u64)>,
    /// Highest sequence number that may be acknowledged.
    ackable: u64,
    store: Option<Arc<Store>>,
    progress: Option<watch::Receiver<u64>>,
}

impl Marks {
    /// Marks for a connection from `peer` on link `epoch` that resumes after `last`.
    pub(super) fn new(
        cluster: &Cluster,
        peer: Arc<str>,
        epoch: u64,
        last: u64,
        store: Option<Arc<Store>>,
    ) -> Marks {
        Marks {
            peer,
            epoch,
            noted: last,
            published: last,
            announced: last,
            announcing: None,
            confirmed: last,
            sync: cluster.config.session_replication == SessionReplication::Sync,
            waiting: VecDeque::new(),
            ackable: last,
            progress: store.as_ref().map(|s| s.progress()),
            store,
        }
    }

    pub(super) fn store(&self) -> Option<Arc<Store>> {
        self.store.clone()
    }

    /// The frames up to `last` are processed, the last publish among them `last_publish`.
    pub(super) fn note(&mut self, cluster: &Cluster, last: u64, last_publish: u64) {
        if last == self.noted {
            return;
        }
        self.noted = last;
        cluster.set_processed(&self.peer, self.epoch, last);
        self.published = last_publish;
        self.announce(cluster);
        let ticket = self.store.as_ref().map_or(0, |store| {
            store.submit(Op::Relay(RelayOp::Mark {
                peer: self.peer.clone(),
                mark: RelayMark {
                    epoch: self.epoch,
                    last,
                },
            }))
        });
        let publish = if self.sync { last_publish } else { 0 };
        if ticket == 0 && publish <= self.confirmed && self.waiting.is_empty() {
            self.ackable = last;
        } else {
            self.waiting.push_back((last, ticket, publish));
        }
    }

    /// Settles the announcement on its way if its copies confirmed it, and sends the next
    /// one if publishes were processed since.
    fn announce(&mut self, cluster: &Cluster) {
        if let Some((covers, wait)) = &self.announcing {
            if !wait.is_settled() {
                return;
            }
            if self.sync {
                wait.release();
            }
            self.confirmed = self.confirmed.max(*covers);
            self.announcing = None;
        }
        if self.published > self.announced {
            self.announced = self.published;
            match cluster.announce_processed(&self.peer, self.epoch, self.published) {
                Some(wait) => self.announcing = Some((self.published, wait)),
                None => self.confirmed = self.published,
            }
        }
    }

    /// The highest sequence number whose mark is on disk (or, without a store, processed)
    /// and whose publishes the session copies confirmed. A mark whose write failed is
    /// acknowledged all the same: this node holds what it processed in memory, and the
    /// store's failure is counted and logged where it happens.
    pub(super) fn ackable(&mut self, cluster: &Cluster) -> u64 {
        self.announce(cluster);
        while let Some(&(seq, ticket, publish)) = self.waiting.front() {
            if self.store.as_ref().is_some_and(|s| !s.is_done(ticket)) || publish > self.confirmed {
                break;
            }
            self.ackable = seq;
            self.waiting.pop_front();
        }
        self.ackable
    }

    pub(super) fn is_waiting(&self) -> bool {
        !self.waiting.is_empty() || self.announcing.is_some()
    }

    /// Resolves once the oldest waiting mark's store write is done or the announcement on
    /// its way is settled: then `ackable` looks again.
    pub(super) async fn ready(&mut self) {
        if let Some(&(_, ticket, _)) = self.waiting.front()
            && let (Some(store), Some(progress)) = (&self.store, &mut self.progress)
            && !store.is_done(ticket)
        {
            let _ = progress.wait_for(|done| *done >= ticket).await;
            return;
        }
        match &mut self.announcing {
            Some((_, wait)) => wait.settled().await,
            None => std::future::pending().await,
        }
    }
}
