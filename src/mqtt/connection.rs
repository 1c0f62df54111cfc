//! One client connection from CONNECT to close: the read/write loop, keep alive, takeover and
//! shutdown signals, and the orderly end (server DISCONNECT, will, session detach). The loop
//! never blocks on one direction: it reads, writes and drains the session queue as each is
//! ready, and it stops reading while too much output is waiting, so memory stays bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::stream::ClientStream;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::broker::session::PendingWill;
use crate::broker::{Broker, ConnectionControl, Detach, Metrics, Session};
use crate::codec::{Disconnect, Packet, Protocol, Will, decode_packet, encode_packet, reason};
use crate::limits::{Limit, printable};

/// Stop moving queued messages into the write buffer past this many bytes.
pub(super) const OUT_HIGH_WATER: usize = 64 * 1024;
/// Stop reading from the client while this much output is waiting (it is not reading).
const READ_PAUSE: usize = 1024 * 1024;
/// Bounds of the read size, which adapts to how much the client sends.
const MIN_READ: usize = 256;
const MAX_READ: usize = 64 * 1024;
/// How long the final DISCONNECT and pending bytes may take to flush at close.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// After the server ends a connection (DISCONNECT or a refusing CONNACK) it half-closes and
/// reads, discarding, for this long or this many bytes: closing with unread input would send
/// the client a reset that can destroy the reason code before the client reads it.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);
const CLOSE_DRAIN_BYTES: usize = 1024 * 1024;

/// Why a connection ends.
#[derive(Debug)]
pub(super) enum Close {
    /// The client sent DISCONNECT; `will` for v5 reason 0x04.
    ClientDisconnect {
        will: bool,
    },
    /// The client broke the protocol: a v5 client is told `reason`.
    Violation {
        reason: u8,
        detail: String,
    },
    KeepAliveTimeout,
    /// A 3.1.1 client's publish could not be stored, and its protocol has no way to say so:
    /// it is disconnected without the acknowledgement and sends the message again later.
    StoreUnavailable,
    /// Another connection took the client id over (or another kick reason).
    Kicked(u8),
    Shutdown,
    PeerClosed,
    Io(std::io::Error),
}

impl Close {
    pub(super) fn violation(reason: u8, detail: impl Into<String>) -> Close {
        Close::Violation {
            reason,
            detail: detail.into(),
        }
    }
}

/// Per-connection state after a successful CONNECT.
pub(super) struct Connection {
    pub broker: Arc<Broker>,
    pub peer: SocketAddr,
    pub protocol: Protocol,
    pub client_id: Arc<str>,
    /// The verified user name (a password or a certificate vouched for it), for the ACL and
    /// client id ownership; None: anonymous (no user name, or one nothing verified).
    pub identity: Option<Arc<str>>,
    /// This client's ACL rules and the ACL they came from, resolved at the first check.
    pub acl_rules:
        std::cell::RefCell<Option<(Arc<crate::auth::acl::Acl>, crate::auth::acl::ClientRules)>>,
    pub session: Arc<Session>,
    pub control: Arc<ConnectionControl>,
    /// Keep alive in force (zero: none).
    pub keep_alive: Duration,
    /// Outbound QoS 1/2 window: min(client Receive Maximum, mqtt.max_inflight).
    pub window: usize,
    /// The client's Maximum Packet Size (v5), else unlimited.
    pub client_max_packet: usize,
    /// The client's Topic Alias Maximum (v5), for aliases we assign.
    pub client_alias_max: u16,
    pub out_aliases: HashMap<Arc<str>, u16>,
    pub in_aliases: HashMap<u16, String>,
    /// Boxed: most clients set no will, and a will is large (its properties).
    pub will: Option<Box<Will>>,
    /// Session Expiry Interval in force (u32::MAX: never).
    pub expiry_interval: u32,
    /// CONNECT asked for expiry 0; DISCONNECT may then not set a non-zero one (MQTT-3.14.2-2).
    pub connect_expiry_zero: bool,
    pub wbuf: BytesMut,
    /// Subscriber sessions this client's publishes filled past their bound while no other
    /// subscriber needed the messages: no more is read from this client until one of them has
    /// room (backpressure instead of drops).
    pub held_by: crate::broker::Held,
    /// `mqtt.max_publish_rate` and `mqtt.max_publish_bytes_rate`, when either is set.
    pub publish_limits: Option<Box<PublishLimits>>,
    /// Over a publish rate: no more is read or processed until then.
    pub throttled_until: Option<Instant>,
    /// A PUBLISH to `$SYS` was refused and logged (once per connection).
    pub warned_sys: bool,
    /// Acknowledgements waiting for the store (persistence on).
    pub pending_acks: super::durable::PendingAcks,
    /// Counts this connection against its source IP while it lives.
    pub _ip_guard: Option<super::listener::IpGuard>,
}

