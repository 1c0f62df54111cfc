//! The peer relay's wire format: length-prefixed bincode frames, the message as it travels
//! between nodes, and the handshake proofs (HMAC-SHA256 over both nonces and both identities,
//! so a proof cannot be replayed on another connection or by the other side).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::broker::Message;
use crate::codec::{Properties, QoS};

/// Bumped when frames change incompatibly; peers with another version are refused.
/// 2: Hello carries the link's epoch (progress is kept per link incarnation).
/// 3: retained sync is part of the reliable stream (`Retained` has a sequence number, no
/// `RetainedRequest`); `Heartbeat`; `Publish` says how long it waited in the queue.
/// 4: with a secret, everything after the handshake is sealed (see `seal`), and the handshake
/// MAC uses a key derived for it.
/// 5: `Route` is reliable (sequenced and acknowledged), so a node knows when a peer has
/// applied a route it pushed (`cluster.subscribe_ack`).
/// 8: with a secret, the acceptor's `Ready` (and any refusal after the dialer's proof) is the
/// first sealed frame; claims carry the connection's identity and session copies their owner
/// (`auth.clientid_ownership`).
pub const PROTOCOL_VERSION: u16 = 8;
/// Largest frame read before the other side has proved the cluster secret (Hello, Welcome,
/// Proof, a refusal): a stranger gets no more of this node's memory than this.
pub const HANDSHAKE_FRAME_MAX: usize = 8 * 1024;
/// Largest frame accepted. It covers a publish frame carrying the largest packet the broker
/// can be configured to accept (`mqtt.max_packet_size` at most 268,435,460 bytes) with room to
/// spare; retained snapshots are built in batches of `RETAINED_BATCH_BYTES`, far below it.
pub const MAX_FRAME: usize = 272 * 1024 * 1024;
/// About how many bytes of retained messages go into one `Retained` frame (a single larger
/// message goes alone).
pub const RETAINED_BATCH_BYTES: usize = 1024 * 1024;

/// A message between nodes: what a subscriber on the other node needs, and what retained
/// ordering needs (origin and timestamp).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    /// Message Expiry Interval left when it was sent.
    pub expiry_secs: Option<u32>,
    pub publisher: Option<String>,
    pub origin: String,
    pub stamp: u64,
}

impl WireMessage {
    /// `local` is this node's id, the origin of messages that entered here. None if expired.
    pub fn from_message(m: &Message, local: &str) -> Option<WireMessage> {
        let expiry_secs = m.expiry_left(Instant::now())?;
        let p = &m.properties;
        Some(WireMessage {
            topic: m.topic.to_string(),
            payload: m.payload.clone(),
            qos: m.qos as u8,
            retain: m.retain,
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
            expiry_secs,
            publisher: m.publisher.as_deref().map(str::to_string),
            origin: m.origin.as_deref().unwrap_or(local).to_string(),
            stamp: m.stamp,
        })
    }

