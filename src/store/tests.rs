use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::broker::session::{InflightState, SubscriptionRecord};
use crate::codec::{Properties, QoS, SubscriptionOptions};

/// A fresh directory under the system's temporary one, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "vibemq-store-{name}-{}-{}",
            std::process::id(),
            crate::broker::now_ms()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    fn config(&self, sync: SyncMode) -> PersistenceConfig {
        PersistenceConfig {
            enabled: true,
            dir: self.0.display().to_string(),
            sync,
            sync_interval_ms: 50,
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn message(topic: &str, payload: &'static [u8], qos: QoS, retain: bool) -> Arc<Message> {
    Arc::new(Message::new(
        topic.into(),
        Bytes::from_static(payload),
        qos,
        retain,
        Properties::default(),
        Some("publisher".into()),
    ))
}

fn delivery(payload: &'static [u8], qos: QoS) -> Delivery {
    Delivery {
        message: message("q/t", payload, qos, false),
        qos,
        retain: false,
        subscription_ids: Default::default(),
        shared_group: None,
        store_seq: 0,
    }
}

fn reopen(dir: &TempDir, store: Arc<Store>) -> (Arc<Store>, Restored) {
    store.close();
    drop(store);
    Store::open(&dir.config(SyncMode::Always)).expect("reopens once closed")
}

#[test]
fn a_session_and_retained_messages_come_back_as_they_were_left() {
    let dir = TempDir::new("roundtrip");
    let (store, restored) = Store::open(&dir.config(SyncMode::Always)).unwrap();
    assert!(restored.retained.is_empty() && restored.sessions.is_empty());
    let client: Arc<str> = "c1".into();
    store.submit(Op::Retained(message("r/1", b"one", QoS::AtLeastOnce, true)));
    store.submit(Op::Retained(message("r/2", b"two", QoS::AtMostOnce, true)));
    store.submit(Op::RetainedGone("r/2".into()));
    store.submit(Op::Meta {
        client: client.clone(),
        meta: SessionMeta {
            expiry_interval: 3600,
            disconnected_at_ms: None,
            will: None,
            owner: Some("alice".into()),
        },
    });
    let record = SubscriptionRecord {
        options: SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: false,
            retain_handling: 2,
        },
        id: Some(9),
    };
    store.submit(Op::Subscribed {
        client: client.clone(),
        filter: "q/#".into(),
        subscription: StoredSubscription::from_record(&record),
    });
    let payloads: [&'static [u8]; 4] = [b"a", b"b", b"c", b"d"];
    for (seq, payload) in (1u64..).zip(payloads) {
        store.submit(Op::Queued {
            client: client.clone(),
            seq,
            delivery: delivery(payload, QoS::ExactlyOnce),
        });
    }
    store.submit(Op::Sent {
        client: client.clone(),
        seq: 1,
        mark: InflightMark::new(7, InflightState::AwaitPubComp),
    });
    store.submit(Op::Done {
        client: client.clone(),
        seq: 2,
    });
    store.submit(Op::InboundQos2 {
        client: client.clone(),
        packet_id: 300,
        held: true,
    });
    store.settle();
    assert!(store.written(store.last_ticket()));

    let (store, restored) = reopen(&dir, store);
    let topics: Vec<_> = restored.retained.iter().map(|m| m.topic.clone()).collect();
    assert_eq!(topics, [Arc::from("r/1")]);
    assert_eq!(&restored.retained[0].payload[..], b"one");
    assert_eq!(restored.sessions.len(), 1);
    let s = &restored.sessions[0];
    assert_eq!(&*s.client, "c1");
    assert_eq!(s.meta.expiry_interval, 3600);
    assert_eq!(s.meta.owner.as_deref(), Some("alice"), "the owner is kept");
    assert_eq!(s.subscriptions, vec![("q/#".to_string(), record)]);
    let payloads: Vec<_> = s
        .deliveries
        .iter()
        .map(|(d, _)| (d.store_seq, d.message.payload.clone()))
        .collect();
    assert_eq!(
        payloads,
        [
            (1, Bytes::from_static(b"a")),
            (3, Bytes::from_static(b"c")),
            (4, Bytes::from_static(b"d"))
        ],
        "in order, without the finished one"
    );
    let mark = s.deliveries[0].1.expect("the first was in flight");
    assert_eq!(mark.packet_id, 7);
    assert_eq!(mark.state(), Some(InflightState::AwaitPubComp));
    assert!(s.deliveries[1].1.is_none());
    assert_eq!(s.inbound_qos2, [300]);
    assert_eq!(s.next_seq, 5);
    assert!(restored.cleanup.is_empty());
    store.close();
}

#[test]
fn an_ended_session_leaves_nothing_even_what_was_queued_in_the_same_commit() {
    let dir = TempDir::new("gone");
    let (store, _) = Store::open(&dir.config(SyncMode::Interval)).unwrap();
    let client: Arc<str> = "gone".into();
    // Another id that starts with this one's must keep its records.
    let other: Arc<str> = "gone2".into();
    for c in [&client, &other] {
        store.submit(Op::Meta {
            client: c.clone(),
            meta: SessionMeta {
                expiry_interval: 60,
                disconnected_at_ms: Some(crate::broker::now_ms()),
                will: None,
                owner: None,
            },
        });
        store.submit(Op::Queued {
            client: c.clone(),
            seq: 1,
            delivery: delivery(b"x", QoS::AtLeastOnce),
        });
    }
    store.submit(Op::SessionGone(client.clone()));
    store.settle();
    let (store, restored) = reopen(&dir, store);
    let clients: Vec<_> = restored.sessions.iter().map(|s| s.client.clone()).collect();
    assert_eq!(clients, [other]);
    assert_eq!(restored.sessions[0].deliveries.len(), 1);
    assert!(restored.cleanup.is_empty(), "no orphaned records");
    store.close();
}

#[test]
fn records_of_a_session_without_its_own_record_are_cleaned_up() {
    let dir = TempDir::new("orphan");
    let (store, _) = Store::open(&dir.config(SyncMode::Always)).unwrap();
    store.submit(Op::Queued {
        client: "orphan".into(),
        seq: 1,
        delivery: delivery(b"x", QoS::AtLeastOnce),
    });
    store.settle();
    let (store, restored) = reopen(&dir, store);
    assert!(restored.sessions.is_empty());
    assert!(
        matches!(&restored.cleanup[..], [Op::SessionGone(c)] if &**c == "orphan"),
        "{:?}",
        restored.cleanup
    );
    for op in restored.cleanup {
        store.submit(op);
    }
    store.settle();
    let (store, restored) = reopen(&dir, store);
    assert!(restored.cleanup.is_empty(), "cleaned up for good");
    store.close();
}

#[test]
fn a_directory_is_held_by_one_store_at_a_time() {
    let dir = TempDir::new("lock");
    let (store, _) = Store::open(&dir.config(SyncMode::Always)).unwrap();
    let err = Store::open(&dir.config(SyncMode::Always)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, OpenError::Locked { .. }), "{text}");
    assert!(
        text.contains("held by another running node")
            && text.contains(&format!("process {}", std::process::id())),
        "{text}"
    );
    let (store, _) = reopen(&dir, store);
    store.close();
}

#[test]
fn tickets_are_done_in_order_and_close_writes_everything() {
    let dir = TempDir::new("tickets");
    let (store, _) = Store::open(&dir.config(SyncMode::Interval)).unwrap();
    let mut last = 0;
    for i in 0..10_000u64 {
        let t = store.submit(Op::InboundQos2 {
            client: "t".into(),
            packet_id: (i % 60_000) as u16 + 1,
            held: true,
        });
        assert_eq!(t, last + 1, "tickets count up by one");
        last = t;
    }
    store.close();
    assert!(store.is_done(last));
    assert_eq!(store.submit(Op::SessionGone("t".into())), 0, "closed");
    assert!(
        store.metrics.commits.load(Ordering::Relaxed) < 10_000,
        "ops share commits"
    );
}

fn frame(payload: &'static [u8]) -> StoredFrame {
    StoredFrame {
        normal: true,
        groups: vec!["$share/g/t".into()],
        message: Bytes::from_static(payload),
        queued_at_ms: crate::broker::now_ms(),
    }
}

#[test]
fn relay_links_frames_and_marks_are_read_back() {
    let dir = TempDir::new("relay");
    let config = dir.config(SyncMode::Always);
    let (store, restored) = Store::open(&config).unwrap();
    let run = restored.relay.run;
    assert_ne!(run, 0, "a new store makes its relay run id");
    let peer: Arc<str> = "n2".into();
    let record = LinkRecord {
        epoch: 9,
        peer_run: 77,
        ceiling: 1 << 20,
    };
    let relay = |op| store.submit(Op::Relay(op));
    // Frames of an earlier link to the same peer go when a new link is made.
    relay(RelayOp::Frame {
        peer: peer.clone(),
        seq: 500,
        frame: frame(b"old"),
    });
    relay(RelayOp::Link {
        peer: peer.clone(),
        record,
        fresh: true,
    });
    for seq in 1..=4 {
        relay(RelayOp::Frame {
            peer: peer.clone(),
            seq,
            frame: frame(b"m"),
        });
    }
    relay(RelayOp::Acked {
        peer: peer.clone(),
        seqs: vec![1, 3],
    });
    relay(RelayOp::Mark {
        peer: "n3".into(),
        mark: RelayMark { epoch: 5, last: 40 },
    });
    // A link given up on takes its frames with it.
    let gone: Arc<str> = "n4".into();
    relay(RelayOp::Link {
        peer: gone.clone(),
        record,
        fresh: true,
    });
    relay(RelayOp::Frame {
        peer: gone.clone(),
        seq: 1,
        frame: frame(b"x"),
    });
    relay(RelayOp::Gone(gone));
    store.close();
    drop(store);

    let (store, restored) = Store::open(&config).unwrap();
    assert_eq!(restored.relay.run, run, "the run id outlives the process");
    assert_eq!(restored.relay.links.len(), 1);
    let link = &restored.relay.links[0];
    assert_eq!((&*link.peer, link.record), ("n2", record));
    let seqs: Vec<u64> = link.frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [2, 4], "in order, acknowledged ones gone");
    assert_eq!(
        link.frames[0].1,
        frame(b"m").clone_with(link.frames[0].1.queued_at_ms)
    );
    assert_eq!(
        restored.relay.marks,
        vec![("n3".into(), RelayMark { epoch: 5, last: 40 })]
    );
    assert!(restored.cleanup.is_empty(), "{:?}", restored.cleanup);
    store.close();
}

impl StoredFrame {
    fn clone_with(mut self, queued_at_ms: u64) -> StoredFrame {
        self.queued_at_ms = queued_at_ms;
        self
    }
}
