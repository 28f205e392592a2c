//! Prober transitions on paused time, with a scripted probe.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::{Initial, Prober};
use crate::{
    balance::{Status, Target},
    error::{BoxError, ConfigError},
    Backend, Balance,
};

type Set = Balance<String, tower::util::BoxCloneSyncService<(), String, BoxError>>;

fn balance(keys: &[&str]) -> Set {
    Balance::builder()
        .backends(keys.iter().map(|k| Backend::new(k.to_string())))
        .build(|t: &Target<'_, String>| {
            let name = t.key().clone();
            tower::util::BoxCloneSyncService::new(tower::service_fn(move |()| {
                let name = name.clone();
                async move { Ok::<_, BoxError>(name) }
            }))
        })
        .unwrap()
}

/// A probe whose verdict per backend is scripted, recording when each probe ran.
#[derive(Clone, Default)]
struct Script {
    healthy: Arc<Mutex<HashMap<String, bool>>>,
    hang: Arc<Mutex<bool>>,
    log: Arc<Mutex<Vec<(String, Duration)>>>,
    t0: Option<Instant>,
}

impl Script {
    fn new() -> Self {
        Self {
            t0: Some(Instant::now()),
            ..Self::default()
        }
    }

    fn set(&self, key: &str, healthy: bool) {
        self.healthy.lock().unwrap().insert(key.into(), healthy);
    }

    fn probes_of(&self, key: &str) -> Vec<Duration> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, t)| *t)
            .collect()
    }

    fn probe(&self) -> tower::util::BoxCloneSyncService<String, (), BoxError> {
        let me = self.clone();
        tower::util::BoxCloneSyncService::new(tower::service_fn(move |key: String| {
            let me = me.clone();
            async move {
                me.log
                    .lock()
                    .unwrap()
                    .push((key.clone(), me.t0.unwrap().elapsed()));
                if *me.hang.lock().unwrap() {
                    std::future::pending::<()>().await;
                }
                let ok = me
                    .healthy
                    .lock()
                    .unwrap()
                    .get(&key)
                    .copied()
                    .unwrap_or(true);
                if ok {
                    Ok(())
                } else {
                    Err(BoxError::from("scripted failure"))
                }
            }
        }))
    }
}

fn status(b: &Set, key: &str) -> Status {
    b.stats()
        .backends
        .into_iter()
        .find(|s| s.key == key)
        .unwrap()
        .status
}

fn secs(s: &[f64]) -> Vec<Duration> {
    s.iter().map(|&s| Duration::from_secs_f64(s)).collect()
}

