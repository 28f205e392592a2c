//! Subsetting invariants, as property tests over the public API: subset size,
//! determinism, the balance of deterministic subsetting, the stability of random
//! subsetting (gRPC A68), and that a balancer's set follows its sources' writes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::convert::Infallible;

use futures_util::{stream, StreamExt};
use proptest::prelude::*;
use tower::discover::Change;
use tower_lb::{
    balance::Status,
    discover::subset::{SubsetDiscover, Subsetting},
    error::ConfigError,
    Backend, Balance,
};

fn any_subsetting(max_k: usize) -> impl Strategy<Value = Subsetting> {
    prop_oneof![
        (1..=max_k, 0u64..1000, 1u64..1000).prop_map(|(k, id, count)| {
            Subsetting::deterministic(k, id % count, count).unwrap()
        }),
        (1..=max_k, any::<u64>()).prop_map(|(k, seed)| Subsetting::random(k, seed).unwrap()),
    ]
}

fn keys(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:80", i / 256, i % 256))
        .collect()
}

fn sym_diff(a: &[String], b: &[String]) -> (usize, usize) {
    let a: HashSet<_> = a.iter().collect();
    let b: HashSet<_> = b.iter().collect();
    (a.difference(&b).count(), b.difference(&a).count())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn subset_has_min_k_n_distinct_members_of_the_set(s in any_subsetting(20), n in 0u32..60) {
        let all = keys(n);
        let subset = s.select(&all);
        prop_assert_eq!(subset.len(), s.size().min(all.len()));
        let distinct: HashSet<_> = subset.iter().collect();
        prop_assert_eq!(distinct.len(), subset.len());
        prop_assert!(subset.iter().all(|k| all.contains(k)));
    }

    #[test]
    fn subset_depends_on_the_set_not_its_order(
        s in any_subsetting(20),
        n in 0u32..60,
        rotate in 0usize..60,
        reverse in any::<bool>(),
    ) {
        let all = keys(n);
        let mut other = all.clone();
        if !other.is_empty() {
            let by = rotate % other.len();
            other.rotate_left(by);
        }
        if reverse {
            other.reverse();
        }
        other.extend(all.iter().take(3).cloned()); // duplicates count once
        prop_assert_eq!(s.select(&all), s.select(&other));
    }

    /// The bound proved: when k divides n, over clients 0..c (any c), the clients per
    /// backend differ by at most 1, and by 0 when c is a multiple of n / k.
    #[test]
    fn deterministic_balance_is_within_one(k in 1usize..12, m in 1usize..12, c in 1u64..300) {
        let n = k * m;
        let all = keys(n as u32);
        let mut per: HashMap<&String, u64> = all.iter().map(|k| (k, 0)).collect();
        let subsets: Vec<Vec<String>> = (0..c)
            .map(|id| Subsetting::deterministic(k, id, c).unwrap().select(&all))
            .collect();
        for s in &subsets {
            for b in s {
                *per.get_mut(b).unwrap() += 1;
            }
        }
        let max = *per.values().max().unwrap();
        let min = *per.values().min().unwrap();
        prop_assert!(max - min <= 1, "max {max} min {min}");
        if c % m as u64 == 0 {
            prop_assert_eq!(max, min);
        }
        prop_assert_eq!(per.values().sum::<u64>(), c * k as u64);
    }

    #[test]
    fn random_subset_moves_at_most_one_entry_when_one_backend_leaves_or_joins(
        k in 1usize..20,
        n in 1u32..80,
        seed in any::<u64>(),
        pick in any::<prop::sample::Index>(),
    ) {
        let s = Subsetting::random(k, seed).unwrap();
        let all = keys(n + 1);
        let gone = pick.index(all.len());
        let mut less = all.clone();
        less.remove(gone);
        let (a, b) = (s.select(&all), s.select(&less));
        let (out, inn) = sym_diff(&a, &b);
        prop_assert!(out <= 1 && inn <= 1, "{out} left, {inn} joined");
        // Joining is the same pair read the other way round.
        let (out, inn) = sym_diff(&b, &a);
        prop_assert!(out <= 1 && inn <= 1, "{out} left, {inn} joined");
    }

    #[test]
    fn a_balancer_serves_the_subset_of_what_its_handle_was_told(
        s in any_subsetting(6),
        ops in prop::collection::vec((0u32..16, 0u8..4, 1u32..5), 1..40),
    ) {
        let balance = tower_lb::test_util::echo(Balance::builder().subset(s));
        let handle = balance.handle();
        let mut all: HashMap<String, u32> = HashMap::new();
        for (key, op, w) in ops {
            let key = format!("b{key}");
            match op {
                0 | 1 => {
                    handle.insert(Backend::new(key.clone()).with_weight(w)).unwrap();
                    all.insert(key, w);
                }
                2 => {
                    prop_assert_eq!(handle.remove(&key), all.remove(&key).is_some());
                }
                _ => {
                    let res = handle.set_weight(&key, w);
                    prop_assert_eq!(res.is_ok(), all.contains_key(&key));
                    if let Some(old) = all.get_mut(&key) {
                        *old = w;
                    }
                }
            }
            let universe: Vec<String> = all.keys().cloned().collect();
            let want: BTreeSet<String> = s.select(&universe).into_iter().collect();
            let have: BTreeSet<String> = handle.keys().into_iter().collect();
            prop_assert_eq!(&have, &want);
            // Weights inside the subset are the backends' own.
            for b in balance.stats().backends {
                prop_assert_eq!(b.weight, all[&b.key]);
            }
        }
    }
}

