//! Outlier detection against real servers on 127.0.0.1: four axum backends that answer
//! 200 in 10 ms and one that answers 500 at once (axum behind peak-EWMA P2C, or a FastAPI
//! app on uvicorn behind round robin), through `http::HttpEndpoints`.
//!
//! Run with `cargo test --features health --test main outlier:: -- --nocapture` to see the
//! figures (requests and failures before the ejection, time to eject).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use axum::{http::StatusCode, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::{
    balance::{
        strategy::{P2c, RoundRobin, Strategy},
        MakeEndpoint, Status, Target,
    },
    health::passive::{FailureStatuses, OutlierDetection, PassiveHealthLayer, SuccessRate, Window},
    http::HttpEndpoints,
    Backend, Balance,
};

use crate::support::{self, TestServer};

/// A backend that answers `status` after `delay`.
async fn backend(status: StatusCode, delay: Duration) -> TestServer {
    TestServer::start(Router::new().fallback(move || async move {
        tokio::time::sleep(delay).await;
        (status, "")
    }))
    .await
}

/// Sends load over `good` and `bad` until the detector ejects `bad`; then checks that
/// the clients see no more failures.
async fn ejects(good: &[SocketAddr], bad: SocketAddr, strategy: impl Strategy) {
    let endpoints = HttpEndpoints::<Empty<Bytes>>::new();
    let keys: Vec<String> = good.iter().chain([&bad]).map(|a| a.to_string()).collect();
    let balance = Balance::builder()
        .strategy(strategy)
        .backends(keys.iter().cloned().map(Backend::new))
        .build(move |t: &Target<'_, String>| {
            let endpoint = endpoints.make_endpoint(t).expect("valid backend address");
            ServiceBuilder::new()
                // Every 5xx is a failure; the layer's own policy never ejects.
                .layer(
                    PassiveHealthLayer::new(t)
                        .policy(Window::new().max_fails(0))
                        .classifier(FailureStatuses::new().server_errors(true)),
                )
                .service(endpoint)
        })
        .unwrap();
    let _detector = OutlierDetection::new()
        .interval(Duration::from_millis(500))
        .success_rate(SuccessRate::new().request_volume(10))
        .spawn(&balance)
        .unwrap();
    let bad_key = bad.to_string();
    let stats_of_bad = |b: &Balance<String, _, _>| {
        b.stats()
            .backends
            .into_iter()
            .find(|s| s.key == bad_key)
            .unwrap()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (balance, stop, sent, failed) =
            (balance.clone(), stop.clone(), sent.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let req = http::Request::get("/").body(Empty::new()).unwrap();
                let rsp = balance.clone().oneshot(req).await.unwrap();
                let status = rsp.status();
                rsp.into_body().collect().await.unwrap();
                sent.fetch_add(1, Relaxed);
                if status.is_server_error() {
                    failed.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    let t0 = tokio::time::Instant::now();
    assert!(
        support::eventually(20, || matches!(
            stats_of_bad(&balance).status,
            Status::Ejected { .. }
        ))
        .await,
        "the fast 500 backend was never ejected"
    );
    let took = t0.elapsed();
    let (sent_before, failed_before) = (sent.load(Relaxed), failed.load(Relaxed));
    let bad_before = stats_of_bad(&balance);
    assert!(bad_before.failures > 0 && bad_before.ejections == 1);

    // Ejected for 30 s: more load, and (but for requests in flight at the ejection) no
    // failure and no request to the bad backend.
    assert!(
        support::eventually(20, || sent.load(Relaxed) >= sent_before + 300).await,
        "the load went on"
    );
    stop.store(true, Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let bad_after = stats_of_bad(&balance);
    assert!(matches!(bad_after.status, Status::Ejected { .. }));
    assert!(bad_after.requests <= bad_before.requests + 8);
    assert!(failed.load(Relaxed) <= failed_before + 8);
    eprintln!(
        "ejected after {took:?}: {failed_before} of {sent_before} requests failed before, \
         {} of {} after",
        failed.load(Relaxed) - failed_before,
        sent.load(Relaxed) - sent_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_rate_ejects_a_fast_500_backend_among_five_axum_backends() {
    let mut good = Vec::new();
    for _ in 0..4 {
        good.push(backend(StatusCode::OK, Duration::from_millis(10)).await);
    }
    let bad = backend(StatusCode::INTERNAL_SERVER_ERROR, Duration::ZERO).await;
    let addrs: Vec<SocketAddr> = good.iter().map(|s| s.addr).collect();
    ejects(&addrs, bad.addr, P2c::new().peak_ewma()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_rate_ejects_a_fast_500_fastapi_backend() {
    if !support::have_python(&["fastapi", "uvicorn"]) {
        return;
    }
    let mut good = Vec::new();
    for _ in 0..4 {
        good.push(backend(StatusCode::OK, Duration::from_millis(10)).await);
    }
    let bad = support::python_peer("model_app.py", &["500"]).await;
    let addrs: Vec<SocketAddr> = good.iter().map(|s| s.addr).collect();
    // Round robin: the interpreter's first answers are slow, and peak EWMA would keep
    // it under the request volume for seconds; here only the verdicts are the point.
    ejects(&addrs, bad.addr(), RoundRobin::new()).await;
}
