//! Outlier detection on paused time, over the scripted rig and over timed model backends
//! behind peak-EWMA P2C.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use http::{Request, Response, StatusCode};
use tokio::time::sleep;
use tower::{service_fn, ServiceBuilder, ServiceExt};

use super::{FailurePercentage, OutlierDetection, SuccessRate};
use crate::{
    balance::{strategy::P2c, Status, Target},
    error::ConfigError,
    health::{
        passive::{Consecutive, PassiveHealthLayer, Window},
        testing::{Outcome, Rig},
    },
    Backend, Balance,
};

const NAMES: [&str; 10] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
const INTERVAL: Duration = Duration::from_secs(10);
const MS: Duration = Duration::from_millis(1);

/// `n` scripted backends whose passive layer classifies but never ejects by itself.
fn rig(n: usize) -> Rig {
    rig_with(n, |t| {
        PassiveHealthLayer::new(t).policy(Window::new().max_fails(0))
    })
}

fn rig_with(
    n: usize,
    layer: impl Fn(&Target<'_, &'static str>) -> PassiveHealthLayer + Send + Sync + 'static,
) -> Rig {
    Rig::new(
        Balance::builder().backends(NAMES[..n].iter().copied().map(Backend::new)),
        layer,
    )
}

/// Sends `rounds` requests to every backend that is a candidate, in rotation.
async fn rounds(rig: &Rig, rounds: usize) {
    let n = rig.balance.stats().available;
    for _ in 0..rounds * n {
        rig.send().await.unwrap();
    }
}

/// `rounds` rounds in which `bad` fails the first `failing` of them (503).
async fn traffic(rig: &Rig, bad: &'static str, rounds_total: usize, failing: usize) {
    rig.set(bad, Outcome::Status(503));
    rounds(rig, failing).await;
    rig.set(bad, Outcome::Status(200));
    rounds(rig, rounds_total - failing).await;
}

/// Sleeps to just after the detector's next evaluation (they fall on whole intervals
/// from the spawn, and every test starts right after one or at the spawn).
async fn next_evaluation() {
    sleep(INTERVAL).await;
}

fn ejected(rig: &Rig) -> Vec<String> {
    rig.balance
        .stats()
        .backends
        .into_iter()
        .filter(|b| matches!(b.status, Status::Ejected { .. }))
        .map(|b| b.key.to_owned())
        .collect()
}

fn remaining(rig: &Rig, key: &'static str) -> Duration {
    match rig.status(key) {
        Status::Ejected { remaining } => remaining,
        other => panic!("{key} is {other:?}, not ejected"),
    }
}

/// Spawns `detector` a millisecond before an interval starts, so each `next_evaluation`
/// lands just after the detector's evaluation.
async fn spawn(rig: &Rig, detector: OutlierDetection) -> crate::Guard {
    let guard = detector.spawn(&rig.balance).unwrap();
    sleep(MS).await;
    guard
}

#[tokio::test(start_paused = true)]
async fn success_rate_ejects_the_outlier_among_five() {
    let rig = rig(5);
    let _detector = spawn(&rig, OutlierDetection::new()).await;
    // e succeeds 70 % of 100 requests, the others 100 %: z = 2 > 1.9.
    traffic(&rig, "e", 100, 30).await;
    next_evaluation().await;
    assert_eq!(ejected(&rig), ["e"]);
    let stats = rig.balance.stats();
    let e = stats.backends.iter().find(|b| b.key == "e").unwrap();
    assert_eq!((e.ejections, e.failures), (1, 30));
    assert_eq!(stats.available, 4);
    // Base ejection time × 1, seen 1 ms after the evaluation.
    assert_eq!(remaining(&rig, "e"), Duration::from_secs(30) - MS);
}

#[tokio::test(start_paused = true)]
async fn success_rate_needs_minimum_hosts() {
    let rig = rig(5);
    let _detector = spawn(
        &rig,
        OutlierDetection::new().success_rate(SuccessRate::new().minimum_hosts(6)),
    )
    .await;
    traffic(&rig, "e", 100, 30).await;
    next_evaluation().await;
    assert!(ejected(&rig).is_empty());
}

