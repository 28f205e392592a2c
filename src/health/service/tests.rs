//! The registry and the HTTP service on paused time.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use ::http::{Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::time::{sleep, Instant};
use tower::{Service, ServiceExt};

use super::*;
use crate::error::ConfigError;

/// A check that counts its calls and fails while `fail` is set.
fn counted(name: &str, calls: &Arc<AtomicUsize>, fail: &Arc<AtomicBool>) -> Check {
    let (calls, fail) = (calls.clone(), fail.clone());
    Check::new(name, move || {
        calls.fetch_add(1, SeqCst);
        let fail = fail.load(SeqCst);
        async move {
            if fail {
                Err("connection refused")
            } else {
                Ok(())
            }
        }
    })
}

async fn get(svc: &HealthService) -> (StatusCode, serde_json::Value) {
    let rsp = svc
        .clone()
        .oneshot(
            Request::get("/health")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.headers()["content-type"], "application/json");
    let status = rsp.status();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test(start_paused = true)]
async fn healthy_is_200_and_a_failing_check_is_503_with_its_error() {
    let (calls, fail) = (Arc::default(), Arc::default());
    let checks = HealthChecks::builder()
        .check(counted("database", &calls, &fail))
        .check(Check::new("disk", || async {
            sleep(Duration::from_millis(20)).await;
            Ok::<_, String>(())
        }))
        .cache_for(Duration::ZERO)
        .build()
        .unwrap();
    let svc = checks.readiness();
    let (status, body) = get(&svc).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({
            "status": "healthy",
            "checks": {
                "database": {"status": "healthy", "duration_ms": 0.0},
                "disk": {"status": "healthy", "duration_ms": 20.0},
            }
        })
    );
    fail.store(true, SeqCst);
    let (status, body) = get(&svc).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["checks"]["database"]["status"], "unhealthy");
    assert_eq!(body["checks"]["database"]["error"], "connection refused");
    assert_eq!(body["checks"]["disk"]["status"], "healthy");
    assert!(body["checks"]["disk"].get("error").is_none());
}

