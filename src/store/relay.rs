//! The cluster relay's share of the store, so a node restarted (even after kill -9) neither
//! loses nor repeats frames to or from its peers: this node's relay run id (made once, when
//! the store is new: peers resume links with a node that comes back with it), each outbound
//! link's record (epoch, the peer run it is for, how far its sequence numbers may have gone)
//! with its reliable publish frames not yet acknowledged, and per peer how far its incoming
//! link was processed. What the link and the acceptor do with them is `cluster`'s business.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use fjall::{Keyspace, OwnedWriteBatch as WriteBatch};
use serde::{Deserialize, Serialize};

use super::keys;
use super::records;

/// An outbound link as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub epoch: u64,
    /// The relay run of the peer the link delivers to.
    pub peer_run: u64,
    /// No sequence number at or past this was handed out on the link: a link read back
    /// numbers its new frames from here, past any frame the peer may have processed.
    pub ceiling: u64,
}

/// A reliable publish frame waiting for the peer's acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFrame {
    pub normal: bool,
    pub groups: Vec<String>,
    /// The message in the relay's wire encoding.
    pub message: Bytes,
    /// Wall-clock milliseconds when it was queued: its expiry counts down while it waits.
    pub queued_at_ms: u64,
}

/// How far a peer's incoming link (its epoch) was processed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayMark {
    pub epoch: u64,
    pub last: u64,
}

/// One change to the relay's stored state.
#[derive(Debug)]
pub enum RelayOp {
    /// A link's record; `fresh`: a new link, whose peer's earlier frames go.
    Link {
        peer: Arc<str>,
        record: LinkRecord,
        fresh: bool,
    },
    Frame {
        peer: Arc<str>,
        seq: u64,
        frame: StoredFrame,
    },
    /// The peer has these frames (acknowledged, or said so when a connection resumed).
    Acked {
        peer: Arc<str>,
        seqs: Vec<u64>,
    },
    /// The link to the peer was given up on: its record and frames go.
    Gone(Arc<str>),
    Mark {
        peer: Arc<str>,
        mark: RelayMark,
    },
}

/// The relay's keyspaces.
pub struct RelaySpaces {
    pub node: Keyspace,
    pub links: Keyspace,
    pub frames: Keyspace,
    pub marks: Keyspace,
}

const RUN_KEY: &[u8] = b"relay_run";

impl RelaySpaces {
    /// This node's relay run id, made (and synced) the first time.
    pub fn run_id(&self, db: &fjall::Database) -> Result<u64, String> {
        let stored = self.node.get(RUN_KEY).map_err(|e| e.to_string())?;
        if let Some(bytes) = stored
            && let Ok(b) = <[u8; 8]>::try_from(&bytes[..])
            && u64::from_be_bytes(b) != 0
        {
            return Ok(u64::from_be_bytes(b));
        }
        let run = crate::cluster::wire::random_u64().max(1);
        self.node
            .insert(RUN_KEY, run.to_be_bytes())
            .map_err(|e| e.to_string())?;
        db.persist(fjall::PersistMode::SyncAll)
            .map_err(|e| e.to_string())?;
        Ok(run)
    }

    /// Adds `op` to `batch`. Ops that must see what came before them (removing a peer's
    /// frames) commit the batch first and start a new one.
    pub fn write(
        &self,
        db: &fjall::Database,
        batch: &mut WriteBatch,
        op: &RelayOp,
    ) -> fjall::Result<()> {
        let drop_frames = |batch: &mut WriteBatch, peer: &str| -> fjall::Result<()> {
            std::mem::replace(batch, db.batch()).commit()?;
            for kv in self.frames.prefix(keys::client_prefix(peer)) {
                batch.remove(&self.frames, kv.key()?);
            }
            Ok(())
        };
        match op {
            RelayOp::Link {
                peer,
                record,
                fresh,
            } => {
                if *fresh {
                    drop_frames(batch, peer)?;
                }
                batch.insert(&self.links, peer.as_bytes(), records::encode(record));
            }
            RelayOp::Frame { peer, seq, frame } => batch.insert(
                &self.frames,
                keys::delivery(peer, *seq),
                records::encode(frame),
            ),
            RelayOp::Acked { peer, seqs } => {
                for seq in seqs {
                    batch.remove(&self.frames, keys::delivery(peer, *seq));
                }
            }
            RelayOp::Gone(peer) => {
                drop_frames(batch, peer)?;
                batch.remove(&self.links, peer.as_bytes());
            }
            RelayOp::Mark { peer, mark } => {
                batch.insert(&self.marks, peer.as_bytes(), records::encode(mark))
            }
        }
        Ok(())
    }

    /// Everything stored for the relay; frames of a peer without a link record (its removal
    /// did not finish) are listed for removal.
    pub fn read_all(&self, db: &fjall::Database) -> Result<(RestoredRelay, Vec<RelayOp>), String> {
        let err = |e: fjall::Error| e.to_string();
        let mut out = RestoredRelay {
            run: self.run_id(db)?,
            ..RestoredRelay::default()
        };
        let mut cleanup = Vec::new();
        let mut links: BTreeMap<Arc<str>, RestoredLink> = BTreeMap::new();
        for kv in self.links.iter() {
            let (key, value) = kv.into_inner().map_err(err)?;
            let peer: Arc<str> = String::from_utf8_lossy(&key).into();
            match records::decode::<LinkRecord>(&value) {
                Ok(record) => {
                    links.insert(
                        peer.clone(),
                        RestoredLink {
                            peer,
                            record,
                            frames: Vec::new(),
                        },
                    );
                }
                Err(_) => cleanup.push(RelayOp::Gone(peer)),
            }
        }
        let mut orphans: Vec<Arc<str>> = Vec::new();
        for kv in self.frames.iter() {
            let (key, value) = kv.into_inner().map_err(err)?;
            let Some((peer, rest)) = keys::split(&key) else {
                continue;
            };
            let Ok(seq) = <[u8; 8]>::try_from(rest).map(u64::from_be_bytes) else {
                continue;
            };
            match (links.get_mut(peer), records::decode::<StoredFrame>(&value)) {
                (Some(link), Ok(frame)) => link.frames.push((seq, frame)),
                (Some(_), Err(_)) => cleanup.push(RelayOp::Acked {
                    peer: peer.into(),
                    seqs: vec![seq],
                }),
                (None, _) => {
                    if !orphans.iter().any(|o| **o == *peer) {
                        orphans.push(peer.into());
                    }
                }
            }
        }
        cleanup.extend(orphans.into_iter().map(RelayOp::Gone));
        out.links = links.into_values().collect();
        for kv in self.marks.iter() {
            let (key, value) = kv.into_inner().map_err(err)?;
            if let Ok(mark) = records::decode::<RelayMark>(&value) {
                out.marks.push((String::from_utf8_lossy(&key).into(), mark));
            }
        }
        Ok((out, cleanup))
    }
}

/// An outbound link read back, its frames in sequence order.
#[derive(Debug)]
pub struct RestoredLink {
    pub peer: Arc<str>,
    pub record: LinkRecord,
    pub frames: Vec<(u64, StoredFrame)>,
}

/// The relay's state read back.
#[derive(Debug, Default)]
pub struct RestoredRelay {
    /// This node's relay run id (0 when there is no store).
    pub run: u64,
    pub links: Vec<RestoredLink>,
    pub marks: Vec<(Arc<str>, RelayMark)>,
    /// Copies of other nodes' sessions kept here (`super::COPY_PREFIX`).
    pub copies: Vec<super::RestoredSession>,
}
