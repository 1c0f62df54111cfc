//! Outbound packet identifiers: the next one not used by a message in flight to a client.
//! With few in flight a scan of them answers; with many (a client with a large Receive
//! Maximum that acknowledges slowly) one bitmap of the ids in use is built per run of
//! allocations, so filling a window of thousands costs one pass instead of one per message.

use std::collections::VecDeque;

use super::session::Inflight;

/// At or below this many in flight, allocations scan.
const SCAN_UP_TO: usize = 16;

/// The ids in use during one run of allocations (one pass over a client's queue). Ids it
/// hands out count as used until the run ends; `release` gives back one that was not sent.
#[derive(Default)]
pub struct IdsInUse {
    bits: Option<Box<[u64; 1024]>>,
}

impl IdsInUse {
    fn test_and_set(bits: &mut [u64; 1024], id: u16) -> bool {
        let (word, bit) = (usize::from(id) / 64, id % 64);
        let was = bits[word] & (1 << bit) != 0;
        bits[word] |= 1 << bit;
        was
    }

    /// An id handed out by `allocate` that was not used after all.
    pub fn release(&mut self, id: u16) {
        if let Some(bits) = &mut self.bits {
            bits[usize::from(id) / 64] &= !(1 << (id % 64));
        }
    }
}

/// The next id from `next` on (wrapping past 65535 to 1; 0 is never used) that no message in
/// `inflight` holds. The caller keeps fewer than 65535 in flight, so one is free.
pub fn allocate(next: &mut u16, inflight: &VecDeque<Inflight>, ids: &mut IdsInUse) -> u16 {
    let mut advance = || {
        let id = *next;
        *next = if id == u16::MAX { 1 } else { id + 1 };
        id
    };
    if ids.bits.is_none() && inflight.len() <= SCAN_UP_TO {
        loop {
            let id = advance();
            if !inflight.iter().any(|f| f.packet_id == id) {
                return id;
            }
        }
    }
    let bits = ids.bits.get_or_insert_with(|| {
        let mut bits = Box::new([0u64; 1024]);
        bits[0] = 1; // 0 is not an id
        for f in inflight {
            IdsInUse::test_and_set(&mut bits, f.packet_id);
        }
        bits
    });
    for _ in 0..=u16::MAX {
        let id = advance();
        if !IdsInUse::test_and_set(bits, id) {
            return id;
        }
    }
    // Every id marked: ones handed out this run and not released. The scan is exact.
    loop {
        let id = advance();
        if !inflight.iter().any(|f| f.packet_id == id) {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::broker::session::InflightState;
    use crate::broker::{Delivery, Message};
    use crate::codec::{Properties, QoS};

    fn in_flight(ids: impl IntoIterator<Item = u16>) -> VecDeque<Inflight> {
        let m = Arc::new(Message::new(
            "t".into(),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            false,
            Properties::default(),
            None,
        ));
        ids.into_iter()
            .map(|packet_id| Inflight {
                packet_id,
                state: InflightState::AwaitPubAck,
                delivery: Delivery {
                    message: m.clone(),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: Default::default(),
                    shared_group: None,
                    store_seq: 0,
                },
                sent: true,
                held_for: 0,
            })
            .collect()
    }

    #[test]
    fn with_many_in_flight_the_bitmap_skips_exactly_the_ids_in_use() {
        // Out of order, across the wrap, more than the scan handles.
        let used: Vec<u16> = (65_500..=u16::MAX).chain(1..=40).chain([45, 47]).collect();
        let inflight = in_flight(used.iter().copied());
        let mut next = 65_530;
        let mut ids = IdsInUse::default();
        let got: Vec<u16> = (0..6)
            .map(|_| allocate(&mut next, &inflight, &mut ids))
            .collect();
        assert_eq!(got, [41, 42, 43, 44, 46, 48]);
        assert!(ids.bits.is_some(), "the bitmap path was taken");
    }

    #[test]
    fn ids_handed_out_in_a_run_are_not_handed_out_again_unless_released() {
        let inflight = in_flight(1..=20);
        let mut ids = IdsInUse::default();
        let mut next = 21;
        assert_eq!(allocate(&mut next, &inflight, &mut ids), 21);
        next = 21;
        assert_eq!(
            allocate(&mut next, &inflight, &mut ids),
            22,
            "21 was handed out"
        );
        ids.release(21);
        next = 21;
        assert_eq!(allocate(&mut next, &inflight, &mut ids), 21, "released");
    }

    #[test]
    fn one_free_id_among_65534_in_flight_is_found_and_a_full_bitmap_falls_back_to_the_scan() {
        let inflight = in_flight((1..=u16::MAX).filter(|&id| id != 12_345));
        let mut next = 12_346;
        let mut ids = IdsInUse::default();
        assert_eq!(allocate(&mut next, &inflight, &mut ids), 12_345);
        // Every id is marked now; the exact scan still ends (the caller never asks for more
        // than the window, so this is only the guard against looping for ever).
        assert_eq!(allocate(&mut next, &inflight, &mut ids), 12_345);
    }
}
