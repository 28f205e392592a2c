//! `--hedge-after` through the gateway binary: a slow third-party backend (FastAPI on
//! uvicorn) and a fast axum one on loopback.

use axum::http::StatusCode;

use crate::common::{self, client, get, Gateway};
use crate::support::{have_python, named, python_peer, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedged_requests_are_answered_by_the_fast_backend() {
    if !have_python(&["fastapi", "uvicorn"]) {
        return;
    }
    // The slow one would take 30 s; the client's bound is the gateway's 30 s timeout.
    let slow = python_peer("model_app.py", &["200", "30"]).await;
    let fast = TestServer::start(named("fast")).await;
    let slow_addr = format!("127.0.0.1:{}", slow.port);
    let fast_addr = fast.addr.to_string();
    let gw = Gateway::start(&[
        "--strategy",
        "round-robin",
        "--max-fails",
        "0",
        "--hedge-after",
        "100ms",
        "--hedge-budget",
        "50",
        "--backend",
        &slow_addr,
        "--backend",
        &fast_addr,
    ])
    .await;
    let c = client();
    for _ in 0..20 {
        let (status, body) = get(&c, &gw.url("/x")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"fast", "a request waited on the slow backend");
    }
    // Half the first attempts went to the slow backend, and were hedged.
    let (_, hits) = get(&c, &format!("http://{slow_addr}/hits")).await;
    let hits: u64 = String::from_utf8_lossy(&hits).parse().unwrap();
    assert!(hits >= 5, "the slow backend saw {hits} requests");
}

#[tokio::test]
async fn hedge_flags_are_checked() {
    for bad in [["--hedge-after", "p100"], ["--hedge-budget", "150"]] {
        let out = std::process::Command::new(common::gateway_bin())
            .args(bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(bad[0]),
            "{bad:?}"
        );
    }
}
