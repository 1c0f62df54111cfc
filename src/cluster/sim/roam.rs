//! The simulation's roaming client: one client id connecting at one node after another while
//! the faults run (each connect takes the session over from wherever it is, or, cut off,
//! starts one where it is), and once more after they healed. Its connections go when they
//! are taken over, as a real one does. The check: at the end the session is in exactly one
//! place, the node of the last connect, connected there, its subscription with it.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{CRASHABLE, FAULTS_UNTIL, NODES, Rng, WARMUP, World, name};
use crate::broker::{Broker, ConnectionControl, Detach};
use crate::codec::{QoS, SubscriptionOptions};

const CLIENT: &str = "roamer";
const FILTER: &str = "roam/#";
const EXPIRY: u32 = 3600;
/// The last connect, this long after the faults end: every link is back by then.
const LAST_AFTER: Duration = Duration::from_secs(15);

/// When and at which node the client connects (only at nodes that never crash).
pub(super) fn schedule(seed: u64) -> Vec<(Duration, usize)> {
    let mut rng = Rng(seed ^ 0x0f0a_11ed_5e55_1075);
    let steady: Vec<usize> = (0..NODES).filter(|&n| n != CRASHABLE).collect();
    let pick = |rng: &mut Rng| steady[rng.below(steady.len() as u64) as usize];
    let mut roams = Vec::new();
    let mut at = WARMUP + rng.millis(500, 2000);
    while at < FAULTS_UNTIL {
        roams.push((at, pick(&mut rng)));
        at += rng.millis(1000, 5000);
    }
    roams.push((FAULTS_UNTIL + LAST_AFTER, pick(&mut rng)));
    roams
}

/// Node `i`'s part of the schedule.
pub(super) fn spawn(i: usize, broker: Arc<Broker>, world: Arc<Mutex<World>>) {
    let roams: Vec<Duration> = world
        .lock()
        .roams
        .iter()
        .filter(|(_, node)| *node == i)
        .map(|(at, _)| *at)
        .collect();
    tokio::task::spawn_local(async move {
        for at in roams {
            let now = turmoil::sim_elapsed().unwrap_or_default();
            if at > now {
                tokio::time::sleep(at - now).await;
            }
            let control = ConnectionControl::new(broker.next_connection_id());
            let session = broker
                .attach(&Arc::from(CLIENT), false, &control, (EXPIRY, None), None)
                .await
                .expect("anonymous sessions belong to nobody")
                .session;
            let subscribed = session.state.lock().subscriptions.contains_key(FILTER);
            if !subscribed {
                let options = SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                };
                broker.subscribe(&session, FILTER, None, options, None);
            }
            world.lock().roamed.push(i);
            let broker = broker.clone();
            tokio::task::spawn_local(async move {
                control.kicked().await;
                let detach = Detach {
                    expiry_interval: EXPIRY,
                    will: None,
                };
                broker.detach(&session, &control, detach);
                control.mark_closed();
            });
        }
    });
}

/// The session is in one place at the end: the node of the last connect, connected there.
pub(super) fn check(w: &World) -> Result<String, String> {
    let last = w.roams.last().map(|(_, node)| *node).ok_or("no connects")?;
    if w.roamed.last() != Some(&last) {
        return Err(format!(
            "roaming client: the last connect (at {}) did not attach; attached at {:?}",
            name(last),
            w.roamed
        ));
    }
    let holders: Vec<(String, bool, bool)> = (0..NODES)
        .filter_map(|j| {
            let session = w.runs[j].as_ref()?.broker.sessions.get(CLIENT)?.clone();
            let st = session.state.lock();
            Some((
                name(j),
                st.connection.is_some(),
                st.subscriptions.contains_key(FILTER),
            ))
        })
        .collect();
    match &holders[..] {
        [(node, true, true)] if *node == name(last) => {
            Ok(format!("{} connects of one roaming client", w.roamed.len()))
        }
        _ => Err(format!(
            "roaming client: sessions (node, connected, subscribed) {holders:?} after its last connect at {}",
            name(last)
        )),
    }
}
