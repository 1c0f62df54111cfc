//! Tests of `link`: what a link keeps, resends, holds back and drops, and how it is read
//! back from the store and carried over to a restarted peer.
use super::*;

fn bounds(window_bytes: usize, hold_bytes: usize) -> LinkBounds {
    LinkBounds {
        window_bytes,
        hold_bytes,
        timeout: Duration::from_secs(5),
    }
}

fn to() -> LinkTo {
    let addr = "127.0.0.1:1".parse().unwrap();
    LinkTo {
        node_id: "peer".into(),
        generation: 1,
        run: 1,
        addr,
        gossip_addr: addr,
    }
}

fn send(l: &Link, reliable: bool, normal: bool, groups: Vec<String>, m: Bytes) -> Queued {
    l.send_publish(reliable, normal, groups, m).0
}

fn link(b: LinkBounds) -> Arc<Link> {
    let l = Link::new(to(), b, None);
    l.queue.lock().retained = RetainedSync::Done;
    l
}

fn seqs(link: &Link) -> (Vec<u64>, Vec<u64>) {
    let q = link.queue.lock();
    (
        q.unsent.iter().map(|o| o.seq).collect(),
        q.unacked.iter().map(|o| o.seq).collect(),
    )
}

/// A batch of the retained set holding one message of `size` bytes on `r/{i}`.
fn retained_batch(i: usize, size: usize) -> Vec<WireMessage> {
    vec![WireMessage {
        topic: format!("r/{i}"),
        payload: Bytes::from(vec![1u8; size]),
        qos: 0,
        retain: true,
        payload_format_indicator: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
        expiry_secs: None,
        publisher: None,
        origin: "me".into(),
        stamp: 1,
    }]
}

fn none(_: RetainedScope<'_>) -> Vec<Vec<WireMessage>> {
    Vec::new()
}

#[test]
fn reliable_frames_are_kept_until_acknowledged_and_resent_after_reconnect() {
    let l = link(bounds(1 << 20, 1 << 20));
    for reliable in [true, false, true, true] {
        let q = send(&l, reliable, true, vec![], Bytes::from_static(b"m"));
        assert_eq!(q, Queued::Parked, "not connected: held for the peer");
    }
    let mut out = BytesMut::new();
    assert_eq!(l.take_batch(&mut out, none), 4);
    assert_eq!(seqs(&l), (vec![], vec![1, 2, 3]), "QoS 0 is not kept");
    l.ack(1);
    assert_eq!(seqs(&l).1, vec![2, 3]);
    send(&l, true, true, vec![], Bytes::from_static(b"m"));
    // The connection drops; the peer had processed up to 2.
    l.resume(2);
    assert_eq!(
        seqs(&l),
        (vec![3, 4], vec![]),
        "resend 3 ahead of the new 4"
    );
    // What is acknowledged or sent unreliably no longer counts against the bounds.
    let mut out = BytesMut::new();
    l.take_batch(&mut out, none);
    l.ack(4);
    assert_eq!(l.queued_bytes(), 0);
}

#[test]
fn the_window_holds_publishers_and_the_hold_bound_drops() {
    let l = link(bounds(1000, 4000));
    l.connected.store(true, Ordering::Relaxed);
    let payload = Bytes::from(vec![0u8; 400]);
    let mut states = Vec::new();
    for _ in 0..12 {
        states.push(send(&l, true, true, vec![], payload.clone()));
    }
    assert_eq!(states[0], Queued::Flowing);
    assert!(states.contains(&Queued::PastWindow));
    assert_eq!(*states.last().unwrap(), Queued::Dropped);
    assert!(l.queued_bytes() <= 4000);
    assert!(!l.has_room(), "past the window, moving: holds publishers");
    // The peer acknowledges everything: room again.
    let mut out = BytesMut::new();
    while l.take_batch(&mut out, none) > 0 {}
    l.ack(u64::MAX);
    assert!(l.has_room());
    assert_eq!(send(&l, true, true, vec![], payload), Queued::Flowing);
    // A peer that acknowledges nothing for the stall time holds nobody back.
    l.queue.lock().progress_at = Instant::now() - STALLED_AFTER;
    assert!(l.has_room());
}

