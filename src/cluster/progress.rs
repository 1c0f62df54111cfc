//! Where each peer's incoming relay stands: per (peer, peer run), the link incarnation (epoch)
//! being received and the last reliable sequence number processed on it, the gate that lets
//! one connection of that run in at a time, and which runs membership saw end. It decides
//! where a reconnecting link resumes; it never touches sockets.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

/// How far the newest link from one peer run has been processed, and the gate that lets one
/// connection of that run in at a time.
pub(crate) struct PeerRun {
    epoch: u64,
    last: u64,
    /// Held by the connection being served.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// Bumped by each new connection: the one being served sees it and steps aside.
    turn: watch::Sender<u64>,
}

/// A connection's place in line for its peer run (see `RelayProgress::enter`).
pub(crate) struct Turn {
    pub gate: Arc<tokio::sync::Mutex<()>>,
    pub ticket: u64,
    pub superseded: watch::Receiver<u64>,
}

/// Per (peer, peer generation): the epoch of its newest incoming link and the last reliable
/// sequence number processed on it. Resumption is keyed on the link's incarnation, so it can
/// neither skip (a new link counting from 1 under an old link's mark) nor go back (a stale
/// link moving the mark of a newer one). Connections of one run are served one at a time: a
/// new one makes the current one stop and waits for it, so two can never process the same
/// frames.
#[derive(Default)]
pub(crate) struct RelayProgress(Mutex<Runs>);

#[derive(Default)]
struct Runs {
    runs: HashMap<(Arc<str>, u64), PeerRun>,
    /// Per peer: its runs up to this generation are over (membership saw them end); their
    /// connections are refused, and the ones still open stop.
    retired: HashMap<Arc<str>, u64>,
}

impl RelayProgress {
    /// A new connection from `peer`'s run `generation`: its turn, which the connection now
    /// being served (if any) is told to give up. None for a run that is over.
    pub(crate) fn enter(&self, peer: &Arc<str>, generation: u64) -> Option<Turn> {
        let mut guard = self.0.lock();
        let Runs { runs: p, retired } = &mut *guard;
        if retired.get(peer).is_some_and(|r| generation <= *r) {
            return None;
        }
        // Older generations of this peer will never come back.
        p.retain(|(n, g), _| n != peer || *g >= generation);
        let run = p
            .entry((peer.clone(), generation))
            .or_insert_with(|| PeerRun {
                epoch: 0,
                last: 0,
                gate: Arc::default(),
                turn: watch::channel(0).0,
            });
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
    /// their open connections stop and new ones are refused.
    pub(crate) fn retire(&self, peer: &Arc<str>, generation: u64) {
        let mut guard = self.0.lock();
        let Runs { runs, retired } = &mut *guard;
        let floor = retired.entry(peer.clone()).or_insert(0);
        *floor = (*floor).max(generation);
        let floor = *floor;
        runs.retain(|(n, g), run| {
            let over = n == peer && *g <= floor;
            if over {
                run.turn.send_modify(|t| *t += 1);
            }
            !over
        });
    }

    /// A link from `peer` authenticated with `epoch` (and through the gate): where it resumes.
    /// The same epoch (a reconnect of the same link) resumes after what was processed; a new
    /// epoch (a link the peer made anew) starts from zero.
    pub(crate) fn begin(&self, peer: &Arc<str>, generation: u64, epoch: u64) -> u64 {
        let mut p = self.0.lock();
        let Some(run) = p.runs.get_mut(&(peer.clone(), generation)) else {
            return 0;
        };
        if run.epoch != epoch {
            run.epoch = epoch;
            run.last = 0;
        }
        run.last
    }

    /// Records what a link processed, if it is still the peer's newest link; never backwards.
    pub(crate) fn record(&self, peer: &Arc<str>, generation: u64, epoch: u64, seq: u64) {
        let mut p = self.0.lock();
        if let Some(run) = p.runs.get_mut(&(peer.clone(), generation))
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
        assert_eq!(progress.begin(&peer, 7, 100), 0);
        progress.record(&peer, 7, 100, 20_000);
        assert_eq!(progress.begin(&peer, 7, 100), 20_000);
        // The mark never goes back (a slower connection of the same link reporting late).
        progress.record(&peer, 7, 100, 19_000);
        assert_eq!(progress.begin(&peer, 7, 100), 20_000);
        // The peer gave up on us and made a new link (the frozen-node case of issue 9): it
        // counts from 1 again and must not have its first 20,000 frames skipped.
        assert_eq!(progress.begin(&peer, 7, 200), 0);
        progress.record(&peer, 7, 200, 5);
        // A connection of the old link still draining cannot move the new link's mark.
        progress.record(&peer, 7, 100, 20_001);
        assert_eq!(progress.begin(&peer, 7, 200), 5);
        // A new run of the peer (generation) forgets the old one.
        progress.enter(&peer, 8);
        assert_eq!(progress.begin(&peer, 8, 200), 0);
        assert_eq!(progress.0.lock().runs.len(), 1);
    }

    #[tokio::test]
    async fn one_connection_per_peer_run_at_a_time() {
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
        assert!(second.gate.clone().try_lock_owned().is_ok());
        // Membership saw run 7 end: its connection stops, and no new one gets in.
        let mut watching = second.superseded.clone();
        progress.retire(&peer, 7);
        watching.changed().await.unwrap();
        assert!(progress.enter(&peer, 7).is_none());
        assert!(
            progress.enter(&peer, 8).is_some(),
            "the next run is welcome"
        );
    }
}
