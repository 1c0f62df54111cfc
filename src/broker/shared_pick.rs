//! How one member of a shared subscription group is chosen for each message
//! (`mqtt.shared_subscription_strategy`), and, across nodes, one node among those with members:
//! the same choice over a list of candidates, each with a stable key (client id or node id),
//! whether it can take the message now (a connected member, a delivering link) and whether it
//! is on this node. Candidates that can take it now are preferred; when none can, the choice
//! goes among all of them, so the message waits in a queue instead of being lost. A group's
//! `GroupTurn` keeps what the strategy remembers (its turn, its sticky pick).

use std::cell::Cell;

pub use crate::config::SharedStrategy;

/// One candidate for a message of a group.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Stable across messages and nodes: a client id, or a node id.
    pub key: &'a str,
    /// Can take the message now.
    pub ready: bool,
    /// On the node choosing (for `local_first`).
    pub local: bool,
}

/// What a group's strategy remembers between messages.
#[derive(Debug, Default)]
pub struct GroupTurn {
    next: usize,
    sticky: Option<Box<str>>,
}

impl GroupTurn {
    /// The index in `candidates` of the one that gets the message (None: no candidates).
    /// `publisher` is the publishing client's id (for `hash_clientid`).
    pub fn choose(
        &mut self,
        strategy: SharedStrategy,
        candidates: &[Candidate<'_>],
        publisher: Option<&str>,
    ) -> Option<usize> {
        let ready: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].ready)
            .collect();
        let pool = if ready.is_empty() {
            (0..candidates.len()).collect()
        } else {
            ready
        };
        if pool.is_empty() {
            return None;
        }
        let picked = match strategy {
            SharedStrategy::RoundRobin => self.in_turn(&pool),
            SharedStrategy::Random => pool[(random() % pool.len() as u64) as usize],
            SharedStrategy::LocalFirst => {
                // The local ones in turn (among members on one node: all of them), else the
                // others in turn.
                let local: Vec<usize> = pool
                    .iter()
                    .copied()
                    .filter(|&i| candidates[i].local)
                    .collect();
                if local.is_empty() {
                    self.in_turn(&pool)
                } else {
                    self.in_turn(&local)
                }
            }
            SharedStrategy::HashClientid => {
                let who = hash(publisher.unwrap_or("").as_bytes());
                *pool
                    .iter()
                    .max_by_key(|&&i| (mix(who ^ hash(candidates[i].key.as_bytes())), i))
                    .expect("pool is not empty")
            }
            SharedStrategy::Sticky => {
                let kept = self
                    .sticky
                    .as_deref()
                    .and_then(|s| pool.iter().copied().find(|&i| candidates[i].key == s));
                match kept {
                    Some(i) => i,
                    None => {
                        let i = self.in_turn(&pool);
                        self.sticky = Some(candidates[i].key.into());
                        i
                    }
                }
            }
        };
        Some(picked)
    }

    fn in_turn(&mut self, pool: &[usize]) -> usize {
        let i = pool[self.next % pool.len()];
        self.next = self.next.wrapping_add(1);
        i
    }
}

/// FNV-1a: the same on every node and every run (a publisher hashes to the same member
/// whichever node chooses).
fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A finalizer (splitmix64), so that close hashes spread over the whole range.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

thread_local! {
    static RANDOM: Cell<u64> = const { Cell::new(0) };
}

