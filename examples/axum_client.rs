//! An axum app whose handler calls a balanced pool of backends as an HTTP client:
//! one pooled hyper-util client, a timeout and passive health per endpoint, p2c over
//! peak EWMA, and errors mapped to 502/503/504.
//!
//! ```sh
//! cargo run --example axum_client
//! ```
//!
//! It starts three backends in-process (one slow, one failing), serves the app on an
//! ephemeral port, sends it a few requests and prints what happened.

use std::{net::SocketAddr, time::Duration};

use axum::{
    body::Body,
    extract::State,
    http::{Request, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tower::{util::BoxCloneSyncService, ServiceBuilder};
use tower_lb::{
    balance::{strategy::P2c, MakeEndpoint, Target},
    health::passive::{PassiveHealthLayer, Window},
    http::{status_for, HttpEndpoints, HttpPolicy},
    Backend, Balance, BoxError,
};

type Endpoint = BoxCloneSyncService<Request<Body>, http::Response<Body>, BoxError>;
type Pool = Balance<SocketAddr, Endpoint, HttpPolicy>;

/// Starts a backend that answers `name` after `delay`, or 503 if `failing`.
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

fn pool(backends: &[SocketAddr]) -> Result<Pool, BoxError> {
    let http = HttpEndpoints::<Body>::with_connect_timeout(Duration::from_secs(1));
    Ok(Balance::builder()
        .strategy(P2c::new().peak_ewma())
        .backends(backends.iter().copied().map(Backend::new))
        .policy(HttpPolicy::new())
        .build(move |t: &Target<'_, SocketAddr>| -> Endpoint {
            let endpoint = http.make_endpoint(t).expect("socket addresses are valid");
            BoxCloneSyncService::new(
                ServiceBuilder::new()
                    .map_response(|r: http::Response<_>| r.map(Body::new))
                    .map_err(BoxError::from)
                    // nginx `max_fails=1 fail_timeout=10s`: a 503 ejects the backend.
                    .layer(PassiveHealthLayer::new(t).policy(Window::new()))
                    .timeout(Duration::from_millis(500))
                    .service(endpoint),
            )
        })?)
}

/// The app's handler: fetch the user from whichever backend the pool picks.
async fn user(State(pool): State<Pool>) -> impl IntoResponse {
    let req = Request::get("/users/42")
        .body(Body::empty())
        .expect("valid request");
    match fetch(pool, req).await {
        Ok((status, body)) => (status, body),
        Err(e) => (status_for(&e), format!("upstream error: {e}")),
    }
}

/// Sends `req` through the pool and reads the whole answer.
async fn fetch(pool: Pool, req: Request<Body>) -> Result<(StatusCode, String), BoxError> {
    // `send` returns a boxed `Send` future: with `BoxError` endpoints, rustc cannot prove
    // `pool.oneshot(req)` `Send` inside an axum handler ("implementation of `From` is not
    // general enough").
    let rsp = pool.send(req).await?;
    let status = rsp.status();
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let names = ["fast", "slow", "broken"];
    let backends = [
        backend(names[0], Duration::from_millis(1), false).await,
        backend(names[1], Duration::from_millis(40), false).await,
        backend(names[2], Duration::ZERO, true).await,
    ];
    let pool = pool(&backends)?;
    let app = Router::new()
        .route("/user", get(user))
        .with_state(pool.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "app on http://{addr}/user, backends: fast {}, slow {} (40 ms), broken {} (503)",
        backends[0], backends[1], backends[2]
    );

    // Call the app like any client would.
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
        .map(|(status, n)| format!("{n} answered {status}"))
        .collect();
    println!("30 requests through the app: {}", answers.join(", "));
    for b in pool.stats().backends {
        let name = backends
            .iter()
            .position(|a| *a == b.key)
            .map_or("?", |i| names[i]);
        println!(
            "  backend {name:<6} {:<16} {:>3} requests  {:>2} failures  state {}",
            b.key, b.requests, b.failures, b.status
        );
    }
    Ok(())
}
