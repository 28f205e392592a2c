//! `--outlier-detection` through the gateway binary, against five backends on loopback,
//! one of them fast but wrong.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use axum::{http::StatusCode, Router};

use crate::common::{self, client, get, Gateway, TestClient};
use crate::support::TestServer;

/// A backend that answers `status` after `delay`.
async fn backend(status: StatusCode, delay: Duration) -> TestServer {
    TestServer::start(Router::new().fallback(move || async move {
        tokio::time::sleep(delay).await;
        (status, "")
    }))
    .await
}

fn backends_of(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["pools"]["default"]["backends"]
        .as_array()
        .expect("backends")
        .clone()
}

/// Clients sending through the gateway until `stop`; counts answers and 5xx ones.
fn load(
    c: &TestClient,
    url: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let c = c.clone();
    tokio::spawn(async move {
        while !stop.load(Relaxed) {
            let (s, _) = get(&c, &url).await;
            sent.fetch_add(1, Relaxed);
            if s.is_server_error() {
                failed.fetch_add(1, Relaxed);
            }
        }
    })
}

async fn ejects_the_fast_but_wrong_backend(test: &str) {
    let mut servers = Vec::new();
    for _ in 0..4 {
        servers.push(backend(StatusCode::OK, Duration::from_millis(10)).await);
    }
    // Fast and wrong: peak-EWMA P2C favours it for its speed.
    let bad = backend(StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO).await;
    let bad_key = format!("http://{}", bad.addr);
    let mut args: Vec<String> = [
        "--strategy",
        "p2c-ewma",
        // Passive health counts failures but never ejects by itself.
        "--max-fails",
        "0",
        "--outlier-detection",
        test,
        "--outlier-interval",
        "1s",
        "--outlier-min-requests",
        "10",
    ]
    .map(str::to_owned)
    .into();
    for s in servers.iter().chain([&bad]) {
        args.push("--backend".into());
        args.push(s.addr.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::start(&args).await;
    let c = client();

    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|_| load(&c, gw.url("/x"), stop.clone(), sent.clone(), failed.clone()))
        .collect();
    // Generous bound: the first evaluation is one second in.
    let mut ejected = None;
    for _ in 0..600 {
        let (_, body) = get(&c, &gw.url("/status")).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let b = backends_of(&v)
            .into_iter()
            .find(|b| b["backend"] == bad_key.as_str())
            .expect("the bad backend in /status");
        if b["state"] == "ejected" {
            ejected = Some(b);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = ejected.unwrap_or_else(|| panic!("{test}: the fast 503 backend was never ejected"));
    assert!(b["ejections"].as_u64() >= Some(1), "{b}");
    let failed_before = failed.load(Relaxed);
    assert!(
        failed_before > 0,
        "the bad backend answered before its ejection"
    );

    // Ejected for 30 s: the clients see no failure while the load goes on.
    let sent_at = sent.load(Relaxed);
    let mut waited = 0;
    while sent.load(Relaxed) < sent_at + 200 && waited < 400 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    stop.store(true, Relaxed);
    for task in clients {
        task.await.unwrap();
    }
    assert!(sent.load(Relaxed) >= sent_at + 200, "the load went on");
    // Requests in flight at the ejection may still have reached it.
    assert!(
        failed.load(Relaxed) <= failed_before + 8,
        "{test}: failures after the ejection: {} then {}",
        failed_before,
        failed.load(Relaxed)
    );
    for _ in 0..20 {
        assert_eq!(get(&c, &gw.url("/x")).await.0, StatusCode::OK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_percentage_ejects_a_fast_failing_backend() {
    ejects_the_fast_but_wrong_backend("failure-percentage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_rate_ejects_a_fast_failing_backend() {
    ejects_the_fast_but_wrong_backend("success-rate").await;
}

#[tokio::test]
async fn a_zero_outlier_interval_is_refused() {
    let out = std::process::Command::new(common::gateway_bin())
        .args([
            "--outlier-detection",
            "success-rate",
            "--outlier-interval",
            "0s",
            "--check",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--outlier-interval"), "{err}");
}

/// `/status` as JSON.
async fn status(c: &TestClient, gw: &Gateway) -> serde_json::Value {
    serde_json::from_slice(&get(c, &gw.url("/status")).await.1).unwrap()
}

fn sighup(gw: &Gateway) {
    let pid = gw.child.id().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_the_same_outlier_settings_keeps_the_balancer_and_its_ejections() {
    let mut servers = Vec::new();
    for _ in 0..4 {
        servers.push(backend(StatusCode::OK, Duration::ZERO).await);
    }
    let bad = backend(StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO).await;
    let bad_key = format!("http://{}", bad.addr);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let write = |interval: &str| {
        let mut text = format!(
            "strategy = \"round-robin\"\nmax-fails = 0\noutlier-detection = \"failure-percentage\"\n\
             outlier-interval = \"{interval}\"\noutlier-min-requests = 10\n"
        );
        for s in servers.iter().chain([&bad]) {
            text += &format!("\n[[backend]]\nurl = \"{}\"\n", s.addr);
        }
        std::fs::write(&config, text).unwrap();
    };
    write("1s");
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]).await;
    let c = client();
    let bad_of = |v: &serde_json::Value| {
        backends_of(v)
            .into_iter()
            .find(|b| b["backend"] == bad_key.as_str())
            .expect("the bad backend in /status")
    };
    let mut ejected = false;
    for _ in 0..2000 {
        get(&c, &gw.url("/x")).await;
        if bad_of(&status(&c, &gw).await)["state"] == "ejected" {
            ejected = true;
            break;
        }
    }
    assert!(ejected, "the 503 backend was never ejected");

    // The same settings: the balancer is kept, and with it the ejection.
    sighup(&gw);
    let mut reloaded = serde_json::Value::Null;
    for _ in 0..400 {
        reloaded = status(&c, &gw).await;
        if reloaded["config"]["generation"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reloaded["config"]["generation"], 2, "{reloaded}");
    let b = bad_of(&reloaded);
    assert_eq!(
        (b["state"].as_str(), b["ejections"].as_u64()),
        (Some("ejected"), Some(1))
    );

    // Another interval: a new balancer, which knows nothing of the ejection.
    write("2s");
    sighup(&gw);
    for _ in 0..400 {
        reloaded = status(&c, &gw).await;
        if reloaded["config"]["generation"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reloaded["config"]["generation"], 3, "{reloaded}");
    let b = bad_of(&reloaded);
    assert_eq!(
        (b["state"].as_str(), b["ejections"].as_u64()),
        (Some("healthy"), Some(0))
    );
}
