//! An axum handler calling a balanced pool of backends: one pooled hyper-util client,
//! a timeout and passive health per endpoint, p2c over peak EWMA, and balancer errors
//! answered 502/503/504 without revealing the backends.
//!
//! ```sh
//! cargo run --example axum_client
//! ```
//!
//! It starts three backends in-process (one slow, one failing), serves the app on an
//! ephemeral port, sends it 30 requests and prints where they went.

use std::{io::Write, net::SocketAddr, time::Duration};

use axum::{
    body::Body,
    http::{Request, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_lb::{
    balance::strategy::P2c,
    health::passive::Window,
    http::{error_response, HttpEndpoints},
    Backend, Balance, BoxError,
};

/// The user's part: a pool, and a handler that calls it.
fn app(
    backends: &[SocketAddr],
) -> Result<(Router, tower_lb::discover::Handle<SocketAddr>), BoxError> {
    let pool = Balance::builder()
        .strategy(P2c::new().peak_ewma())
        .backends(backends.iter().copied().map(Backend::new))
        .endpoint_timeout(Duration::from_millis(500))
        .passive_health(Window::new()) // nginx max_fails=1 fail_timeout=10s
        .build(HttpEndpoints::<Body>::new())?;
    let handle = pool.handle();
    let app = Router::new().route(
        "/user",
        get(move || async move {
            let req = Request::get("/users/42").body(Body::empty()).unwrap();
            match pool.oneshot(req).await {
                Ok(rsp) => rsp.into_response(),
                Err(e) => error_response(&e).into_response(),
            }
        }),
    );
    Ok((app, handle))
}

/// A backend that answers `name` after `delay`, or 503 if `failing`.
async fn backend(name: &'static str, delay: Duration, failing: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new().route(
        "/users/{id}",
        get(move || async move {
            tokio::time::sleep(delay).await;
            if failing {
                (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
            } else {
                format!("user from {name}").into_response()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Runs the demo, writing what happened to `out`.
async fn run(out: &mut impl Write) -> Result<(), BoxError> {
    let names = ["fast", "slow", "broken"];
    let backends = [
        backend(names[0], Duration::from_millis(1), false).await,
        backend(names[1], Duration::from_millis(40), false).await,
        backend(names[2], Duration::ZERO, true).await,
    ];
    let (app, pool) = app(&backends)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    writeln!(
        out,
        "app on http://{addr}/user; backends fast, slow (40 ms), broken (503)"
    )?;

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Body>();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..30 {
        let rsp = client
            .request(Request::get(format!("http://{addr}/user")).body(Body::empty())?)
            .await?;
        *statuses.entry(rsp.status().as_u16()).or_default() += 1;
    }
    let answers: Vec<String> = statuses
        .iter()
        .map(|(s, n)| format!("{n} answered {s}"))
        .collect();
    writeln!(out, "30 requests through the app: {}", answers.join(", "))?;
    for b in pool.stats().backends {
        let name = backends
            .iter()
            .position(|a| *a == b.key)
            .map_or("?", |i| names[i]);
        writeln!(
            out,
            "  backend {name:<6} {:<16} {:>3} requests  {:>2} failures  state {}",
            b.key, b.requests, b.failures, b.status
        )?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    run(&mut std::io::stdout()).await
}

#[cfg(test)]
#[path = "support/mod.rs"]
mod support;

#[cfg(test)]
mod tests {
    use crate::support::{count_before, line, word_after};

    #[tokio::test]
    async fn the_broken_backend_is_ejected_after_its_first_503() {
        let mut out = Vec::new();
        super::run(&mut out).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        line(&out, "30 requests through the app:");
        let broken = line(&out, "backend broken");
        assert_eq!(word_after(broken, "state"), "ejected", "{out}");
        let (requests, failures) = (
            count_before(broken, "requests"),
            count_before(broken, "failures"),
        );
        // Its first 503 ejected it; no request went there afterwards.
        assert!(requests >= 1, "{out}");
        assert_eq!(requests, failures, "{out}");
        for healthy in ["backend fast", "backend slow"] {
            assert_eq!(word_after(line(&out, healthy), "state"), "healthy", "{out}");
        }
    }
}
