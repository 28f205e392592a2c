//! `health::service` behind real servers on 127.0.0.1: probed by the crate's own prober
//! through a balancer, by `curl`, and (feature `grpc`) by a Python `grpcio` health client.
//!
//! Run with `cargo test --features health-service,grpc --test main health_service:: --
//! --nocapture` to see the measured figures (time from a failing check or a drain to the
//! backend marked down).

use std::{
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use axum::{routing::get, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_lb::{
    balance::{strategy::RoundRobin, Status},
    health::{
        active::{BodyMatch, HttpProbe, Prober},
        service::{Check, HealthChecks},
    },
    http::HttpEndpoints,
    Backend, Balance,
};

use crate::support::{have_command, wait_for, TestServer};

/// A backend's checks: `database` (readiness only) fails while `db_down` is set, `disk`
/// always passes. Cached for 50 ms.
fn checks(db_down: &Arc<AtomicBool>) -> HealthChecks {
    let down = db_down.clone();
    HealthChecks::builder()
        .check(
            Check::new("database", move || {
                let down = down.load(SeqCst);
                async move {
                    if down {
                        Err("database unreachable")
                    } else {
                        Ok(())
                    }
                }
            })
            .timeout(Duration::from_millis(500))
            .liveness(false),
        )
        .check(Check::new("disk", || async { Ok::<_, String>(()) }))
        .cache_for(Duration::from_millis(50))
        .build()
        .unwrap()
}

/// A router answering `/` with `name`, and the health endpoints.
fn app(name: &'static str, health: &HealthChecks) -> Router {
    Router::new()
        .route("/", get(move || async move { name }))
        .route_service("/health", health.readiness())
        .route_service("/readyz", health.readiness())
        .route_service("/livez", health.liveness())
}

type Body = Empty<Bytes>;

type Endpoint = tower_lb::http::TrackBody<tower_lb::http::HttpEndpoint<Body>>;

fn balancer(keys: [String; 2]) -> Balance<String, Endpoint> {
    Balance::builder()
        .strategy(RoundRobin::new())
        .backends(keys.map(Backend::new))
        .build(HttpEndpoints::<Body>::new())
        .unwrap()
}

fn status_of(balance: &Balance<String, Endpoint>, key: &str) -> Status {
    let stats = balance.stats();
    stats
        .backends
        .iter()
        .find(|b| b.key == key)
        .map(|b| b.status)
        .expect("backend in the set")
}

#[tokio::test]
async fn the_prober_takes_a_backend_out_while_a_check_fails_and_when_it_drains() {
    let (a_down, b_down) = (Arc::default(), Arc::default());
    let (a_health, b_health) = (checks(&a_down), checks(&b_down));
    let a = TestServer::start(app("a", &a_health)).await;
    let b = TestServer::start(app("b", &b_health)).await;
    let (a_key, b_key) = (a.addr.to_string(), b.addr.to_string());

    // One balancer probes the JSON verdict, another the status alone (the 503).
    let by_body = balancer([a_key.clone(), b_key.clone()]);
    let by_status = balancer([a_key.clone(), b_key.clone()]);
    let prober = |probe: HttpProbe| {
        Prober::new(probe)
            .interval(Duration::from_millis(100))
            .fast_interval(Duration::from_millis(50))
            .rise(2)
            .fall(2)
    };
    let json = BodyMatch::json("/status", "healthy").unwrap();
    let _p1 = prober(HttpProbe::new("/health").unwrap().expect_body(json))
        .spawn(&by_body)
        .unwrap();
    let _p2 = prober(HttpProbe::new("/readyz").unwrap().expect(200..=299))
        .spawn(&by_status)
        .unwrap();

    let answers = |balance: Balance<String, Endpoint>| async move {
        let mut seen = Vec::new();
        for _ in 0..6 {
            let req = http::Request::get("/").body(Body::new()).unwrap();
            let rsp = balance.clone().oneshot(req).await.unwrap();
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            seen.push(String::from_utf8(body.to_vec()).unwrap());
        }
        seen.sort();
        seen.dedup();
        seen
    };
    assert_eq!(answers(by_body.clone()).await, ["a", "b"]);

    // The database check of `a` fails: both probers take it out.
    a_down.store(true, SeqCst);
    let failed = Instant::now();
    wait_for(|| status_of(&by_body, &a_key) == Status::Down).await;
    eprintln!(
        "check failed → marked down (JSON probe): {:?}",
        failed.elapsed()
    );
    wait_for(|| status_of(&by_status, &a_key) == Status::Down).await;
    eprintln!(
        "check failed → marked down (status probe): {:?}",
        failed.elapsed()
    );
    assert_eq!(answers(by_body.clone()).await, ["b"]);
    assert_eq!(status_of(&by_body, &b_key), Status::Healthy);

    // It passes again: both bring it back.
    a_down.store(false, SeqCst);
    let healed = Instant::now();
    wait_for(|| status_of(&by_body, &a_key) == Status::Healthy).await;
    wait_for(|| status_of(&by_status, &a_key) == Status::Healthy).await;
    eprintln!("check passed → marked up: {:?}", healed.elapsed());
    assert_eq!(answers(by_body.clone()).await, ["a", "b"]);

    // Draining `b` before its shutdown: out of rotation while it still answers.
    b_health.drain_handle().drain();
    let drained = Instant::now();
    wait_for(|| status_of(&by_body, &b_key) == Status::Down).await;
    wait_for(|| status_of(&by_status, &b_key) == Status::Down).await;
    eprintln!("drain → marked down: {:?}", drained.elapsed());
    assert_eq!(answers(by_body.clone()).await, ["a"]);
    assert_eq!(answers(by_status.clone()).await, ["a"]);

    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_burst_of_probes_over_real_connections_runs_the_checks_once() {
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    let health = HealthChecks::builder()
        .check(Check::new("database", move || {
            counted.fetch_add(1, SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, String>(())
            }
        }))
        .cache_for(Duration::from_secs(30))
        .build()
        .unwrap();
    let server = TestServer::start(app("a", &health)).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Body>();
    let uri: http::Uri = format!("http://{}/health", server.addr).parse().unwrap();
    let started = Instant::now();
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (client, uri) = (client.clone(), uri.clone());
        burst.spawn(async move {
            let rsp = client.get(uri).await.unwrap();
            let status = rsp.status();
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        });
    }
    while let Some(answer) = burst.join_next().await {
        let (status, body) = answer.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["status"], "healthy");
    }
    eprintln!(
        "200 concurrent probes: {} run(s) of the checks, {:?}",
        runs.load(SeqCst),
        started.elapsed()
    );
    assert_eq!(runs.load(SeqCst), 1);
    assert_eq!(health.runs(), 1);
    server.stop().await;
}

/// `curl -s -w '\n%{http_code}' URL`: the body and the status.
async fn curl(url: &str) -> (u16, serde_json::Value) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "20", "-w", "\n%{http_code}", url])
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("run curl");
    assert!(out.status.success(), "curl {url} failed: {:?}", out.status);
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.parse().unwrap(), serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn curl_reads_the_verdict_liveness_and_the_drain() {
    if !have_command("curl") {
        return;
    }
    let db_down = Arc::default();
    let health = checks(&db_down);
    let server = TestServer::start(app("a", &health)).await;
    let url = |path: &str| format!("http://{}{path}", server.addr);

    let (code, body) = curl(&url("/health")).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["checks"]["database"]["status"], "healthy");
    assert_eq!(body["checks"]["disk"]["status"], "healthy");
    assert!(body["checks"]["disk"]["duration_ms"].is_f64());

    db_down.store(true, SeqCst);
    // Past the 50 ms cache.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (code, body) = curl(&url("/readyz")).await;
    assert_eq!(code, 503);
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["checks"]["database"]["status"], "unhealthy");
    assert_eq!(body["checks"]["database"]["error"], "database unreachable");
    // The database is readiness-only: liveness still passes, without it.
    let (code, body) = curl(&url("/livez")).await;
    assert_eq!(code, 200);
    assert_eq!(body["status"], "healthy");
    assert!(body["checks"].get("database").is_none());

    db_down.store(false, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(curl(&url("/health")).await.0, 200);
    health.drain_handle().drain();
    let (code, body) = curl(&url("/readyz")).await;
    assert_eq!(code, 503);
    assert_eq!(
        body,
        serde_json::json!({"status": "draining", "checks": {}})
    );
    assert_eq!(curl(&url("/livez")).await.0, 200);
    server.stop().await;
}