#[test]
fn the_retained_set_goes_in_reliable_batches_within_the_window() {
    let l = link(bounds(100, 1 << 20));
    l.queue.lock().retained = RetainedSync::Due;
    let batch = |i: usize| retained_batch(i, 300);
    let set = |_: RetainedScope<'_>| (0..3).map(batch).collect::<Vec<_>>();
    send(&l, true, true, vec![], Bytes::from_static(b"live"));
    let mut out = BytesMut::new();
    // Live traffic first, then one batch of the set.
    assert_eq!(l.take_batch(&mut out, set), 2);
    assert_eq!(seqs(&l).1, vec![1, 2]);
    // Past the window nothing more of the set goes until acknowledgements come.
    assert_eq!(l.take_batch(&mut out, set), 0);
    l.ack(2);
    assert_eq!(l.take_batch(&mut out, set), 1);
    // A cut: the unacknowledged batch is resent, the set continues after it.
    l.resume(2);
    assert_eq!(seqs(&l).0, vec![3]);
    l.take_batch(&mut out, set);
    l.ack(3);
    assert_eq!(l.take_batch(&mut out, set), 1);
    l.ack(4);
    l.take_batch(&mut out, set);
    assert!(matches!(l.queue.lock().retained, RetainedSync::Done));
    assert!(!l.has_more());
    // A node's run ended: its messages are sent again, and only those.
    let gone: Arc<str> = "n3".into();
    l.resync_origin(&gone);
    let mut scopes = Vec::new();
    l.take_batch(&mut out, |scope| {
        scopes.push(scope.map(<[Arc<str>]>::to_vec));
        vec![batch(9)]
    });
    assert_eq!(scopes, vec![Some(vec![gone])]);
}

#[test]
fn frames_go_out_in_sequence_order_after_a_reconnect() {
    // The bug a cut in the middle of a large retained set showed: a new batch of the set
    // (numbered 4) went out right behind the first resent frame (2), ahead of the other
    // resent one (3), and the peer, having processed 4, skipped 3 as already seen.
    let l = link(bounds(1 << 20, 1 << 30));
    l.queue.lock().retained = RetainedSync::Due;
    let big = |i: usize| retained_batch(i, BATCH_BYTES);
    let set = |_: RetainedScope<'_>| (0..5).map(big).collect::<Vec<_>>();
    let mut sent = Vec::new();
    let mut take = |l: &Link| {
        let mut out = BytesMut::new();
        l.take_batch(&mut out, set);
        while let Ok(Some(frame)) = wire::decode_frame(&mut out) {
            if let Frame::Retained { seq, .. } = frame {
                sent.push(seq);
            }
        }
    };
    take(&l);
    take(&l);
    take(&l);
    assert_eq!(seqs(&l).1, vec![1, 2, 3]);
    // The peer processed 1; the connection drops with 2 and 3 unacknowledged.
    l.resume(1);
    for _ in 0..4 {
        take(&l);
    }
    assert_eq!(
        sent,
        [1, 2, 3, 2, 3, 4, 5],
        "in order, the resent ones first"
    );
}

#[test]
fn route_pushes_are_reliable_and_say_when_the_peer_applied_them() {
    let l = link(bounds(1 << 20, 1 << 20));
    let take = |l: &Link| l.take_batch(&mut BytesMut::new(), |_| Vec::new());
    assert!(l.send_route(1, "a/#", true));
    assert!(
        l.route_wait().is_none(),
        "a link that is down is not waited for"
    );
    l.connected.store(true, Ordering::Relaxed);
    send(&l, true, true, vec![], Bytes::from_static(b"m"));
    assert!(l.send_route(2, "b/#", true));
    let (applied, upto) = l.route_wait().expect("the peer has not applied it");
    assert_eq!(
        (upto, *applied.borrow()),
        (3, 0),
        "the route push is numbered 3"
    );
    take(&l);
    assert_eq!(seqs(&l).1, vec![1, 2, 3], "all three wait for the peer");
    // The connection drops with the last route unacknowledged: it is sent again.
    l.resume(2);
    assert_eq!(*applied.borrow(), 2);
    assert_eq!(seqs(&l).0, vec![3]);
    take(&l);
    // Applied before it is acknowledged (the acknowledgement waits for the peer's disk or
    // session copies): a SUBACK needs only the route in place.
    l.note_applied(3);
    assert_eq!(*applied.borrow(), 3);
    assert!(l.route_wait().is_none(), "applied: nothing to wait for");
    l.ack(3);
    l.set_suspended(true);
    assert!(l.send_route(3, "c/#", true));
    assert!(
        l.route_wait().is_none(),
        "a suspended peer is not waited for"
    );
}

#[test]
fn close_drops_the_queue() {
    let l = link(bounds(1000, 1000));
    send(&l, true, true, vec![], Bytes::new());
    assert!(l.send_route(1, "a/#", true));
    assert_eq!(l.depth(), 2);
    assert_eq!(l.close(), 2);
    assert_eq!(l.depth(), 0);
    assert_eq!(l.queued_bytes(), 0);
}

