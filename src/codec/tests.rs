//! Codec unit tests: round trips for every packet and version, and the malformed inputs the
//! decoder must refuse (including the cases mqttbytes 0.6 got wrong).

use bytes::{Bytes, BytesMut};

use super::*;

const MAX: usize = 1 << 20;

fn roundtrip(packet: Packet, protocol: Protocol) {
    let mut buf = BytesMut::new();
    encode_packet(&packet, protocol, &mut buf);
    let decoded_protocol = if matches!(packet, Packet::Connect(_)) {
        None
    } else {
        Some(protocol)
    };
    let got = decode_packet(&mut buf, decoded_protocol, MAX)
        .unwrap()
        .unwrap();
    assert_eq!(got, packet, "{protocol:?}");
    assert!(buf.is_empty());
}

fn decode(bytes: &[u8], protocol: Option<Protocol>) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode_packet(&mut buf, protocol, MAX)
}

fn connect(protocol: Protocol) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 30,
        client_id: "dev-1".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

#[test]
fn connect_roundtrips_every_version_with_will_and_binary_password() {
    for protocol in [Protocol::V31, Protocol::V311, Protocol::V5] {
        let mut c = connect(protocol);
        c.username = Some("user".into());
        c.password = Some(Bytes::from_static(&[0, 159, 146, 150, 255]));
        let mut will_props = Properties::default();
        if protocol.is_v5() {
            will_props.will_delay_interval = Some(5);
            will_props.content_type = Some("text/plain".into());
            c.properties.session_expiry_interval = Some(60);
            c.properties.receive_maximum = Some(10);
            c.properties.user_properties.push(("k".into(), "v".into()));
        }
        c.will = Some(Will {
            topic: "dev/1/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: will_props,
        });
        roundtrip(Packet::Connect(Box::new(c)), protocol);
    }
}

