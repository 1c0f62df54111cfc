//! Shared subscriptions across nodes: which node delivers each message of a group. The
//! publishing node gives each matching group one node by `mqtt.shared_subscription_strategy`
//! (see `broker::shared_pick`), preferring nodes that can deliver now (a member of the group
//! connected there, by its `connected_mark` route, and a link that delivers); the chosen node
//! then picks one of its members the same way (the router's job).

use std::collections::HashMap;
use std::sync::Arc;

use super::routes::RemoteGroup;
use crate::broker::shared_pick::{Candidate, GroupTurn, SharedStrategy};

/// How the publishing node chooses: the strategy, its own id (its key among the candidates)
/// and the publisher's client id.
pub struct Chooser<'a> {
    pub strategy: SharedStrategy,
    pub local_id: &'a str,
    pub publisher: Option<&'a str>,
}

/// Gives each matching shared group one node: None is this node (`local` says whether a
/// member of the group is connected here); another node can deliver when a member is
/// connected there and `link_delivers` says its link delivers.
/// Nodes that can deliver now are preferred; when none can, the choice goes among all, so the
/// message waits in a queue rather than being lost. `turns` keeps each group's turn.
pub fn pick_nodes(
    turns: &mut HashMap<Arc<str>, GroupTurn>,
    chooser: &Chooser<'_>,
    local: Vec<(Arc<str>, bool)>,
    remote: Vec<RemoteGroup>,
    link_delivers: impl Fn(&str) -> bool,
) -> Vec<(Arc<str>, Option<Arc<str>>)> {
    if local.is_empty() && remote.is_empty() {
        return Vec::new();
    }
    // group -> [(node, can deliver now)]
    type Candidates = Vec<(Option<Arc<str>>, bool)>;
    let mut groups: Vec<(Arc<str>, Candidates)> = local
        .into_iter()
        .map(|(g, online)| (g, vec![(None, online)]))
        .collect();
    for RemoteGroup {
        key,
        nodes,
        connected,
    } in remote
    {
        let candidates = nodes.into_iter().map(|n| {
            let ok = connected.contains(&n) && link_delivers(&n);
            (Some(n), ok)
        });
        match groups.iter_mut().find(|(g, _)| *g == key) {
            Some((_, c)) => c.extend(candidates),
            None => groups.push((key, candidates.collect())),
        }
    }
    if turns.len() > 100_000 {
        // Groups come and go; the turns only spread load, so forgetting them is harmless.
        turns.clear();
    }
    groups
        .into_iter()
        .filter_map(|(key, mut nodes)| {
            // A stable order, so the turn means the same node each time.
            nodes.sort_by(|a, b| a.0.cmp(&b.0));
            let candidates: Vec<Candidate<'_>> = nodes
                .iter()
                .map(|(node, ready)| Candidate {
                    key: node.as_deref().unwrap_or(chooser.local_id),
                    ready: *ready,
                    local: node.is_none(),
                })
                .collect();
            let i = turns.entry(key.clone()).or_default().choose(
                chooser.strategy,
                &candidates,
                chooser.publisher,
            )?;
            let node = nodes[i].0.clone();
            Some((key, node))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::routes::NodeList;

    fn nodes(names: &[&str]) -> NodeList {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    /// Group `key` with members on `names`, a member connected on each.
    fn on(key: &Arc<str>, names: &[&str]) -> RemoteGroup {
        RemoteGroup {
            key: key.clone(),
            nodes: nodes(names),
            connected: nodes(names),
        }
    }

    const IN_TURN: Chooser<'static> = Chooser {
        strategy: SharedStrategy::RoundRobin,
        local_id: "n1",
        publisher: None,
    };

    #[test]
    fn each_group_takes_its_own_turns_among_nodes_that_can_deliver() {
        let mut turns = HashMap::new();
        let (g, h): (Arc<str>, Arc<str>) = ("$share/g/t".into(), "$share/h/t".into());
        let mut picked = Vec::new();
        for _ in 0..4 {
            let picks = pick_nodes(
                &mut turns,
                &IN_TURN,
                vec![(g.clone(), true)],
                vec![on(&g, &["n2"]), on(&h, &["n2", "n3"])],
                |_| true,
            );
            picked.push(picks);
        }
        // Group g alternates between here (None) and n2; group h between n2 and n3, each on
        // its own count (one global counter made one group's turn skip in the other).
        let g_nodes: Vec<Option<&str>> = picked.iter().map(|p| p[0].1.as_deref()).collect();
        let h_nodes: Vec<Option<&str>> = picked.iter().map(|p| p[1].1.as_deref()).collect();
        assert_eq!(g_nodes, [None, Some("n2"), None, Some("n2")]);
        assert_eq!(h_nodes, [Some("n2"), Some("n3"), Some("n2"), Some("n3")]);
    }

    #[test]
    fn nodes_that_cannot_deliver_are_passed_over_unless_none_can() {
        let mut turns = HashMap::new();
        let g: Arc<str> = "$share/g/t".into();
        // No member connected here, n2's link down: n3 gets every message.
        for _ in 0..3 {
            let picks = pick_nodes(
                &mut turns,
                &IN_TURN,
                vec![(g.clone(), false)],
                vec![on(&g, &["n2", "n3"])],
                |n| n == "n3",
            );
            assert_eq!(picks[0].1.as_deref(), Some("n3"));
        }
        // Nobody can deliver: the turn goes among all, and the message waits in a queue.
        let picks = pick_nodes(
            &mut turns,
            &IN_TURN,
            vec![(g.clone(), false)],
            vec![on(&g, &["n2"])],
            |_| false,
        );
        assert!(picks.len() == 1);
    }

    #[test]
    fn nodes_whose_members_are_all_offline_get_no_turns_unless_none_is_connected() {
        let mut turns = HashMap::new();
        let g: Arc<str> = "$share/g/t".into();
        let offline_on_n2 = RemoteGroup {
            key: g.clone(),
            nodes: nodes(&["n2", "n3"]),
            connected: nodes(&["n3"]),
        };
        let picked: Vec<Option<Arc<str>>> = (0..4)
            .map(|_| {
                pick_nodes(
                    &mut turns,
                    &IN_TURN,
                    vec![(g.clone(), true)],
                    vec![offline_on_n2.clone()],
                    |_| true,
                )[0]
                .1
                .clone()
            })
            .collect();
        assert!(
            picked.iter().all(|p| p.as_deref() != Some("n2")),
            "n2's member is offline: {picked:?}"
        );
        assert!(picked.contains(&None) && picked.iter().any(|p| p.as_deref() == Some("n3")));
        // Every member offline everywhere: the message still goes to one of them, queued.
        let all_offline = RemoteGroup {
            connected: NodeList::new(),
            ..offline_on_n2
        };
        let picks = pick_nodes(&mut turns, &IN_TURN, vec![], vec![all_offline], |_| true);
        assert!(picks[0].1.is_some());
    }

    #[test]
    fn local_first_and_hash_clientid_choose_nodes_as_they_choose_members() {
        let g: Arc<str> = "$share/g/t".into();
        let pick =
            |turns: &mut HashMap<Arc<str>, GroupTurn>, chooser: &Chooser<'_>, online_here| {
                pick_nodes(
                    turns,
                    chooser,
                    vec![(g.clone(), online_here)],
                    vec![on(&g, &["n2", "n3"])],
                    |_| true,
                )[0]
                .1
                .clone()
            };
        let mut turns = HashMap::new();
        let local_first = Chooser {
            strategy: SharedStrategy::LocalFirst,
            local_id: "n1",
            publisher: None,
        };
        for _ in 0..3 {
            assert_eq!(pick(&mut turns, &local_first, true), None, "a member here");
        }
        let elsewhere: Vec<_> = (0..4)
            .map(|_| pick(&mut turns, &local_first, false))
            .collect();
        assert!(
            elsewhere.iter().all(Option::is_some),
            "no member here: {elsewhere:?}"
        );
        assert!(
            elsewhere[0] != elsewhere[1]
                && elsewhere[0] == elsewhere[2]
                && elsewhere[1] == elsewhere[3],
            "n2 and n3 in turn: {elsewhere:?}"
        );
        // One publisher always lands on one node; across 300 publishers all three get some.
        let mut seen = std::collections::HashSet::new();
        for p in 0..300 {
            let publisher = format!("p{p}");
            let hashed = Chooser {
                strategy: SharedStrategy::HashClientid,
                local_id: "n1",
                publisher: Some(&publisher),
            };
            let first = pick(&mut turns, &hashed, true);
            for _ in 0..3 {
                assert_eq!(pick(&mut turns, &hashed, true), first);
            }
            seen.insert(first);
        }
        assert_eq!(seen.len(), 3);
    }
}
