//! Outlier detection: one fast-but-wrong backend among five, on Tokio's paused clock.
//!
//! ```sh
//! cargo bench --bench outlier --features health-passive
//! ```
//!
//! A real `Balance` (peak-EWMA P2C, seeded) over five model backends, each behind
//! passive health with Envoy's `consecutive_5xx` (5): four answer 200 in 20 ms; one
//! answers in 1 ms and fails 3 requests in 10 with a 503, never 5 in a row. 32 clients
//! send back to back for one simulated minute. Time is Tokio's paused clock, so the run
//! is exact and the same on every machine (it measures what clients see, not speed).
//! Prints one row per setup: requests, those that failed, the bad backend's share of the
//! requests and its ejections.

#![allow(missing_docs)]

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use http::{Request, Response, StatusCode};
use tokio::time::{sleep, Instant};
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_lb::{
    balance::{strategy::P2c, Target},
    health::passive::{Consecutive, FailurePercentage, OutlierDetection, PassiveHealthLayer},
    Backend, Balance,
};

const CLIENTS: usize = 32;
const SECONDS: u64 = 60;

struct Row {
    requests: u64,
    failed: u64,
    bad_share: f64,
    bad_ejections: u64,
}

async fn run(detector: Option<OutlierDetection>) -> Row {
    let balance = Balance::builder()
        .strategy(P2c::with_seed(7).peak_ewma())
        .backends(["a", "b", "c", "d", "e"].map(Backend::new))
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
    let _guard = detector.map(|d| d.seed(1).spawn(&balance).unwrap());
    let end = Instant::now() + Duration::from_secs(SECONDS);
    let (sent, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let client = || async {
        while Instant::now() < end {
            let rsp = balance.clone().oneshot(Request::new(())).await.unwrap();
            sent.fetch_add(1, Relaxed);
            if rsp.status().is_server_error() {
                failed.fetch_add(1, Relaxed);
            }
        }
    };
    futures_util::future::join_all((0..CLIENTS).map(|_| client())).await;
    let stats = balance.stats();
    let e = stats.backends.iter().find(|b| b.key == "e").unwrap();
    let total: u64 = stats.backends.iter().map(|b| b.requests).sum();
    Row {
        requests: sent.load(Relaxed),
        failed: failed.load(Relaxed),
        bad_share: e.requests as f64 / total as f64,
        bad_ejections: e.ejections,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    println!(
        "one fast-but-wrong backend among five, {CLIENTS} clients, {SECONDS} s (paused clock)"
    );
    println!(
        "{:<52} {:>9} {:>8} {:>8} {:>10} {:>10}",
        "setup", "requests", "failed", "failed%", "bad share", "ejections"
    );
    let setups: [(&str, Option<OutlierDetection>); 3] = [
        (
            "P2C peak EWMA + consecutive_5xx, no outlier detection",
            None,
        ),
        (
            "  + outlier detection, success rate (defaults)",
            Some(OutlierDetection::new()),
        ),
        (
            "  + outlier detection, failure percentage (defaults)",
            Some(
                OutlierDetection::new()
                    .success_rate(None)
                    .failure_percentage(FailurePercentage::new()),
            ),
        ),
    ];
    for (name, detector) in setups {
        let row = rt.block_on(run(detector));
        println!(
            "{name:<52} {:>9} {:>8} {:>7.2}% {:>9.1}% {:>10}",
            row.requests,
            row.failed,
            100.0 * row.failed as f64 / row.requests as f64,
            100.0 * row.bad_share,
            row.bad_ejections
        );
    }
}
