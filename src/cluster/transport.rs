//! Gossip datagrams for chitchat over a UDP socket we bind ourselves (so port 0 works and the
//! real port is advertised). With a cluster secret every datagram is compressed (zstd) and then
//! sealed with ChaCha20-Poly1305 under the secret: a node without the secret can neither read
//! gossip nor inject any, so it never joins. Compressing first keeps sealed datagrams within
//! UDP's limit, which chitchat fills.

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

const MAX_DATAGRAM: usize = 65_507;
const NONCE_LEN: usize = 12;

/// Hands chitchat the socket bound before it started.
pub struct GossipTransport {
    socket: Mutex<Option<tokio::net::UdpSocket>>,
    key: Option<[u8; 32]>,
    /// Datagrams refused for not being sealed with this cluster's secret.
    rejected: Arc<AtomicU64>,
}

impl GossipTransport {
    pub fn new(
        socket: tokio::net::UdpSocket,
        key: Option<[u8; 32]>,
        rejected: Arc<AtomicU64>,
    ) -> GossipTransport {
        GossipTransport {
            socket: Mutex::new(Some(socket)),
            key,
            rejected,
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
        let cipher = self.key.map(|k| ChaCha20Poly1305::new(&Key::from(k)));
        Ok(Box::new(GossipSocket {
            socket,
            cipher,
            buf: vec![0u8; MAX_DATAGRAM],
            rejected: self.rejected.clone(),
        }))
    }
}

struct GossipSocket {
    socket: tokio::net::UdpSocket,
    cipher: Option<ChaCha20Poly1305>,
    buf: Vec<u8>,
    rejected: Arc<AtomicU64>,
}

/// Compresses and seals a datagram.
fn seal(cipher: &ChaCha20Poly1305, plain: &[u8]) -> anyhow::Result<Vec<u8>> {
    let compressed = zstd::bulk::compress(plain, 1).context("compress gossip")?;
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("random nonce: {e}"))?;
    let sealed = cipher
        .encrypt(&Nonce::from(nonce), compressed.as_slice())
        .map_err(|_| anyhow::anyhow!("seal gossip"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a sealed datagram; None when it was not sealed with our secret.
fn open_sealed(cipher: &ChaCha20Poly1305, data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < NONCE_LEN {
        return None;
    }
    let (nonce, sealed) = data.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let compressed = cipher.decrypt(&Nonce::from(nonce), sealed).ok()?;
    zstd::bulk::decompress(&compressed, MAX_DATAGRAM * 4).ok()
}

#[async_trait]
impl Socket for GossipSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> anyhow::Result<()> {
        let mut plain = Vec::with_capacity(1024);
        message.serialize(&mut plain);
        let datagram = match &self.cipher {
            Some(c) => seal(c, &plain)?,
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
            let mut data: &[u8] = match &self.cipher {
                Some(c) => match open_sealed(c, &self.buf[..len]) {
                    Some(plain) => {
                        opened = plain;
                        &opened
                    }
                    None => {
                        let rejected = self.rejected.fetch_add(1, Ordering::Relaxed) + 1;
                        // Once, then every 1000th: a misconfigured node would flood the log.
                        if rejected % 1000 == 1 {
                            tracing::warn!(%from_addr, "gossip from a node without this cluster's secret: ignored");
                        }
                        continue;
                    }
                },
                None => &self.buf[..len],
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
    fn sealed_datagrams_open_only_with_the_same_key() {
        let a = ChaCha20Poly1305::new(&Key::from([1u8; 32]));
        let b = ChaCha20Poly1305::new(&Key::from([2u8; 32]));
        let plain = b"gossip digest and deltas ".repeat(100);
        let sealed = seal(&a, &plain).unwrap();
        assert!(sealed.len() < plain.len(), "compressed before sealing");
        assert_eq!(open_sealed(&a, &sealed).unwrap(), plain);
        assert!(open_sealed(&b, &sealed).is_none());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open_sealed(&a, &tampered).is_none());
        assert!(open_sealed(&a, &plain).is_none(), "plain gossip is refused");
    }
}