#[tokio::test(start_paused = true)]
async fn results_are_cached_for_the_interval() {
    let (calls, fail) = (Arc::<AtomicUsize>::default(), Arc::default());
    let checks = HealthChecks::builder()
        .check(counted("database", &calls, &fail))
        .cache_for(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(checks.report(Probe::Readiness).await.is_healthy());
    fail.store(true, SeqCst);
    // Within the interval: the cached verdict, no new run.
    for _ in 0..10 {
        sleep(Duration::from_millis(400)).await;
        assert!(checks.report(Probe::Readiness).await.is_healthy());
        assert!(checks.report(Probe::Liveness).await.is_healthy());
    }
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(checks.runs(), 1);
    // 5 s after the run: a new one sees the failure.
    sleep(Duration::from_secs(1)).await;
    let report = checks.report(Probe::Readiness).await;
    assert_eq!(report.status(), Status::Unhealthy);
    assert_eq!(report.checks()[0].error(), Some("connection refused"));
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_check_that_hangs_times_out_alone() {
    let checks = HealthChecks::builder()
        .check(
            Check::new("hangs", std::future::pending::<Result<(), String>>)
                .timeout(Duration::from_millis(300)),
        )
        .check(Check::new("fast", || async { Ok::<_, String>(()) }))
        .build()
        .unwrap();
    let start = Instant::now();
    let report = checks.report(Probe::Readiness).await;
    // The run lasts the hanging check's timeout, not forever.
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(report.status(), Status::Unhealthy);
    let hangs = &report.checks()[0];
    assert_eq!(hangs.name(), "hangs");
    assert_eq!(hangs.error(), Some("timed out after 300ms"));
    assert_eq!(hangs.duration(), Duration::from_millis(300));
    assert!(report.checks()[1].passed());
}

#[tokio::test(start_paused = true)]
async fn a_panicking_check_fails_without_panicking_the_caller() {
    let checks = HealthChecks::builder()
        .check(Check::new("boom", || async {
            if true {
                panic!("disk on fire");
            }
            Ok::<_, String>(())
        }))
        .check(Check::new(
            "sync boom",
            || -> std::future::Ready<Result<(), String>> { panic!("before the future") },
        ))
        .build()
        .unwrap();
    let (status, body) = get(&checks.readiness()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["boom"]["error"], "panicked: disk on fire");
    assert_eq!(
        body["checks"]["sync boom"]["error"],
        "panicked: before the future"
    );
    // And the registry still works afterwards.
    sleep(Duration::from_secs(2)).await;
    assert_eq!(checks.report(Probe::Readiness).await.checks().len(), 2);
    assert_eq!(checks.runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_share_one_run() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let checks = HealthChecks::builder()
        .check(Check::new("slow", move || {
            c.fetch_add(1, SeqCst);
            async {
                sleep(Duration::from_millis(200)).await;
                Ok::<_, String>(())
            }
        }))
        .cache_for(Duration::ZERO)
        .build()
        .unwrap();
    let svc = checks.readiness();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let svc = svc.clone();
        set.spawn(async move { get(&svc).await.0 });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(checks.runs(), 1);
    // With no cache, the next request after the run starts a new one.
    get(&svc).await;
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_does_not_cancel_the_run() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let checks = HealthChecks::builder()
        .check(Check::new("slow", move || {
            c.fetch_add(1, SeqCst);
            async {
                sleep(Duration::from_millis(500)).await;
                Ok::<_, String>(())
            }
        }))
        .cache_for(Duration::from_secs(10))
        .build()
        .unwrap();
    let gave_up = tokio::time::timeout(Duration::from_millis(100), checks.report(Probe::Readiness));
    assert!(gave_up.await.is_err());
    sleep(Duration::from_millis(450)).await;
    // The run finished on its own and is cached: no second call.
    let start = Instant::now();
    assert!(checks.report(Probe::Readiness).await.is_healthy());
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(calls.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn liveness_counts_only_its_checks() {
    let (db_calls, db_fail) = (Arc::default(), Arc::<AtomicBool>::default());
    let (heap_calls, heap_fail) = (Arc::default(), Arc::<AtomicBool>::default());
    let checks = HealthChecks::builder()
        .check(counted("database", &db_calls, &db_fail).liveness(false))
        .check(counted("heap", &heap_calls, &heap_fail))
        .cache_for(Duration::ZERO)
        .build()
        .unwrap();
    let (live, ready) = (checks.liveness(), checks.readiness());
    assert_eq!(live.probe(), Probe::Liveness);
    db_fail.store(true, SeqCst);
    let (status, body) = get(&live).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy");
    assert!(body["checks"].get("database").is_none());
    assert_eq!(body["checks"]["heap"]["status"], "healthy");
    let (status, body) = get(&ready).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["database"]["status"], "unhealthy");
    // A failing liveness check fails both.
    db_fail.store(false, SeqCst);
    heap_fail.store(true, SeqCst);
    assert_eq!(get(&live).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(&ready).await.0, StatusCode::SERVICE_UNAVAILABLE);

    // With no liveness checks, liveness runs nothing and passes.
    let (calls, fail) = (
        Arc::<AtomicUsize>::default(),
        Arc::new(AtomicBool::new(true)),
    );
    let only_ready = HealthChecks::builder()
        .check(counted("database", &calls, &fail).liveness(false))
        .build()
        .unwrap();
    let report = only_ready.report(Probe::Liveness).await;
    assert!(report.is_healthy() && report.checks().is_empty());
    assert_eq!(calls.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn drain_fails_readiness_at_once_but_not_liveness() {
    let (calls, fail) = (Arc::<AtomicUsize>::default(), Arc::default());
    let checks = HealthChecks::builder()
        .check(counted("database", &calls, &fail))
        .cache_for(Duration::from_secs(60))
        .build()
        .unwrap();
    let ready = checks.readiness();
    assert_eq!(get(&ready).await.0, StatusCode::OK);
    let drain = checks.drain_handle();
    assert!(!drain.is_draining());
    drain.drain();
    assert!(drain.is_draining() && checks.is_draining());
    // Despite a fresh cached healthy run.
    let (status, body) = get(&ready).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        serde_json::json!({"status": "draining", "checks": {}})
    );
    let (status, body) = get(&checks.liveness()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy");
    assert_eq!(calls.load(SeqCst), 1);
    drain.drain();
    assert_eq!(
        checks.report(Probe::Readiness).await.status(),
        Status::Draining
    );
}

#[tokio::test(start_paused = true)]
async fn other_methods_get_405_and_head_no_body() {
    let checks = HealthChecks::builder().build().unwrap();
    let mut svc = checks.readiness();
    let rsp = svc
        .call(Request::post("/health").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(rsp.headers()["allow"], "GET, HEAD");
    let rsp = svc
        .call(Request::head("/health").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(
        rsp.headers()["content-length"],
        r#"{"checks":{},"status":"healthy"}"#.len().to_string()
    );
    assert!(rsp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
}

#[test]
fn bad_configuration_is_a_typed_error() {
    let ok = || async { Ok::<_, String>(()) };
    let invalid = |b: Builder| match b.build() {
        Err(ConfigError::Invalid { setting, reason }) => format!("{setting}: {reason}"),
        other => panic!("expected an invalid setting, got {other:?}"),
    };
    let dup = HealthChecks::builder()
        .check(Check::new("db", ok))
        .check(Check::new("db", ok));
    assert_eq!(
        invalid(dup),
        "health check name: \"db\" is used by two checks"
    );
    let empty = HealthChecks::builder().check(Check::new("", ok));
    assert!(invalid(empty).contains("needs a name"));
    let zero = HealthChecks::builder().check(Check::new("db", ok).timeout(Duration::ZERO));
    assert!(invalid(zero).contains("above zero"));
}

#[cfg(feature = "grpc")]
#[tokio::test(start_paused = true)]
async fn grpc_statuses_follow_the_checks_and_drain_at_once() {
    use tonic_health::pb::{
        health_check_response::ServingStatus as Pb, health_server::Health, HealthCheckRequest,
    };

    let (calls, fail) = (Arc::<AtomicUsize>::default(), Arc::<AtomicBool>::default());
    let checks = HealthChecks::builder()
        .check(counted("database", &calls, &fail).liveness(false))
        .cache_for(Duration::ZERO)
        .build()
        .unwrap();
    let (reporter, _server) = tonic_health::server::health_reporter();
    let service = Arc::new(tonic_health::server::HealthService::from_health_reporter(
        reporter.clone(),
    ));
    let status = |name: &'static str| {
        let service = service.clone();
        async move {
            let req = tonic::Request::new(HealthCheckRequest {
                service: name.into(),
            });
            service.check(req).await.map(|r| r.into_inner().status).ok()
        }
    };
    assert!(GrpcReporter::new(&checks, reporter.clone())
        .interval(Duration::ZERO)
        .spawn()
        .is_err());
    let _guard = GrpcReporter::new(&checks, reporter)
        .service("liveness", Probe::Liveness)
        .interval(Duration::from_secs(1))
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(10)).await;
    assert_eq!(status("").await, Some(Pb::Serving as i32));
    assert_eq!(status("liveness").await, Some(Pb::Serving as i32));
    fail.store(true, SeqCst);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(status("").await, Some(Pb::NotServing as i32));
    // The liveness name has no checks that fail.
    assert_eq!(status("liveness").await, Some(Pb::Serving as i32));
    fail.store(false, SeqCst);
    sleep(Duration::from_secs(1)).await;
    assert_eq!(status("").await, Some(Pb::Serving as i32));
    // Draining: NOT_SERVING before the next interval.
    checks.drain_handle().drain();
    sleep(Duration::from_millis(10)).await;
    assert_eq!(status("").await, Some(Pb::NotServing as i32));
    assert_eq!(status("liveness").await, Some(Pb::Serving as i32));
}
