//! A session cut out of one broker and taken into another, without the cluster between them.

use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::broker::{ConnectionControl, Detach, Held, Message};
use crate::codec::{Properties, QoS, SubscriptionOptions};
use crate::config::Config;

fn message(n: u32) -> Arc<Message> {
    Arc::new(Message::new(
        "t/x".into(),
        Bytes::from(n.to_string()),
        QoS::AtLeastOnce,
        false,
        Properties::default(),
        None,
    ))
}

fn payloads(session: &Session) -> Vec<String> {
    let st = session.state.lock();
    st.inflight
        .iter()
        .map(|f| &f.delivery)
        .chain(st.queue.iter())
        .map(|d| String::from_utf8(d.message.payload.to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_session_moves_whole_and_its_copies_are_dropped() {
    let a = Broker::new(Config::default_config(), "a".into());
    let b = Broker::new(Config::default_config(), "b".into());
    let client: Arc<str> = "c".into();
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    let control = ConnectionControl::new(a.next_connection_id());
    let at_a = a
        .attach(&client, false, &control, (600, None), None)
        .await
        .unwrap();
    a.subscribe(&at_a.session, "t/#", None, options, Some(7));
    let detach = Detach {
        expiry_interval: 600,
        will: None,
    };
    a.detach(&at_a.session, &control, detach);
    for n in 1..=3 {
        a.publish(message(n)).unwrap();
    }
    // The copy of message 3 that reached the claimant too, as relayed from node a.
    let mut copy = (*at_a
        .session
        .state
        .lock()
        .queue
        .iter()
        .nth(2)
        .unwrap()
        .message)
        .clone();
    copy.origin = Some("a".into());

    let order = ClaimOrder {
        stamp: a.clock.now(),
        node: "b".into(),
    };
    let older = ClaimOrder {
        stamp: 1,
        node: "z".into(),
    };
    match a.hold_for_claim(&client, false, &order, None).await {
        Holding::Session(subs, _) => {
            assert_eq!(subs.len(), 1);
            assert_eq!(subs[0].0, "t/#");
            assert_eq!(subs[0].1.id, Some(7));
        }
        other => panic!("expected the session, got {other:?}"),
    }
    assert!(matches!(
        a.hold_for_claim(&client, false, &older, None).await,
        Holding::Superseded
    ));
    assert!(
        a.hand_over(&client, &older).is_none(),
        "only to the latest claim"
    );

    let control_b = ConnectionControl::new(b.next_connection_id());
    let at_b = b
        .attach(&client, false, &control_b, (600, None), None)
        .await
        .unwrap();
    b.subscribe(&at_b.session, "t/#", None, options, Some(7));
    b.publish_from_peer(Arc::new(copy.clone()), true, &[], &mut Held::default());
    assert_eq!(payloads(&at_b.session), ["3"]);

    let image = a.hand_over(&client, &order).expect("the image");
    assert!(a.sessions.is_empty(), "nothing stays behind");
    assert_eq!(a.publish(message(4)).unwrap(), 0, "no route stays behind");
    assert_eq!(b.adopt(&at_b.session, image), 3);
    assert_eq!(payloads(&at_b.session), ["1", "2", "3"], "in order, once");
    // A copy still on its way arrives after the move: not queued twice.
    b.publish_from_peer(Arc::new(copy), true, &[], &mut Held::default());
    assert_eq!(payloads(&at_b.session).len(), 3);
}