#[cfg(feature = "grpc")]
mod grpc {
    use super::*;
    use crate::support::have_python;
    use tower_lb::health::service::{GrpcReporter, Probe};

    /// Runs `tests/peers/grpc_health_check.py`: what `grpc.health.v1.Health/Check` of
    /// `service` answers once it is `want`, or after 20 s.
    async fn check(addr: std::net::SocketAddr, service: &str, want: &str) -> String {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/grpc_health_check.py"
        );
        let run = tokio::process::Command::new("python3")
            .args([script, &addr.to_string(), service, want, "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the gRPC health client finished")
            .unwrap();
        assert!(
            out.status.success(),
            "grpc health client failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[tokio::test]
    async fn grpcio_sees_serving_and_not_serving_from_the_same_checks() {
        if !have_python(&["grpc", "grpc_health.v1.health_pb2"]) {
            return;
        }
        let db_down = Arc::default();
        let health = checks(&db_down);
        let (reporter, server) = tonic_health::server::health_reporter();
        let _reporting = GrpcReporter::new(&health, reporter)
            .service("liveness", Probe::Liveness)
            .interval(Duration::from_millis(100))
            .spawn()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );

        assert_eq!(check(addr, "", "SERVING").await, "SERVING");
        db_down.store(true, SeqCst);
        assert_eq!(check(addr, "", "NOT_SERVING").await, "NOT_SERVING");
        // The database does not count for liveness.
        assert_eq!(check(addr, "liveness", "SERVING").await, "SERVING");
        db_down.store(false, SeqCst);
        assert_eq!(check(addr, "", "SERVING").await, "SERVING");
        health.drain_handle().drain();
        assert_eq!(check(addr, "", "NOT_SERVING").await, "NOT_SERVING");
        assert_eq!(check(addr, "liveness", "SERVING").await, "SERVING");
        // A name nobody reports: the protocol's NOT_FOUND.
        assert_eq!(check(addr, "nope", "NOT_FOUND").await, "NOT_FOUND");
        serving.abort();
    }
}