/// A client's publish-rate buckets (boxed in `Connection`: most nodes set no rate, and an
/// idle connection should not carry them).
pub(super) struct PublishLimits {
    messages: Option<crate::limits::TokenBucket>,
    bytes: Option<crate::limits::TokenBucket>,
}

impl PublishLimits {
    pub(super) fn from_config(mqtt: &crate::config::MqttConfig) -> Option<Box<PublishLimits>> {
        use crate::limits::TokenBucket;
        let limits = PublishLimits {
            messages: (mqtt.max_publish_rate > 0)
                .then(|| TokenBucket::new(f64::from(mqtt.max_publish_rate))),
            bytes: (mqtt.max_publish_bytes_rate > 0)
                .then(|| TokenBucket::new(mqtt.max_publish_bytes_rate as f64)),
        };
        (limits.messages.is_some() || limits.bytes.is_some()).then(|| Box::new(limits))
    }
}

/// Serves one accepted connection to the end: `open`, then its serving future.
pub(super) async fn run<S: ClientStream>(
    stream: S,
    peer: SocketAddr,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    entry: (super::listener::Admission, bool),
) {
    if let Some(serving) = Box::pin(open(stream, peer, broker, shutdown, entry)).await {
        serving.await;
    }
}

/// The CONNECT handshake of one accepted connection. Connected, it returns the future that
/// serves the connection to its end, for the caller to give a task of its own: that future
/// is all an idle connection's task holds (the handshake, which is larger, is over by then).
/// Refused or gone, it closes the stream and returns None.
pub(super) async fn open<S: ClientStream>(
    stream: S,
    peer: SocketAddr,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    entry: (super::listener::Admission, bool),
) -> Option<impl Future<Output = ()> + Send + 'static> {
    let counted = Counted::new(&broker);
    let mut stream = stream;
    let mut rbuf = BytesMut::new();
    match super::connect::handshake(&mut stream, &mut rbuf, peer, &broker, entry).await {
        super::connect::Handshake::Connected(conn) => {
            let (reader, writer) = stream.into_halves();
            return Some(Box::new(conn).serve(reader, writer, rbuf, shutdown, counted));
        }
        super::connect::Handshake::Refused => {
            let (mut reader, mut writer) = stream.into_halves();
            let _ = tokio::time::timeout(CLOSE_FLUSH, writer.shutdown()).await;
            drain(&mut reader).await;
        }
        super::connect::Handshake::Gone => {
            let _ = stream.shutdown().await;
        }
    }
    None
}

/// Counts a connection in `connections_current` from accept to close.
pub(super) struct Counted(Arc<Broker>);

