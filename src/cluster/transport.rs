//! Gossip datagrams for chitchat over a UDP socket we bind ourselves (so port 0 works and the
//! real port is advertised). With a cluster secret every datagram is compressed (zstd), stamped
//! with the sender's clock and sealed with ChaCha20-Poly1305 under a key derived from the
//! secret: a node without the secret can neither read gossip nor inject any, so it never
//! joins; and a captured datagram replayed later is dropped, since its stamp is out of the
//! window or its nonce was seen within it (so a replayed Syn draws no reply either). Opening
//! tries every secret in force, so a secret rotates without a gap. Compressing first keeps
//! sealed datagrams within UDP's limit, which chitchat fills.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use parking_lot::Mutex;

use super::seal::{self, Secrets};

const MAX_DATAGRAM: usize = 65_507;
const NONCE_LEN: usize = 12;
const STAMP_LEN: usize = 8;
/// A sealed datagram stamped further than this from our clock is dropped; nonces are
/// remembered this long. Clocks of cluster nodes must agree within it (NTP does).
pub const REPLAY_WINDOW_MS: u64 = 60_000;
/// Most nonces remembered. Past it the oldest is forgotten and datagrams stamped no later than
/// it are refused, so the protection stays exact (gossip runs far below this rate).
const REPLAY_MEMORY: usize = 200_000;

/// Where the gossip socket counts what it refuses.
pub struct GossipCounters {
    /// Datagrams not sealed with a secret of this cluster.
    pub rejected: Arc<AtomicU64>,
    /// Sealed datagrams replayed, or stamped outside the window.
    pub replayed: Arc<AtomicU64>,
}

/// Hands chitchat the socket bound before it started.
pub struct GossipTransport {
    socket: Mutex<Option<tokio::net::UdpSocket>>,
    secrets: Arc<Secrets>,
    counters: Mutex<Option<GossipCounters>>,
}

impl GossipTransport {
    pub fn new(
        socket: tokio::net::UdpSocket,
        secrets: Arc<Secrets>,
        counters: GossipCounters,
    ) -> GossipTransport {
        GossipTransport {
            socket: Mutex::new(Some(socket)),
            secrets,
            counters: Mutex::new(Some(counters)),
        }
    }
}

#[async_trait]
impl Transport for GossipTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = self
            .socket
            .lock()
            .take()
            .context("the gossip socket was already opened")?;
        let counters = self
            .counters
            .lock()
            .take()
            .context("the gossip socket was already opened")?;
        Ok(Box::new(GossipSocket {
            socket,
            ciphers: Ciphers::default(),
            secrets: self.secrets.clone(),
            buf: vec![0u8; MAX_DATAGRAM],
            counters,
            guard: ReplayGuard::new(REPLAY_WINDOW_MS, REPLAY_MEMORY),
        }))
    }
}

/// The gossip ciphers of the secrets in force, derived again when they change.
#[derive(Default)]
struct Ciphers {
    from: Option<Arc<Vec<[u8; 32]>>>,
    /// The sealing one first.
    ciphers: Vec<ChaCha20Poly1305>,
}

impl Ciphers {
    fn refresh(&mut self, secrets: &Secrets) -> &[ChaCha20Poly1305] {
        let now = secrets.current();
        if self.from.as_ref().is_none_or(|f| !Arc::ptr_eq(f, &now)) {
            self.ciphers = now
                .iter()
                .map(|s| {
                    let key = seal::derive(s, seal::Purpose::Gossip);
                    ChaCha20Poly1305::new(&Key::from(key))
                })
                .collect();
            self.from = Some(now);
        }
        &self.ciphers
    }
}