#[test]
fn bad_settings_are_config_errors() {
    for err in [
        Subsetting::deterministic(0, 0, 3).unwrap_err(),
        Subsetting::deterministic(2, 3, 3).unwrap_err(),
        Subsetting::deterministic(2, 0, 0).unwrap_err(),
        Subsetting::random(0, 9).unwrap_err(),
    ] {
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("subset"), "{err}");
    }
}

#[test]
fn k_at_least_n_keeps_every_backend() {
    let all = keys(5);
    for s in [
        Subsetting::deterministic(5, 2, 3).unwrap(),
        Subsetting::random(9, 1).unwrap(),
    ] {
        let mut want = all.clone();
        want.sort();
        assert_eq!(s.select(&all), want);
    }
}

#[test]
fn static_backends_keep_priority_and_drain_outside_the_subset_waits_until_it_enters() {
    let s = Subsetting::random(2, 3).unwrap();
    let all = keys(6);
    let backends = all
        .iter()
        .enumerate()
        .map(|(i, k)| Backend::new(k.clone()).with_priority((i % 2) as u8));
    let balance = tower_lb::test_util::echo(Balance::builder().subset(s).backends(backends));
    let chosen = s.select(&all);
    let stats = balance.stats();
    assert_eq!(stats.backends.len(), 2);
    for b in &stats.backends {
        let i = all.iter().position(|k| *k == b.key).unwrap();
        assert_eq!(b.priority, (i % 2) as u8, "{}", b.key);
    }
    // Drain one that is outside, then remove a member so the outsider may enter.
    let handle = balance.handle();
    let outside: Vec<&String> = all.iter().filter(|k| !chosen.contains(k)).collect();
    for k in &outside {
        handle.drain(k).unwrap();
    }
    handle.remove(&chosen[0]);
    let stats = balance.stats();
    assert_eq!(stats.backends.len(), 2);
    let joined = stats
        .backends
        .iter()
        .find(|b| b.key != chosen[1])
        .expect("a replacement joined");
    assert_eq!(joined.status, Status::Draining);
    assert!(handle.drain(&"nowhere".to_string()).is_err());
}

#[tokio::test]
async fn a_discover_source_is_subset_too() {
    let s = Subsetting::deterministic(3, 4, 10).unwrap();
    let all = keys(12);
    let mut changes: Vec<Result<Change<String, u32>, Infallible>> = all
        .iter()
        .enumerate()
        .map(|(i, k)| Ok(Change::Insert(k.clone(), i as u32)))
        .collect();
    changes.push(Ok(Change::Remove(all[5].clone())));
    changes.push(Ok(Change::Remove(all[7].clone())));
    let out: Vec<_> = SubsetDiscover::new(stream::iter(changes), s)
        .collect()
        .await;
    let mut held = BTreeSet::new();
    for c in out {
        match c.unwrap() {
            Change::Insert(k, _) => {
                held.insert(k);
            }
            Change::Remove(k) => {
                assert!(held.remove(&k), "removed {k} it never inserted");
            }
        }
    }
    let mut rest = all.clone();
    rest.retain(|k| *k != all[5] && *k != all[7]);
    let want: BTreeSet<String> = s.select(&rest).into_iter().collect();
    assert_eq!(held, want);
}

#[tokio::test]
async fn build_discover_with_a_subset_serves_only_the_subset() {
    use tower::{service_fn, util::BoxCloneSyncService, ServiceExt};
    type Svc = BoxCloneSyncService<(), String, Infallible>;
    let s = Subsetting::random(2, 11).unwrap();
    let all = keys(8);
    let changes = stream::iter(all.clone().into_iter().map(|k| {
        let name = k.clone();
        let svc = Svc::new(service_fn(move |_: ()| {
            let name = name.clone();
            async move { Ok::<_, Infallible>(name) }
        }));
        Ok::<_, Infallible>(Change::Insert(k, svc))
    }));
    let balance = Balance::builder()
        .subset(s)
        .build_discover(changes)
        .unwrap();
    let want: HashSet<String> = s.select(&all).into_iter().collect();
    // The driver applies the changes in the background: wait for the whole source.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let held: HashSet<String> = balance
                .stats()
                .backends
                .into_iter()
                .map(|b| b.key)
                .collect();
            if held == want {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the balancer holds the subset");
    let mut seen = HashSet::new();
    for _ in 0..200 {
        seen.insert(balance.clone().oneshot(()).await.unwrap());
    }
    assert_eq!(seen, want);
}