#[tokio::test(start_paused = true)]
async fn success_rate_needs_request_volume() {
    let rig = rig(5);
    let _detector = spawn(&rig, OutlierDetection::new()).await;
    // 99 requests each: under the default request_volume 100, nobody qualifies.
    traffic(&rig, "e", 99, 40).await;
    next_evaluation().await;
    assert!(ejected(&rig).is_empty());
    // The counts start again each interval: another 99 are still too few.
    traffic(&rig, "e", 99, 40).await;
    next_evaluation().await;
    assert!(ejected(&rig).is_empty());
    // With request_volume 99 the same traffic ejects (the control).
    drop(_detector);
    let _detector = spawn(
        &rig,
        OutlierDetection::new().success_rate(SuccessRate::new().request_volume(99)),
    )
    .await;
    traffic(&rig, "e", 99, 40).await;
    next_evaluation().await;
    assert_eq!(ejected(&rig), ["e"]);
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_ejects_at_or_above_the_threshold() {
    let rig = rig(6);
    let detector = OutlierDetection::new()
        .success_rate(None)
        .failure_percentage(FailurePercentage::new().request_volume(20));
    let _detector = spawn(&rig, detector).await;
    // e fails 17 of 20 (85 %: at the threshold), f 16 of 20 (80 %).
    rig.set("e", Outcome::Status(503));
    rig.set("f", Outcome::Status(503));
    rounds(&rig, 16).await;
    rig.set("f", Outcome::Status(200));
    rounds(&rig, 1).await;
    rig.set("e", Outcome::Status(200));
    rounds(&rig, 3).await;
    next_evaluation().await;
    assert_eq!(ejected(&rig), ["e"]);
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_needs_minimum_hosts() {
    for (hosts, want) in [(4, vec![]), (5, vec!["e".to_owned()])] {
        let rig = rig(hosts);
        let detector = OutlierDetection::new()
            .success_rate(None)
            .failure_percentage(FailurePercentage::new());
        let _detector = spawn(&rig, detector).await;
        // The last host fails everything, 50 requests each.
        let bad = NAMES[hosts - 1];
        rig.set(bad, Outcome::Status(503));
        rounds(&rig, 50).await;
        next_evaluation().await;
        let want: Vec<String> = want.iter().map(|_| bad.to_owned()).collect();
        assert_eq!(ejected(&rig), want, "{hosts} hosts");
    }
}

/// One cycle: an interval of traffic in which `e` is an outlier, the evaluation, then
/// `e` readmitted by a probation trial once the ejection ended. Returns the ejection
/// time (as seen 1 ms after the evaluation, plus that 1 ms).
async fn eject_and_readmit(rig: &Rig) -> Duration {
    traffic(rig, "e", 100, 30).await;
    next_evaluation().await;
    let time = remaining(rig, "e") + MS;
    // Whole intervals, so the next cycle starts right after an evaluation again.
    let wait = time.as_secs().div_ceil(INTERVAL.as_secs()) as u32;
    sleep(INTERVAL * wait).await;
    assert_eq!(rig.status("e"), Status::Probation);
    assert_eq!(rig.send_to("e").await.unwrap().0, "e");
    assert_eq!(rig.status("e"), Status::Healthy);
    rig.aim("none");
    time
}

#[tokio::test(start_paused = true)]
async fn ejection_time_grows_with_times_ejected_and_is_capped() {
    let rig = rig(5);
    let detector = OutlierDetection::new()
        .base_ejection_time(Duration::from_secs(10))
        .max_ejection_time(Duration::from_secs(25));
    let _detector = spawn(&rig, detector).await;
    let mut times = Vec::new();
    for _ in 0..5 {
        times.push(eject_and_readmit(&rig).await.as_secs());
    }
    assert_eq!(times, [10, 20, 25, 25, 25]);
    assert_eq!(rig.balance.stats().backends[4].ejections, 5);
}

#[tokio::test(start_paused = true)]
async fn times_ejected_decreases_after_each_clean_interval() {
    let rig = rig(5);
    let detector = OutlierDetection::new()
        .base_ejection_time(Duration::from_secs(10))
        .max_ejection_time(Duration::from_secs(100));
    let _detector = spawn(&rig, detector).await;
    for want in [10, 20, 30] {
        assert_eq!(eject_and_readmit(&rig).await.as_secs(), want);
    }
    // The interval after the readmission started while e was out: not clean. The two
    // after it are: times ejected 3 → 1, so the next ejection is 2 × 10 s.
    for _ in 0..3 {
        rounds(&rig, 10).await;
        next_evaluation().await;
    }
    assert_eq!(eject_and_readmit(&rig).await.as_secs(), 20);
    // Many clean intervals: back to the base.
    for _ in 0..6 {
        next_evaluation().await;
    }
    assert_eq!(eject_and_readmit(&rig).await.as_secs(), 10);
}

#[tokio::test(start_paused = true)]
async fn max_ejection_share_is_respected() {
    let rig = rig(10);
    let detector = OutlierDetection::new()
        .success_rate(None)
        .failure_percentage(FailurePercentage::new())
        .max_ejection_share(0.2);
    let _detector = spawn(&rig, detector).await;
    for bad in ["h", "i", "j"] {
        rig.set(bad, Outcome::Status(503));
    }
    rounds(&rig, 50).await;
    next_evaluation().await;
    // Three are over the threshold; 20 % of ten may be out.
    let out = ejected(&rig);
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out.iter().all(|k| ["h", "i", "j"].contains(&k.as_str())));
    assert_eq!(rig.balance.stats().available, 8);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_judged_before_the_detector_started() {
    let rig = rig(5);
    traffic(&rig, "e", 100, 30).await;
    let _detector = spawn(&rig, OutlierDetection::new()).await;
    next_evaluation().await;
    assert!(ejected(&rig).is_empty());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_guard_stops_the_detector() {
    let rig = rig(5);
    let detector = spawn(&rig, OutlierDetection::new()).await;
    traffic(&rig, "e", 100, 30).await;
    drop(detector);
    next_evaluation().await;
    assert!(ejected(&rig).is_empty());
}

#[tokio::test(start_paused = true)]
async fn bad_settings_are_typed_errors() {
    let rig = rig(5);
    let cases = [
        (
            OutlierDetection::new().interval(Duration::ZERO),
            "outlier interval",
        ),
        (
            OutlierDetection::new().base_ejection_time(Duration::ZERO),
            "base_ejection_time",
        ),
        (
            OutlierDetection::new().max_ejection_time(Duration::from_secs(1)),
            "max_ejection_time",
        ),
        (
            OutlierDetection::new().success_rate(None),
            "outlier detection",
        ),
        (
            OutlierDetection::new().success_rate(SuccessRate::new().stdev_factor(f64::NAN)),
            "stdev_factor",
        ),
        (
            OutlierDetection::new().success_rate(SuccessRate::new().enforcing(1.5)),
            "enforcing",
        ),
        (
            OutlierDetection::new().failure_percentage(FailurePercentage::new().threshold(85.0)),
            "threshold",
        ),
    ];
    for (detector, name) in cases {
        match detector.spawn(&rig.balance) {
            Err(ConfigError::Invalid { setting, .. }) => assert_eq!(setting, name),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn enforcing_zero_finds_but_never_ejects() {
    let rig = rig(5);
    let detector = OutlierDetection::new()
        .success_rate(SuccessRate::new().enforcing(0.0))
        .seed(1);
    let _detector = spawn(&rig, detector).await;
    traffic(&rig, "e", 100, 30).await;
    next_evaluation().await;
    assert!(ejected(&rig).is_empty());
}

#[cfg(feature = "health-active")]
mod probe {
    use super::*;
    use crate::{health::active::Prober, BoxError};

    fn passing() -> impl tower::Service<
        &'static str,
        Response = (),
        Error = BoxError,
        Future = std::future::Ready<Result<(), BoxError>>,
    > + Clone {
        service_fn(|_key: &'static str| std::future::ready(Ok::<_, BoxError>(())))
    }

    #[tokio::test(start_paused = true)]
    async fn a_passing_probe_readmits_an_outlier() {
        let rig = rig(5);
        let _detector = spawn(&rig, OutlierDetection::new()).await;
        traffic(&rig, "e", 100, 30).await;
        next_evaluation().await;
        assert_eq!(ejected(&rig), ["e"]);
        let _prober = Prober::new(passing())
            .jitter(0.0)
            .spawn(&rig.balance)
            .unwrap();
        sleep(MS).await;
        assert_eq!(rig.status("e"), Status::Healthy);
    }

    #[tokio::test(start_paused = true)]
    async fn readmit_on_probe_off_keeps_the_ejection() {
        let rig = rig(5);
        let _detector = spawn(&rig, OutlierDetection::new().readmit_on_probe(false)).await;
        traffic(&rig, "e", 100, 30).await;
        next_evaluation().await;
        let _prober = Prober::new(passing())
            .jitter(0.0)
            .spawn(&rig.balance)
            .unwrap();
        sleep(Duration::from_secs(5)).await;
        assert_eq!(ejected(&rig), ["e"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_passing_probe_leaves_other_ejections_alone() {
        // nginx-style passive ejection (1 failure), no outlier ejection to end.
        let rig = rig_with(5, PassiveHealthLayer::new);
        let _detector = spawn(&rig, OutlierDetection::new()).await;
        rig.set("e", Outcome::Status(503));
        rig.send_to("e").await.unwrap();
        assert_eq!(ejected(&rig), ["e"]);
        let _prober = Prober::new(passing())
            .jitter(0.0)
            .spawn(&rig.balance)
            .unwrap();
        sleep(Duration::from_secs(5)).await;
        assert_eq!(ejected(&rig), ["e"]);
    }
}

// === a fast-but-wrong backend behind peak-EWMA P2C ===

/// What the model run saw.
#[derive(Debug)]
struct Run {
    requests: u64,
    failed: u64,
    bad_share: f64,
    bad_ejections: u64,
}

/// Five model backends behind peak-EWMA P2C, each with passive health on Envoy's
/// `consecutive_5xx` (5): four answer in 20 ms; "e" answers in 1 ms and fails 3 requests
/// in 10 (503), never 5 in a row. `clients` clients send back to back for `secs`
/// simulated seconds.
async fn fast_but_wrong(detector: Option<OutlierDetection>, clients: usize, secs: u64) -> Run {
    let balance = Balance::builder()
        .strategy(P2c::with_seed(7).peak_ewma())
        .backends(NAMES[..5].iter().copied().map(Backend::new))
        .build(|t: &Target<'_, &'static str>| {
            let name = *t.key();
            let n = Arc::new(AtomicU64::new(0));
            ServiceBuilder::new()
                .layer(PassiveHealthLayer::new(t).policy(Consecutive::new()))
                .service(service_fn(move |_req: Request<()>| {
                    let i = n.fetch_add(1, Relaxed);
                    async move {
                        let (delay, fail) = if name == "e" {
                            (1, i % 10 < 3)
                        } else {
                            (20, false)
                        };
                        sleep(Duration::from_millis(delay)).await;
                        let mut rsp = Response::new(String::new());
                        if fail {
                            *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(rsp)
                    }
                }))
        })
        .unwrap();
    let _guard = detector.map(|d| d.spawn(&balance).unwrap());
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let failed = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let client = || async {
        while tokio::time::Instant::now() < end {
            let rsp = balance.clone().oneshot(Request::new(())).await.unwrap();
            sent.fetch_add(1, Relaxed);
            if rsp.status().is_server_error() {
                failed.fetch_add(1, Relaxed);
            }
        }
    };
    futures_util::future::join_all((0..clients).map(|_| client())).await;
    let stats = balance.stats();
    let e = stats.backends.iter().find(|b| b.key == "e").unwrap();
    let total: u64 = stats.backends.iter().map(|b| b.requests).sum();
    Run {
        requests: sent.load(Relaxed),
        failed: failed.load(Relaxed),
        bad_share: e.requests as f64 / total as f64,
        bad_ejections: e.ejections,
    }
}

#[tokio::test(start_paused = true)]
async fn a_fast_but_wrong_backend_is_favoured_by_p2c_and_ejected_by_outlier_detection() {
    let alone = fast_but_wrong(None, 8, 60).await;
    // Peak EWMA alone: e wins every draw it is in (2 of 5), and Envoy's consecutive_5xx
    // never sees five failures in a row.
    assert!(alone.bad_share > 0.35, "{alone:?}");
    assert_eq!(alone.bad_ejections, 0, "{alone:?}");
    assert!(
        alone.failed as f64 > 0.1 * alone.requests as f64,
        "{alone:?}"
    );

    let detected = fast_but_wrong(Some(OutlierDetection::new()), 8, 60).await;
    assert!(detected.bad_ejections >= 1, "{detected:?}");
    assert!(
        detected.bad_share < alone.bad_share / 2.0,
        "{detected:?} vs {alone:?}"
    );
    assert!(
        (detected.failed as f64) < alone.failed as f64 / 2.0,
        "{detected:?} vs {alone:?}"
    );
}
