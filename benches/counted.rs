//! A fixed number of requests through one variant, for instruction counts under
//! `valgrind --tool=callgrind`, which are repeatable where timings on a shared machine are
//! not. Run a variant twice with different counts; the difference over the difference in
//! requests is the cost of one request:
//!
//! ```sh
//! cargo bench --bench counted --no-run --all-features   # prints the binary's path
//! valgrind --tool=callgrind target/release/deps/counted-… limits 11000
//! ```
//!
//! Variants: `plain` (hyper-util's server, the peer address put on each request) and
//! `limits` (`server::Server`'s connection handling), both over one in-memory HTTP/1.1
//! connection; `notrack` and `track` (a balancer over in-memory endpoints under passive
//! health, each body read to its end, without and with `TrackBodyLayer`).

#![allow(missing_docs)]

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tower::{util::BoxCloneSyncService, Service, ServiceBuilder, ServiceExt};
use tower_lb::{
    balance::{strategy::P2c, Target},
    health::passive::PassiveHealthLayer,
    http::TrackBodyLayer,
    Backend, Balance, BoxError, ClientAddr,
};

type Req = Request<Full<Bytes>>;
type Ep = BoxCloneSyncService<Req, Response<Full<Bytes>>, BoxError>;

fn endpoint() -> Ep {
    BoxCloneSyncService::new(tower::service_fn(|_: Req| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }))
}

/// Sends `n` requests through a balancer whose endpoints `$layers` makes.
macro_rules! balance {
    ($n:expr, |$t:ident| $stack:expr) => {{
        let b = Balance::builder()
            .strategy(P2c::new().peak_ewma())
            .backends((1..=3).map(|i| Backend::new(format!("10.0.0.{i}:80"))))
            .build(|$t: &Target<'_, String>| $stack)
            .unwrap();
        for _ in 0..$n {
            let rsp = b
                .clone()
                .oneshot(Request::new(Full::new(Bytes::new())))
                .await
                .unwrap();
            std::hint::black_box(rsp.into_body().collect().await.unwrap());
        }
    }};
}

async fn balance(track: bool, n: u64) {
    if track {
        balance!(n, |t| ServiceBuilder::new()
            .layer(PassiveHealthLayer::new(t))
            .layer(TrackBodyLayer::new(t))
            .service(endpoint()));
    } else {
        balance!(n, |t| ServiceBuilder::new()
            .layer(PassiveHealthLayer::new(t))
            .service(endpoint()));
    }
}

/// `n` requests through a balancer of `endpoints` always-ready in-memory endpoints with
/// the named strategy (the per-request cost of the strategy at that size).
async fn strategy(name: &str, endpoints: u32, n: u64) {
    use std::future::ready;
    use tower_lb::balance::strategy::{LeastConn, RoundRobin, Strategy, WeightedRoundRobin};
    let strategy: std::sync::Arc<dyn Strategy> = match name {
        "rr" => std::sync::Arc::new(RoundRobin::new()),
        "wrr" => std::sync::Arc::new(WeightedRoundRobin::new()),
        "lc" => std::sync::Arc::new(LeastConn::new()),
        "ewma" => std::sync::Arc::new(P2c::new().peak_ewma()),
        other => panic!("unknown strategy {other}"),
    };
    let svc = tower::service_fn(|()| ready(Ok::<_, BoxError>(())));
    let b = Balance::builder()
        .strategy(strategy)
        .backends((0..endpoints).map(Backend::new))
        .build(move |_: &Target<'_, u32>| svc)
        .unwrap();
    requests(b, n);
}

/// The requests alone, apart from the build: under callgrind, count them with
/// `--toggle-collect='counted::requests*'` (the balancer's clock calibrates itself at
/// build time, by a loop whose length varies from run to run). The endpoints answer at
/// once, so each request is one poll with a no-op waker.
#[inline(never)]
fn requests<S>(mut b: Balance<u32, S>, n: u64)
where
    S: tower::Service<(), Response = (), Error = BoxError> + Clone + Send + Sync + 'static,
{
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..n {
        assert!(b.poll_ready(&mut cx).is_ready());
        let mut rsp = std::pin::pin!(b.call(()));
        match rsp.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => r.unwrap(),
            std::task::Poll::Pending => panic!("an in-memory endpoint answers at once"),
        }
    }
}

async fn server(limits: bool, n: u64) {
    let app = tower::service_fn(|_: Request<hyper::body::Incoming>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let (client, io) = tokio::io::duplex(64 * 1024);
    let peer = "127.0.0.1:1".parse().unwrap();
    if limits {
        tokio::spawn(tower_lb::server::Server::new().serve_connection(io, peer, app));
    } else {
        let app = ServiceBuilder::new()
            .map_request(move |mut r: Request<hyper::body::Incoming>| {
                r.extensions_mut().insert(ClientAddr(peer));
                r
            })
            .service(app);
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(app))
                .await;
        });
    }
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..n {
        send.ready().await.unwrap();
        let req = Request::get("http://x/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let rsp = send.send_request(req).await.unwrap();
        std::hint::black_box(rsp.into_body().collect().await.unwrap());
    }
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (Some(variant), Some(n)) = (args.next(), args.next()) else {
        eprintln!("usage: counted plain|limits|notrack|track|rr|wrr|lc|ewma REQUESTS [ENDPOINTS]");
        return;
    };
    let n: u64 = n.parse().expect("a request count");
    let endpoints: u32 = args
        .next()
        .map_or(10, |e| e.parse().expect("an endpoint count"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        match variant.as_str() {
            "plain" => server(false, n).await,
            "limits" => server(true, n).await,
            "notrack" => balance(false, n).await,
            "track" => balance(true, n).await,
            "rr" | "wrr" | "lc" | "ewma" => strategy(&variant, endpoints, n).await,
            other => eprintln!("unknown variant {other}"),
        }
    });
}
