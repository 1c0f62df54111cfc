//! An outbound link's share of the store, with persistence on: the link's record (epoch, the
//! peer run it delivers to, how far its sequence numbers may go) and its reliable publish
//! frames until the peer has them, so a node restarted after kill -9 resends exactly the
//! frames its peers had not processed. Sequence numbers are reserved in blocks: a frame is
//! written to the wire only below a ceiling already durable, so a link read back never hands
//! out a number its peer may have processed (frames that are not stored, such as retained set
//! batches, take numbers too). The link calls this under its queue lock, so the ops reach the
//! store in the order the link's state changed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::broker::now_ms;
use crate::store::{LinkRecord, Op, RelayOp, Store, StoredFrame};

/// Sequence numbers reserved at a time; the next block is reserved when half is used.
const SEQ_BLOCK: u64 = 1 << 20;

pub(super) struct LinkJournal {
    store: Arc<Store>,
    peer: Arc<str>,
    /// The record last submitted.
    record: LinkRecord,
    /// Its ticket.
    ticket: u64,
    /// Sequence numbers below this may go on the wire: a record saying so is on disk.
    durable_ceiling: u64,
    /// When a reservation whose write failed was last submitted again.
    retried_at: Option<Instant>,
}

impl LinkJournal {
    /// A new link: its record replaces the peer's earlier one, whose frames go.
    pub fn fresh(store: Arc<Store>, peer: Arc<str>, epoch: u64, peer_run: u64) -> LinkJournal {
        let record = LinkRecord {
            epoch,
            peer_run,
            ceiling: SEQ_BLOCK,
        };
        let mut journal = LinkJournal {
            store,
            peer,
            record,
            ticket: 0,
            durable_ceiling: 0,
            retried_at: None,
        };
        journal.submit(true);
        journal
    }

    /// A link read back: numbers from its stored ceiling on, with a new block reserved.
    pub fn restored(store: Arc<Store>, peer: Arc<str>, record: LinkRecord) -> LinkJournal {
        let mut journal = LinkJournal {
            store,
            peer,
            record: LinkRecord {
                ceiling: record.ceiling + SEQ_BLOCK,
                ..record
            },
            ticket: 0,
            durable_ceiling: record.ceiling,
            retried_at: None,
        };
        journal.submit(false);
        journal
    }

    /// Where a link read back numbers its next frame.
    pub fn first_seq(record: &LinkRecord) -> u64 {
        record.ceiling
    }

    fn submit(&mut self, fresh: bool) {
        self.ticket = self.store.submit(Op::Relay(RelayOp::Link {
            peer: self.peer.clone(),
            record: self.record,
            fresh,
        }));
    }

    /// `next` is the next sequence number the link will hand out: reserves the next block
    /// once half of this one is used.
    pub fn used_up_to(&mut self, next: u64) {
        if next + SEQ_BLOCK / 2 >= self.record.ceiling {
            self.record.ceiling = next + SEQ_BLOCK;
            self.submit(false);
        }
    }

    /// Whether the frame numbered `seq` may go on the wire (its number is below a durable
    /// ceiling). A reservation whose write failed is submitted again, once a second at most
    /// (the store is failing meanwhile).
    pub fn may_send(&mut self, seq: u64) -> bool {
        if seq < self.durable_ceiling {
            return true;
        }
        if self.store.is_done(self.ticket) {
            if self.store.written(self.ticket) {
                self.durable_ceiling = self.record.ceiling;
            } else if self
                .retried_at
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
            {
                self.retried_at = Some(Instant::now());
                self.submit(false);
            }
        }
        seq < self.durable_ceiling
    }

    /// The store and ticket a link that may not send waits for; None when that write is done
    /// (it failed: the link tries again on its next turn).
    pub fn pending(&self) -> Option<(Arc<Store>, u64)> {
        (!self.store.is_done(self.ticket)).then(|| (self.store.clone(), self.ticket))
    }

    /// Stores a reliable publish frame; the ticket the publisher's acknowledgement waits for.
    pub fn frame(
        &self,
        seq: u64,
        normal: bool,
        groups: &[String],
        message: &Bytes,
        queued_at: Instant,
    ) -> u64 {
        let waited = queued_at.elapsed().as_millis() as u64;
        self.store.submit(Op::Relay(RelayOp::Frame {
            peer: self.peer.clone(),
            seq,
            frame: StoredFrame {
                normal,
                groups: groups.to_vec(),
                message: message.clone(),
                queued_at_ms: now_ms().saturating_sub(waited),
            },
        }))
    }

    /// The peer has these stored frames: they go.
    pub fn acked(&self, seqs: Vec<u64>) {
        if !seqs.is_empty() {
            self.store.submit(Op::Relay(RelayOp::Acked {
                peer: self.peer.clone(),
                seqs,
            }));
        }
    }

    /// The link was given up on: its record and frames go.
    pub fn gone(&self) {
        self.store
            .submit(Op::Relay(RelayOp::Gone(self.peer.clone())));
    }

    /// When a stored frame was queued, on this run's clock (now, for one from the future).
    pub fn queued_at(frame: &StoredFrame) -> Instant {
        let waited = now_ms().saturating_sub(frame.queued_at_ms);
        let now = Instant::now();
        now.checked_sub(Duration::from_millis(waited))
            .unwrap_or(now)
    }
}
