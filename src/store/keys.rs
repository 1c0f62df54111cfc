//! How the store's keys are made: a session's records all start with its client id
//! (length-prefixed, so one id is never a prefix of another's keys), then what they are for.
//! Sequence numbers and packet ids are big-endian, so a session's keys sort in order.

/// The prefix every record of `client` starts with.
pub fn client_prefix(client: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + client.len() + 8);
    // MQTT strings are at most 65,535 bytes, so the length always fits.
    key.extend_from_slice(&(client.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    key.extend_from_slice(client.as_bytes());
    key
}

pub fn subscription(client: &str, filter: &str) -> Vec<u8> {
    let mut key = client_prefix(client);
    key.extend_from_slice(filter.as_bytes());
    key
}

/// A queued delivery, and its in-flight mark, under the same key.
pub fn delivery(client: &str, seq: u64) -> Vec<u8> {
    let mut key = client_prefix(client);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub fn inbound(client: &str, packet_id: u16) -> Vec<u8> {
    let mut key = client_prefix(client);
    key.extend_from_slice(&packet_id.to_be_bytes());
    key
}

/// Splits a session key into its client id and the rest; None for a key not made here.
pub fn split(key: &[u8]) -> Option<(&str, &[u8])> {
    let len = usize::from(u16::from_be_bytes([*key.first()?, *key.get(1)?]));
    let client = key.get(2..2 + len)?;
    Some((std::str::from_utf8(client).ok()?, &key[2 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back_and_sort_by_sequence() {
        let a = delivery("c", 2);
        let b = delivery("c", 256);
        assert!(a < b);
        assert_eq!(split(&b), Some(("c", &256u64.to_be_bytes()[..])));
        assert_eq!(split(&subscription("ab", "x/#")), Some(("ab", &b"x/#"[..])));
        // "a" is a prefix of "ab", but its keys are not a prefix of "ab"'s.
        assert!(!delivery("ab", 1).starts_with(&client_prefix("a")));
        assert_eq!(split(&[0, 5, b'x']), None);
        assert_eq!(split(&[]), None);
    }
}
