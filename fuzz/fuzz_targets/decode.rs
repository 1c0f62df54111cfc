//! The packet decoder on arbitrary bytes, as 3.1.1 and 5.0 and before CONNECT: it must never
//! panic, never take more than the packet in hand, and what it accepts must survive being
//! encoded and decoded again unchanged.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use vibemq::codec::{Packet, Protocol, decode_packet, encode_packet};

/// Packets a server only sends: their encoder is the server's, so the round trip holds for
/// what a client sends (and CONNACK, which the encoder also writes).
fn round_trips(p: &Packet) -> bool {
    !matches!(p, Packet::Connect(_))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let protocol = match selector % 3 {
        0 => None,
        1 => Some(Protocol::V311),
        _ => Some(Protocol::V5),
    };
    let max = if selector & 0x80 != 0 { 512 } else { 1 << 20 };
    let mut buf = BytesMut::from(data);
    // Every packet in the input, until the decoder wants more or refuses.
    for _ in 0..64 {
        let before = buf.len();
        match decode_packet(&mut buf, protocol, max) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before, "a packet consumed no input");
                let Some(protocol) = protocol else { continue };
                if !round_trips(&packet) {
                    continue;
                }
                let mut again = BytesMut::new();
                encode_packet(&packet, protocol, &mut again);
                let decoded = decode_packet(&mut again, Some(protocol), usize::MAX)
                    .expect("what we encode decodes")
                    .expect("a whole packet");
                assert_eq!(decoded, packet, "round trip");
                assert!(again.is_empty());
            }
            Ok(None) | Err(_) => break,
        }
    }
});
