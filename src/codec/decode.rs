//! Framing and parsing of inbound packets. Every malformed input becomes a `DecodeError` that
//! says which rule it broke; nothing here panics or allocates more than the packet in hand.

use bytes::{Buf, Bytes, BytesMut};

use super::properties::Allowed;
use super::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, Properties, Protocol, Publish, QoS, SubAck,
    Subscribe, SubscriptionOptions, Unsubscribe, Will, reason,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolLevel(u8),
    #[error("unknown protocol name")]
    UnknownProtocolName,
}

impl DecodeError {
    /// The v5 reason code a server DISCONNECT (or CONNACK) carries for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolLevel(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::UnknownProtocolName => reason::PROTOCOL_ERROR,
        }
    }
}

const SHORT: DecodeError = DecodeError::Malformed("packet shorter than its fields");

pub(crate) fn read_u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
    if buf.remaining() < 1 {
        return Err(SHORT);
    }
    Ok(buf.get_u8())
}

pub(crate) fn read_u16(buf: &mut Bytes) -> Result<u16, DecodeError> {
    if buf.remaining() < 2 {
        return Err(SHORT);
    }
    Ok(buf.get_u16())
}

pub(crate) fn read_u32(buf: &mut Bytes) -> Result<u32, DecodeError> {
    if buf.remaining() < 4 {
        return Err(SHORT);
    }
    Ok(buf.get_u32())
}

/// Variable byte integer, at most four bytes.
pub(crate) fn read_varint(buf: &mut Bytes) -> Result<u32, DecodeError> {
    let mut value = 0u32;
    for i in 0..4 {
        let byte = read_u8(buf)?;
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::Malformed(
        "variable byte integer longer than 4 bytes",
    ))
}

pub(crate) fn read_binary(buf: &mut Bytes) -> Result<Bytes, DecodeError> {
    let len = read_u16(buf)? as usize;
    if buf.remaining() < len {
        return Err(SHORT);
    }
    Ok(buf.split_to(len))
}

/// UTF-8 encoded string: valid UTF-8 with no U+0000 (MQTT-1.5.4-1, MQTT-1.5.4-2).
pub(crate) fn read_string(buf: &mut Bytes) -> Result<String, DecodeError> {
    let raw = read_binary(buf)?;
    let s =
        std::str::from_utf8(&raw).map_err(|_| DecodeError::Malformed("invalid UTF-8 string"))?;
    if s.contains('\0') {
        return Err(DecodeError::Malformed("string contains U+0000"));
    }
    Ok(s.to_owned())
}

/// Parses the fixed header at the front of `buf`: `(first byte, header length, remaining length)`,
/// or `None` when more bytes are needed.
fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((first, 2 + i, value)));
        }
    }
    Err(DecodeError::Malformed(
        "remaining length longer than 4 bytes",
    ))
}

