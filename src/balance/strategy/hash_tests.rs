//! Property tests shared by the hash strategies: weight shares, minimal remapping,
//! deterministic fall-through, bounded loads.

use proptest::prelude::*;

use super::{
    list_of, BoundedLoad, Candidate, CandidateList, IpHash, Maglev, Rendezvous, RequestKey,
    RingHash, Strategy,
};
use crate::backend::mix64;

/// The id of the endpoint `s` picks for `key` among `c`.
fn pick_id(s: &dyn Strategy, c: &CandidateList, key: &RequestKey) -> u64 {
    let i = s.pick(&c.view(), Some(key)).expect("a pick");
    c.view()[i].id()
}

fn without(c: &CandidateList, id: u64) -> CandidateList {
    CandidateList::new(
        c.view()
            .iter()
            .filter(|x| x.id() != id)
            .cloned()
            .collect::<Vec<Candidate>>(),
    )
}

/// Takes endpoint 0's keys out of the candidates (table unchanged, as when it is ejected)
/// and checks that each of its keys moves to one fallback, every time, and that no other
/// key moves.
pub(super) fn check_fall_through(s: &dyn Strategy, n: usize) {
    let all = list_of(&vec![1; n]);
    s.rebuild(&all.view());
    let keys: Vec<RequestKey> = (0..2000u64)
        .map(|k| RequestKey::from_hash(mix64(k)))
        .collect();
    let home: Vec<u64> = keys.iter().map(|k| pick_id(s, &all, k)).collect();
    let gone = 0u64;
    assert!(home.contains(&gone));
    let rest = without(&all, gone);
    let mut fallbacks = std::collections::HashSet::new();
    for (k, &h) in keys.iter().zip(&home) {
        let now = pick_id(s, &rest, k);
        if h == gone {
            assert_ne!(now, gone);
            assert_eq!(pick_id(s, &rest, k), now, "fallback is stable");
            fallbacks.insert(now);
        } else {
            assert_eq!(now, h, "a key of another endpoint moved");
        }
    }
    // The orphaned keys spread over several endpoints rather than piling onto one.
    assert!(fallbacks.len() > 1, "{fallbacks:?}");
    // Back in the set: every key returns home.
    for (k, &h) in keys.iter().zip(&home) {
        assert_eq!(pick_id(s, &all, k), h);
    }
}

fn strategies() -> Vec<(&'static str, Box<dyn Strategy>)> {
    vec![
        ("ring", Box::new(RingHash::new())),
        ("maglev", Box::new(Maglev::new())),
        ("rendezvous", Box::new(Rendezvous::new())),
        ("bounded-load", Box::new(BoundedLoad::new())),
        ("ip-hash", Box::new(IpHash::new())),
    ]
}

