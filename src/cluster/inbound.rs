//! The accepting side of peer links: authenticates the dialing node, tells it where to resume
//! (within the same link epoch; a new epoch starts at zero), delivers its publishes here exactly
//! once (sequence numbers already processed in this epoch are skipped),
//! acknowledges them in batches, applies its pushed route changes, and answers requests for
//! this node's retained messages.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::Cluster;
use super::wire::{self, Frame, HandshakeIds};
use crate::broker::Metrics;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts peer links until shutdown.
pub async fn serve(
    listener: TcpListener,
    cluster: Arc<Cluster>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let cluster = cluster.clone();
                    tokio::spawn(async move {
                        if let Err(e) = receive(stream, &cluster).await {
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

async fn receive(stream: TcpStream, cluster: &Arc<Cluster>) -> Result<(), String> {
    let (mut reader, mut writer) = stream.into_split();
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let (peer, generation, epoch) = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(cluster, &mut reader, &mut writer, &mut rbuf),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())??;
    let peer: Arc<str> = peer.into();
    let mut last = cluster.begin_link(&peer, generation, epoch);
    wire::write_frame(&mut writer, &Frame::Ready { resume_after: last }).await?;
    let mut acked = last;
    let mut out = BytesMut::new();
    loop {
        // Everything already buffered is handled before one ack and one write.
        let frame = wire::read_frame(&mut reader, &mut rbuf).await?;
        let mut next = Some(frame);
        while let Some(frame) = next.take() {
            match frame {
                Frame::Publish {
                    seq,
                    normal,
                    groups,
                    message,
                } => {
                    if seq != 0 && seq <= last {
                        continue; // already delivered before a reconnect
                    }
                    let message = wire::decode_message(&message)?;
                    let groups: Vec<Arc<str>> = groups.into_iter().map(Arc::from).collect();
                    Metrics::add(&cluster.metrics.frames_received, 1);
                    if let Some(broker) = cluster.broker() {
                        broker.publish_from_peer(Arc::new(message.into_message()), normal, &groups);
                    }
                    if seq != 0 {
                        last = seq;
                    }
                }
                Frame::Route {
                    version,
                    key,
                    present,
                } => cluster.remote.apply_push(&peer, version, key, present),
                Frame::Retained { messages, .. } => cluster.apply_retained(messages),
                Frame::RetainedRequest => {
                    for frame in cluster.retained_frames() {
                        wire::encode_frame(&frame, &mut out);
                    }
                }
                other => return Err(format!("unexpected frame from dialer: {other:?}")),
            }
            next = wire::decode_frame(&mut rbuf)?;
        }
        if last != acked {
            cluster.set_processed(&peer, generation, epoch, last);
            wire::encode_frame(&Frame::Ack { upto: last }, &mut out);
            acked = last;
        }
        if !out.is_empty() {
            writer
                .write_all(&out)
                .await
                .map_err(|e| format!("write: {e}"))?;
            out.clear();
        }
    }
}

async fn handshake(
    cluster: &Cluster,
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    rbuf: &mut BytesMut,
) -> Result<(String, u64, u64), String> {
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
            other => return Err(format!("expected Hello, got {other:?}")),
        };
    if version != wire::PROTOCOL_VERSION {
        let reason = format!(
            "relay protocol {version} not supported (this node speaks {})",
            wire::PROTOCOL_VERSION
        );
        let _ = wire::write_frame(writer, &refuse(reason.clone())).await;
        tracing::warn!(peer = %their_id, %reason, "refused peer link");
        return Err(reason);
    }
    if their_cluster != cluster.name {
        let reason = format!("cluster name {their_cluster:?} is not {:?}", cluster.name);
        let _ = wire::write_frame(writer, &refuse(reason.clone())).await;
        tracing::warn!(peer = %their_id, %reason, "refused peer link");
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
    let key = cluster.key.as_ref();
    let welcome = Frame::Welcome {
        node_id: cluster.node_id.to_string(),
        generation: cluster.generation,
        nonce: my_nonce,
        proof: wire::proof(key, "acceptor", &ids),
    };
    wire::write_frame(writer, &welcome).await?;
    let their_proof = match wire::read_frame(reader, rbuf).await? {
        Frame::Proof { proof } => proof,
        Frame::Refused { reason } => return Err(format!("dialer refused us: {reason}")),
        other => return Err(format!("expected Proof, got {other:?}")),
    };
    if !wire::verify(key, "dialer", &ids, &their_proof) {
        Metrics::add(&cluster.metrics.auth_failures, 1);
        tracing::warn!(peer = %their_id, "refused peer link: authentication failed (wrong cluster secret?)");
        let _ = wire::write_frame(writer, &refuse("authentication failed".into())).await;
        return Err("dialer failed authentication".into());
    }
    Ok((their_id, their_gen, epoch))
}
