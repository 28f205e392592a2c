//! Per-request cost of the HTTP-facing layers around the balancer, in memory (no
//! sockets): one `http::Request` at a time through endpoints that answer at once. Each
//! row adds one piece of a typical proxy stack, so the differences are what each costs.
//!
//! `cargo bench --bench http_stack`

#![allow(missing_docs)] // criterion's macros generate undocumented items

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{rt, time_requests};
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::Full;
use tower::{service_fn, util::BoxCloneSyncService, Layer, ServiceBuilder};
use tower_lb::{
    balance::{
        strategy::{P2c, RingHash, RoundRobin, Strategy},
        Target,
    },
    health::passive::PassiveHealthLayer,
    http::{HttpPolicy, TrackBodyLayer},
    sticky::{HeaderKey, StickyLayer},
    Backend, Balance, BoxError,
};

type Req = Request<Full<Bytes>>;
type Endpoint = BoxCloneSyncService<Req, Response<Full<Bytes>>, BoxError>;

/// An endpoint that answers every request at once, boxed as most stacks are.
fn endpoint() -> Endpoint {
    BoxCloneSyncService::new(service_fn(|_: Req| async {
        Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }))
}

fn backends() -> impl Iterator<Item = Backend<String>> {
    (1..=3).map(|i| Backend::new(format!("10.0.0.{i}:8080")))
}

fn plain(strategy: impl Strategy) -> Balance<String, Endpoint> {
    Balance::builder()
        .strategy(strategy)
        .backends(backends())
        .build(|_: &Target<'_, String>| endpoint())
        .unwrap()
}

/// A balancer over the endpoints, each behind passive health.
macro_rules! with_passive_health {
    ($strategy:expr, $policy:expr) => {
        Balance::builder()
            .strategy($strategy)
            .backends(backends())
            .policy($policy)
            .build(|t: &Target<'_, String>| {
                ServiceBuilder::new()
                    .layer(PassiveHealthLayer::new(t))
                    .service(endpoint())
            })
            .unwrap()
    };
}

fn request() -> Req {
    let mut req = Request::new(Full::new(Bytes::new()));
    req.headers_mut().insert(
        HeaderName::from_static("x-user"),
        HeaderValue::from_static("user-42"),
    );
    req
}

fn bench_stack(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("http");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let mut direct = endpoint();
    g.bench_function("endpoint alone", |b| {
        b.iter_custom(|iters| time_requests(&rt, &mut direct, iters, request))
    });

    let mut rr = plain(RoundRobin::new());
    g.bench_function("balance, round robin", |b| {
        b.iter_custom(|iters| time_requests(&rt, &mut rr, iters, request))
    });

    let mut ewma = plain(P2c::new().peak_ewma());
    g.bench_function("balance, p2c peak EWMA", |b| {
        b.iter_custom(|iters| time_requests(&rt, &mut ewma, iters, request))
    });

    // Passive health on every endpoint: classifies each response, counts failures.
    let mut passive = with_passive_health!(P2c::new().peak_ewma(), ());
    g.bench_function("+ passive health", |b| {
        b.iter_custom(|iters| time_requests(&rt, &mut passive, iters, request))
    });

    // A policy that copies each request so a failed one can be replayed elsewhere.
    let replay_clone = || HttpPolicy::new().replay_clone();
    let mut replay = with_passive_health!(P2c::new().peak_ewma(), replay_clone());
    g.bench_function("+ replay copy", |b| {
        b.iter_custom(|iters| time_requests(&rt, &mut replay, iters, request))
    });

    // Affinity: a header key, hashed onto a ring.
    let sticky_balance = with_passive_health!(RingHash::new(), replay_clone());
    let mut sticky =
        StickyLayer::new(HeaderKey::new(HeaderName::from_static("x-user"))).layer(sticky_balance);
    g.bench_function("+ header key, ring hash", |b| {
        b.iter_custom(|iters| time_requests(&rt, &mut sticky, iters, request))
    });

    // Body-end tracking: the same stack, each response body read to its end, without and
    // with the endpoint counting the request in flight until then.
    let mut read = with_passive_health!(P2c::new().peak_ewma(), ());
    g.bench_function("+ passive health, body read", |b| {
        b.iter_custom(|iters| time_requests_read(&rt, &mut read, iters, request))
    });
    let mut tracked = Balance::builder()
        .strategy(P2c::new().peak_ewma())
        .backends(backends())
        .build(|t: &Target<'_, String>| {
            ServiceBuilder::new()
                .layer(PassiveHealthLayer::new(t))
                .layer(TrackBodyLayer::new(t))
                .service(endpoint())
        })
        .unwrap();
    g.bench_function("+ body-end tracking, body read", |b| {
        b.iter_custom(|iters| time_requests_read(&rt, &mut tracked, iters, request))
    });
    g.finish();
}

/// Like `time_requests`, reading each response body to its end.
fn time_requests_read<S, B>(
    rt: &tokio::runtime::Runtime,
    svc: &mut S,
    iters: u64,
    make: impl Fn() -> Req,
) -> Duration
where
    S: tower::Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    rt.block_on(async {
        let start = tokio::time::Instant::now();
        for _ in 0..iters {
            let rsp = ServiceExt::<Req>::ready(&mut *svc)
                .await
                .unwrap()
                .call(make())
                .await
                .unwrap();
            std::hint::black_box(rsp.into_body().collect().await.unwrap());
        }
        start.elapsed()
    })
}

/// HTTP/1.1 requests, one after another on one kept-alive in-memory connection, to a
/// server that answers at once: hyper-util's server alone, then with the client limits
/// (header and keep-alive timeouts).
fn bench_server(c: &mut Criterion) {
    use hyper_util::{rt::TokioExecutor, server::conn::auto};
    let rt = rt();
    let mut g = c.benchmark_group("server");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let app = service_fn(|_: Request<hyper::body::Incoming>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    for limits in [false, true] {
        let mut send = rt.block_on(async {
            let (client, server) = tokio::io::duplex(64 * 1024);
            if limits {
                tokio::spawn(tower_lb::server::Server::new().serve_connection(
                    server,
                    "127.0.0.1:1".parse().unwrap(),
                    app,
                ));
            } else {
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(
                            hyper_util::rt::TokioIo::new(server),
                            hyper_util::service::TowerToHyperService::new(app),
                        )
                        .await;
                });
            }
            let (send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            send
        });
        let name = if limits {
            "client limits (header, keep-alive timeouts)"
        } else {
            "hyper-util auto"
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    use http_body_util::BodyExt;
                    let start = tokio::time::Instant::now();
                    for _ in 0..iters {
                        send.ready().await.unwrap();
                        let req = Request::get("http://x/")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        let rsp = send.send_request(req).await.unwrap();
                        std::hint::black_box(rsp.into_body().collect().await.unwrap());
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_stack, bench_server);
criterion_main!(benches);
