//! An HTTP load balancer assembled from tower-lb's layers, on one page: the part to copy
//! when you build your own gateway. (The full product is the `tower-lb-gateway` crate:
//! `cargo run --release -p tower-lb-gateway`.)
//!
//! ```sh
//! cargo run --example gateway --features server -- 127.0.0.1:3001 127.0.0.1:3002
//! ```
//!
//! With no backends it starts two demo backends in-process. It listens on 127.0.0.1:8080.
//!
//! The stack, outermost first: the server (client header and keep-alive timeouts), error
//! answers without backend addresses, a time limit, the reverse-proxy rules (Host,
//! forwarded headers, hop-by-hop, upgrades), a replayable body, and the balancer (p2c over
//! peak EWMA; retries of requests that never reached their backend; passive health) over
//! one keep-alive pool per backend.

use std::{net::SocketAddr, time::Duration};

use axum::{routing::get, Router};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower::{timeout::TimeoutLayer, ServiceBuilder};
use tower_lb::{
    balance::strategy::P2c,
    health::passive::Window,
    http::{
        proxy::ProxyLayer, ErrorResponseLayer, HttpPolicy, PooledEndpoints, ReplayBody,
        ReplayBodyLayer,
    },
    server::Server,
    Backend, Balance, BoxError,
};

/// Serves the balancer on `listener` over `backends` until `shutdown` completes.
async fn gateway(
    listener: TcpListener,
    backends: Vec<String>,
    shutdown: impl std::future::Future + Send,
) -> Result<(), BoxError> {
    let balance = Balance::builder()
        .strategy(P2c::new().peak_ewma())
        .backends(backends.into_iter().map(Backend::new))
        .policy(HttpPolicy::new().replay_body())
        .passive_health(Window::new())
        .build(PooledEndpoints::<ReplayBody<Incoming>>::new())?;
    let app = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(TimeoutLayer::new(Duration::from_secs(30)))
        .layer(ProxyLayer::new())
        // Keep the first 64 KiB of each body, so a refused request can be sent elsewhere.
        .layer(ReplayBodyLayer::new(64 * 1024))
        .service(balance);
    Server::new()
        .header_timeout(Duration::from_secs(60))
        .serve(listener, move |_peer: SocketAddr| app.clone(), shutdown)
        .await?;
    Ok(())
}

/// Two demo backends on loopback; their addresses.
async fn demo_backends() -> Result<Vec<String>, BoxError> {
    let mut addrs = Vec::new();
    for name in ["one", "two"] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?.to_string());
        let app =
            Router::new().fallback(get(move || async move { format!("hello from {name}\n") }));
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    Ok(addrs)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut backends: Vec<String> = std::env::args().skip(1).collect();
    if backends.is_empty() {
        backends = demo_backends().await?;
    }
    let listener = TcpListener::bind("127.0.0.1:8080").await?;
    println!(
        "balancing http://{} over {}",
        listener.local_addr()?,
        backends.join(", ")
    );
    gateway(listener, backends, tokio::signal::ctrl_c()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};

    #[tokio::test]
    async fn proxies_to_the_demo_backends_and_refuses_requests_without_host() {
        let backends = demo_backends().await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(gateway(listener, backends, stopped));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Empty<bytes::Bytes>>();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let req = http::Request::get(format!("http://{addr}/hi"))
                .body(Empty::new())
                .unwrap();
            let rsp = client.request(req).await.unwrap();
            assert_eq!(rsp.status(), 200);
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            seen.insert(String::from_utf8(body.to_vec()).unwrap());
        }
        // p2c over peak EWMA keeps to the faster backend while it stays faster: every
        // answer comes from a demo backend, through the balancer.
        assert!(
            seen.iter().all(|s| s.starts_with("hello from ")),
            "{seen:?}"
        );
        // HTTP/1.1 without Host: 400, from the proxy rules.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        raw.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
    }
}
