//! The dialing side of a link: keeps a connection to the peer while the link lives (backoff
//! with jitter between attempts), authenticates (and checks it reached the run the link is
//! for), then writes the link's queued frames in batches while reading the peer's
//! acknowledgements and heartbeats, sending heartbeats of its own while idle, and drops a
//! connection silent past `cluster.link_timeout_ms`. What to send and what to keep is the
//! link's business (`link`); this is the I/O around it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::Cluster;
use super::link::{BATCH_BYTES, Link};
use super::seal::{self, Purpose, Records};
use super::wire::{self, Frame, HandshakeIds};
use crate::broker::Metrics;

const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps the link connected until it is closed or the node stops.
pub async fn run(link: Arc<Link>, cluster: Arc<Cluster>) {
    let mut stop = link.stop.subscribe();
    let mut backoff = BACKOFF_MIN;
    let mut down_since: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let session = async {
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, (cluster.dial)(link.addr))
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| format!("connect: {e}"))?;
            serve(&link, &cluster, stream, &mut backoff, &mut down_since).await
        };
        let outcome = tokio::select! {
            biased;
            _ = crate::stopped(&mut stop) => return,
            r = session => r,
        };
        link.connected.store(false, Ordering::Relaxed);
        link.room.notify_waiters();
        let since = *down_since.get_or_insert_with(Instant::now);
        if let Err(e) = outcome {
            // Once per outage at warn (a peer down for long), the retries at debug.
            if since.elapsed() >= link.bounds.timeout && backoff == BACKOFF_MAX {
                tracing::debug!(peer = %link.node_id, addr = %link.addr, error = %e, "peer link still down");
            } else if since.elapsed() < Duration::from_millis(1) {
                tracing::info!(peer = %link.node_id, addr = %link.addr, error = %e, "peer link down; reconnecting");
            } else {
                tracing::debug!(peer = %link.node_id, addr = %link.addr, error = %e, "peer link down; reconnecting");
            }
        }
        Metrics::add(&cluster.metrics.link_reconnects, 1);
        // Exponential backoff with jitter, so a restarted node is not hit by all peers at once.
        let jitter = 0.8 + 0.4 * (wire::random_u64() % 256) as f64 / 255.0;
        tokio::select! {
            biased;
            _ = crate::stopped(&mut stop) => return,
            _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

pub(super) async fn serve(
    link: &Link,
    cluster: &Cluster,
    stream: super::PeerStream,
    backoff: &mut Duration,
    down_since: &mut Option<Instant>,
) -> Result<(), String> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let (resume_after, mut records, secret) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(link, cluster, &mut reader, &mut writer, &mut rbuf),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())??;
    // A SIGHUP that takes the secret this connection was made under out of force ends it; the
    // link comes back under one still in force.
    let mut secret_changes = cluster.secrets.changes();
    if !cluster.secrets.still_holds(secret.as_ref()) {
        return Err(super::SECRET_WITHDRAWN.into());
    }
    link.resume(resume_after);
    link.connected.store(true, Ordering::Relaxed);
    cluster.note_linked();
    *backoff = BACKOFF_MIN;
    if let Some(since) = down_since.take() {
        tracing::info!(peer = %link.node_id, addr = %link.addr, resume_after, down_ms = since.elapsed().as_millis() as u64, "peer link up again");
    } else {
        tracing::debug!(peer = %link.node_id, addr = %link.addr, resume_after, "peer link up");
    }
    // The loop reads while it writes: the peer's acknowledgements (and heartbeats) must keep
    // flowing while a large batch or the retained set goes out.
    let timeout = link.bounds.timeout;
    let mut heartbeat = tokio::time::interval(timeout / 4);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let mut wrote = Instant::now();
    let mut ticked = Instant::now();
    // Frames to write (plain), and the bytes on their way to the wire (sealed, with a secret).
    let mut wbuf = BytesMut::with_capacity(BATCH_BYTES);
    let mut out = BytesMut::new();
    records.open_buffered(&mut rbuf)?;
    loop {
        while let Some(frame) = wire::decode_frame(&mut rbuf)? {
            match frame {
                Frame::Ack { upto } => link.ack(upto),
                Frame::Applied { upto } => link.note_applied(upto),
                Frame::Refused { reason } => {
                    return Err(format!("refused: {}", crate::limits::printable(&reason)));
                }
                other => return Err(format!("unexpected frame from acceptor: {}", other.kind())),
            }
        }
        if out.is_empty() {
            if wbuf.is_empty() {
                let n = link.take_batch(&mut wbuf, |scope| cluster.retained_batches(scope));
                Metrics::add(&cluster.metrics.frames_forwarded, n as u64);
            }
            records.seal(&mut wbuf, &mut out)?;
        }
        // With persistence on, the next frame may wait for its number to be reserved on disk.
        let reserving = match out.is_empty() {
            true => link.awaits_store(),
            false => None,
        };
        // Biased (in this order) so a simulation replays exactly; reading first is also what
        // keeps acknowledgements flowing while there is always more to write.
        tokio::select! {
            biased;
            read = records.read(&mut reader, &mut rbuf) => {
                if read.inspect_err(|_| Metrics::add(&cluster.metrics.frames_rejected, 1))? == 0 {
                    return Err("connection closed".into());
                }
                heard = Instant::now();
            }
            written = writer.write(&out), if !out.is_empty() => {
                let n = written.map_err(|e| format!("write: {e}"))?;
                bytes::Buf::advance(&mut out, n);
                wrote = Instant::now();
            }
            _ = link.wake.notified(), if out.is_empty() && !link.has_more() => {}
            _ = reserved(&reserving), if reserving.is_some() => {}
            _ = secret_changes.changed() => {
                if !cluster.secrets.still_holds(secret.as_ref()) {
                    Metrics::add(&cluster.metrics.links_closed_secret_withdrawn, 1);
                    tracing::info!(peer = %link.node_id, addr = %link.addr, "{}", super::SECRET_WITHDRAWN);
                    return Err(super::SECRET_WITHDRAWN.into());
                }
            }
            _ = heartbeat.tick() => {
                if ticked.elapsed() >= timeout {
                    // This node was the one paused (SIGSTOP, a VM pause): the silence is ours.
                    heard = Instant::now();
                }
                ticked = Instant::now();
                if heard.elapsed() >= timeout {
                    Metrics::add(&cluster.metrics.link_timeouts, 1);
                    tracing::warn!(peer = %link.node_id, addr = %link.addr, silent_ms = heard.elapsed().as_millis() as u64, "peer link silent past cluster.link_timeout_ms; reconnecting");
                    return Err("peer silent".into());
                }
                if out.is_empty() && wbuf.is_empty() && wrote.elapsed() >= timeout / 4 {
                    wire::encode_frame(&Frame::Heartbeat, &mut wbuf)?;
                }
            }
        }
    }
}