/// A fast per-thread random number (xorshift, seeded from the OS once per thread).
fn random() -> u64 {
    RANDOM.with(|state| {
        let mut x = state.get();
        if x == 0 {
            let mut seed = [0u8; 8];
            let _ = getrandom::fill(&mut seed);
            x = u64::from_le_bytes(seed) | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members<'a>(keys: &[&'a str], ready: &[bool]) -> Vec<Candidate<'a>> {
        keys.iter()
            .zip(ready)
            .map(|(key, ready)| Candidate {
                key,
                ready: *ready,
                local: false,
            })
            .collect()
    }

    fn picks(
        strategy: SharedStrategy,
        candidates: &[Candidate<'_>],
        publisher: Option<&str>,
        n: usize,
    ) -> Vec<usize> {
        let mut turn = GroupTurn::default();
        (0..n)
            .map(|_| turn.choose(strategy, candidates, publisher).unwrap())
            .collect()
    }

    #[test]
    fn round_robin_takes_ready_ones_in_turn_and_all_when_none_is_ready() {
        let c = members(&["a", "b", "c"], &[true, false, true]);
        assert_eq!(picks(SharedStrategy::RoundRobin, &c, None, 4), [0, 2, 0, 2]);
        let c = members(&["a", "b"], &[false, false]);
        assert_eq!(picks(SharedStrategy::RoundRobin, &c, None, 3), [0, 1, 0]);
        assert_eq!(
            GroupTurn::default().choose(SharedStrategy::Random, &[], None),
            None
        );
    }

    #[test]
    fn random_spreads_over_the_ready_ones_only() {
        let c = members(&["a", "b", "c", "d"], &[true, true, false, true]);
        let got = picks(SharedStrategy::Random, &c, None, 4000);
        let count = |i: usize| got.iter().filter(|&&g| g == i).count();
        assert_eq!(count(2), 0, "not ready: never picked");
        for i in [0, 1, 3] {
            assert!((1000..1700).contains(&count(i)), "{i}: {}", count(i));
        }
    }

    #[test]
    fn local_first_prefers_a_ready_local_candidate() {
        let mut c = members(&["n1", "n2", "n3"], &[true, true, true]);
        c[1].local = true;
        assert_eq!(picks(SharedStrategy::LocalFirst, &c, None, 3), [1, 1, 1]);
        c[1].ready = false;
        assert_eq!(
            picks(SharedStrategy::LocalFirst, &c, None, 4),
            [0, 2, 0, 2],
            "local one not ready: the others in turn"
        );
    }

    #[test]
    fn hash_clientid_keeps_a_publisher_on_one_member_and_moves_only_the_leavers_publishers() {
        let keys = ["m1", "m2", "m3", "m4"];
        let all = members(&keys, &[true; 4]);
        let publishers: Vec<String> = (0..400).map(|i| format!("pub-{i}")).collect();
        let before: Vec<usize> = publishers
            .iter()
            .map(|p| {
                let got = picks(SharedStrategy::HashClientid, &all, Some(p), 3);
                assert!(got.iter().all(|&g| g == got[0]), "{p}: one member");
                got[0]
            })
            .collect();
        for i in 0..4 {
            let n = before.iter().filter(|&&b| b == i).count();
            assert!((50..150).contains(&n), "member {i} has {n} of 400");
        }
        // m3 disconnects: its publishers move, nobody else's does.
        let without = members(&keys, &[true, true, false, true]);
        for (p, was) in publishers.iter().zip(&before) {
            let now = picks(SharedStrategy::HashClientid, &without, Some(p), 1)[0];
            if *was == 2 {
                assert_ne!(now, 2);
            } else {
                assert_eq!(now, *was, "{p} moved though its member stayed");
            }
        }
    }

    #[test]
    fn sticky_stays_until_its_pick_cannot_take_messages() {
        let mut turn = GroupTurn::default();
        let c = members(&["a", "b", "c"], &[true, true, true]);
        let first = turn.choose(SharedStrategy::Sticky, &c, None).unwrap();
        for _ in 0..5 {
            assert_eq!(turn.choose(SharedStrategy::Sticky, &c, None), Some(first));
        }
        let mut ready = [true; 3];
        ready[first] = false;
        let c2 = members(&["a", "b", "c"], &ready);
        let second = turn.choose(SharedStrategy::Sticky, &c2, None).unwrap();
        assert_ne!(second, first);
        // The first one back: the pick stays where it went.
        assert_eq!(turn.choose(SharedStrategy::Sticky, &c, None), Some(second));
    }
}
