//! `--strategy load-report` against real backends that report their load.

use std::{collections::HashMap, time::Duration};

use axum::http::StatusCode;
use tower_lb::http::load_report::{AttachReportLayer, Report};

use crate::common::{client, get, Gateway};
use crate::support::{named, TestServer};

/// A backend named `name` reporting `cpu` utilization at 100 requests a second.
async fn reporting(name: &'static str, cpu: f64) -> TestServer {
    TestServer::start(named(name).layer(AttachReportLayer::new(move || {
        Report::new()
            .with_cpu_utilization(cpu)
            .with_rps_fractional(100.0)
    })))
    .await
}

#[tokio::test]
async fn load_report_strategy_follows_reported_utilization() {
    // CPU 0.2, 0.4, 0.8 at 100 qps: weights 500 : 250 : 125.
    let servers = [
        reporting("light", 0.2).await,
        reporting("medium", 0.4).await,
        reporting("heavy", 0.8).await,
    ];
    let mut args = vec!["--strategy".to_string(), "load-report".to_string()];
    for s in &servers {
        args.push("--backend".into());
        args.push(s.addr.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::start(&args).await;
    let c = client();
    let batch = |n: usize| {
        let (c, url) = (&c, gw.url("/"));
        async move {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for _ in 0..n {
                let (s, body) = get(c, &url).await;
                assert_eq!(s, StatusCode::OK);
                *seen
                    .entry(String::from_utf8_lossy(&body).into_owned())
                    .or_default() += 1;
            }
            seen
        }
    };
    // Round robin while the weights sit out their 10 s blackout (gRPC's default): poll
    // in batches of one cycle until a batch follows the weights (bounded: 60 s).
    let mut weighted = false;
    for _ in 0..600 {
        let seen = batch(7).await;
        if seen.get("light") == Some(&4) {
            weighted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(weighted, "the reported weights never took effect");
    // Then shares of 4 : 2 : 1 over 700 requests, within 3 picks (the schedule is exact
    // per cycle of 7; the window may start mid-cycle).
    let seen = batch(700).await;
    for (name, want) in [("light", 400), ("medium", 200), ("heavy", 100)] {
        let got = seen.get(name).copied().unwrap_or(0);
        assert!(got.abs_diff(want) <= 3, "{name}: {got} of 700: {seen:?}");
    }
}