    pub fn into_message(self) -> Message {
        let properties = Properties {
            payload_format_indicator: self.payload_format_indicator,
            content_type: self.content_type,
            response_topic: self.response_topic,
            correlation_data: self.correlation_data,
            user_properties: self.user_properties,
            ..Properties::default()
        };
        Message {
            topic: self.topic.into(),
            payload: self.payload,
            qos: QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce),
            retain: self.retain,
            properties,
            expires_at: self
                .expiry_secs
                .map(|s| Instant::now() + Duration::from_secs(u64::from(s))),
            publisher: self.publisher.map(Arc::from),
            origin: Some(self.origin.into()),
            stamp: self.stamp,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Dialer to acceptor, first.
    Hello {
        version: u16,
        cluster: String,
        node_id: String,
        generation: u64,
        /// Chosen at random when the dialer created this link: reliable sequence numbers
        /// count within one epoch, so a link made anew never resumes an old one's count.
        link_epoch: u64,
        nonce: [u8; 32],
    },
    /// Acceptor to dialer: who it is, its nonce, and its proof of the secret.
    Welcome {
        node_id: String,
        generation: u64,
        nonce: [u8; 32],
        proof: Vec<u8>,
    },
    /// Dialer to acceptor: its proof of the secret.
    Proof { proof: Vec<u8> },
    /// Acceptor to dialer: authenticated; resend reliable frames after this sequence number.
    Ready { resume_after: u64 },
    /// Either side, before closing: why.
    Refused { reason: String },
    /// A message for the acceptor's subscribers: ordinary ones if `normal`, and the listed
    /// shared groups. `message` is a bincode `WireMessage`, encoded once for every link.
    Publish {
        seq: u64,
        normal: bool,
        groups: Vec<String>,
        /// Milliseconds it waited in the sender's queue: its expiry counts that time.
        held_ms: u64,
        message: Bytes,
    },
    /// Acceptor to dialer: every sequence number up to here is processed. Also sent as the
    /// acceptor's heartbeat while there is nothing new to acknowledge.
    Ack { upto: u64 },
    /// Dialer to acceptor while it has nothing else to send: the link is alive.
    Heartbeat,
    /// The dialer's node gained (`present`) or lost a route; `version` orders it against gossip.
    /// Reliable: its acknowledgement says the acceptor applied it.
    Route {
        seq: u64,
        version: u64,
        key: String,
        present: bool,
    },
    /// Dialer to acceptor: a batch of the dialer's retained messages and tombstones, part of
    /// the set each new link sends once. Reliable (sequenced and acknowledged) like a QoS 1
    /// publish, so a cut in the middle resumes the set instead of losing or restarting it.
    Retained {
        seq: u64,
        messages: Vec<WireMessage>,
    },
    /// A claim on a client id, its answer, or a session handed over (`handover`): `body` is a
    /// bincode `SessionMessage`. Reliable, not stored: a claim outlives no restart.
    Session { seq: u64, body: Bytes },
    /// Acceptor to dialer: every sequence number up to here is processed, though not all of
    /// it acknowledged yet (with persistence on, what is not on disk; with session copies
    /// elsewhere, what they did not confirm). Session copies count what was applied, so a
    /// holder's wait for its copies never waits on that node's own acknowledgements.
    Applied { upto: u64 },
}

impl Frame {
    /// The frame's name, for errors and logs (never its contents: a peer's strings and
    /// payloads stay out of log lines).
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Welcome { .. } => "Welcome",
            Frame::Proof { .. } => "Proof",
            Frame::Ready { .. } => "Ready",
            Frame::Refused { .. } => "Refused",
            Frame::Publish { .. } => "Publish",
            Frame::Ack { .. } => "Ack",
            Frame::Heartbeat => "Heartbeat",
            Frame::Route { .. } => "Route",
            Frame::Retained { .. } => "Retained",
            Frame::Session { .. } => "Session",
            Frame::Applied { .. } => "Applied",
        }
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// bincode's output straight into a `BytesMut`: frames are encoded in place in the batch
/// being written, with no intermediate vector to grow and copy.
struct Appender<'a>(&'a mut BytesMut);

impl bincode::enc::write::Writer for Appender<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

pub fn encode_message(m: &WireMessage) -> Bytes {
    let mut out = BytesMut::with_capacity(wire_weight(m));
    bincode::serde::encode_into_writer(m, Appender(&mut out), config())
        .expect("wire messages always encode");
    out.freeze()
}

/// The message as it arrives after `held_ms` in the sender's queue: its expiry interval less
/// that time, or None when it expired on the way.
pub fn after_holding(mut m: WireMessage, held_ms: u64) -> Option<WireMessage> {
    if let Some(secs) = m.expiry_secs {
        let left_ms = (u64::from(secs) * 1000).checked_sub(held_ms)?;
        if left_ms == 0 {
            return None;
        }
        m.expiry_secs = Some(left_ms.div_ceil(1000) as u32);
    }
    Some(m)
}

pub fn decode_message(bytes: &[u8]) -> Result<WireMessage, String> {
    bincode::serde::decode_from_slice(bytes, config())
        .map(|(m, _)| m)
        .map_err(|e| e.to_string())
}

/// What a message weighs on the wire, near enough to size batches (its variable parts plus a
/// fixed allowance for the rest).
fn wire_weight(m: &WireMessage) -> usize {
    let strings = [&m.content_type, &m.response_topic]
        .into_iter()
        .flatten()
        .map(String::len)
        .sum::<usize>();
    let user: usize = m
        .user_properties
        .iter()
        .map(|(k, v)| k.len() + v.len() + 8)
        .sum();
    m.topic.len()
        + m.payload.len()
        + m.correlation_data.as_ref().map_or(0, |c| c.len())
        + m.origin.len()
        + m.publisher.as_ref().map_or(0, String::len)
        + strings
        + user
        + 64
}

