//! Keys derived from the cluster secret, and the sealed record layer of peer links. HKDF-SHA256
//! gives one key per purpose (the handshake MAC, gossip, and per link and direction the relay
//! frames), so no key serves two jobs. After the handshake every byte of a link travels in
//! records `[u32 length][ChaCha20-Poly1305 ciphertext and tag]`, whose nonce is a per-direction
//! counter: frames can be neither read nor forged, reordered, dropped or replayed without the
//! link closing. The keys of a link come from both sides' handshake nonces, so every connection
//! has its own and a counter never repeats under one key.

use bytes::{Buf, BufMut, BytesMut};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;

use super::wire::{HandshakeIds, MAX_FRAME};

/// What a key is for (part of its derivation).
pub enum Purpose {
    /// The HMAC proofs of the link handshake.
    Handshake,
    /// Sealing gossip datagrams.
    Gossip,
}

/// The key for `purpose`, derived from the cluster secret.
pub fn derive(secret: &[u8; 32], purpose: Purpose) -> [u8; 32] {
    let info: &[u8] = match purpose {
        Purpose::Handshake => b"vibemq v1 link handshake",
        Purpose::Gossip => b"vibemq v1 gossip",
    };
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(None, secret)
        .expand(info, &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

/// The cluster secrets in force, the sealing one first; every one is accepted. Replaced whole
/// when `cluster.secret_file` is read again (SIGHUP), which is how a secret rotates without a
/// restart: add the new one second, then first, then drop the old, node by node.
pub struct Secrets {
    ring: parking_lot::RwLock<std::sync::Arc<Vec<[u8; 32]>>>,
    /// Bumped whenever the ring is replaced: links made under a secret that left it close.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Secrets {
    pub fn new(keys: Vec<[u8; 32]>) -> Secrets {
        Secrets {
            ring: parking_lot::RwLock::new(std::sync::Arc::new(keys)),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Changes whenever the secrets in force are replaced.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether a link made under `secret` may go on (None: a cluster without secrets).
    pub fn still_holds(&self, secret: Option<&[u8; 32]>) -> bool {
        secret.is_none_or(|s| self.ring.read().contains(s))
    }

    /// Whether the cluster runs with a secret at all.
    pub fn is_set(&self) -> bool {
        !self.ring.read().is_empty()
    }

    /// The secrets now, the sealing one first (empty: none).
    pub fn current(&self) -> std::sync::Arc<Vec<[u8; 32]>> {
        self.ring.read().clone()
    }

    /// Puts `keys` in force for new links and datagrams. A node started without a secret
    /// cannot take one on (nor drop it) while running: its links and gossip would change
    /// format under its peers.
    pub fn replace(&self, keys: Vec<[u8; 32]>) -> Result<(), String> {
        if keys.is_empty() == self.is_set() {
            return Err("a cluster secret can be rotated on reload, not turned on or off (restart for that)".into());
        }
        *self.ring.write() = std::sync::Arc::new(keys);
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }
}

/// The handshake key of the sealing secret, for the proof a node sends first (None: no
/// secret).
pub fn sealing_handshake_key(secrets: &[[u8; 32]]) -> Option<[u8; 32]> {
    secrets.first().map(|s| derive(s, Purpose::Handshake))
}

/// Of `secrets`, the one whose handshake key made `proof` for `role`: the secret the link's
/// keys then come from. Without secrets any proof goes (`Ok(None)`); Err when none fits.
pub fn proving_secret(
    secrets: &[[u8; 32]],
    role: &str,
    ids: &HandshakeIds<'_>,
    proof: &[u8],
) -> Result<Option<[u8; 32]>, ()> {
    if secrets.is_empty() {
        return Ok(None);
    }
    secrets
        .iter()
        .find(|s| super::wire::verify(Some(&derive(s, Purpose::Handshake)), role, ids, proof))
        .map(|s| Some(*s))
        .ok_or(())
}

/// The two keys of one link connection: (dialer to acceptor, acceptor to dialer).
pub fn link_keys(secret: &[u8; 32], ids: &HandshakeIds<'_>) -> ([u8; 32], [u8; 32]) {
    let mut salt = Vec::with_capacity(64);
    salt.extend_from_slice(ids.dialer_nonce);
    salt.extend_from_slice(ids.acceptor_nonce);
    let hk = Hkdf::<Sha256>::new(Some(&salt), secret);
    let key = |direction: &str| {
        let mut info = Vec::new();
        for part in [
            "vibemq v1 relay frames",
            direction,
            ids.cluster,
            ids.dialer.0,
            ids.acceptor.0,
        ] {
            info.extend_from_slice(&(part.len() as u32).to_be_bytes());
            info.extend_from_slice(part.as_bytes());
        }
        info.extend_from_slice(&ids.dialer.1.to_be_bytes());
        info.extend_from_slice(&ids.acceptor.1.to_be_bytes());
        info.extend_from_slice(&ids.link_epoch.to_be_bytes());
        let mut k = [0u8; 32];
        hk.expand(&info, &mut k)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        k
    };
    (key("dialer to acceptor"), key("acceptor to dialer"))
}

/// Largest sealed record: the largest frame plus the tag, with room for the frames batched
/// around it.
const MAX_RECORD: usize = MAX_FRAME + 1024 * 1024;
const TAG: usize = 16;

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::from(n)
}

/// Seals what one side writes.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl Sealer {
    pub fn new(key: [u8; 32]) -> Sealer {
        Sealer {
            cipher: ChaCha20Poly1305::new(&Key::from(key)),
            counter: 0,
        }
    }

    /// Appends `plain` to `out` as one sealed record (several records if it is larger than
    /// a record may be) and empties `plain`.
    pub fn seal(&mut self, plain: &mut BytesMut, out: &mut BytesMut) -> Result<(), String> {
        while !plain.is_empty() {
            let take = plain.len().min(MAX_RECORD - TAG);
            let mut record = plain.split_to(take);
            let len = (take + TAG) as u32;
            let tag = self
                .cipher
                .encrypt_inout_detached(
                    &nonce(self.counter),
                    &len.to_be_bytes(),
                    (&mut record[..]).into(),
                )
                .map_err(|_| "sealing a record failed".to_string())?;
            self.counter += 1;
            out.reserve(4 + take + TAG);
            out.put_u32(len);
            out.put_slice(&record);
            out.put_slice(&tag);
        }
        Ok(())
    }
}

/// Opens what the other side wrote.
pub struct Opener {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl Opener {
    pub fn new(key: [u8; 32]) -> Opener {
        Opener {
            cipher: ChaCha20Poly1305::new(&Key::from(key)),
            counter: 0,
        }
    }

    /// Moves every whole record of `raw` into `plain`, opened. An error (a record forged,
    /// altered, replayed, reordered or oversized) ends the link.
    pub fn open(&mut self, raw: &mut BytesMut, plain: &mut BytesMut) -> Result<(), String> {
        loop {
            if raw.len() < 4 {
                return Ok(());
            }
            let len = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
            if !(TAG..=MAX_RECORD).contains(&len) {
                return Err(format!("sealed record of {len} bytes refused"));
            }
            if raw.len() < 4 + len {
                raw.reserve(4 + len - raw.len());
                return Ok(());
            }
            raw.advance(4);
            let mut record = raw.split_to(len);
            let body = len - TAG;
            let tag: [u8; TAG] = record[body..].try_into().expect("TAG bytes");
            self.cipher
                .decrypt_inout_detached(
                    &nonce(self.counter),
                    &(len as u32).to_be_bytes(),
                    (&mut record[..body]).into(),
                    &tag.into(),
                )
                .map_err(|_| {
                    "a sealed record failed authentication (forged, altered, replayed or out of order)"
                        .to_string()
                })?;
            self.counter += 1;
            plain.put_slice(&record[..body]);
        }
    }
}

/// A link connection's two byte streams after the handshake: sealed records when the
/// cluster has a secret, plain frames otherwise.
pub struct Records {
    sealer: Option<Sealer>,
    opener: Option<Opener>,
    /// Sealed bytes read and not yet opened.
    raw: BytesMut,
}

impl Records {
    pub fn plain() -> Records {
        Records {
            sealer: None,
            opener: None,
            raw: BytesMut::new(),
        }
    }

    /// Sealing what this side writes with `out_key`, opening what it reads with `in_key`.
    /// `leftover`: bytes already read past the handshake, which are sealed ones.
    pub fn sealed(out_key: [u8; 32], in_key: [u8; 32], leftover: &mut BytesMut) -> Records {
        Records {
            sealer: Some(Sealer::new(out_key)),
            opener: Some(Opener::new(in_key)),
            raw: leftover.split(),
        }
    }

    /// Opens what was already read (the handshake's leftover) into `plain`.
    pub fn open_buffered(&mut self, plain: &mut BytesMut) -> Result<(), String> {
        match &mut self.opener {
            Some(opener) => opener.open(&mut self.raw, plain),
            None => Ok(()),
        }
    }

    /// Reads more into `plain` (opened, when sealed); 0 when the peer closed. Cancel-safe.
    pub async fn read(
        &mut self,
        reader: &mut (impl tokio::io::AsyncRead + Unpin),
        plain: &mut BytesMut,
    ) -> Result<usize, String> {
        use tokio::io::AsyncReadExt;
        match &mut self.opener {
            None => reader
                .read_buf(plain)
                .await
                .map_err(|e| format!("read: {e}")),
            Some(opener) => {
                let n = reader
                    .read_buf(&mut self.raw)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                opener.open(&mut self.raw, plain)?;
                Ok(n)
            }
        }
    }

    /// Moves the frames in `plain` into `out`, what goes on the wire (sealed, when sealing).
    pub fn seal(&mut self, plain: &mut BytesMut, out: &mut BytesMut) -> Result<(), String> {
        match &mut self.sealer {
            Some(sealer) => sealer.seal(plain, out),
            None => {
                if out.is_empty() {
                    std::mem::swap(out, plain);
                } else {
                    out.unsplit(plain.split());
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> HandshakeIds<'static> {
        HandshakeIds {
            cluster: "c",
            dialer: ("a", 1),
            link_epoch: 9,
            acceptor: ("b", 2),
            dialer_nonce: &[1; 32],
            acceptor_nonce: &[2; 32],
        }
    }

    #[test]
    fn records_open_in_order_and_only_with_the_right_key() {
        let (d2a, a2d) = link_keys(&[7; 32], &ids());
        assert_ne!(d2a, a2d, "one key per direction");
        let mut sealer = Sealer::new(d2a);
        let mut wire = BytesMut::new();
        for msg in [&b"first frames"[..], b"second", b""] {
            let mut plain = BytesMut::from(msg);
            sealer.seal(&mut plain, &mut wire).unwrap();
        }
        assert!(!wire.windows(6).any(|w| w == b"second"), "not in clear");
        let mut opener = Opener::new(d2a);
        let mut got = BytesMut::new();
        // A record split across reads waits for the rest.
        let mut partial = wire.split_to(7);
        opener.open(&mut partial, &mut got).unwrap();
        assert!(got.is_empty());
        partial.unsplit(wire);
        opener.open(&mut partial, &mut got).unwrap();
        assert_eq!(&got[..], b"first framessecond");
    }

    #[test]
    fn forged_replayed_and_foreign_records_are_refused() {
        let (d2a, a2d) = link_keys(&[7; 32], &ids());
        let record = |counter_skip: u64| {
            let mut s = Sealer::new(d2a);
            let mut out = BytesMut::new();
            for _ in 0..=counter_skip {
                out.clear();
                s.seal(&mut BytesMut::from(&b"frame"[..]), &mut out)
                    .unwrap();
            }
            out
        };
        // Altered: one bit flipped.
        let mut altered = record(0);
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(
            Opener::new(d2a)
                .open(&mut altered, &mut BytesMut::new())
                .is_err()
        );
        // Replayed or reordered: a record sealed second, opened first.
        assert!(
            Opener::new(d2a)
                .open(&mut record(1), &mut BytesMut::new())
                .is_err()
        );
        // The other direction's key, or another secret's.
        assert!(
            Opener::new(a2d)
                .open(&mut record(0), &mut BytesMut::new())
                .is_err()
        );
        let (other, _) = link_keys(&[8; 32], &ids());
        assert!(
            Opener::new(other)
                .open(&mut record(0), &mut BytesMut::new())
                .is_err()
        );
        // Another connection (other nonces) has other keys.
        let fresh = HandshakeIds {
            acceptor_nonce: &[3; 32],
            ..ids()
        };
        assert_ne!(link_keys(&[7; 32], &fresh).0, d2a);
        // A length no record may have.
        let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(
            Opener::new(d2a)
                .open(&mut huge, &mut BytesMut::new())
                .is_err()
        );
    }

    #[test]
    fn purposes_get_their_own_keys() {
        let s = [9; 32];
        assert_ne!(derive(&s, Purpose::Handshake), derive(&s, Purpose::Gossip));
        assert_ne!(derive(&s, Purpose::Handshake), s);
    }
}
