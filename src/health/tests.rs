//! The balancer's side of health, on paused time: backups, drain, max conns, slow start.

use std::{collections::HashMap, time::Duration};

use tokio::time::advance;
use tower::ServiceExt;

use super::{
    passive::{PassiveHealthLayer, Window},
    testing::{Outcome, Replay, Rig},
};
use crate::{
    backend::stable_hash,
    balance::{Status, Tier},
    Backend, Balance,
};

/// Starts a request and polls it until it waits on its backend (the runtime cannot spawn
/// it: `&'static str` keys trip the `Send` check of higher-ranked futures).
pub(crate) fn start_request(
    rig: &Rig,
) -> tokio_test::task::Spawn<impl std::future::Future<Output = http::StatusCode> + use<>> {
    let b = rig.balance.clone();
    let mut fut = tokio_test::task::spawn(async move {
        b.oneshot(http::Request::new(())).await.unwrap().status()
    });
    assert!(fut.poll().is_pending());
    fut
}

/// Polls a started request to its end.
pub(crate) async fn finish<F: std::future::Future>(
    mut fut: tokio_test::task::Spawn<F>,
) -> F::Output {
    loop {
        if let std::task::Poll::Ready(out) = fut.poll() {
            return out;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn backups_serve_only_while_every_primary_is_unavailable() {
    let rig = Rig::new(
        Balance::builder().backends([
            Backend::new("a"),
            Backend::new("b"),
            Backend::new("z").backup(true),
        ]),
        PassiveHealthLayer::new,
    );
    for _ in 0..6 {
        assert_ne!(rig.send().await.unwrap().0, "z");
    }
    rig.state("a").set_down(true);
    for _ in 0..4 {
        assert_eq!(rig.send().await.unwrap().0, "b");
    }
    rig.state("b").set_down(true);
    assert_eq!(rig.balance.stats().tier, Tier::Backup);
    for _ in 0..4 {
        assert_eq!(rig.send().await.unwrap().0, "z");
    }
    // One primary back: backups stop at once.
    rig.state("a").set_down(false);
    assert_eq!(rig.balance.stats().tier, Tier::Primary);
    rig.aim("z");
    for _ in 0..4 {
        assert_eq!(rig.send().await.unwrap().0, "a");
    }
}

/// nginx `backup` under the default passive health (max_fails 1, fail_timeout 10 s) and
/// the default 50 % max ejection share: both primaries die at once, the backup serves
/// every request within its own retries, and the primaries take the traffic back once
/// their ejection ends and their trial requests succeed.
#[tokio::test(start_paused = true)]
async fn backups_serve_when_both_primaries_die_together() {
    let rig = Rig::new(
        Balance::builder().policy(Replay).backends([
            Backend::new("a"),
            Backend::new("b"),
            Backend::new("z").backup(true),
        ]),
        PassiveHealthLayer::new,
    );
    rig.set("a", Outcome::Refused);
    rig.set("b", Outcome::Refused);
    for _ in 0..10 {
        assert_eq!(rig.send().await.unwrap().0, "z");
    }
    // The second primary was ejected too: the share is per level, and the backup level
    // can serve.
    assert!(rig.is_ejected("a") && rig.is_ejected("b"));
    let s = rig.balance.stats();
    assert_eq!((s.tier, s.level), (Tier::Backup, 1));
    // Each primary saw only the request that ejected it.
    assert_eq!(
        (rig.state("a").requests(), rig.state("b").requests()),
        (1, 1)
    );

    rig.set("a", Outcome::Status(200));
    rig.set("b", Outcome::Status(200));
    advance(Duration::from_secs(10)).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(rig.send().await.unwrap().0);
    }
    assert!(seen.iter().all(|k| k != "z"), "{seen:?}");
    assert!(seen.iter().any(|k| k == "a") && seen.iter().any(|k| k == "b"));
    assert_eq!(rig.balance.stats().tier, Tier::Primary);
    assert_eq!(
        (rig.status("a"), rig.status("b")),
        (Status::Healthy, Status::Healthy)
    );
    let z = rig.state("z").requests();
    for _ in 0..6 {
        rig.send().await.unwrap();
    }
    assert_eq!(rig.state("z").requests(), z, "the backup was released");
}

/// A primary that is not ejected (max_fails 3) but refuses this request: the request
/// moves on to the backup level at once.
#[tokio::test(start_paused = true)]
async fn a_request_that_failed_on_every_primary_moves_on_to_the_backups() {
    let rig = Rig::new(
        Balance::builder()
            .policy(Replay)
            .backends([Backend::new("a"), Backend::new("z").backup(true)]),
        |t| PassiveHealthLayer::new(t).policy(Window::new().max_fails(3)),
    );
    rig.set("a", Outcome::Refused);
    for i in 1..=2 {
        assert_eq!(rig.send().await.unwrap().0, "z");
        assert_eq!(rig.status("a"), Status::Healthy, "{i} failures of 3");
    }
    assert_eq!(rig.send().await.unwrap().0, "z");
    assert!(rig.is_ejected("a"));
    assert_eq!(rig.state("a").requests(), 3);
    // Without replay (the default policy), a request that reached the dead primary
    // cannot be sent again: it fails, typed.
    let once = Rig::new(
        Balance::builder().backends([Backend::new("a"), Backend::new("z").backup(true)]),
        |t| PassiveHealthLayer::new(t).policy(Window::new().max_fails(3)),
    );
    once.set("a", Outcome::Refused);
    let err = once.send().await.unwrap_err();
    assert!(err.is::<crate::error::EndpointError>(), "{err}");
}

/// The max ejection share counts each priority level on its own, and holds for the last
/// level that can serve.
#[tokio::test(start_paused = true)]
async fn the_max_ejection_share_is_per_level_and_guards_the_last_serving_level() {
    // Four primaries, no backup: at most half of them (two) are ejected.
    let rig = Rig::new(
        Balance::builder().backends(["a", "b", "c", "d"].map(Backend::new)),
        PassiveHealthLayer::new,
    );
    for k in ["a", "b", "c", "d"] {
        rig.set(k, Outcome::Status(503));
        let _ = rig.send_to(k).await;
    }
    let ejected: Vec<_> = ["a", "b", "c", "d"]
        .into_iter()
        .filter(|k| rig.is_ejected(k))
        .collect();
    assert_eq!(ejected, ["a", "b"]);

    // The same with a backup: it can take over, so a third primary may go too; then the
    // primaries are below the panic threshold (one of four) and the backup serves.
    let rig = Rig::new(
        Balance::builder().backends([
            Backend::new("a"),
            Backend::new("b"),
            Backend::new("c"),
            Backend::new("d"),
            Backend::new("z").backup(true),
        ]),
        PassiveHealthLayer::new,
    );
    for k in ["a", "b", "c"] {
        rig.set(k, Outcome::Status(503));
        assert_eq!(rig.send_to(k).await.unwrap().0, k);
        assert!(rig.is_ejected(k), "{k}");
    }
    let s = rig.balance.stats();
    assert_eq!((s.tier, s.level), (Tier::Backup, 1));
    assert_eq!(rig.send_to("d").await.unwrap().0, "z");
    // The backup level is now the last that can serve: its only endpoint may still be
    // ejected once (a level's first ejection is always allowed) ...
    rig.set("z", Outcome::Status(503));
    let _ = rig.send_to("z").await;
    assert!(rig.is_ejected("z"));
    // ... and then no level is healthy enough: panic mode in the primaries, where "d"
    // is still available.
    let s = rig.balance.stats();
    assert_eq!((s.tier, s.level), (Tier::Panic, 0));
}

/// Panic mode is decided per level (Envoy): a level below the panic threshold hands over
/// to the next level that is healthy enough, and only when none is does panic mode
/// ignore health.
#[tokio::test(start_paused = true)]
async fn a_level_below_the_panic_threshold_hands_over_to_the_next() {
    let rig = Rig::new(
        Balance::builder().backends([
            Backend::new("a"),
            Backend::new("b"),
            Backend::new("c"),
            Backend::new("z").backup(true),
        ]),
        PassiveHealthLayer::new,
    );
    let level = |rig: &Rig| {
        let s = rig.balance.stats();
        (s.tier, s.level)
    };
    rig.state("a").set_down(true);
    // Two of three primaries: above 50 %.
    assert_eq!(level(&rig), (Tier::Primary, 0));
    rig.state("b").set_down(true);
    // One of three: the backup level, fully available, serves.
    assert_eq!(level(&rig), (Tier::Backup, 1));
    for _ in 0..4 {
        assert_eq!(rig.send().await.unwrap().0, "z");
    }
    // The backup down too: no level is healthy enough; panic mode in the lowest level
    // that still has an available endpoint.
    rig.state("z").set_down(true);
    assert_eq!(level(&rig), (Tier::Panic, 0));
    rig.state("b").set_down(false);
    assert_eq!(level(&rig), (Tier::Primary, 0));
}

#[tokio::test(start_paused = true)]
async fn priority_levels_serve_in_order() {
    // SRV-style levels: 0 (a), 1 (m), 2 (z).
    let rig = Rig::new(
        Balance::builder().backends([
            Backend::new("a"),
            Backend::new("m").with_priority(1),
            Backend::new("z").with_priority(2),
        ]),
        PassiveHealthLayer::new,
    );
    let level = |rig: &Rig| {
        let s = rig.balance.stats();
        (s.tier, s.level)
    };
    assert_eq!(level(&rig), (Tier::Primary, 0));
    for _ in 0..4 {
        assert_eq!(rig.send().await.unwrap().0, "a");
    }
    rig.state("a").set_down(true);
    assert_eq!(level(&rig), (Tier::Backup, 1));
    for _ in 0..4 {
        assert_eq!(rig.send().await.unwrap().0, "m");
    }
    // Level 2 only when level 1 is down too.
    rig.state("m").set_down(true);
    assert_eq!(level(&rig), (Tier::Backup, 2));
    for _ in 0..4 {
        assert_eq!(rig.send().await.unwrap().0, "z");
    }
    // Level 1 back: it takes over from level 2 at once.
    rig.state("m").set_down(false);
    assert_eq!(level(&rig), (Tier::Backup, 1));
    assert_eq!(rig.send().await.unwrap().0, "m");
    // A change within the serving level (a new level-1 backend) keeps the level.
    rig.balance
        .handle()
        .insert(Backend::new("n").with_priority(1))
        .unwrap();
    assert_eq!(level(&rig), (Tier::Backup, 1));
    let mut seen: Vec<_> = Vec::new();
    for _ in 0..6 {
        seen.push(rig.send().await.unwrap().0);
    }
    assert!(seen.iter().all(|k| *k == "m" || *k == "n"), "{seen:?}");
    assert!(seen.iter().any(|k| k == "n"), "{seen:?}");
    // Everything down: panic mode over the primaries, the lowest live level.
    for k in ["m", "n", "z"] {
        rig.state(k).set_down(true);
    }
    assert_eq!(level(&rig), (Tier::Panic, 0));
    // The primary back: level 0 again.
    rig.state("a").set_down(false);
    assert_eq!(level(&rig), (Tier::Primary, 0));
    assert_eq!(rig.send().await.unwrap().0, "a");
    let priorities: HashMap<_, _> = rig
        .balance
        .stats()
        .backends
        .iter()
        .map(|b| (b.key, (b.priority, b.backup)))
        .collect();
    assert_eq!(priorities["z"], (2, true));
    assert_eq!(priorities["a"], (0, false));
}

#[tokio::test(start_paused = true)]
async fn panic_mode_without_primaries_uses_the_lowest_live_backup_level() {
    let rig = Rig::new(
        Balance::builder().backends([
            Backend::new("m").with_priority(1),
            Backend::new("z").with_priority(3),
        ]),
        PassiveHealthLayer::new,
    );
    let s = rig.balance.stats();
    assert_eq!((s.tier, s.level), (Tier::Backup, 1));
    rig.state("m").set_down(true);
    let s = rig.balance.stats();
    assert_eq!((s.tier, s.level), (Tier::Backup, 3));
    rig.state("z").set_down(true);
    let s = rig.balance.stats();
    assert_eq!((s.tier, s.level), (Tier::Panic, 1));
}

#[tokio::test(start_paused = true)]
async fn draining_takes_no_new_requests_and_lets_in_flight_ones_finish() {
    let rig = Rig::new(
        Balance::builder().backends(["a", "b"].map(Backend::new)),
        PassiveHealthLayer::new,
    );
    rig.set("a", Outcome::Wait);
    rig.aim("a");
    let in_flight = start_request(&rig);
    assert_eq!(rig.state("a").in_flight(), 1);
    rig.balance.handle().drain(&"a").unwrap();
    assert_eq!(rig.status("a"), Status::Draining);
    for _ in 0..4 {
        assert_eq!(rig.send_to("a").await.unwrap().0, "b");
    }
    rig.gate.notify_one();
    assert_eq!(finish(in_flight).await, http::StatusCode::OK);
    assert_eq!(rig.state("a").in_flight(), 0);
    assert_eq!(rig.state("a").requests(), 1);
    rig.balance.handle().undrain(&"a").unwrap();
    rig.set("a", Outcome::Status(200));
    assert_eq!(rig.send_to("a").await.unwrap().0, "a");
}

#[tokio::test(start_paused = true)]
async fn a_backend_at_max_conns_is_skipped() {
    let rig = Rig::new(
        Balance::builder().backends([Backend::new("a").with_max_conns(1), Backend::new("b")]),
        PassiveHealthLayer::new,
    );
    rig.set("a", Outcome::Wait);
    rig.aim("a");
    let in_flight = start_request(&rig);
    assert_eq!(rig.state("a").in_flight(), 1);
    assert!(rig.state("a").at_capacity());
    for _ in 0..4 {
        assert_eq!(rig.send_to("a").await.unwrap().0, "b");
    }
    rig.gate.notify_one();
    finish(in_flight).await;
    rig.set("a", Outcome::Status(200));
    assert_eq!(rig.send_to("a").await.unwrap().0, "a");
}

/// Effective weights of the current candidates, by key.
fn weights(rig: &Rig, keys: &[&'static str]) -> HashMap<&'static str, u32> {
    let snap = rig.balance.core.current();
    snap.candidates
        .view()
        .iter()
        .filter_map(|c| {
            keys.iter()
                .find(|k| stable_hash(*k) == c.id())
                .map(|k| (*k, c.weight()))
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_weight_after_join_and_recovery() {
    let rig = Rig::new(
        Balance::builder()
            .slow_start(Duration::from_secs(10))
            .backends([Backend::new("a").with_weight(2), Backend::new("b")]),
        PassiveHealthLayer::new,
    );
    let keys = ["a", "b", "c"];
    // Joined at t = 0: 10 % floor, in hundredths of the weight.
    assert_eq!(weights(&rig, &keys), HashMap::from([("a", 20), ("b", 10)]));
    advance(Duration::from_secs(5)).await;
    assert_eq!(weights(&rig, &keys), HashMap::from([("a", 100), ("b", 50)]));
    // The stats show the same ramp, in units of the configured weight.
    let effective: HashMap<_, _> = rig
        .balance
        .stats()
        .backends
        .iter()
        .map(|b| (b.key, b.effective_weight))
        .collect();
    assert_eq!(effective, HashMap::from([("a", 1.0), ("b", 0.5)]));
    advance(Duration::from_secs(5)).await;
    assert_eq!(
        weights(&rig, &keys),
        HashMap::from([("a", 200), ("b", 100)])
    );

    // A backend joining later ramps alone.
    rig.balance.handle().insert(Backend::new("c")).unwrap();
    assert_eq!(
        weights(&rig, &keys),
        HashMap::from([("a", 200), ("b", 100), ("c", 10)])
    );
    advance(Duration::from_millis(7_500)).await;
    assert_eq!(weights(&rig, &keys)["c"], 75);
    advance(Duration::from_millis(2_500)).await;
    assert_eq!(weights(&rig, &keys)["c"], 100);

    // Recovery from active probing restarts the ramp.
    rig.state("b").set_down(true);
    assert!(!weights(&rig, &keys).contains_key("b"));
    advance(Duration::from_secs(30)).await;
    rig.state("b").set_down(false);
    assert_eq!(weights(&rig, &keys)["b"], 10);
    advance(Duration::from_secs(2)).await;
    assert_eq!(weights(&rig, &keys)["b"], 20);

    // So does the end of an ejection.
    let now = tokio::time::Instant::now();
    rig.state("a").eject_until(now + Duration::from_secs(10));
    advance(Duration::from_secs(10)).await;
    assert_eq!(weights(&rig, &keys)["a"], 20);
    advance(Duration::from_secs(10)).await;
    assert_eq!(weights(&rig, &keys)["a"], 200);
    let a = rig
        .balance
        .stats()
        .backends
        .into_iter()
        .find(|b| b.key == "a");
    assert_eq!(a.map(|b| (b.weight, b.effective_weight)), Some((2, 2.0)));
}

#[tokio::test(start_paused = true)]
async fn without_slow_start_weights_are_the_configured_ones() {
    let rig = Rig::new(
        Balance::builder().backends([Backend::new("a").with_weight(3), Backend::new("b")]),
        PassiveHealthLayer::new,
    );
    assert_eq!(
        weights(&rig, &["a", "b"]),
        HashMap::from([("a", 3), ("b", 1)])
    );
}

/// The thread that changes health rebuilds the candidate list: the published snapshot is
/// current before any request comes (so requests take no lock for it).
#[tokio::test(start_paused = true)]
async fn a_health_change_is_published_by_its_writer() {
    let rig = Rig::new(
        Balance::builder().backends(["a", "b", "c"].map(Backend::new)),
        PassiveHealthLayer::new,
    );
    let published = |rig: &Rig| rig.balance.core.peek().candidates.view().len();
    assert_eq!(published(&rig), 3);
    rig.state("a").set_down(true);
    assert_eq!(published(&rig), 2, "rebuilt by set_down itself");
    rig.balance.handle().drain(&"b").unwrap();
    assert_eq!(published(&rig), 1);
    rig.state("a").set_down(false);
    assert_eq!(published(&rig), 2);
}
