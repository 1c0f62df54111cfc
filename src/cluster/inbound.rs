//! The accepting side of peer links: authenticates the dialing node, lets one connection of
//! each peer run in at a time, tells it where to resume (within the same link epoch; a new
//! epoch starts at zero), delivers its publishes and retained batches here exactly once
//! (sequence numbers already processed in this epoch are skipped), acknowledges them in
//! batches and applies its pushed route changes. It reads no further while a delivery waits
//! for room in a full subscriber here, so acknowledgements stop and the peer's window holds
//! its publishers back: flow control end to end. Acknowledgements double as heartbeats, and a
//! dialer silent past `cluster.link_timeout_ms` is dropped. With persistence on, how far a
//! link was processed is stored after what the processing stored (deliveries to persistent
//! sessions, retained writes), and a frame is acknowledged only once that is on disk: a peer
//! drops only frames this node cannot lose, and after a restart this node resumes the link
//! where its store says, neither losing nor repeating a frame.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Cluster;
use super::seal::{self, Records};

/// (dialer to acceptor, acceptor to dialer).
type LinkKeys = ([u8; 32], [u8; 32]);
use super::inbound_marks::Marks;
use super::wire::{self, Frame, HandshakeIds};
use crate::broker::{Held, Metrics};
use crate::limits::printable;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new connection waits for the one it replaces to stop.
const TAKEOVER_WAIT: Duration = Duration::from_secs(3);
/// Read no more while this much input waits to be processed.
const READ_AHEAD: usize = 4 * 1024 * 1024;
/// Acknowledgements are coalesced: one goes once this much input was read since the last,
/// or `ACK_DELAY` after the first frame it would cover was processed, whichever is first.
/// Acknowledging every read cost the receiving node a third of its time in tiny writes and
/// the sender a wake-up of every held-back publisher per read; at these bounds an ack covers
/// far less than the sender's window (`cluster.link_window_bytes`, at least 64 KiB) and
/// arrives well before its stall timer. Route pushes and session records are confirmed at
/// once by `Applied` marks, so SUBACKs and session-copy waits do not wait for this.
const ACK_EVERY_BYTES: usize = 32 * 1024;
const ACK_DELAY: Duration = Duration::from_millis(1);
/// Frames processed before the task lets others run: the subscribers a batch wakes are sent
/// what it gave them while the rest of a large read waits its turn, instead of after it.
const PROCESS_BUDGET: usize = 64;

/// A refused handshake of one kind is logged at most this often (counted every time).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Kinds of refusal, each logged at most once per `REFUSAL_LOG_EVERY`.
#[derive(Clone, Copy)]
enum Refusal {
    Pending = 0,
    Version = 1,
    ClusterName = 2,
    Authentication = 3,
    Tls = 4,
}