/// Resolves once the store has done the write a link waits for.
async fn reserved(waiting: &Option<(Arc<crate::store::Store>, u64)>) {
    match waiting {
        Some((store, ticket)) => {
            let _ = store.progress().wait_for(|done| *done >= *ticket).await;
        }
        None => std::future::pending().await,
    }
}

async fn handshake(
    link: &Link,
    cluster: &Cluster,
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut (impl AsyncWrite + Unpin),
    rbuf: &mut BytesMut,
) -> Result<(u64, Records, Option<[u8; 32]>), String> {
    let my_nonce = wire::nonce();
    let hello = Frame::Hello {
        version: wire::PROTOCOL_VERSION,
        cluster: cluster.name.clone(),
        node_id: cluster.node_id.to_string(),
        generation: cluster.generation,
        link_epoch: link.epoch,
        nonce: my_nonce,
    };
    wire::write_frame(writer, &hello).await?;
    let (their_id, their_gen, their_nonce, their_proof) = match wire::read_frame(reader, rbuf)
        .await?
    {
        Frame::Welcome {
            node_id,
            generation,
            nonce,
            proof,
        } => (node_id, generation, nonce, proof),
        Frame::Refused { reason } => {
            // Our Hello refused (another version or cluster name), in clear: anyone on the
            // path could have sent it, so it counts as no authentication failure.
            let reason = crate::limits::printable(&reason);
            tracing::warn!(peer = %link.node_id, addr = %link.addr, %reason, "peer refused our link (an unauthenticated answer)");
            return Err(format!("refused: {reason}"));
        }
        other => return Err(format!("expected Welcome, got {}", other.kind())),
    };
    if their_id != *link.node_id {
        return Err(format!(
            "expected node {} at {}, found {}",
            link.node_id,
            link.addr,
            crate::limits::printable(&their_id)
        ));
    }
    // A restarted peer at the same address is another run: this link's queue (and its
    // sequence numbers) belong to the old one. Membership makes a new link for the new run.
    if their_gen != link.generation {
        return Err(format!(
            "expected run {} of {}, found run {their_gen}",
            link.generation, link.node_id
        ));
    }
    let ids = HandshakeIds {
        cluster: &cluster.name,
        dialer: (&cluster.node_id, cluster.generation),
        link_epoch: link.epoch,
        acceptor: (&their_id, their_gen),
        dialer_nonce: &my_nonce,
        acceptor_nonce: &their_nonce,
    };
    // The acceptor proves the secret it seals with; ours must include it, and the link's keys
    // come from it (so nodes with overlapping secret lists link while a secret rotates).
    let secrets = cluster.secrets.current();
    let Ok(secret) = seal::proving_secret(&secrets, "acceptor", &ids, &their_proof) else {
        Metrics::add(&cluster.metrics.auth_failures, 1);
        tracing::warn!(peer = %their_id, addr = %link.addr, "peer failed authentication (wrong cluster secret?)");
        let _ = wire::write_frame(
            writer,
            &Frame::Refused {
                reason: "authentication failed".into(),
            },
        )
        .await;
        return Err("peer failed authentication".into());
    };
    let handshake_key = secret.map(|k| seal::derive(&k, Purpose::Handshake));
    wire::write_frame(
        writer,
        &Frame::Proof {
            proof: wire::proof(handshake_key.as_ref(), "dialer", &ids),
        },
    )
    .await?;
    // From here on, with a secret, every byte is sealed (keys of this connection): the
    // acceptor's Ready first, so where to resume cannot be forged by whoever sits between the
    // nodes (a forged resume point would make this side drop frames the peer never had).
    let mut records = match &secret {
        Some(secret) => {
            let (to_acceptor, to_dialer) = seal::link_keys(secret, &ids);
            Records::sealed(to_acceptor, to_dialer, rbuf)
        }
        None => Records::plain(),
    };
    let first = async {
        records.open_buffered(rbuf)?;
        loop {
            if let Some(frame) = wire::decode_frame_within(rbuf, wire::HANDSHAKE_FRAME_MAX)? {
                return Ok::<Frame, String>(frame);
            }
            if records.read(reader, rbuf).await? == 0 {
                return Err("connection closed".into());
            }
        }
    };
    let first = match first.await {
        Ok(frame) => frame,
        Err(e) => {
            if secret.is_some() {
                // A peer that refused our proof answers in clear; anything else that does not
                // open is forged or altered on the way.
                Metrics::add(&cluster.metrics.auth_failures, 1);
                tracing::warn!(peer = %their_id, addr = %link.addr, error = %e, "peer's answer to our proof did not open (wrong cluster secret, or the connection was tampered with)");
            }
            return Err(format!("after our proof: {e}"));
        }
    };
    match first {
        Frame::Ready { resume_after } => Ok((resume_after, records, secret)),
        Frame::Refused { reason } => {
            Metrics::add(&cluster.metrics.auth_failures, 1);
            let reason = crate::limits::printable(&reason);
            tracing::warn!(peer = %their_id, addr = %link.addr, %reason, "peer refused our link");
            Err(format!("refused: {reason}"))
        }
        other => Err(format!("expected Ready, got {}", other.kind())),
    }
}
