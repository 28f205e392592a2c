use super::*;

use crate::balance::strategy::RoundRobin;

type TestCore = Core<&'static str, u32>;

fn core(cfg: Config) -> Arc<TestCore> {
    Core::new(Arc::new(RoundRobin::new()), cfg, None)
}

fn insert(core: &TestCore, backend: Backend<&'static str>) {
    core.insert_with(backend, |_| Ok(0)).unwrap();
}

fn keys(core: &TestCore) -> Vec<&'static str> {
    core.peek()
        .entries
        .iter()
        .map(|e| *e.backend.key())
        .collect()
}

fn state(core: &TestCore, key: &'static str) -> Arc<EndpointState> {
    core.with_entry(&key, |e| e.state.clone()).unwrap()
}

/// The snapshot is self-consistent, and its candidate list (updated in place or
/// not) holds what a full rebuild would.
fn check(core: &TestCore) {
    let snap = core.peek();
    assert_eq!(snap.index.len(), snap.entries.len());
    for (pos, e) in snap.entries.iter().enumerate() {
        assert_eq!(snap.index.get(e.id, e.backend.key()), Some(&pos), "index");
    }
    let view = snap.candidates.view();
    let mut total = 0;
    for (i, c) in view.iter().enumerate() {
        let e = &snap.entries[c.pos];
        assert_eq!(e.id, c.id, "candidate position");
        assert_eq!(view.position(c.id), Some(i), "candidate id index");
        assert_eq!(c.weight, e.backend.weight());
        total += u64::from(c.weight);
        assert_eq!(view.cumulative()[i], total, "weight sums");
    }
    assert_eq!(view.cumulative().len(), view.len());
    assert_eq!(view.total_weight(), total);
    assert_eq!(
        view.uniform(),
        view.windows(2).all(|w| w[0].weight == w[1].weight)
    );
    let full = core.build(snap.entries.clone(), snap.index.clone(), snap.epoch);
    let sorted = |l: &CandidateList| {
        let mut v: Vec<_> = l.view().iter().map(|c| (c.id, c.pos, c.weight)).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(sorted(&full.candidates), sorted(&snap.candidates));
    assert_eq!(full.tier, snap.tier);
    assert_eq!(full.level, snap.level);
    assert_eq!(full.counts, snap.counts);
}

#[test]
fn remove_in_the_middle_moves_the_last_into_place() {
    let core = core(Config::default());
    for k in ["a", "b", "c", "d", "e"] {
        insert(&core, Backend::new(k));
    }
    assert_eq!(keys(&core), ["a", "b", "c", "d", "e"]);
    let d = state(&core, "d");
    assert!(core.remove(&"b"));
    assert_eq!(keys(&core), ["a", "e", "c", "d"]);
    check(&core);
    assert!(!core.remove(&"b"));
    // Removing the last one moves nothing.
    assert!(core.remove(&"d"));
    assert_eq!(keys(&core), ["a", "e", "c"]);
    check(&core);
    // Re-inserted keys go to the end, with a fresh state.
    insert(&core, Backend::new("d"));
    assert_eq!(keys(&core), ["a", "e", "c", "d"]);
    assert!(!Arc::ptr_eq(&d, &state(&core, "d")));
    check(&core);
    // Removing the first.
    assert!(core.remove(&"a"));
    assert_eq!(keys(&core), ["d", "e", "c"]);
    check(&core);
}

#[test]
fn updates_keep_position_and_state() {
    let core = core(Config::default());
    for k in ["a", "b", "c"] {
        insert(&core, Backend::new(k));
    }
    let b = state(&core, "b");
    insert(&core, Backend::new("b").with_weight(3));
    core.set_weight(&"a", 2).unwrap();
    assert_eq!(keys(&core), ["a", "b", "c"]);
    assert!(Arc::ptr_eq(&b, &state(&core, "b")));
    check(&core);
    assert!(!core.peek().candidates.view().uniform());
    core.set_weight(&"a", 1).unwrap();
    core.set_weight(&"b", 1).unwrap();
    check(&core);
    assert!(core.peek().candidates.view().uniform());
}

#[test]
fn replace_keeps_states_of_kept_keys() {
    let core = core(Config::default());
    for k in ["a", "b", "c", "d"] {
        insert(&core, Backend::new(k));
    }
    let (a, c) = (state(&core, "a"), state(&core, "c"));
    core.replace_with(
        vec![Backend::new("c"), Backend::new("e"), Backend::new("a")],
        |_| Ok(1),
    )
    .unwrap();
    let mut now = keys(&core);
    now.sort_unstable();
    assert_eq!(now, ["a", "c", "e"]);
    assert!(Arc::ptr_eq(&a, &state(&core, "a")));
    assert!(Arc::ptr_eq(&c, &state(&core, "c")));
    check(&core);
    // A failing maker leaves the set as it was.
    let err = core.replace_with(vec![Backend::new("x")], |_| Err("no".into()));
    assert!(err.is_err());
    assert_eq!(core.peek().entries.len(), 3);
}

#[test]
fn an_edit_that_changes_nothing_publishes_nothing() {
    let core = core(Config::default());
    insert(&core, Backend::new("a"));
    let before = core.published.load(Acquire);
    assert!(!core.remove(&"zz"));
    assert!(core.set_weight(&"zz", 2).is_err());
    assert_eq!(core.published.load(Acquire), before);
}

/// Many random single changes, with readers holding some snapshots (so the list is
/// sometimes copied, sometimes replayed in place), two backup levels, drains and tier
/// changes:
/// every snapshot matches a full rebuild.
#[test]
fn random_changes_match_a_full_rebuild() {
    const KEYS: [&str; 12] = [
        "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "k10", "k11",
    ];
    for threshold in [0.0, 0.5] {
        let core = core(Config {
            panic_threshold: threshold,
            ..Config::default()
        });
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            rng = crate::backend::mix64(rng);
            rng % n
        };
        let mut held = Vec::new();
        for step in 0..3000 {
            let key = KEYS[next(KEYS.len() as u64) as usize];
            match next(10) {
                0..=3 => {
                    let b = Backend::new(key).with_weight(1 + next(2) as u32);
                    let b = b.with_priority(match next(8) {
                        0 => 1,
                        1 => 2,
                        _ => 0,
                    });
                    insert(&core, b);
                }
                4..=6 => {
                    core.remove(&key);
                }
                7 => {
                    let _ = core.set_weight(&key, 1 + next(3) as u32);
                }
                8 => {
                    if let Some(st) = core.with_entry(&key, |e| e.state.clone()) {
                        st.set_draining(!st.is_draining());
                    }
                }
                _ => {
                    if next(2) == 0 {
                        held.push(core.peek());
                    } else {
                        held.clear();
                    }
                }
            }
            // Health changes are picked up the way requests pick them up.
            drop(core.current());
            check(&core);
            if step % 500 == 0 {
                core.replace_with(vec![Backend::new("k1"), Backend::new("k2")], |_| Ok(2))
                    .unwrap();
                check(&core);
            }
        }
    }
}

#[test]
fn released_snapshots_are_freed_by_the_writer() {
    let core = core(Config::default());
    for k in ["a", "b", "c"] {
        insert(&core, Backend::new(k));
    }
    let held = core.peek();
    insert(&core, Backend::new("d"));
    // The reader's snapshot is retired, not dropped.
    assert_eq!(Arc::strong_count(&held), 2);
    drop(held);
    // The next change frees it (or reuses its candidate list).
    core.remove(&"d");
    let writer = core.write.lock().unwrap();
    assert!(writer.retired.iter().all(|s| Arc::strong_count(s) > 1));
}