/// Lets the prober task run until the paused clock reaches `t` (from the script's start).
async fn run_until(script: &Script, t: f64) {
    let target = script.t0.unwrap() + Duration::from_secs_f64(t);
    tokio::time::sleep_until(target).await;
    // Let the prober handle what became due at `target`.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn marks_down_after_fall_and_up_after_rise_probing_faster_while_down() {
    let b = balance(&["a", "b"]);
    let script = Script::new();
    script.set("b", false);
    let _prober = Prober::new(script.probe())
        .interval(Duration::from_secs(2))
        .fast_interval(Duration::from_secs(1))
        .jitter(0.0)
        .spawn(&b)
        .unwrap();
    // b fails at 0 s, then fast probes at 1 s and 2 s: the third failure marks it down.
    run_until(&script, 1.5).await;
    assert_eq!(status(&b, "b"), Status::Healthy);
    run_until(&script, 2.0).await;
    assert_eq!(status(&b, "b"), Status::Down);
    assert_eq!(b.stats().available, 1);
    // a passes: the normal interval.
    assert_eq!(script.probes_of("a"), secs(&[0.0, 2.0]));
    // Down: probed every fast interval; back at 4.5 s, it passes at 5 s and 6 s.
    run_until(&script, 4.5).await;
    script.set("b", true);
    run_until(&script, 5.0).await;
    assert_eq!(status(&b, "b"), Status::Down, "rise is 2");
    run_until(&script, 6.0).await;
    assert_eq!(status(&b, "b"), Status::Healthy);
    assert_eq!(
        script.probes_of("b"),
        secs(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    );
    // Up again: back to the normal interval.
    run_until(&script, 10.0).await;
    assert_eq!(
        script.probes_of("b"),
        secs(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0])
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_times_out_fails() {
    let b = balance(&["a", "b"]);
    let script = Script::new();
    *script.hang.lock().unwrap() = true;
    let _prober = Prober::new(script.probe())
        .timeout(Duration::from_millis(500))
        .fall(1)
        .jitter(0.0)
        .spawn(&b)
        .unwrap();
    run_until(&script, 0.4).await;
    assert_eq!(status(&b, "a"), Status::Healthy);
    run_until(&script, 0.5).await;
    assert_eq!(status(&b, "a"), Status::Down);
}

#[tokio::test(start_paused = true)]
async fn unhealthy_until_probed_also_for_endpoints_added_later() {
    let b = balance(&["a"]);
    let script = Script::new();
    let _prober = Prober::new(script.probe())
        .initial(Initial::Unhealthy)
        .interval(Duration::from_secs(2))
        .fast_interval(Duration::from_secs(1))
        .jitter(0.0)
        .spawn(&b)
        .unwrap();
    run_until(&script, 0.0).await;
    assert_eq!(status(&b, "a"), Status::Down);
    run_until(&script, 1.0).await;
    assert_eq!(status(&b, "a"), Status::Healthy);

    run_until(&script, 3.5).await;
    b.handle().insert(Backend::new("c".to_string())).unwrap();
    run_until(&script, 3.5).await;
    assert_eq!(status(&b, "c"), Status::Down);
    assert_eq!(script.probes_of("c"), secs(&[3.5]));
    run_until(&script, 4.5).await;
    assert_eq!(status(&b, "c"), Status::Healthy);
}

#[tokio::test(start_paused = true)]
async fn new_endpoints_start_healthy_by_default_and_are_probed() {
    let b = balance(&["a"]);
    let script = Script::new();
    script.set("c", false);
    let _prober = Prober::new(script.probe()).jitter(0.0).spawn(&b).unwrap();
    run_until(&script, 1.0).await;
    b.handle().insert(Backend::new("c".to_string())).unwrap();
    run_until(&script, 1.0).await;
    assert_eq!(status(&b, "c"), Status::Healthy);
    // Probed at 1 s, 2 s, 3 s: down at the third failure.
    run_until(&script, 3.0).await;
    assert_eq!(status(&b, "c"), Status::Down);
    // Removed endpoints are no longer probed.
    assert!(b.handle().remove(&"c".to_string()));
    let before = script.probes_of("c").len();
    run_until(&script, 10.0).await;
    assert_eq!(script.probes_of("c").len(), before);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_probing_and_marks_endpoints_up() {
    let b = balance(&["a", "b"]);
    let script = Script::new();
    script.set("b", false);
    let prober = Prober::new(script.probe())
        .fall(1)
        .jitter(0.0)
        .spawn(&b)
        .unwrap();
    run_until(&script, 0.0).await;
    assert_eq!(status(&b, "b"), Status::Down);
    assert!(!prober.is_finished());
    drop(prober);
    run_until(&script, 0.0).await;
    assert_eq!(status(&b, "b"), Status::Healthy);
    let before = script.log.lock().unwrap().len();
    run_until(&script, 20.0).await;
    assert_eq!(script.log.lock().unwrap().len(), before);
}

#[tokio::test(start_paused = true)]
async fn the_prober_stops_with_the_balancer() {
    let b = balance(&["a"]);
    let script = Script::new();
    let prober = Prober::new(script.probe()).spawn(&b).unwrap();
    run_until(&script, 0.0).await;
    drop(b);
    run_until(&script, 5.0).await;
    assert!(prober.is_finished());
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_probes_within_its_bounds() {
    let b = balance(&["a"]);
    let script = Script::new();
    let _prober = Prober::new(script.probe())
        .interval(Duration::from_secs(2))
        .jitter(0.25)
        .seed(7)
        .spawn(&b)
        .unwrap();
    run_until(&script, 60.0).await;
    let times = script.probes_of("a");
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    assert!(gaps.len() >= 20);
    assert!(gaps.iter().all(|g| (1.5..=2.5).contains(g)), "{gaps:?}");
    assert!(
        gaps.iter().any(|g| (g - 2.0).abs() > 0.01),
        "jitter applied"
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_settings_are_typed_errors() {
    let b = balance(&["a"]);
    let probe = Script::new().probe();
    for (prober, setting) in [
        (Prober::new(probe.clone()).rise(0), "rise"),
        (Prober::new(probe.clone()).fall(0), "fall"),
        (
            Prober::new(probe.clone()).interval(Duration::ZERO),
            "interval",
        ),
        (
            Prober::new(probe.clone()).timeout(Duration::ZERO),
            "timeout",
        ),
        (Prober::new(probe.clone()).jitter(0.9), "jitter"),
    ] {
        match prober.spawn(&b) {
            Err(ConfigError::Invalid { setting: s, .. }) => assert_eq!(s, setting),
            other => panic!("{setting}: {other:?}"),
        }
    }
}

#[cfg(feature = "health-passive")]
#[tokio::test(start_paused = true)]
async fn active_and_passive_share_one_state() {
    use crate::health::{
        passive::PassiveHealthLayer,
        testing::{Outcome, Rig},
    };
    let rig = Rig::new(
        Balance::builder()
            .panic_threshold(0.3)
            .backends(["a", "b", "c"].map(Backend::new)),
        PassiveHealthLayer::new,
    );
    let probe = tower::service_fn(|key: &'static str| async move {
        if key == "c" {
            Err::<(), BoxError>("down".into())
        } else {
            Ok(())
        }
    });
    let _prober = Prober::new(probe)
        .fall(1)
        .jitter(0.0)
        .spawn(&rig.balance)
        .unwrap();
    rig.set("b", Outcome::Status(503));
    rig.send_to("b").await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let stats = rig.balance.stats();
    assert!(matches!(stats.backends[1].status, Status::Ejected { .. }));
    assert_eq!(stats.backends[2].status, Status::Down);
    assert_eq!(stats.available, 1);
    assert_eq!(stats.tier, crate::balance::Tier::Primary);
    for _ in 0..3 {
        assert_eq!(rig.send().await.unwrap().0, "a");
    }
}