impl Counted {
    fn new(broker: &Arc<Broker>) -> Counted {
        Metrics::add(&broker.metrics.connections_total, 1);
        broker
            .metrics
            .connections_current
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counted(broker.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0
            .metrics
            .connections_current
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Connection {
    /// Deadline for the next packet from the client under keep alive (1.5 times it).
    fn next_deadline(&self) -> Option<Instant> {
        (!self.keep_alive.is_zero()).then(|| Instant::now() + self.keep_alive.mul_f32(1.5))
    }

    /// The connection's life after CONNACK. Written as a function returning an `async move`
    /// block that uses its captures in place: an `async fn` keeps each argument twice (as
    /// passed and as a local), and this future is what every idle connection's task holds.
    #[allow(clippy::manual_async_fn)] // the point is not to be an `async fn` (see above)
    fn serve<R, W>(
        mut self: Box<Self>,
        mut reader: R,
        mut writer: W,
        mut rbuf: BytesMut,
        mut shutdown: watch::Receiver<bool>,
        counted: Counted,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        async move {
            let session = self.session.clone();
            let control = self.control.clone();
            let mut deadline = self.next_deadline();
            let mut read_size = MIN_READ;
            let max_in = self.broker.config.mqtt.max_packet_size as usize;
            // Acknowledgements waiting for the store at once, before this side stops reading.
            let max_pending_acks = usize::from(self.broker.config.mqtt.max_inflight);
            // Packets that arrived together with CONNECT.
            let mut close = self.process_input(&mut rbuf, max_in).err();
            if *shutdown.borrow_and_update() {
                close = Some(Close::Shutdown);
            }
            while close.is_none() {
                if let Err(c) = self.fill_output() {
                    close = Some(c);
                    break;
                }
                // An idle connection keeps no buffers: input is read into a per-thread buffer
                // and only what is left of a partial packet is kept here; output is encoded into
                // a buffer allocated when there is something to send.
                if rbuf.is_empty() && rbuf.capacity() > 0 {
                    rbuf = BytesMut::new();
                }
                if self.wbuf.is_empty() && self.wbuf.capacity() > 0 {
                    self.wbuf = BytesMut::new();
                }
                let held = !self.held_by.is_empty();
                let throttled = self.throttled_until;
                // Boxed: only connections with acknowledgements pending pay for the wait.
                let ack_wait = self.ack_wait().map(|wait| Box::pin(wait.ready()));
                let acks_wait = ack_wait.is_some();
                let acks_full = self.pending_acks.len() >= max_pending_acks;
                // One timer serves both: the end of a throttle pause, else the keep-alive
                // deadline. Input this side is not reading (held back, throttled) cannot time the
                // client out.
                let timer = match (throttled, held) {
                    (Some(until), _) => Some(until),
                    (None, true) => None,
                    (None, false) => deadline,
                };
                let sleep = async {
                    match timer {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = control.kicked() => {
                        close = Some(match control.kick_reason().unwrap_or(reason::SESSION_TAKEN_OVER) {
                            // The node's stop evicting its clients one by one.
                            reason::USE_ANOTHER_SERVER | reason::SERVER_SHUTTING_DOWN => Close::Shutdown,
                            r => Close::Kicked(r),
                        });
                    }
                    // `changed` rather than `crate::stopped`: half the size in every connection's
                    // task. The flag only ever turns true; a dropped sender is a shutdown too.
                    changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() {
                        close = Some(Close::Shutdown);
                    },
                    written = writer.write(&self.wbuf), if !self.wbuf.is_empty() => match written {
                        Ok(n) => {
                            Metrics::add(&self.broker.metrics.bytes_sent, n as u64);
                            self.wbuf.advance(n);
                        }
                        Err(e) => close = Some(Close::Io(e)),
                    },
                    _ = self.held_by.room(), if held => {
                        // One of them having room is enough: the next message goes on, and a
                        // session still full then is dropped for, not waited for.
                        if self.held_by.release_if_room() {
                            // The client was sending all along; we were not reading.
                            deadline = self.next_deadline();
                            close = self.process_input(&mut rbuf, max_in).err();
                        }
                    }
                    _ = async {
                        if let Some(ready) = ack_wait {
                            ready.await;
                        }
                    }, if acks_wait => {
                        close = self.flush_durable().err();
                    }
                    read = read_pooled(&mut reader, &mut rbuf, read_size), if self.wbuf.len() < READ_PAUSE && !held && throttled.is_none() && !acks_full => match read {
                        Ok(0) => close = Some(Close::PeerClosed),
                        Ok(n) => {
                            Metrics::add(&self.broker.metrics.bytes_received, n as u64);
                            // Read in larger pieces while the client sends a lot, smaller when not.
                            read_size = if n >= read_size { (read_size * 2).min(MAX_READ) } else { (read_size / 2).max(MIN_READ) };
                            deadline = self.next_deadline();
                            close = self.process_input(&mut rbuf, max_in).err();
                        }
                        Err(e) => close = Some(Close::Io(e)),
                    },
                    _ = session.woken() => {}
                    _ = sleep => {
                        if throttled.is_some() {
                            self.throttled_until = None;
                            deadline = self.next_deadline();
                            close = self.process_input(&mut rbuf, max_in).err();
                        } else {
                            close = Some(Close::KeepAliveTimeout);
                        }
                    }
                }
            }
            // Boxed: closing runs once, at the end, and inline its future would make every
            // connection's task that much larger.
            Box::pin(self.finish(close.expect("loop ends with a reason"), reader, writer)).await;
            drop(counted);
        }
    }

    /// Decodes and handles every complete packet in `rbuf`.
    fn process_input(&mut self, rbuf: &mut BytesMut, max_in: usize) -> Result<(), Close> {
        // Held back or throttled: the rest stays buffered until then.
        while self.held_by.is_empty() && self.throttled_until.is_none() {
            match decode_packet(rbuf, Some(self.protocol), max_in) {
                Ok(Some(packet)) => self.handle(packet)?,
                Ok(None) => return Ok(()),
                Err(e) => return Err(Close::violation(e.reason_code(), e.to_string())),
            }
        }
        Ok(())
    }

    /// Queues a control packet for writing.
    pub(super) fn send(&mut self, packet: &Packet) {
        encode_packet(packet, self.protocol, &mut self.wbuf);
    }

    /// Counts a PUBLISH of `bytes` against the client's publish rates; past one, input pauses
    /// for as long as it takes to get back within it.
    pub(super) fn charge_publish(&mut self, bytes: usize) {
        let Some(limits) = self.publish_limits.as_mut() else {
            return;
        };
        let pauses = [
            (
                limits.messages.as_mut().and_then(|b| b.take(1.0)),
                Limit::PublishRate,
            ),
            (
                limits.bytes.as_mut().and_then(|b| b.take(bytes as f64)),
                Limit::PublishBytesRate,
            ),
        ];
        for (pause, limit) in pauses {
            if let Some(pause) = pause {
                self.broker
                    .limits
                    .hit(limit, &self.client_id, "client read more slowly");
                let until = Instant::now() + pause;
                self.throttled_until = Some(self.throttled_until.map_or(until, |t| t.max(until)));
            }
        }
    }

    async fn finish(
        mut self: Box<Self>,
        close: Close,
        mut reader: impl tokio::io::AsyncRead + Unpin,
        mut writer: impl tokio::io::AsyncWrite + Unpin,
    ) {
        let v5 = self.protocol.is_v5();
        // (reason code, reason string) for a server DISCONNECT.
        let server_reason: Option<(u8, String)> = match &close {
            Close::Violation { reason, detail } => {
                Metrics::add(&self.broker.metrics.protocol_errors, 1);
                let detail = crate::limits::reason_string(detail.clone());
                tracing::info!(client_id = %printable(&self.client_id), peer = %self.peer, %detail, "closing connection: protocol violation");
                Some((*reason, detail))
            }
            Close::KeepAliveTimeout => {
                tracing::info!(client_id = %printable(&self.client_id), peer = %self.peer, "closing connection: keep alive timed out");
                Some((reason::KEEP_ALIVE_TIMEOUT, "keep alive timed out".into()))
            }
            Close::StoreUnavailable => {
                tracing::info!(client_id = %printable(&self.client_id), peer = %self.peer, "closing a 3.1.1 connection: its publish could not be stored (it will send it again)");
                None
            }
            Close::Kicked(reason::QUOTA_EXCEEDED) => Some((
                reason::QUOTA_EXCEEDED,
                "subscriber too slow: its queue overflowed (mqtt.slow_subscriber = disconnect)"
                    .into(),
            )),
            Close::Kicked(r) => Some((*r, "another connection took over this client id".into())),
            Close::Shutdown => match self.broker.stop_reason() {
                reason::USE_ANOTHER_SERVER => {
                    Metrics::add(&self.broker.metrics.clients_moved_at_stop, 1);
                    Some((
                        reason::USE_ANOTHER_SERVER,
                        "this node is stopping: connect to another node of the cluster".into(),
                    ))
                }
                code => Some((code, "server shutting down".into())),
            },
            Close::Io(e) => {
                tracing::debug!(client_id = %printable(&self.client_id), error = %e, "connection lost");
                None
            }
            Close::PeerClosed | Close::ClientDisconnect { .. } => None,
        };
        if let (true, Some((code, text))) = (v5, server_reason) {
            let mut d = Disconnect {
                reason: code,
                ..Default::default()
            };
            // A reason string may always ride on DISCONNECT (v5 3.1.2.11.7), but must not
            // push the packet past the client's Maximum Packet Size.
            if text.len() + 16 <= self.client_max_packet {
                d.properties.reason_string = Some(text);
            }
            // Where to go instead, when the operator named it (server.server_reference).
            let reference = &self.broker.config.server.server_reference;
            if code == reason::USE_ANOTHER_SERVER
                && !reference.is_empty()
                && d.properties.reason_string.as_ref().map_or(0, String::len) + reference.len() + 19
                    <= self.client_max_packet
            {
                d.properties.server_reference = Some(reference.clone());
            }
            self.send(&Packet::Disconnect(d));
        }
        let server_ends = server_reason_given(&close);
        if !matches!(close, Close::Io(_)) {
            let flush = async {
                writer.write_all(&self.wbuf).await?;
                writer.shutdown().await
            };
            let _ = tokio::time::timeout(CLOSE_FLUSH, flush).await;
        }
        let will = match close {
            Close::ClientDisconnect { will: false } => None,
            _ => self.will.take().map(|will| {
                let delay = will.properties.will_delay_interval.unwrap_or(0);
                PendingWill { will, delay }
            }),
        };
        tracing::debug!(client_id = %printable(&self.client_id), "connection closed");
        let detach = Detach {
            expiry_interval: self.expiry_interval,
            will,
        };
        self.broker.detach(&self.session, &self.control, detach);
        // Closed as far as the session is concerned (a takeover waits for this, not for
        // the drain below).
        self.control.mark_closed();
        if server_ends {
            drain(&mut reader).await;
        }
    }
}

thread_local! {
    /// Each worker thread's read buffer: connections read into it and keep only the bytes
    /// they got, so an idle connection holds no read buffer of its own.
    static READ_SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; MAX_READ].into_boxed_slice());
}

/// Reads at most `want` bytes (up to `MAX_READ`) and appends them to `rbuf`; the count, 0 at
/// the end of the stream. The bytes land in the thread's `READ_SCRATCH` first, so nothing is
/// allocated until the client sends something.
async fn read_pooled<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    rbuf: &mut BytesMut,
    want: usize,
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        READ_SCRATCH.with_borrow_mut(|scratch| {
            let mut into = tokio::io::ReadBuf::new(&mut scratch[..want.min(MAX_READ)]);
            std::pin::Pin::new(&mut *reader)
                .poll_read(cx, &mut into)
                .map_ok(|()| {
                    rbuf.extend_from_slice(into.filled());
                    into.filled().len()
                })
        })
    })
    .await
}

/// Whether the server ends the connection and tells the client why.
fn server_reason_given(close: &Close) -> bool {
    matches!(
        close,
        Close::Violation { .. }
            | Close::KeepAliveTimeout
            | Close::Kicked(_)
            | Close::Shutdown
            | Close::StoreUnavailable
    )
}

/// Reads and discards what the client still sends, for at most `CLOSE_DRAIN` and
/// `CLOSE_DRAIN_BYTES`, so that closing does not reset a connection whose last packet (a
/// DISCONNECT or CONNACK with the reason) the client has yet to read.
pub(super) async fn drain(reader: &mut (impl tokio::io::AsyncRead + Unpin)) {
    // `copy` keeps its buffer on the heap, and only while draining: a buffer in this future
    // would make every connection's task that much larger for its whole life.
    let mut limited = reader.take(CLOSE_DRAIN_BYTES as u64);
    let mut sink = tokio::io::sink();
    let discard = tokio::io::copy(&mut limited, &mut sink);
    let _ = tokio::time::timeout(CLOSE_DRAIN, discard).await;
}
