//! Acknowledgements that wait for the store. With persistence on, a PUBACK or PUBREC says the
//! message is kept, so it goes out only once the store has written what keeps it (fsynced,
//! with `persistence.sync = "always"`); SUBACK, UNSUBACK and PUBCOMP likewise wait for the
//! change they confirm. Acknowledgements leave in the order their packets came (MQTT-4.6.0),
//! so one that needs no disk waits behind one that does. When the store could not write, a v5
//! publisher hears 0x97 Quota exceeded, and a 3.1.1 one, which has no refusal codes, is
//! disconnected without its acknowledgement so that it sends the message again later.
//! In a cluster a SUBACK may also wait for the other nodes to apply its routes (`RouteGate`,
//! `cluster.subscribe_ack`); while a SUBACK waits, no new PUBLISH goes to the client, so the
//! SUBACK comes before any message of the subscription it confirms, retained ones included.

use std::collections::VecDeque;

use tokio::sync::watch;
use tokio::time::Instant;

use super::connection::{Close, Connection};
use crate::broker::{CopiesWait, RouteGate};
use crate::codec::{Ack, Packet, QoS, reason};

/// An acknowledgement waiting for the store op `ticket` (0: none of its own; it waits only
/// for those before it) and, for a SUBACK in a cluster, for the other nodes.
pub(super) struct PendingAck {
    ticket: u64,
    gate: Option<RouteGate>,
    /// With session copies elsewhere, their confirmation (a PUBACK or PUBREC).
    copies: Option<CopiesWait>,
    kind: AckKind,
}

enum AckKind {
    /// PUBACK or PUBREC for a publish: refused if its write failed.
    Publish { qos: QoS, packet_id: u16, code: u8 },
    /// Anything else: sent as it is.
    Other(Box<Packet>),
    /// Nothing to send: the connection only looks at its session again (a held PUBLISH).
    Wake,
}

/// Acknowledgements queued behind the store, oldest first.
#[derive(Default)]
pub(super) struct PendingAcks {
    queue: VecDeque<PendingAck>,
    /// SUBACKs among them.
    subacks: usize,
}

impl PendingAcks {
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// A SUBACK waits: new PUBLISHes wait behind it.
    pub(super) fn holds_publishes(&self) -> bool {
        self.subacks > 0
    }
}

/// What the oldest pending acknowledgement waits for.
pub(super) struct AckWait {
    store: Option<(watch::Receiver<u64>, u64)>,
    gate: Option<RouteGate>,
    copies: Option<CopiesWait>,
}

impl AckWait {
    /// Resolves when the wait may be over (the store wrote the op; the gate settled or its
    /// deadline passed): then `flush_durable` looks.
    pub(super) async fn ready(self) {
        if let Some((mut progress, ticket)) = self.store {
            let _ = progress.wait_for(|done| *done >= ticket).await;
        }
        if let Some(mut gate) = self.gate {
            let deadline = gate.deadline;
            let _ = tokio::time::timeout_at(deadline, gate.settled()).await;
        }
        if let Some(mut copies) = self.copies {
            copies.settled().await;
        }
    }
}

fn is_suback(kind: &AckKind) -> bool {
    matches!(kind, AckKind::Other(p) if matches!(**p, Packet::SubAck(_)))
}

impl Connection {
    /// Sends the acknowledgement of a publish once `ticket` is written and `copies` (if any)
    /// confirmed (at once when neither and nothing waits before it).
    pub(super) fn ack_publish_after(
        &mut self,
        ticket: u64,
        copies: Option<CopiesWait>,
        qos: QoS,
        packet_id: u16,
        code: u8,
    ) {
        self.queue_ack_after(
            ticket,
            None,
            copies,
            AckKind::Publish {
                qos,
                packet_id,
                code,
            },
        );
    }

    /// Comes back to the session once `ticket` is written (a QoS 2 PUBLISH held for it).
    pub(super) fn wake_after(&mut self, ticket: u64) {
        self.queue_ack(ticket, None, AckKind::Wake);
    }