fn shares(s: &dyn Strategy, c: &CandidateList, keys: usize, seed: u64, ip: bool) -> Vec<f64> {
    let mut counts = vec![0usize; c.view().len()];
    for k in 0..keys as u64 {
        let r = mix64(seed ^ mix64(k));
        let key = if ip {
            RequestKey::from_ip(std::net::IpAddr::from((r as u32).to_be_bytes()))
        } else {
            RequestKey::from_hash(r)
        };
        counts[s.pick(&c.view(), Some(&key)).unwrap()] += 1;
    }
    counts.iter().map(|&n| n as f64 / keys as f64).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Over 100,000 random keys, each endpoint's share is within 10 % of its weight share.
    #[test]
    fn shares_follow_weights(
        weights in prop::collection::vec(1u32..=4, 2..=6),
        seed in any::<u64>(),
    ) {
        let all = list_of(&weights);
        let total: u32 = weights.iter().sum();
        for (name, s) in strategies() {
            // 160 points per weight unit leave each endpoint's arc with a standard
            // deviation near 8 %; the ring is checked at 2,000 points here and at 160
            // in `ring_default_points_spread`.
            let s: Box<dyn Strategy> = if name == "ring" {
                Box::new(RingHash::new().points_per_weight(2000).unwrap())
            } else if name == "bounded-load" {
                Box::new(BoundedLoad::new().points_per_weight(2000).unwrap())
            } else {
                s
            };
            s.rebuild(&all.view());
            let got = shares(&*s, &all, 100_000, seed, name == "ip-hash");
            for (i, w) in weights.iter().enumerate() {
                let want = f64::from(*w) / f64::from(total);
                prop_assert!(
                    (got[i] - want).abs() <= 0.1 * want,
                    "{}: endpoint {} got {:.4}, want {:.4} (weights {:?})",
                    name, i, got[i], want, weights
                );
            }
        }
    }

    /// Adding or removing one of N endpoints remaps about 1/N of the keys (ring, Maglev,
    /// rendezvous); for ring and rendezvous, only the keys of that endpoint.
    #[test]
    fn one_change_remaps_about_one_nth(n in 4usize..=24, seed in any::<u64>()) {
        let before = list_of(&vec![1; n]);
        let after = list_of(&vec![1; n + 1]); // one more endpoint, id n
        let keys: Vec<RequestKey> =
            (0..20_000u64).map(|k| RequestKey::from_hash(mix64(seed ^ mix64(k)))).collect();
        let makers: [(&str, fn() -> Box<dyn Strategy>, bool); 3] = [
            ("ring", || Box::new(RingHash::new()), true),
            ("maglev", || Box::new(Maglev::new()), false),
            ("rendezvous", || Box::new(Rendezvous::new()), true),
        ];
        for (name, make, exact) in makers {
            let (s1, s2) = (make(), make());
            s1.rebuild(&before.view());
            s2.rebuild(&after.view());
            let mut moved = 0usize;
            for k in &keys {
                let (a, b) = (pick_id(&*s1, &before, k), pick_id(&*s2, &after, k));
                if a != b {
                    moved += 1;
                    if exact {
                        prop_assert_eq!(b, n as u64, "{}: a key moved between old endpoints", name);
                    }
                }
            }
            let frac = moved as f64 / keys.len() as f64;
            let ideal = 1.0 / (n + 1) as f64;
            // Adding endpoint n to N is removing it from N + 1: the same count either way.
            // The ring's arcs vary by about 8 % per endpoint at 160 points, Maglev adds a
            // little disruption: allow half again the ideal, and at least a third of it.
            prop_assert!(
                frac <= ideal * 1.5 && frac >= ideal / 3.0,
                "{}: {} endpoints, moved {:.4}, ideal {:.4}", name, n, frac, ideal
            );
        }
    }

    /// No endpoint ever holds more than ⌈c × mean in-flight⌉ right after a pick, under any
    /// mix of arrivals (one hot key or many) and completions.
    #[test]
    fn bounded_loads_never_exceed_the_bound(
        n in 2usize..=12,
        c in 1.0f64..2.0,
        ops in prop::collection::vec((any::<bool>(), 0u64..8, any::<u16>()), 1..400),
    ) {
        let s = BoundedLoad::new().balance_factor(c).unwrap();
        let all = list_of(&vec![1; n]);
        s.rebuild(&all.view());
        let view = all.view();
        let mut in_flight: Vec<usize> = Vec::new(); // picked endpoints, one per request
        for (arrive, key, which) in ops {
            if arrive || in_flight.is_empty() {
                let key = RequestKey::from_hash(mix64(key));
                let i = s.pick(&view, Some(&key)).unwrap();
                view[i].state.start_request();
                in_flight.push(i);
                let total = in_flight.len();
                let bound = (c * total as f64 / n as f64 - 1e-9).ceil() as usize;
                prop_assert!(
                    view[i].in_flight() <= bound.max(1),
                    "endpoint {} holds {} of {}, bound {}", i, view[i].in_flight(), total, bound
                );
            } else {
                let j = in_flight.swap_remove(usize::from(which) % in_flight.len());
                view[j].state.finish_request();
            }
        }
        for i in in_flight {
            view[i].state.finish_request();
        }
    }
}

/// At nginx's 160 points per weight unit the ring is within a few tens of percent of the
/// weight shares: ketama's known spread, checked so a regression in point placement shows.
#[test]
fn ring_default_points_spread() {
    let all = list_of(&[1; 10]);
    let s = RingHash::new();
    s.rebuild(&all.view());
    let got = shares(&s, &all, 100_000, 7, false);
    for (i, g) in got.iter().enumerate() {
        assert!((g - 0.1).abs() < 0.03, "endpoint {i} got {g:.4}");
    }
}
