//! Tests of the peer relay's wire format.
use super::*;

fn sample() -> WireMessage {
    WireMessage {
        topic: "a/b".into(),
        payload: Bytes::from_static(b"payload"),
        qos: 2,
        retain: true,
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("r".into()),
        correlation_data: Some(Bytes::from_static(b"c")),
        user_properties: vec![("k".into(), "v".into())],
        expiry_secs: Some(30),
        publisher: Some("client".into()),
        origin: "node1".into(),
        stamp: 1234,
    }
}

#[test]
fn frames_round_trip_and_split_reads_wait() {
    let frames = vec![
        Frame::Hello {
            version: 2,
            cluster: "c".into(),
            node_id: "n".into(),
            generation: 7,
            link_epoch: 11,
            nonce: [3; 32],
        },
        Frame::Publish {
            seq: 9,
            normal: true,
            groups: vec!["$share/g/t".into()],
            held_ms: 1500,
            message: encode_message(&sample()),
        },
        Frame::Ack { upto: 9 },
        Frame::Applied { upto: 12 },
        Frame::Retained {
            seq: 10,
            messages: vec![sample()],
        },
        Frame::Heartbeat,
    ];
    let mut buf = BytesMut::new();
    for f in &frames {
        encode_frame(f, &mut buf).unwrap();
    }
    let mut partial = buf.split_to(3);
    assert_eq!(decode_frame(&mut partial), Ok(None));
    partial.unsplit(buf);
    for f in &frames {
        assert_eq!(decode_frame(&mut partial).unwrap().as_ref(), Some(f));
    }
    assert!(partial.is_empty());
    let Frame::Publish { message, .. } = &frames[1] else {
        unreachable!()
    };
    assert_eq!(decode_message(message).unwrap(), sample());
}

#[test]
fn expiry_counts_the_time_a_message_waited_for_a_peer() {
    let m = sample(); // 30 s to live
    assert_eq!(after_holding(m.clone(), 0).unwrap().expiry_secs, Some(30));
    assert_eq!(
        after_holding(m.clone(), 12_500).unwrap().expiry_secs,
        Some(18)
    );
    assert!(after_holding(m.clone(), 30_000).is_none());
    assert!(after_holding(m, 45_000).is_none(), "held past its expiry");
    let forever = WireMessage {
        expiry_secs: None,
        ..sample()
    };
    assert!(after_holding(forever, u64::MAX).is_some());
}

#[test]
fn oversized_or_garbage_frames_are_errors() {
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
    assert!(decode_frame(&mut buf).is_err());
    let mut buf = BytesMut::from(&[0, 0, 0, 2, 0xff, 0xff][..]);
    assert!(decode_frame(&mut buf).is_err());
    // Before the secret is proved, a frame announcing more than a few KiB is refused at
    // once, its bytes never waited for (a relay frame of that size is fine after it).
    let big = (HANDSHAKE_FRAME_MAX as u32 + 1).to_be_bytes();
    let mut buf = BytesMut::from(&big[..]);
    assert!(decode_frame_within(&mut buf, HANDSHAKE_FRAME_MAX).is_err());
    let mut buf = BytesMut::from(&big[..]);
    assert!(
        matches!(decode_frame(&mut buf), Ok(None)),
        "waits for the rest"
    );
}

#[test]
fn message_conversion_keeps_properties_and_origin() {
    let m = sample().into_message();
    assert_eq!(m.origin.as_deref(), Some("node1"));
    let back = WireMessage::from_message(&m, "other").unwrap();
    assert_eq!(back.expiry_secs, Some(30));
    assert_eq!(back, sample());
}

#[test]
fn proofs_bind_role_identities_and_nonces() {
    let key = [7u8; 32];
    let ids = HandshakeIds {
        cluster: "c",
        dialer: ("a", 1),
        link_epoch: 5,
        acceptor: ("b", 2),
        dialer_nonce: &[1; 32],
        acceptor_nonce: &[2; 32],
    };
    let p = proof(Some(&key), "acceptor", &ids);
    assert!(verify(Some(&key), "acceptor", &ids, &p));
    assert!(
        !verify(Some(&key), "dialer", &ids, &p),
        "a proof is for one role"
    );
    assert!(
        !verify(Some(&[8u8; 32]), "acceptor", &ids, &p),
        "wrong secret"
    );
    let other = HandshakeIds {
        acceptor_nonce: &[3; 32],
        ..ids
    };
    assert!(
        !verify(Some(&key), "acceptor", &other, &p),
        "bound to the nonces"
    );
    let other_epoch = HandshakeIds {
        link_epoch: 6,
        ..ids
    };
    assert!(
        !verify(Some(&key), "acceptor", &other_epoch, &p),
        "bound to the link epoch"
    );
    assert!(
        !verify(Some(&key), "acceptor", &other, &[]),
        "missing proof"
    );
    assert!(verify(None, "acceptor", &other, &[]));
}

#[test]
fn retained_batches_are_bounded_by_bytes_when_built() {
    // The measured case: 600 retained messages of 40 KB (device shadows), 24 MB in all.
    let messages: Vec<WireMessage> = (0..600)
        .map(|i| WireMessage {
            topic: format!("shadow/{i}"),
            payload: Bytes::from(vec![7u8; 40 * 1024]),
            ..sample()
        })
        .collect();
    let batches = retained_batches(messages, RETAINED_BATCH_BYTES);
    let mut seen = 0;
    for messages in &batches {
        seen += messages.len();
        let frame = Frame::Retained {
            seq: 1,
            messages: messages.clone(),
        };
        let encoded = frame_bytes(&frame).unwrap().len();
        assert!(
            encoded <= RETAINED_BATCH_BYTES + 64 * 1024,
            "{encoded} bytes"
        );
    }
    assert_eq!(seen, 600);
    assert!(batches.len() >= 24, "{} batches", batches.len());
    // One message larger than the budget goes alone; nothing is ever left out.
    let big = WireMessage {
        payload: Bytes::from(vec![1u8; 3 * RETAINED_BATCH_BYTES]),
        ..sample()
    };
    let batches = retained_batches(vec![sample(), big, sample()], RETAINED_BATCH_BYTES);
    let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 1, 1]);
    assert!(retained_batches(Vec::new(), RETAINED_BATCH_BYTES).is_empty());
}