#[tokio::test]
async fn a_link_read_back_resends_its_frames_and_numbers_past_any_seen() {
    let dir = std::env::temp_dir().join(format!("vibemq-link-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = crate::config::PersistenceConfig {
        enabled: true,
        dir: dir.display().to_string(),
        sync: crate::config::SyncMode::Always,
        sync_interval_ms: 1000,
    };
    let (store, _) = Store::open(&config).unwrap();
    let l = Link::new(to(), bounds(1 << 20, 1 << 20), Some(&store));
    l.queue.lock().retained = RetainedSync::Done;
    let mut tickets = Vec::new();
    for payload in [&b"a"[..], b"b", b"c"] {
        tickets.push(l.send_publish(true, true, vec![], Bytes::from(payload)).1);
    }
    assert!(
        tickets.iter().all(|t| *t != 0),
        "reliable frames are stored"
    );
    assert_eq!(
        l.send_publish(false, true, vec![], Bytes::new()).1,
        0,
        "QoS 0 is not"
    );
    store.settle();
    let mut out = BytesMut::new();
    assert_eq!(l.take_batch(&mut out, none), 4);
    l.ack(1);
    store.settle();
    store.close();
    let epoch = l.epoch;
    drop((store, l));

    // The node restarts: the link comes back with what the peer had not acknowledged.
    let (store, restored) = Store::open(&config).unwrap();
    let stored = restored.relay.links.into_iter().next().expect("the link");
    assert_eq!(stored.record.epoch, epoch);
    let back = Link::restored(stored, to(), bounds(1 << 20, 1 << 20), &store);
    back.queue.lock().retained = RetainedSync::Done;
    assert_eq!(back.epoch, epoch, "the peer resumes the same link");
    assert_eq!(seqs(&back).0, vec![2, 3]);
    // New frames are numbered past any the old process may have handed out.
    send(&back, true, true, vec![], Bytes::from_static(b"d"));
    let (unsent, _) = seqs(&back);
    assert!(unsent[2] >= 1 << 20, "{unsent:?}");
    // The peer had processed 2 before the restart: it is not sent again.
    back.resume(2);
    assert_eq!(seqs(&back).0[0], 3);
    // The peer restarts with its store too: a link to its new process takes over the
    // queue, unacknowledged frames first.
    let mut out = BytesMut::new();
    store.settle();
    back.take_batch(&mut out, none);
    send(&back, true, true, vec![], Bytes::from_static(b"e"));
    let carried = back.carry_to(LinkTo {
        generation: 2,
        ..to()
    });
    assert_eq!(carried.epoch, back.epoch);
    let (unsent, unacked) = seqs(&carried);
    assert_eq!(unsent.len(), 3);
    assert!(unacked.is_empty());
    assert!(unsent.windows(2).all(|w| w[0] < w[1]), "{unsent:?}");
    assert!(*back.stop.borrow(), "the old link stops");
    store.close();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn group_publishes_not_yet_written_are_taken_off_and_the_rest_stay() {
    let l = link(bounds(1 << 20, 1 << 20));
    let g = || vec!["$share/g/t".to_string()];
    send(&l, true, false, g(), Bytes::from_static(b"written"));
    let mut out = BytesMut::new();
    assert_eq!(l.take_batch(&mut out, none), 1);
    send(&l, true, false, g(), Bytes::from_static(b"group only"));
    send(&l, true, true, g(), Bytes::from_static(b"also normal"));
    send(&l, true, true, Vec::new(), Bytes::from_static(b"normal"));
    send(&l, false, false, g(), Bytes::from_static(b"qos 0"));
    // Reliable ones for a group: unwritten ones, and with `written` the unacknowledged too.
    let unsent: Vec<u64> = l.group_frames(false).iter().map(|f| f.seq).collect();
    assert_eq!(unsent, [2, 3]);
    let all = l.group_frames(true);
    assert_eq!(all.iter().map(|f| f.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(!all[1].normal && all[2].normal);
    let (before, bytes) = (l.depth(), l.queued_bytes());
    let taken = l.take_unsent(&[1, 2].into_iter().collect());
    assert_eq!(taken, [2].into_iter().collect(), "a written one stays");
    assert_eq!(l.depth(), before - 1);
    assert!(l.queued_bytes() < bytes);
    assert_eq!(seqs(&l), (vec![3, 4, 0], vec![1]));
}
