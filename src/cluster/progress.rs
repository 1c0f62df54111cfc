//! Where each peer's incoming relay stands: the epoch of its newest link and the last
//! reliable sequence number processed on it (kept across the peer's restarts, and in the store
//! across this node's), the gate that lets one connection of the peer in at a time, and which
//! of its runs membership saw end. It decides where a reconnecting link resumes; it never
//! touches sockets.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

/// One peer's incoming relay: the run (chitchat generation) whose connections are let in, the
/// epoch of its newest link and the last reliable sequence number processed on it, and the
/// gate that lets one connection in at a time.
pub(crate) struct PeerRun {
    generation: u64,
    epoch: u64,
    last: u64,
    /// Held by the connection being served.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// Bumped by each new connection: the one being served sees it and steps aside.
    turn: watch::Sender<u64>,
}

/// A connection's place in line for its peer (see `RelayProgress::enter`).
pub(crate) struct Turn {
    pub gate: Arc<tokio::sync::Mutex<()>>,
    pub ticket: u64,
    pub superseded: watch::Receiver<u64>,
}

/// Per peer: the epoch of its newest incoming link and the last reliable sequence number
/// processed on it. Resumption is keyed on the link's incarnation, so it can neither skip (a
/// new link counting from 1 under an old link's mark) nor go back (a stale link moving the
/// mark of a newer one). The mark outlives the peer's run: a peer restarted with its store
/// resumes its stored link (same epoch) where this node stopped, while a peer that starts
/// afresh makes a new link (new epoch) that counts from zero. Connections of a peer are
/// served one at a time, whatever run they come from: a new one makes the current one stop
/// and waits for it, so two can never process the same frames.
#[derive(Default)]
pub(crate) struct RelayProgress(Mutex<Runs>);

#[derive(Default)]
struct Runs {
    peers: HashMap<Arc<str>, PeerRun>,
    /// Per peer: its runs up to this generation are over (membership saw them end); their
    /// connections are refused, and the ones still open stop.
    retired: HashMap<Arc<str>, u64>,
}

impl Runs {
    fn peer(&mut self, peer: &Arc<str>) -> &mut PeerRun {
        self.peers.entry(peer.clone()).or_insert_with(|| PeerRun {
            generation: 0,
            epoch: 0,
            last: 0,
            gate: Arc::default(),
            turn: watch::channel(0).0,
        })
    }
}

impl RelayProgress {
    /// Marks read back from the store at start-up: where each peer's link stood.
    pub(crate) fn restore(&self, peer: &Arc<str>, epoch: u64, last: u64) {
        let mut runs = self.0.lock();
        let run = runs.peer(peer);
        run.epoch = epoch;
        run.last = last;
    }

    /// A new connection from `peer`'s run `generation`: its turn, which the connection now
    /// being served (if any) is told to give up. None for a run that is over, or older than
    /// one already let in.
    pub(crate) fn enter(&self, peer: &Arc<str>, generation: u64) -> Option<Turn> {
        let mut guard = self.0.lock();
        if guard.retired.get(peer).is_some_and(|r| generation <= *r) {
            return None;
        }
        let run = guard.peer(peer);
        if generation < run.generation {
            return None;
        }
        run.generation = generation;
        let mut ticket = 0;
        run.turn.send_modify(|t| {
            *t += 1;
            ticket = *t;
        });
        Some(Turn {
            gate: run.gate.clone(),
            ticket,
            superseded: run.turn.subscribe(),
        })
    }

    /// `peer`'s runs up to `generation` are over: a frame still on its way from one of them
    /// (held in the network, say) must not be applied after the others have moved on, so
    /// their open connections stop and new ones are refused. The mark stays for a later run
    /// that resumes the link.
    pub(crate) fn retire(&self, peer: &Arc<str>, generation: u64) {
        let mut guard = self.0.lock();
        let floor = guard.retired.entry(peer.clone()).or_insert(0);
        *floor = (*floor).max(generation);
        let floor = *floor;
        if let Some(run) = guard.peers.get(peer)
            && run.generation <= floor
        {
            run.turn.send_modify(|t| *t += 1);
        }
    }