/// Retained messages in batches for `Retained` frames, bounded by bytes when built: each
/// holds messages up to `budget` bytes (a larger message alone). No messages, no batches.
pub fn retained_batches(messages: Vec<WireMessage>, budget: usize) -> Vec<Vec<WireMessage>> {
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut weight = 0;
    for m in messages {
        let w = wire_weight(&m);
        if !batch.is_empty() && weight + w > budget {
            batches.push(std::mem::take(&mut batch));
            weight = 0;
        }
        weight += w;
        batch.push(m);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Appends one length-prefixed frame to `out`. Every frame the relay builds is bounded when
/// built (a publish by `mqtt.max_packet_size`, retained batches by `RETAINED_BATCH_BYTES`);
/// one that would still exceed `MAX_FRAME` is refused here, never sent to be refused by the
/// peer and sent again.
pub fn encode_frame(frame: &Frame, out: &mut BytesMut) -> Result<(), String> {
    let start = out.len();
    out.put_u32(0);
    let encoded = bincode::serde::encode_into_writer(frame, Appender(out), config());
    let len = out.len() - start - 4;
    if let Err(e) = encoded {
        out.truncate(start);
        return Err(e.to_string());
    }
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(format!("frame of {len} bytes exceeds {MAX_FRAME}"));
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

pub fn frame_bytes(frame: &Frame) -> Result<Bytes, String> {
    let mut out = BytesMut::new();
    encode_frame(frame, &mut out)?;
    Ok(out.freeze())
}

/// Takes one whole frame off the front of `buf`, if there is one.
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Frame>, String> {
    decode_frame_within(buf, MAX_FRAME)
}

/// As `decode_frame`, refusing a frame longer than `max` before waiting for its bytes.
pub fn decode_frame_within(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(format!("frame of {len} bytes exceeds {max}"));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let body = buf.split_to(len);
    bincode::serde::decode_from_slice(&body, config())
        .map(|(f, _)| Some(f))
        .map_err(|e| e.to_string())
}

/// Reads the next handshake frame (at most `HANDSHAKE_FRAME_MAX` bytes), waiting for more
/// bytes as needed.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
) -> Result<Frame, String> {
    loop {
        if let Some(frame) = decode_frame_within(buf, HANDSHAKE_FRAME_MAX)? {
            return Ok(frame);
        }
        match reader.read_buf(buf).await {
            Ok(0) => return Err("connection closed".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
) -> Result<(), String> {
    writer
        .write_all(&frame_bytes(frame)?)
        .await
        .map_err(|e| e.to_string())
}

/// Who is on each end of a link, as both ends see it.
pub struct HandshakeIds<'a> {
    pub cluster: &'a str,
    pub dialer: (&'a str, u64),
    pub link_epoch: u64,
    pub acceptor: (&'a str, u64),
    pub dialer_nonce: &'a [u8; 32],
    pub acceptor_nonce: &'a [u8; 32],
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn mac(key: &[u8; 32], role: &str, ids: &HandshakeIds<'_>) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("any key length works for HMAC");
    for part in [
        role.as_bytes(),
        ids.cluster.as_bytes(),
        ids.dialer.0.as_bytes(),
        ids.acceptor.0.as_bytes(),
    ] {
        m.update(&(part.len() as u32).to_be_bytes());
        m.update(part);
    }
    m.update(&ids.dialer.1.to_be_bytes());
    m.update(&ids.link_epoch.to_be_bytes());
    m.update(&ids.acceptor.1.to_be_bytes());
    m.update(ids.dialer_nonce);
    m.update(ids.acceptor_nonce);
    m
}

/// The proof `role` ("dialer" or "acceptor") sends; empty without a secret.
pub fn proof(key: Option<&[u8; 32]>, role: &str, ids: &HandshakeIds<'_>) -> Vec<u8> {
    key.map_or_else(Vec::new, |k| {
        mac(k, role, ids).finalize().into_bytes().to_vec()
    })
}

/// Checks the other side's proof in constant time; anything goes without a secret.
pub fn verify(key: Option<&[u8; 32]>, role: &str, ids: &HandshakeIds<'_>, proof: &[u8]) -> bool {
    key.is_none_or(|k| mac(k, role, ids).verify_slice(proof).is_ok())
}

pub fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).expect("the OS random source works");
    n
}

thread_local! {
    /// Set by the simulation: its seeded source of randomness (xorshift state), so a run
    /// replays exactly. Production leaves it unset and gets the OS's.
    static SEEDED: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Seeds `random_u64` on this thread (the simulation runs every node on one thread).
#[cfg(test)]
pub fn seed_random(seed: u64) {
    SEEDED.with(|s| s.set(Some(seed.max(1))));
}

/// A random number for the choices that shape behaviour (link epochs, backoff jitter).
pub fn random_u64() -> u64 {
    if let Some(mut x) = SEEDED.with(std::cell::Cell::get) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        SEEDED.with(|s| s.set(Some(x)));
        return x;
    }
    let n = nonce();
    u64::from_be_bytes(n[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