/// Takes one whole packet off the front of `buf`, or returns `Ok(None)` when it is not complete.
/// `protocol` is `None` until CONNECT has been read: then only CONNECT is accepted.
/// `max_size` bounds the whole packet (fixed header included) before any of it is buffered.
pub fn decode_packet(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some((first, header_len, remaining)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let size = header_len + remaining;
    if size > max_size {
        return Err(DecodeError::TooLarge {
            size,
            max: max_size,
        });
    }
    let packet_type = first >> 4;
    if protocol.is_none() && packet_type != 1 {
        return Err(DecodeError::Protocol("first packet must be CONNECT"));
    }
    if buf.len() < size {
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    let mut body = buf.split_to(size).freeze();
    body.advance(header_len);
    let flags = first & 0x0F;
    let v5 = protocol == Some(Protocol::V5);
    let expect_flags = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(DecodeError::Malformed("invalid fixed header flags"))
        }
    };
    let packet = match packet_type {
        1 => {
            expect_flags(0)?;
            if protocol.is_some() {
                return Err(DecodeError::Protocol("second CONNECT"));
            }
            Packet::Connect(Box::new(decode_connect(&mut body)?))
        }
        2 => {
            expect_flags(0)?;
            decode_connack(&mut body, v5)?
        }
        3 => Packet::Publish(decode_publish(&mut body, flags, v5)?),
        4 => {
            expect_flags(0)?;
            Packet::PubAck(decode_ack(&mut body, v5)?)
        }
        5 => {
            expect_flags(0)?;
            Packet::PubRec(decode_ack(&mut body, v5)?)
        }
        6 => {
            expect_flags(2)?;
            Packet::PubRel(decode_ack(&mut body, v5)?)
        }
        7 => {
            expect_flags(0)?;
            Packet::PubComp(decode_ack(&mut body, v5)?)
        }
        8 => {
            expect_flags(2)?;
            Packet::Subscribe(decode_subscribe(&mut body, v5)?)
        }
        9 => {
            expect_flags(0)?;
            Packet::SubAck(decode_suback(&mut body, v5)?)
        }
        10 => {
            expect_flags(2)?;
            Packet::Unsubscribe(decode_unsubscribe(&mut body, v5)?)
        }
        11 => {
            expect_flags(0)?;
            if !v5 && remaining != 2 {
                // 3.1.1 UNSUBACK is a packet identifier and nothing else (no reason codes).
                return Err(DecodeError::Malformed("3.1.1 UNSUBACK with a payload"));
            }
            Packet::UnsubAck(decode_suback(&mut body, v5)?)
        }
        12 | 13 => {
            expect_flags(0)?;
            if remaining != 0 {
                return Err(DecodeError::Malformed("PINGREQ/PINGRESP with a body"));
            }
            if packet_type == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        14 => {
            expect_flags(0)?;
            Packet::Disconnect(decode_disconnect(&mut body, v5)?)
        }
        15 if v5 => {
            expect_flags(0)?;
            Packet::Auth(decode_auth(&mut body)?)
        }
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    };
    if body.has_remaining() {
        return Err(DecodeError::Malformed(
            "bytes left over after the packet's fields",
        ));
    }
    Ok(Some(packet))
}

fn decode_connect(buf: &mut Bytes) -> Result<Connect, DecodeError> {
    let name = read_binary(buf)?;
    let level = read_u8(buf)?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQIsdp", 3) => Protocol::V31,
        (b"MQTT", l) | (b"MQIsdp", l) => return Err(DecodeError::UnsupportedProtocolLevel(l)),
        _ => return Err(DecodeError::UnknownProtocolName),
    };
    let v5 = protocol.is_v5();
    let flags = read_u8(buf)?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed(
            "will QoS or retain set without will flag",
        ));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
    if !v5 && has_password && !has_username {
        return Err(DecodeError::Malformed(
            "password flag without user name flag",
        ));
    }
    let keep_alive = read_u16(buf)?;
    let properties = if v5 {
        Properties::decode(buf, Allowed::CONNECT)?
    } else {
        Properties::default()
    };
    if v5 && properties.authentication_data.is_some() && properties.authentication_method.is_none()
    {
        return Err(DecodeError::Protocol("authentication data without method"));
    }
    let client_id = read_string(buf)?;
    let will = if will_flag {
        let properties = if v5 {
            Properties::decode(buf, Allowed::WILL)?
        } else {
            Properties::default()
        };
        let topic = read_string(buf)?;
        let payload = read_binary(buf)?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(read_string(buf)?)
    } else {
        None
    };
    let password = if has_password {
        Some(read_binary(buf)?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_connack(buf: &mut Bytes, v5: bool) -> Result<Packet, DecodeError> {
    let flags = read_u8(buf)?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::Malformed("CONNACK reserved flags set"));
    }
    let code = read_u8(buf)?;
    let properties = if v5 {
        Properties::decode(buf, Allowed::CONNACK)?
    } else {
        Properties::default()
    };
    Ok(Packet::ConnAck(ConnAck {
        session_present: flags & 1 != 0,
        code,
        properties,
    }))
}