/// Whether a refusal of `kind` may be logged now: strangers knocking must not flood the log.
fn worth_logging(kind: Refusal) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_MS: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];
    let now = crate::broker::now_ms().max(1);
    let last = &LAST_MS[kind as usize];
    let before = last.load(Ordering::Relaxed);
    (before == 0 || now.saturating_sub(before) >= REFUSAL_LOG_EVERY.as_millis() as u64)
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Connections authenticating now, by source address: one address gets at most a quarter of
/// `cluster.max_pending_handshakes` (at least one), so a stranger cannot take them all.
#[derive(Default)]
struct PendingBySource {
    counts: parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One pending connection's place, given back when it has authenticated or gone.
struct PendingPlace {
    by_source: Arc<PendingBySource>,
    ip: std::net::IpAddr,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for PendingPlace {
    fn drop(&mut self) {
        let mut counts = self.by_source.counts.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Accepts peer links until shutdown. At most `cluster.max_pending_handshakes` connections
/// are authenticating at once (TLS, then the secret's proof), and at most a quarter of them
/// from one address: past either a new connection is closed at once, counted
/// (`vibemq_cluster_handshakes_refused_total`) and logged once a minute, so strangers cannot
/// hold this node's memory or tasks, nor keep its peers out.
pub async fn serve(
    listener: TcpListener,
    cluster: Arc<Cluster>,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let total = cluster.config.max_pending_handshakes;
    let per_source = total.div_ceil(4).max(1);
    let pending = Arc::new(tokio::sync::Semaphore::new(total));
    let by_source = Arc::new(PendingBySource::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let source = crate::limits::source_key(addr.ip());
                    let place = {
                        let mut counts = by_source.counts.lock();
                        let n = counts.entry(source).or_insert(0);
                        match pending.clone().try_acquire_owned() {
                            Ok(slot) if *n < per_source => {
                                *n += 1;
                                Some(PendingPlace {
                                    by_source: by_source.clone(),
                                    ip: source,
                                    _slot: slot,
                                })
                            }
                            _ => {
                                if *n == 0 {
                                    counts.remove(&source);
                                }
                                None
                            }
                        }
                    };
                    let Some(permit) = place else {
                        Metrics::add(&cluster.metrics.handshakes_refused, 1);
                        if worth_logging(Refusal::Pending) {
                            tracing::warn!(%addr, limit = total, per_address = per_source, "peer connection refused: cluster.max_pending_handshakes connections (or a quarter of them from this address) are still authenticating (logged once a minute; vibemq_cluster_handshakes_refused_total counts each)");
                        }
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let cluster = cluster.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let served = match tls {
                            None => receive(stream, &cluster, Some(permit)).await,
                            Some(acceptor) => {
                                let limit = Duration::from_millis(cluster.config.link_timeout_ms);
                                match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                                    Ok(Ok(stream)) => receive(stream, &cluster, Some(permit)).await,
                                    Ok(Err(e)) => {
                                        Metrics::add(&cluster.metrics.auth_failures, 1);
                                        if worth_logging(Refusal::Tls) {
                                            tracing::warn!(%addr, error = %e, "peer TLS handshake failed (cluster.tls; its certificate must chain to cluster.ca_file and carry cluster.tls_peer_name when set) (logged once a minute; vibemq_cluster_auth_failures_total counts each)");
                                        }
                                        return;
                                    }
                                    Err(_) => Err("no TLS handshake in time".to_string()),
                                }
                            }
                        };
                        if let Err(e) = served {
                            tracing::debug!(%addr, error = %e, "inbound peer link closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

/// Where one connection's processing stands.
struct Receiving {
    peer: Arc<str>,
    /// Last reliable sequence number processed.
    last: u64,
    /// Last reliable publish processed (its sequence number): what the session copies'
    /// nodes are told (`recovery`).
    last_publish: u64,
    /// Last route push or session record processed: the peer may wait for it (a SUBACK,
    /// `broker::route_gate`; an acknowledgement, `broker::copies_wait`).
    last_awaited: u64,
    /// Full subscribers the last delivery waits on: nothing more is processed until one has
    /// room.
    held: Held,
}

impl Receiving {
    /// Processes up to `PROCESS_BUDGET` whole frames in `rbuf` unless held back; true when
    /// it stopped at the budget (more may be waiting).
    fn process(&mut self, cluster: &Arc<Cluster>, rbuf: &mut BytesMut) -> Result<bool, String> {
        for _ in 0..PROCESS_BUDGET {
            if !self.held.is_empty() {
                return Ok(false);
            }
            let Some(frame) = wire::decode_frame(rbuf)? else {
                return Ok(false);
            };
            match frame {
                Frame::Publish {
                    seq,
                    normal,
                    groups,
                    held_ms,
                    message,
                } => {
                    if seq != 0 && seq <= self.last {
                        continue; // already delivered before a reconnect
                    }
                    let message = wire::decode_message(&message)?;
                    let groups: Vec<Arc<str>> = groups.into_iter().map(Arc::from).collect();
                    Metrics::add(&cluster.metrics.frames_received, 1);
                    let broker = cluster.broker();
                    match wire::after_holding(message, held_ms) {
                        Some(message) => {
                            if let Some(broker) = broker {
                                broker.publish_from_peer(
                                    Arc::new(message.into_message()),
                                    normal,
                                    &groups,
                                    &mut self.held,
                                );
                            }
                        }
                        // Expired while it waited for this node: as a queued message expires.
                        None => {
                            if let Some(broker) = broker {
                                Metrics::add(&broker.metrics.dropped_expired, 1);
                            }
                        }
                    }
                    if seq != 0 {
                        self.last = seq;
                        self.last_publish = seq;
                    }
                }
                Frame::Retained { seq, messages } => {
                    if seq <= self.last {
                        continue;
                    }
                    Metrics::add(&cluster.metrics.frames_received, 1);
                    cluster.apply_retained(messages);
                    self.last = seq;
                }
                Frame::Route {
                    seq,
                    version,
                    key,
                    present,
                } => {
                    if seq <= self.last {
                        continue;
                    }
                    cluster.remote.apply_push(&self.peer, version, key, present);
                    self.last = seq;
                    self.last_awaited = seq;
                }
                Frame::Session { seq, body } => {
                    if seq <= self.last {
                        continue;
                    }
                    cluster.on_session_record(&self.peer, &body)?;
                    self.last = seq;
                    self.last_awaited = seq;
                }
                Frame::Heartbeat => {}
                other => return Err(format!("unexpected frame from dialer: {}", other.kind())),
            }
        }
        Ok(true)
    }
}

/// Serves one accepted peer connection to its end (also driven by the simulation).
/// `pending`: its place among the connections still authenticating, given up once the peer
/// has proved itself.
pub(crate) async fn receive(
    stream: impl AsyncRead + AsyncWrite + Unpin,
    cluster: &Arc<Cluster>,
    pending: Option<impl Send>,
) -> Result<(), String> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut rbuf = BytesMut::with_capacity(wire::HANDSHAKE_FRAME_MAX);
    let (peer, generation, epoch, keys, secret) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(cluster, &mut reader, &mut writer, &mut rbuf),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())??;
    drop(pending);
    let peer: Arc<str> = peer.into();
    // From here on, with a secret, every byte is sealed (keys of this connection), the Ready
    // (where the dialer resumes) first: nobody between the nodes can forge or alter it.
    let mut records = match keys {
        Some((to_acceptor, to_dialer)) => Records::sealed(to_dialer, to_acceptor, &mut rbuf),
        None => Records::plain(),
    };
    // One connection per peer run at a time: the one being served (a connection the peer
    // already gave up on, say) stops first, so two never process the same frames.
    let Some(mut turn) = cluster.enter_link(&peer, generation) else {
        let reason =
            "that run of your node is over here (a newer one joined, or it was given up on)";
        let refused = Frame::Refused {
            reason: reason.into(),
        };
        let _ = write_sealed(&mut writer, &mut records, &refused).await;
        return Err(reason.into());
    };
    let _gate = tokio::time::timeout(TAKEOVER_WAIT, turn.gate.clone().lock_owned())
        .await
        .map_err(|_| "the previous connection of this peer did not stop".to_string())?;
    if *turn.superseded.borrow_and_update() != turn.ticket {
        return Err("superseded by a newer connection".into());
    }
    let last = cluster.begin_link(&peer, epoch);
    let store = cluster.store.clone();
    if let Some(store) = &store {
        // What a previous connection processed is on disk before the peer is told it may
        // drop it.
        let ticket = store.last_ticket();
        let mut progress = store.progress();
        tokio::time::timeout(HANDSHAKE_TIMEOUT, progress.wait_for(|done| *done >= ticket))
            .await
            .map_err(|_| "the store did not keep up".to_string())?
            .map_err(|_| "the store closed".to_string())?;
    }
    // A SIGHUP that takes the secret this connection was made under out of force ends it.
    let mut secret_changes = cluster.secrets.changes();
    if !cluster.secrets.still_holds(secret.as_ref()) {
        return Err(super::SECRET_WITHDRAWN.into());
    }
    write_sealed(
        &mut writer,
        &mut records,
        &Frame::Ready { resume_after: last },
    )
    .await?;
    let mut plain = BytesMut::new();
    records.open_buffered(&mut plain)?;
    let mut rbuf = plain;
    let mut state = Receiving {
        peer,
        last,
        last_publish: last,
        last_awaited: last,
        held: Held::default(),
    };
    let timeout = Duration::from_millis(cluster.config.link_timeout_ms);
    let mut heartbeat = tokio::time::interval(timeout / 4);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let mut ticked = Instant::now();
    let mut acked = last;
    let mut applied = last;
    // Input read since the last acknowledgement, and the timer of one that is due.
    let mut read_since_ack = 0usize;
    let ack_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(ack_timer);
    let mut ack_timer_armed = false;
    let mut ack_due = false;
    let mut marks = Marks::new(cluster, state.peer.clone(), epoch, last, store);
    // Frames to write (plain), and the bytes on their way to the wire (sealed, with a secret).
    let mut pending = BytesMut::new();
    let mut out = BytesMut::new();
    let mut more = process(&mut marks, cluster, &mut state, &mut rbuf)?;
    loop {
        marks.note(cluster, state.last, state.last_publish);
        let ackable = marks.ackable(cluster);
        if ackable != acked {
            if ack_due || read_since_ack >= ACK_EVERY_BYTES {
                wire::encode_frame(&Frame::Ack { upto: ackable }, &mut pending)?;
                acked = ackable;
                read_since_ack = 0;
                ack_due = false;
                ack_timer_armed = false;
            } else if !ack_timer_armed {
                ack_timer.as_mut().reset(Instant::now() + ACK_DELAY);
                ack_timer_armed = true;
            }
        }
        // Route pushes and session records processed ahead of the acknowledgements: the
        // peer's SUBACKs and its waits for session copies count on them.
        if state.last_awaited > acked.max(applied) {
            wire::encode_frame(&Frame::Applied { upto: state.last }, &mut pending)?;
            applied = state.last;
        }
        if out.is_empty() && !pending.is_empty() {
            records.seal(&mut pending, &mut out)?;
        }
        let held = !state.held.is_empty();
        // Biased (in this order) so a simulation replays exactly.
        tokio::select! {
            biased;
            written = writer.write(&out), if !out.is_empty() => {
                let n = written.map_err(|e| format!("write: {e}"))?;
                bytes::Buf::advance(&mut out, n);
            }
            read = records.read(&mut reader, &mut rbuf), if !held && rbuf.len() < READ_AHEAD => {
                let n = read.inspect_err(|_| Metrics::add(&cluster.metrics.frames_rejected, 1))?;
                if n == 0 {
                    return Err("connection closed".into());
                }
                read_since_ack += n;
                heard = Instant::now();
                more = process(&mut marks, cluster, &mut state, &mut rbuf)?;
            }
            _ = state.held.room(), if held => {
                if state.held.release_if_room() {
                    // The peer kept sending while we were not reading.
                    heard = Instant::now();
                    more = process(&mut marks, cluster, &mut state, &mut rbuf)?;
                }
            }
            // Past its budget, a batch goes on after the tasks it woke had their turn.
            () = tokio::task::yield_now(), if more && !held => {
                more = process(&mut marks, cluster, &mut state, &mut rbuf)?;
            }
            _ = marks.ready(), if marks.is_waiting() => {}
            () = &mut ack_timer, if ack_timer_armed => {
                ack_timer_armed = false;
                ack_due = true;
            }
            _ = heartbeat.tick() => {
                if ticked.elapsed() >= timeout {
                    // This node was the one paused (SIGSTOP, a VM pause): the silence is ours.
                    heard = Instant::now();
                }
                ticked = Instant::now();
                // Input this side is not reading cannot time the peer out.
                if !held && heard.elapsed() >= timeout {
                    Metrics::add(&cluster.metrics.link_timeouts, 1);
                    return Err(format!("dialer silent for {} ms", heard.elapsed().as_millis()));
                }
                if out.is_empty() && pending.is_empty() {
                    wire::encode_frame(&Frame::Ack { upto: acked }, &mut pending)?;
                }
            }
            _ = turn.superseded.changed() => {
                return Err("superseded by a newer connection from the same peer".into());
            }
            _ = secret_changes.changed() => {
                if !cluster.secrets.still_holds(secret.as_ref()) {
                    Metrics::add(&cluster.metrics.links_closed_secret_withdrawn, 1);
                    tracing::info!(peer = %state.peer, "{}", super::SECRET_WITHDRAWN);
                    return Err(super::SECRET_WITHDRAWN.into());
                }
            }
        }
    }
}

/// Processes what `rbuf` holds, up to `PROCESS_BUDGET` frames (true: it stopped there); what
/// was processed is noted even when a frame fails, so the next connection neither repeats nor
/// skips it. What the frames store (deliveries, retained writes) and the mark that says they
/// were processed are committed together.
fn process(
    marks: &mut Marks,
    cluster: &Arc<Cluster>,
    state: &mut Receiving,
    rbuf: &mut BytesMut,
) -> Result<bool, String> {
    let store = marks.store();
    let group = store.as_ref().map(|s| s.group());
    let result = state.process(cluster, rbuf);
    marks.note(cluster, state.last, state.last_publish);
    drop(group);
    result
}

/// Writes one frame through `records` (sealed, with a secret).
async fn write_sealed(
    writer: &mut (impl AsyncWrite + Unpin),
    records: &mut Records,
    frame: &Frame,
) -> Result<(), String> {
    let mut plain = BytesMut::new();
    wire::encode_frame(frame, &mut plain)?;
    let mut out = BytesMut::new();
    records.seal(&mut plain, &mut out)?;
    writer.write_all(&out).await.map_err(|e| e.to_string())
}

async fn handshake(
    cluster: &Cluster,
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut (impl AsyncWrite + Unpin),
    rbuf: &mut BytesMut,
) -> Result<(String, u64, u64, Option<LinkKeys>, Option<[u8; 32]>), String> {
    let refuse = |reason: String| Frame::Refused { reason };
    let (version, their_cluster, their_id, their_gen, epoch, their_nonce) =
        match wire::read_frame(reader, rbuf).await? {
            Frame::Hello {
                version,
                cluster,
                node_id,
                generation,
                link_epoch,
                nonce,
            } => (version, cluster, node_id, generation, link_epoch, nonce),
            other => return Err(format!("expected Hello, got {}", other.kind())),
        };
    if version != wire::PROTOCOL_VERSION {
        let reason = format!(
            "relay protocol {version} not supported (this node speaks {})",
            wire::PROTOCOL_VERSION
        );
        let _ = wire::write_frame(writer, &refuse(reason.clone())).await;
        if worth_logging(Refusal::Version) {
            tracing::warn!(peer = %printable(&their_id), %reason, "refused peer link (logged once a minute)");
        }
        return Err(reason);
    }
    if their_cluster != cluster.name {
        let reason = format!(
            "cluster name \"{}\" is not \"{}\"",
            printable(&their_cluster),
            cluster.name
        );
        let _ = wire::write_frame(writer, &refuse(reason.clone())).await;
        if worth_logging(Refusal::ClusterName) {
            tracing::warn!(peer = %printable(&their_id), %reason, "refused peer link (logged once a minute)");
        }
        return Err(reason);
    }
    let my_nonce = wire::nonce();
    let ids = HandshakeIds {
        cluster: &cluster.name,
        dialer: (&their_id, their_gen),
        link_epoch: epoch,
        acceptor: (&cluster.node_id, cluster.generation),
        dialer_nonce: &their_nonce,
        acceptor_nonce: &my_nonce,
    };
    // Our proof under the sealing secret; theirs may be under any secret we accept (a
    // rotation in progress), and the link's keys come from the one it was.
    let secrets = cluster.secrets.current();
    let welcome = Frame::Welcome {
        node_id: cluster.node_id.to_string(),
        generation: cluster.generation,
        nonce: my_nonce,
        proof: wire::proof(
            seal::sealing_handshake_key(&secrets).as_ref(),
            "acceptor",
            &ids,
        ),
    };
    wire::write_frame(writer, &welcome).await?;
    let their_proof = match wire::read_frame(reader, rbuf).await? {
        Frame::Proof { proof } => proof,
        Frame::Refused { reason } => {
            return Err(format!("dialer refused us: {}", printable(&reason)));
        }
        other => return Err(format!("expected Proof, got {}", other.kind())),
    };
    let Ok(secret) = seal::proving_secret(&secrets, "dialer", &ids, &their_proof) else {
        Metrics::add(&cluster.metrics.auth_failures, 1);
        if worth_logging(Refusal::Authentication) {
            tracing::warn!(peer = %printable(&their_id), "refused peer link: authentication failed (wrong cluster secret?) (logged once a minute; vibemq_cluster_auth_failures_total counts each)");
        }
        let _ = wire::write_frame(writer, &refuse("authentication failed".into())).await;
        return Err("dialer failed authentication".into());
    };
    let keys = secret.as_ref().map(|secret| seal::link_keys(secret, &ids));
    Ok((their_id, their_gen, epoch, keys, secret))
}
