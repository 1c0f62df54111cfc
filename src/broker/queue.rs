//! A session's queue of deliveries not yet sent, and the bounds it is held to: a soft bound in
//! messages and bytes (`mqtt.max_queued_messages`, `mqtt.max_queued_bytes`), past which a
//! publisher is held back or the delivery dropped, and a hard cap that nothing passes, not
//! even publisher backpressure or retained messages on subscribe. The queue keeps its byte
//! count itself, so no caller can let it drift from what is queued.

use std::collections::VecDeque;

use super::Delivery;

/// What a delivery weighs against `mqtt.max_queued_bytes`: its topic and payload.
pub fn weight(d: &Delivery) -> usize {
    d.message.topic.len() + d.message.payload.len()
}

/// The bounds of one session's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    pub max_messages: usize,
    pub max_bytes: usize,
}

impl QueueBounds {
    /// Bounds in messages only (tests and tools).
    pub fn messages(max_messages: usize) -> QueueBounds {
        QueueBounds {
            max_messages,
            max_bytes: usize::MAX,
        }
    }

    /// The most messages queued at all: what backpressure and retained-on-subscribe may
    /// add past the soft bound.
    pub fn hard_messages(&self) -> usize {
        self.max_messages
            .saturating_mul(2)
            .max(self.max_messages.saturating_add(65_536))
    }

    /// The most bytes queued at all.
    pub fn hard_bytes(&self) -> usize {
        self.max_bytes.saturating_mul(2)
    }
}

/// Deliveries in order, with their total weight.
#[derive(Debug, Default)]
pub struct DeliveryQueue {
    items: VecDeque<Delivery>,
    bytes: usize,
}

impl DeliveryQueue {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Topic and payload bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Within the soft bound: another delivery may be queued without pressure.
    pub fn has_room(&self, bounds: &QueueBounds) -> bool {
        self.items.len() < bounds.max_messages && self.bytes < bounds.max_bytes
    }

    /// Below the hard cap.
    pub fn below_hard_cap(&self, bounds: &QueueBounds) -> bool {
        self.items.len() < bounds.hard_messages() && self.bytes < bounds.hard_bytes()
    }

    pub fn front(&self) -> Option<&Delivery> {
        self.items.front()
    }

    pub fn push_back(&mut self, d: Delivery) {
        self.bytes += weight(&d);
        self.items.push_back(d);
    }

    pub fn push_front(&mut self, d: Delivery) {
        self.bytes += weight(&d);
        self.items.push_front(d);
    }

    pub fn pop_front(&mut self) -> Option<Delivery> {
        let d = self.items.pop_front()?;
        self.bytes -= weight(&d);
        Some(d)
    }

    pub fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }

    /// Takes out every delivery `take` selects, keeping the others in order.
    pub fn extract(&mut self, mut take: impl FnMut(&Delivery) -> bool) -> Vec<Delivery> {
        let mut out = Vec::new();
        let mut kept = VecDeque::with_capacity(self.items.len());
        for d in self.items.drain(..) {
            if take(&d) {
                self.bytes -= weight(&d);
                out.push(d);
            } else {
                kept.push_back(d);
            }
        }
        self.items = kept;
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = &Delivery> {
        self.items.iter()
    }
}