fn decode_publish(buf: &mut Bytes, flags: u8, v5: bool) -> Result<Publish, DecodeError> {
    let dup = flags & 0x08 != 0;
    let qos =
        QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH with QoS 3"))?;
    let retain = flags & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = read_string(buf)?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        let id = read_u16(buf)?;
        if id == 0 {
            return Err(DecodeError::Malformed("packet identifier 0"));
        }
        id
    };
    let properties = if v5 {
        Properties::decode(buf, Allowed::PUBLISH)?
    } else {
        Properties::default()
    };
    let payload = buf.split_to(buf.remaining());
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload,
        properties,
    })
}

/// PUBACK / PUBREC / PUBREL / PUBCOMP: v5 may omit the reason code (then 0) and properties.
fn decode_ack(buf: &mut Bytes, v5: bool) -> Result<Ack, DecodeError> {
    let packet_id = read_u16(buf)?;
    if packet_id == 0 {
        return Err(DecodeError::Malformed("packet identifier 0"));
    }
    let mut ack = Ack::new(packet_id, reason::SUCCESS);
    if v5 && buf.has_remaining() {
        ack.reason = read_u8(buf)?;
        if buf.has_remaining() {
            ack.properties = Properties::decode(buf, Allowed::ACK)?;
        }
    }
    Ok(ack)
}

fn decode_subscribe(buf: &mut Bytes, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = read_u16(buf)?;
    if packet_id == 0 {
        return Err(DecodeError::Malformed("packet identifier 0"));
    }
    let properties = if v5 {
        Properties::decode(buf, Allowed::SUBSCRIBE)?
    } else {
        Properties::default()
    };
    if properties.subscription_identifiers.len() > 1 {
        return Err(DecodeError::Protocol(
            "more than one subscription identifier in SUBSCRIBE",
        ));
    }
    let mut filters = Vec::new();
    while buf.has_remaining() {
        let filter = read_string(buf)?;
        let options = read_u8(buf)?;
        let reserved = if v5 { options & 0xC0 } else { options & 0xFC };
        if reserved != 0 {
            return Err(DecodeError::Malformed(
                "subscription options reserved bits set",
            ));
        }
        let qos =
            QoS::from_u8(options & 0x03).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
        let retain_handling = (options >> 4) & 0x03;
        if retain_handling == 3 {
            return Err(DecodeError::Protocol("retain handling 3"));
        }
        let opts = SubscriptionOptions {
            qos,
            no_local: options & 0x04 != 0,
            retain_as_published: options & 0x08 != 0,
            retain_handling,
        };
        filters.push((filter, opts));
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_suback(buf: &mut Bytes, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = read_u16(buf)?;
    let properties = if v5 {
        Properties::decode(buf, Allowed::ACK)?
    } else {
        Properties::default()
    };
    let reason_codes = buf.split_to(buf.remaining()).to_vec();
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn decode_unsubscribe(buf: &mut Bytes, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = read_u16(buf)?;
    if packet_id == 0 {
        return Err(DecodeError::Malformed("packet identifier 0"));
    }
    let properties = if v5 {
        Properties::decode(buf, Allowed::UNSUBSCRIBE)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while buf.has_remaining() {
        filters.push(read_string(buf)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

/// v5 DISCONNECT may be empty (reason 0), a reason code alone, or reason code and properties.
fn decode_disconnect(buf: &mut Bytes, v5: bool) -> Result<Disconnect, DecodeError> {
    let mut d = Disconnect::default();
    if v5 && buf.has_remaining() {
        d.reason = read_u8(buf)?;
        if buf.has_remaining() {
            d.properties = Properties::decode(buf, Allowed::DISCONNECT)?;
        }
    }
    Ok(d)
}

fn decode_auth(buf: &mut Bytes) -> Result<Auth, DecodeError> {
    let mut a = Auth::default();
    if buf.has_remaining() {
        a.reason = read_u8(buf)?;
        if buf.has_remaining() {
            a.properties = Properties::decode(buf, Allowed::AUTH)?;
        }
    }
    Ok(a)
}
