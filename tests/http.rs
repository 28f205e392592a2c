//! The HTTP endpoint maker against real axum servers on loopback.

use std::{collections::HashMap, convert::Infallible, time::Duration};

use axum::{body::Body, Router};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use tower::{ServiceBuilder, ServiceExt};
use tower_lb::{
    balance::strategy::RoundRobin,
    http::{ErrorResponseLayer, HttpEndpoints, HttpPolicy},
    Backend, Balance,
};

use crate::support::{named, TestServer};

async fn text(rsp: http::Response<tower_lb::http::TrackedBody<hyper::body::Incoming>>) -> String {
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path).body(Empty::new()).unwrap()
}

#[tokio::test]
async fn distributes_over_real_servers_and_routes_around_a_stopped_one() {
    let names = ["one", "two", "three"];
    let mut servers = Vec::new();
    for n in names {
        servers.push(TestServer::start(named(n)).await);
    }
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .backends(servers.iter().map(|s| Backend::new(s.addr)))
        .policy(HttpPolicy::new().replay_clone())
        .build(HttpEndpoints::new())
        .unwrap();

    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        let rsp = balance.clone().oneshot(get("/hello")).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        *seen.entry(text(rsp).await).or_default() += 1;
    }
    for n in names {
        assert_eq!(seen[n], 100, "{seen:?}");
    }

    // Stop "two": its share must go to the others, with no failed request.
    let two = servers.remove(1);
    let two_addr = two.addr;
    two.stop().await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        let rsp = balance.clone().oneshot(get("/hello")).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        *seen.entry(text(rsp).await).or_default() += 1;
    }
    assert!(!seen.contains_key("two"), "{seen:?}");
    assert_eq!(seen["one"] + seen["three"], 300);
    let stats = balance.stats();
    let dead = stats.backends.iter().find(|b| b.key == two_addr).unwrap();
    assert!(dead.failures > 0);
}

#[tokio::test]
async fn keys_may_be_base_urls_and_bad_keys_are_typed_errors() {
    let s = TestServer::start(named("only")).await;
    let balance = Balance::builder()
        .backends([Backend::new(format!("http://{}", s.addr))])
        .build(HttpEndpoints::new())
        .unwrap();
    let rsp = balance.oneshot(get("/x?y=1")).await.unwrap();
    assert_eq!(text(rsp).await, "only");

    let err = Balance::builder()
        .backends([Backend::new("not a host:port".to_string())])
        .build(HttpEndpoints::<Empty<Bytes>>::new())
        .unwrap_err();
    assert!(
        matches!(err, tower_lb::error::ConfigError::Make { .. }),
        "{err}"
    );
    let err = Balance::builder()
        .backends([Backend::new("ftp://h:1".to_string())])
        .build(HttpEndpoints::<Empty<Bytes>>::new())
        .unwrap_err();
    assert!(err.to_string().contains("unsupported scheme"), "{err}");
}

#[tokio::test]
async fn works_as_an_axum_route_service_without_buffer() {
    let backends = [
        TestServer::start(named("a")).await,
        TestServer::start(named("b")).await,
    ];
    let balance = Balance::builder()
        .strategy(RoundRobin::new())
        .backends(backends.iter().map(|s| Backend::new(s.addr)))
        .build(HttpEndpoints::<Body>::new())
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .service(balance);
    let app: Router = Router::new().route_service("/{*rest}", svc);
    let front = TestServer::start(app).await;

    let client = Balance::builder()
        .backends([Backend::new(front.addr)])
        .build(HttpEndpoints::new())
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let rsp = client
            .clone()
            .oneshot(get("/through/the/front"))
            .await
            .unwrap();
        seen.push(text(rsp).await);
    }
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b"]);
}

#[tokio::test]
async fn no_endpoint_maps_to_503_within_the_bound() {
    let balance = Balance::builder::<std::net::SocketAddr>()
        .fail_fast(Duration::from_millis(50))
        .build(HttpEndpoints::<Body>::new())
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .service(balance);
    let rsp = tokio::time::timeout(
        Duration::from_secs(10),
        svc.oneshot(Request::get("/").body(Body::empty()).unwrap()),
    )
    .await
    .expect("no hang")
    .unwrap_or_else(|e: Infallible| match e {});
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_dead_only_backend_maps_to_502() {
    // Bind then drop a listener: its port refuses connections.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let balance = Balance::builder()
        .backends([Backend::new(addr)])
        .build(HttpEndpoints::<Body>::new())
        .unwrap();
    let balance_stats = balance.clone();
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .service(balance);
    let rsp = svc
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    // The answer says what happened, not where: no address, no error chain.
    assert_eq!(
        rsp.headers()["proxy-status"],
        "tower-lb; error=connection_refused"
    );
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "502 Bad Gateway\n");
    let port = addr.port().to_string();
    assert!(!String::from_utf8_lossy(&body).contains(&port));
    // The details are the operator's: in the stats.
    let why = balance_stats.stats().backends[0]
        .last_failure
        .clone()
        .unwrap();
    assert!(
        why.contains("onnection refused") || why.contains("connect"),
        "{why}"
    );
}

mod pooled {
    use super::*;
    use tower_lb::http::PooledEndpoints;