    /// Sends `packet` once `ticket` is written (at once when 0 and nothing waits before it).
    pub(super) fn send_after(&mut self, ticket: u64, packet: Packet) {
        self.queue_ack(ticket, None, AckKind::Other(Box::new(packet)));
    }

    /// Sends a SUBACK once `ticket` is written and `gate` (if any) settled or timed out.
    pub(super) fn send_suback_after(
        &mut self,
        ticket: u64,
        gate: Option<RouteGate>,
        suback: Packet,
    ) {
        self.queue_ack(ticket, gate, AckKind::Other(Box::new(suback)));
    }

    fn queue_ack(&mut self, ticket: u64, gate: Option<RouteGate>, kind: AckKind) {
        self.queue_ack_after(ticket, gate, None, kind);
    }

    fn queue_ack_after(
        &mut self,
        ticket: u64,
        gate: Option<RouteGate>,
        copies: Option<CopiesWait>,
        kind: AckKind,
    ) {
        if ticket == 0 && gate.is_none() && copies.is_none() && self.pending_acks.queue.is_empty() {
            // Nothing to wait for: the usual case without persistence.
            let _ = self.send_ack(kind, true);
            return;
        }
        if is_suback(&kind) {
            self.pending_acks.subacks += 1;
        }
        self.pending_acks.queue.push_back(PendingAck {
            ticket,
            gate,
            copies,
            kind,
        });
    }

    /// What to wait on for the oldest pending acknowledgement, if any.
    pub(super) fn ack_wait(&self) -> Option<AckWait> {
        let front = self.pending_acks.queue.front()?;
        Some(AckWait {
            store: self
                .broker
                .store()
                .map(|store| (store.progress(), front.ticket)),
            gate: front.gate.clone(),
            copies: front.copies.clone(),
        })
    }

    /// Sends the acknowledgements whose waits are over, in order.
    pub(super) fn flush_durable(&mut self) -> Result<(), Close> {
        let store = self.broker.store().cloned();
        let now = Instant::now();
        while let Some(front) = self.pending_acks.queue.front() {
            if store.as_ref().is_some_and(|s| !s.is_done(front.ticket)) {
                break;
            }
            if front
                .gate
                .as_ref()
                .is_some_and(|g| !g.is_settled() && now < g.deadline)
            {
                break;
            }
            if front.copies.as_ref().is_some_and(|c| !c.is_settled()) {
                break;
            }
            let written =
                front.ticket == 0 || store.as_ref().is_none_or(|s| s.written(front.ticket));
            let pending = self.pending_acks.queue.pop_front().expect("front exists");
            if let Some(gate) = &pending.gate {
                gate.release(&self.client_id);
            }
            if let Some(copies) = &pending.copies {
                copies.release();
            }
            if is_suback(&pending.kind) {
                self.pending_acks.subacks -= 1;
            }
            self.send_ack(pending.kind, written)?;
        }
        Ok(())
    }

    fn send_ack(&mut self, kind: AckKind, written: bool) -> Result<(), Close> {
        match kind {
            AckKind::Wake => {}
            AckKind::Other(packet) => self.send(&packet),
            AckKind::Publish {
                qos,
                packet_id,
                code,
            } => {
                let mut code = code;
                if !written && code < 0x80 {
                    crate::broker::Metrics::add(&self.broker.metrics.publishes_refused_store, 1);
                    if qos == QoS::ExactlyOnce {
                        // The exchange ends here: no PUBREL is coming for it.
                        let mut st = self.session.state.lock();
                        st.inbound_qos2.remove(&packet_id);
                        if let Some(j) = &st.journal {
                            j.inbound_qos2(packet_id, false);
                        }
                    }
                    if !self.protocol.is_v5() {
                        return Err(Close::StoreUnavailable);
                    }
                    code = reason::QUOTA_EXCEEDED;
                }
                let code = if self.protocol.is_v5() { code } else { 0 };
                let ack = Ack::new(packet_id, code);
                match qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => self.send(&Packet::PubAck(ack)),
                    QoS::ExactlyOnce => self.send(&Packet::PubRec(ack)),
                }
            }
        }
        Ok(())
    }
}