struct GossipSocket {
    socket: tokio::net::UdpSocket,
    secrets: Arc<Secrets>,
    ciphers: Ciphers,
    buf: Vec<u8>,
    counters: GossipCounters,
    guard: ReplayGuard,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Compresses, stamps with `stamp_ms` and seals a datagram.
fn seal(cipher: &ChaCha20Poly1305, plain: &[u8], stamp_ms: u64) -> anyhow::Result<Vec<u8>> {
    let compressed = zstd::bulk::compress(plain, 1).context("compress gossip")?;
    let mut stamped = Vec::with_capacity(STAMP_LEN + compressed.len());
    stamped.extend_from_slice(&stamp_ms.to_be_bytes());
    stamped.extend_from_slice(&compressed);
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("random nonce: {e}"))?;
    let sealed = cipher
        .encrypt(&Nonce::from(nonce), stamped.as_slice())
        .map_err(|_| anyhow::anyhow!("seal gossip"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// A datagram opened: its nonce, its stamp and the gossip message it carries.
struct Opened {
    nonce: [u8; NONCE_LEN],
    stamp_ms: u64,
    plain: Vec<u8>,
}

/// Opens a sealed datagram with the first of `ciphers` that can; None when none can.
fn open_sealed(ciphers: &[ChaCha20Poly1305], data: &[u8]) -> Option<Opened> {
    if data.len() < NONCE_LEN {
        return None;
    }
    let (nonce, sealed) = data.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let stamped = ciphers
        .iter()
        .find_map(|c| c.decrypt(&Nonce::from(nonce), sealed).ok())?;
    if stamped.len() < STAMP_LEN {
        return None;
    }
    let (stamp, compressed) = stamped.split_at(STAMP_LEN);
    let stamp_ms = u64::from_be_bytes(stamp.try_into().ok()?);
    let plain = zstd::bulk::decompress(compressed, MAX_DATAGRAM * 4).ok()?;
    Some(Opened {
        nonce,
        stamp_ms,
        plain,
    })
}

/// Why the replay guard refused a datagram.
#[derive(Debug, PartialEq, Eq)]
enum Replay {
    /// Stamped this many milliseconds from our clock (negative: behind it), beyond the window.
    OutOfWindow(i64),
    /// Its nonce was seen already.
    Seen,
}

/// The nonces of the sealed datagrams received within the window.
struct ReplayGuard {
    window_ms: u64,
    memory: usize,
    seen: HashSet<[u8; NONCE_LEN]>,
    /// (stamp, nonce) in arrival order, to forget them.
    order: VecDeque<(u64, [u8; NONCE_LEN])>,
    /// Datagrams stamped at or before this are refused: nonces that old were forgotten.
    floor_ms: u64,
}

impl ReplayGuard {
    fn new(window_ms: u64, memory: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms,
            memory,
            seen: HashSet::new(),
            order: VecDeque::new(),
            floor_ms: 0,
        }
    }

    fn admit(&mut self, nonce: [u8; NONCE_LEN], stamp_ms: u64, now_ms: u64) -> Result<(), Replay> {
        let skew = stamp_ms as i64 - now_ms as i64;
        if skew.unsigned_abs() > self.window_ms || stamp_ms <= self.floor_ms {
            return Err(Replay::OutOfWindow(skew));
        }
        while let Some(&(stamp, old)) = self.order.front() {
            let expired = stamp + self.window_ms < now_ms;
            if !expired && self.order.len() < self.memory {
                break;
            }
            if !expired {
                self.floor_ms = self.floor_ms.max(stamp);
            }
            self.seen.remove(&old);
            self.order.pop_front();
        }
        if !self.seen.insert(nonce) {
            return Err(Replay::Seen);
        }
        self.order.push_back((stamp_ms, nonce));
        Ok(())
    }
}

#[async_trait]
impl Socket for GossipSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let mut plain = Vec::with_capacity(1024);
        message.serialize(&mut plain);
        let datagram = match self.ciphers.refresh(&self.secrets).first() {
            Some(c) => seal(c, &plain, now_ms())?,
            None => plain,
        };
        if datagram.len() > MAX_DATAGRAM {
            tracing::warn!(
                bytes = datagram.len(),
                "gossip datagram too large to send; dropped"
            );
            return Ok(());
        }
        // An unreachable peer is the failure detector's business, not an error of the socket.
        if let Err(e) = self.socket.send_to(&datagram, to).await {
            tracing::debug!(%to, error = %e, "gossip send failed");
        }
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from_addr) = match self.socket.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e).context("gossip socket receive"),
            };
            let opened;
            let ciphers = self.ciphers.refresh(&self.secrets);
            let mut data: &[u8] = if ciphers.is_empty() {
                &self.buf[..len]
            } else {
                let Some(o) = open_sealed(ciphers, &self.buf[..len]) else {
                    let rejected = self.counters.rejected.fetch_add(1, Ordering::Relaxed) + 1;
                    // Once, then every 1000th: a misconfigured node would flood the log.
                    if rejected % 1000 == 1 {
                        tracing::warn!(%from_addr, "gossip from a node without this cluster's secret: ignored");
                    }
                    continue;
                };
                if let Err(why) = self.guard.admit(o.nonce, o.stamp_ms, now_ms()) {
                    let replayed = self.counters.replayed.fetch_add(1, Ordering::Relaxed) + 1;
                    if replayed % 1000 == 1 {
                        match why {
                            Replay::Seen => {
                                tracing::warn!(%from_addr, "a gossip datagram received again (replayed?): ignored")
                            }
                            Replay::OutOfWindow(skew) => {
                                tracing::warn!(%from_addr, skew_ms = skew, "gossip stamped outside the replay window (60 s) of our clock: ignored (replayed, or the clocks disagree: is NTP running?)")
                            }
                        }
                    }
                    continue;
                }
                opened = o.plain;
                &opened
            };
            match ChitchatMessage::deserialize(&mut data) {
                Ok(message) => return Ok((from_addr, message)),
                Err(e) => {
                    tracing::debug!(%from_addr, error = %e, "undecodable gossip datagram ignored")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_datagrams_open_only_with_a_secret_in_force() {
        let a = ChaCha20Poly1305::new(&Key::from([1u8; 32]));
        let b = ChaCha20Poly1305::new(&Key::from([2u8; 32]));
        let plain = b"gossip digest and deltas ".repeat(100);
        let sealed = seal(&a, &plain, 42).unwrap();
        assert!(sealed.len() < plain.len(), "compressed before sealing");
        let opened = open_sealed(std::slice::from_ref(&a), &sealed).unwrap();
        assert_eq!((opened.plain, opened.stamp_ms), (plain.clone(), 42));
        assert!(open_sealed(std::slice::from_ref(&b), &sealed).is_none());
        // During a rotation either secret opens.
        assert!(open_sealed(&[b.clone(), a.clone()], &sealed).is_some());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open_sealed(std::slice::from_ref(&a), &tampered).is_none());
        assert!(
            open_sealed(&[a], &plain).is_none(),
            "plain gossip is refused"
        );
    }

    #[test]
    fn replays_and_datagrams_outside_the_window_are_refused() {
        let mut guard = ReplayGuard::new(1_000, 3);
        let now = 1_000_000;
        assert_eq!(guard.admit([1; 12], now, now), Ok(()));
        assert_eq!(guard.admit([1; 12], now, now + 10), Err(Replay::Seen));
        assert_eq!(
            guard.admit([2; 12], now - 1_500, now),
            Err(Replay::OutOfWindow(-1_500))
        );
        assert_eq!(
            guard.admit([3; 12], now + 1_500, now),
            Err(Replay::OutOfWindow(1_500))
        );
        // Past its memory the guard forgets the oldest nonce and refuses what is that old.
        assert_eq!(guard.admit([4; 12], now + 1, now + 1), Ok(()));
        assert_eq!(guard.admit([5; 12], now + 2, now + 2), Ok(()));
        assert_eq!(guard.admit([6; 12], now + 3, now + 3), Ok(()));
        assert!(guard.seen.len() <= 3);
        assert_eq!(
            guard.admit([1; 12], now, now + 3),
            Err(Replay::OutOfWindow(-3)),
            "forgotten, yet still refused"
        );
        assert_eq!(guard.admit([7; 12], now + 4, now + 4), Ok(()));
        // Once the window has passed, a nonce is forgotten and its datagram too old anyway.
        let later = now + 5_000;
        assert_eq!(guard.admit([8; 12], later, later), Ok(()));
        assert_eq!(guard.seen.len(), 1);
        assert!(matches!(
            guard.admit([4; 12], now + 1, later),
            Err(Replay::OutOfWindow(_))
        ));
    }
}