    #[tokio::test]
    async fn distributes_and_routes_around_a_stopped_server() {
        let mut servers = Vec::new();
        for n in ["one", "two", "three"] {
            servers.push(TestServer::start(named(n)).await);
        }
        let balance = Balance::builder()
            .strategy(RoundRobin::new())
            .backends(servers.iter().map(|s| Backend::new(s.addr)))
            .policy(HttpPolicy::new().replay_clone())
            .build(PooledEndpoints::new())
            .unwrap();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for _ in 0..300 {
            let rsp = balance.clone().oneshot(get("/p")).await.unwrap();
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            *seen
                .entry(String::from_utf8(body.to_vec()).unwrap())
                .or_default() += 1;
        }
        assert_eq!(seen.values().copied().collect::<Vec<_>>(), [100; 3]);
        servers.remove(1).stop().await;
        for _ in 0..60 {
            let rsp = balance.clone().oneshot(get("/p")).await.unwrap();
            assert_eq!(rsp.status(), StatusCode::OK);
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            assert_ne!(body, "two");
        }
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_server_is_replaced() {
        let server = TestServer::start(named("first")).await;
        let addr = server.addr;
        // No replay policy: the pool itself must not hand out a dead connection.
        let balance = Balance::builder()
            .backends([Backend::new(addr)])
            .build(PooledEndpoints::<Empty<Bytes>>::new())
            .unwrap();
        let rsp = balance.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(rsp.into_body().collect().await.unwrap().to_bytes(), "first");
        // The idle pooled connection dies with the server; a new server takes the port.
        server.stop().await;
        let _again = TestServer::restart(addr, named("second")).await;
        let rsp = balance.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(
            rsp.into_body().collect().await.unwrap().to_bytes(),
            "second"
        );
    }

    #[tokio::test]
    async fn connections_are_reused_and_bodies_stream() {
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = accepted.clone();
        tokio::spawn(async move {
            let app = named("counted");
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let svc = hyper_util::service::TowerToHyperService::new(app.clone());
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
                });
            }
        });
        let balance = Balance::builder()
            .backends([Backend::new(addr)])
            .build(PooledEndpoints::<Empty<Bytes>>::new())
            .unwrap();
        for _ in 0..50 {
            let rsp = balance.clone().oneshot(get("/")).await.unwrap();
            assert_eq!(
                rsp.into_body().collect().await.unwrap().to_bytes(),
                "counted"
            );
        }
        // Sequential requests whose bodies were read to the end share one connection.
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn unreachable_backends_fail_as_connect_errors() {
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let balance = Balance::builder()
            .backends([Backend::new(addr)])
            .build(PooledEndpoints::<Empty<Bytes>>::new())
            .unwrap();
        let err = balance.oneshot(get("/")).await.unwrap_err();
        assert!(tower_lb::error::is_connect_error(&*err), "{err}");
    }
}

/// A backend whose `/stream` answer sends one chunk and then stays open until told.
fn streaming(name: &'static str, release: std::sync::Arc<tokio::sync::Notify>) -> Router {
    Router::new()
        .route(
            "/stream",
            axum::routing::get(move || {
                let release = release.clone();
                async move {
                    let chunks = futures_util::stream::unfold(0, move |n| {
                        let release = release.clone();
                        async move {
                            match n {
                                0 => Some((Ok::<_, Infallible>(Bytes::from("first\n")), 1)),
                                1 => {
                                    release.notified().await;
                                    Some((Ok(Bytes::from("last\n")), 2))
                                }
                                _ => None,
                            }
                        }
                    });
                    Body::from_stream(chunks)
                }
            }),
        )
        .fallback(move || async move { name })
}

/// nginx and HAProxy count a connection as active until its response ends: a request
/// whose response is still streaming keeps its backend busy for least connections.
#[tokio::test]
async fn a_streaming_response_counts_in_flight_until_its_body_ends() {
    use tower_lb::balance::strategy::LeastConn;
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let a = TestServer::start(streaming("a", release.clone())).await;
    let b = TestServer::start(named("b")).await;
    let balance = Balance::builder()
        .strategy(LeastConn::new())
        .backends([Backend::new(a.addr), Backend::new(b.addr)])
        .build(HttpEndpoints::new())
        .unwrap();
    let in_flight = |addr| {
        balance
            .stats()
            .backends
            .iter()
            .find(|s| s.key == addr)
            .map(|s| s.in_flight)
            .unwrap()
    };
    // Least connections with no load picks the first backend: the stream goes to "a".
    let rsp = balance.clone().oneshot(get("/stream")).await.unwrap();
    let mut body = rsp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first\n");
    assert_eq!((in_flight(a.addr), in_flight(b.addr)), (1, 0));

    let mut seen = Vec::new();
    for _ in 0..10 {
        let rsp = balance.clone().oneshot(get("/")).await.unwrap();
        seen.push(text(rsp).await);
    }
    assert!(seen.iter().all(|s| s == "b"), "{seen:?}");

    release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "last\n");
    assert_eq!((in_flight(a.addr), in_flight(b.addr)), (0, 0));
    // A body dropped before its end also ends the count.
    let rsp = balance.clone().oneshot(get("/stream")).await.unwrap();
    let stream_on = if in_flight(a.addr) == 1 {
        a.addr
    } else {
        b.addr
    };
    assert_eq!(in_flight(stream_on), 1);
    drop(rsp);
    assert_eq!((in_flight(a.addr), in_flight(b.addr)), (0, 0));
}