#[test]
fn v5_password_without_username_is_accepted_v311_is_not() {
    let mut c = connect(Protocol::V5);
    c.password = Some(Bytes::from_static(b"secret"));
    roundtrip(Packet::Connect(Box::new(c)), Protocol::V5);

    let mut c = connect(Protocol::V311);
    c.password = Some(Bytes::from_static(b"secret"));
    let mut buf = BytesMut::new();
    encode_packet(&Packet::Connect(Box::new(c)), Protocol::V311, &mut buf);
    assert!(matches!(
        decode_packet(&mut buf, None, MAX),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn unsupported_level_and_unknown_name_are_told_apart() {
    // "MQTT" level 6.
    let bytes = b"\x10\x0d\x00\x04MQTT\x06\x02\x00\x3c\x00\x01a";
    assert_eq!(
        decode(bytes, None),
        Err(DecodeError::UnsupportedProtocolLevel(6))
    );
    let bytes = b"\x10\x0d\x00\x04MQTX\x04\x02\x00\x3c\x00\x01a";
    assert_eq!(decode(bytes, None), Err(DecodeError::UnknownProtocolName));
}

#[test]
fn connect_flag_rules() {
    // Reserved bit set.
    let bytes = b"\x10\x0d\x00\x04MQTT\x04\x03\x00\x3c\x00\x01a";
    assert!(matches!(
        decode(bytes, None),
        Err(DecodeError::Malformed(_))
    ));
    // Will QoS without will flag.
    let bytes = b"\x10\x0d\x00\x04MQTT\x04\x0a\x00\x3c\x00\x01a";
    assert!(matches!(
        decode(bytes, None),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn first_packet_must_be_connect() {
    assert!(matches!(
        decode(b"\xc0\x00", None),
        Err(DecodeError::Protocol(_))
    ));
}

#[test]
fn publish_roundtrips_with_all_v5_properties_and_two_subscription_ids() {
    let mut props = Properties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(100),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        topic_alias: Some(3),
        ..Properties::default()
    };
    props.user_properties.push(("a".into(), "1".into()));
    props.user_properties.push(("a".into(), "2".into()));
    props.subscription_identifiers = vec![1, 268_435_455];
    let p = Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: 7,
        payload: Bytes::from_static(b"hello"),
        properties: props,
    };
    roundtrip(Packet::Publish(p), Protocol::V5);
}

#[test]
fn publish_v311_roundtrip_and_flag_rules() {
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "t".into(),
        packet_id: 1,
        payload: Bytes::from_static(b"x"),
        properties: Properties::default(),
    };
    roundtrip(Packet::Publish(p), Protocol::V311);
    // QoS 3.
    assert!(matches!(
        decode(b"\x36\x05\x00\x01t\x00\x01", Some(Protocol::V311)),
        Err(DecodeError::Malformed(_))
    ));
    // DUP on QoS 0.
    assert!(matches!(
        decode(b"\x38\x03\x00\x01t", Some(Protocol::V311)),
        Err(DecodeError::Malformed(_))
    ));
    // Packet id 0 on QoS 1.
    assert!(matches!(
        decode(b"\x32\x05\x00\x01t\x00\x00", Some(Protocol::V311)),
        Err(DecodeError::Malformed(_))
    ));
    // Invalid UTF-8 in the topic.
    assert!(matches!(
        decode(b"\x30\x04\x00\x02\xc3\x28", Some(Protocol::V311)),
        Err(DecodeError::Malformed(_))
    ));
    // U+0000 in the topic.
    assert!(matches!(
        decode(b"\x30\x04\x00\x02a\x00", Some(Protocol::V311)),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn v5_disconnect_with_remaining_length_zero_is_normal() {
    let got = decode(b"\xe0\x00", Some(Protocol::V5)).unwrap().unwrap();
    assert_eq!(got, Packet::Disconnect(Disconnect::default()));
    let got = decode(b"\xe0\x01\x04", Some(Protocol::V5))
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        Packet::Disconnect(Disconnect {
            reason: 4,
            properties: Properties::default()
        })
    );
    let mut d = Disconnect {
        reason: 0,
        properties: Properties::default(),
    };
    d.properties.session_expiry_interval = Some(0);
    roundtrip(Packet::Disconnect(d), Protocol::V5);
}

#[test]
fn auth_roundtrips() {
    let mut a = Auth {
        reason: 0x18,
        properties: Properties::default(),
    };
    a.properties.authentication_method = Some("SCRAM-SHA-1".into());
    a.properties.authentication_data = Some(Bytes::from_static(b"data"));
    roundtrip(Packet::Auth(a), Protocol::V5);
    // AUTH does not exist before v5.
    assert!(decode(b"\xf0\x00", Some(Protocol::V311)).is_err());
}

#[test]
fn subscribe_roundtrip_and_bad_flags_refused() {
    for protocol in [Protocol::V311, Protocol::V5] {
        let v5 = protocol.is_v5();
        let mut properties = Properties::default();
        if v5 {
            properties.subscription_identifiers.push(42);
        }
        let s = Subscribe {
            packet_id: 9,
            filters: vec![
                (
                    "a/+".into(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                ),
                (
                    "b/#".into(),
                    SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 { 2 } else { 0 },
                    },
                ),
            ],
            properties,
        };
        roundtrip(Packet::Subscribe(s), protocol);
    }
    // Flags 0000 instead of 0010.
    assert!(matches!(
        decode(b"\x80\x06\x00\x01\x00\x01a\x00", Some(Protocol::V311)),
        Err(DecodeError::Malformed(_))
    ));
    // Empty filter list.
    assert!(matches!(
        decode(b"\x82\x02\x00\x01", Some(Protocol::V311)),
        Err(DecodeError::Protocol(_))
    ));
    // v3 reserved option bits.
    assert!(matches!(
        decode(b"\x82\x06\x00\x01\x00\x01a\x04", Some(Protocol::V311)),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn acks_roundtrip_in_short_and_long_forms() {
    for protocol in [Protocol::V311, Protocol::V5] {
        roundtrip(Packet::PubAck(Ack::new(1, 0)), protocol);
        roundtrip(Packet::PubRel(Ack::new(2, 0)), protocol);
    }
    roundtrip(
        Packet::PubRec(Ack::new(3, reason::NO_MATCHING_SUBSCRIBERS)),
        Protocol::V5,
    );
    let mut a = Ack::new(4, reason::PACKET_IDENTIFIER_NOT_FOUND);
    a.properties.reason_string = Some("gone".into());
    roundtrip(Packet::PubComp(a), Protocol::V5);
    roundtrip(
        Packet::SubAck(SubAck {
            packet_id: 5,
            reason_codes: vec![0, 1, 0x80],
            properties: Properties::default(),
        }),
        Protocol::V311,
    );
    roundtrip(
        Packet::UnsubAck(SubAck {
            packet_id: 6,
            reason_codes: vec![0, 0x11],
            properties: Properties::default(),
        }),
        Protocol::V5,
    );
    // PUBREL with flags 0000.
    assert!(matches!(
        decode(b"\x60\x02\x00\x01", Some(Protocol::V311)),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn properties_rules() {
    // Duplicate message expiry on a v5 PUBLISH: protocol error.
    let bytes = b"\x30\x0e\x00\x01t\x0a\x02\x00\x00\x00\x01\x02\x00\x00\x00\x01";
    assert!(matches!(
        decode(bytes, Some(Protocol::V5)),
        Err(DecodeError::Protocol(_))
    ));
    // Session expiry (connect-only) on a PUBLISH.
    let bytes = b"\x30\x09\x00\x01t\x05\x11\x00\x00\x00\x01";
    assert!(matches!(
        decode(bytes, Some(Protocol::V5)),
        Err(DecodeError::Protocol(_))
    ));
    // Unknown property id.
    let bytes = b"\x30\x06\x00\x01t\x02\x7f\x00";
    assert!(matches!(
        decode(bytes, Some(Protocol::V5)),
        Err(DecodeError::Malformed(_))
    ));
    // Property length past the end.
    let bytes = b"\x30\x05\x00\x01t\x09\x01";
    assert!(matches!(
        decode(bytes, Some(Protocol::V5)),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn framing_limits() {
    // Five-byte remaining length.
    assert!(matches!(
        decode(b"\x30\xff\xff\xff\xff\x01", Some(Protocol::V311)),
        Err(DecodeError::Malformed(_))
    ));
    // Over the maximum, refused from the header alone.
    let mut buf = BytesMut::from(&b"\x30\xff\xff\x03"[..]);
    assert!(matches!(
        decode_packet(&mut buf, Some(Protocol::V311), 1024),
        Err(DecodeError::TooLarge { .. })
    ));
    // Incomplete packets wait for more bytes.
    assert_eq!(decode(b"\x30", Some(Protocol::V311)), Ok(None));
    assert_eq!(decode(b"\x30\x05\x00\x01", Some(Protocol::V311)), Ok(None));
    // Reserved packet type 0, PINGREQ with a body, a second CONNECT.
    assert!(decode(b"\x00\x00", Some(Protocol::V311)).is_err());
    assert!(decode(b"\xc0\x01\x00", Some(Protocol::V311)).is_err());
    let bytes = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a";
    assert!(matches!(
        decode(bytes, Some(Protocol::V311)),
        Err(DecodeError::Protocol(_))
    ));
}

#[test]
fn publish_size_matches_encoding() {
    let mut props = Properties::default();
    props.user_properties.push(("k".into(), "v".into()));
    let out = OutboundPublish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "x/y",
        packet_id: 3,
        payload: &[7u8; 300],
        properties: &props,
        message_expiry_interval: Some(9),
        topic_alias: Some(2),
        subscription_identifiers: &[1, 200],
    };
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, &out, protocol);
        assert_eq!(buf.len(), publish_size(&out, protocol));
        let Packet::Publish(p) = decode_packet(&mut buf, Some(protocol), MAX)
            .unwrap()
            .unwrap()
        else {
            panic!("not a publish")
        };
        assert_eq!(p.payload.len(), 300);
        if protocol.is_v5() {
            assert_eq!(p.properties.subscription_identifiers, vec![1, 200]);
            assert_eq!(p.properties.message_expiry_interval, Some(9));
            assert_eq!(p.properties.topic_alias, Some(2));
        }
    }
}

#[test]
fn v311_unsuback_carries_nothing_but_its_packet_id() {
    // Found by the decode fuzz target: the decoder took reason codes that 3.1.1 does not have,
    // and the encoder (rightly) dropped them, so the packet did not survive a round trip.
    let bytes = [0xB0, 6, 0x50, 0xFB, 0xFF, 0x9D, 3, 0x6D];
    assert!(matches!(
        decode(&bytes, Some(Protocol::V311)),
        Err(DecodeError::Malformed(_))
    ));
    // v5 UNSUBACK: packet id, no properties, one reason code.
    assert!(
        decode(&[0xB0, 4, 0, 1, 0, 0x11], Some(Protocol::V5))
            .unwrap()
            .is_some()
    );
    assert!(
        decode(&[0xB0, 2, 0, 1], Some(Protocol::V311))
            .unwrap()
            .is_some()
    );
}