    /// A link from `peer` authenticated with `epoch` (and through the gate): where it resumes.
    /// The same epoch (a reconnect of the same link, or the peer's stored link after its
    /// restart) resumes after what was processed; a new epoch starts from zero.
    pub(crate) fn begin(&self, peer: &Arc<str>, epoch: u64) -> u64 {
        let mut runs = self.0.lock();
        let run = runs.peer(peer);
        if run.epoch != epoch {
            run.epoch = epoch;
            run.last = 0;
        }
        run.last
    }

    /// Records what a link processed, if it is still the peer's newest link; never backwards.
    pub(crate) fn record(&self, peer: &Arc<str>, epoch: u64, seq: u64) {
        let mut runs = self.0.lock();
        if let Some(run) = runs.peers.get_mut(peer)
            && run.epoch == epoch
            && seq > run.last
        {
            run.last = seq;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumption_is_keyed_on_the_link_epoch() {
        let progress = RelayProgress::default();
        let peer: Arc<str> = "n2".into();
        // A link processes up to 20,000, is cut, and reconnects: it resumes there.
        progress.enter(&peer, 7);
        assert_eq!(progress.begin(&peer, 100), 0);
        progress.record(&peer, 100, 20_000);
        assert_eq!(progress.begin(&peer, 100), 20_000);
        // The mark never goes back (a slower connection of the same link reporting late).
        progress.record(&peer, 100, 19_000);
        assert_eq!(progress.begin(&peer, 100), 20_000);
        // The peer gave up on us and made a new link (the frozen-node case of issue 9): it
        // counts from 1 again and must not have its first 20,000 frames skipped.
        assert_eq!(progress.begin(&peer, 200), 0);
        progress.record(&peer, 200, 5);
        // A connection of the old link still draining cannot move the new link's mark.
        progress.record(&peer, 100, 20_001);
        assert_eq!(progress.begin(&peer, 200), 5);
        // A new run of the peer that read its link back from its store (same epoch) resumes
        // it; one that starts afresh comes with a new epoch and counts from zero.
        progress.retire(&peer, 7);
        assert!(progress.enter(&peer, 8).is_some());
        assert_eq!(progress.begin(&peer, 200), 5);
        assert_eq!(progress.begin(&peer, 300), 0);
        assert_eq!(progress.0.lock().peers.len(), 1);
    }

    #[test]
    fn marks_read_back_from_the_store_resume_the_peer_link() {
        let progress = RelayProgress::default();
        let peer: Arc<str> = "n2".into();
        progress.restore(&peer, 42, 1_000);
        assert!(progress.enter(&peer, 1).is_some());
        assert_eq!(progress.begin(&peer, 42), 1_000, "the stored link resumes");
        assert_eq!(progress.begin(&peer, 43), 0, "another link starts afresh");
    }

    #[tokio::test]
    async fn one_connection_per_peer_at_a_time() {
        let progress = RelayProgress::default();
        let peer: Arc<str> = "n2".into();
        let first = progress.enter(&peer, 7).unwrap();
        let held = first.gate.clone().lock_owned().await;
        let mut watching = first.superseded.clone();
        let second = progress.enter(&peer, 7).unwrap();
        assert_ne!(second.ticket, first.ticket);
        // The first connection is told to step aside...
        watching.changed().await.unwrap();
        assert_eq!(*watching.borrow(), second.ticket);
        // ...and the second gets in only once it has.
        assert!(second.gate.clone().try_lock_owned().is_err());
        drop(held);
        let held = second.gate.clone().try_lock_owned().unwrap();
        // A connection of the peer's next run (restarted with its store, resuming the same
        // link) also waits for the old run's connection: the two never overlap.
        let mut watching = second.superseded.clone();
        let third = progress.enter(&peer, 8).unwrap();
        watching.changed().await.unwrap();
        assert!(third.gate.clone().try_lock_owned().is_err());
        drop(held);
        // An older run cannot come back in once a newer one is.
        assert!(progress.enter(&peer, 7).is_none());
        // Membership saw run 8 end: its connection stops, and no new one gets in.
        let mut watching = third.superseded.clone();
        progress.retire(&peer, 8);
        watching.changed().await.unwrap();
        assert!(progress.enter(&peer, 8).is_none());
        assert!(
            progress.enter(&peer, 9).is_some(),
            "the next run is welcome"
        );
    }
}
