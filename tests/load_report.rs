//! Weighted round robin from load reports over real backends on 127.0.0.1: axum
//! backends that attach reports with `AttachReportLayer`, and Python backends whose
//! reports Google's `protobuf` package encodes (`tests/peers/orca_backend.py`).

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use tower::{util::BoxCloneService, ServiceExt};
use tower_lb::{
    balance::{strategy::LoadReport, Target},
    http::{
        load_report::{AttachReportLayer, Encoding, ReadReportsLayer, Report},
        HttpEndpoints,
    },
    Backend, Balance, BoxError,
};

use crate::support::{have_python, named, python_peer, TestServer};

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
type Lb = BoxCloneService<Request<Empty<Bytes>>, http::Response<Body>, BoxError>;

fn get() -> Request<Empty<Bytes>> {
    Request::get("/").body(Empty::new()).unwrap()
}

/// A balancer over `addrs` weighing by load reports, and its strategy. The blackout is
/// off and weights are recomputed every 100 ms (gRPC's shortest), so that the test
/// needs no ten-second wait; the blackout and expiry themselves are unit-tested on
/// paused time.
fn balancer(addrs: &[SocketAddr]) -> (Lb, Arc<LoadReport>) {
    balancer_over(addrs, HttpEndpoints::<Empty<Bytes>>::new())
}

fn balancer_over(addrs: &[SocketAddr], http: HttpEndpoints<Empty<Bytes>>) -> (Lb, Arc<LoadReport>) {
    let lb = Arc::new(
        LoadReport::new()
            .blackout_period(Duration::ZERO)
            .weight_update_period(Duration::from_millis(100)),
    );
    let balance = Balance::builder()
        .strategy(lb.clone())
        .backends(addrs.iter().map(|&a| Backend::new(a)))
        .endpoint_layer(|t: &Target<'_, SocketAddr>| ReadReportsLayer::new(t))
        .build(http)
        .unwrap();
    let boxed = balance.map_response(|r| r.map(|b| b.map_err(BoxError::from).boxed_unsync()));
    (BoxCloneService::new(boxed), lb)
}

/// Sends requests until every backend has a usable weight (bounded: 20 s).
async fn warm_up(balance: &Lb, lb: &LoadReport, n: usize) {
    for _ in 0..2_000 {
        let rsp = balance.clone().oneshot(get()).await.unwrap();
        rsp.into_body().collect().await.unwrap();
        let w = lb.weights();
        if w.len() == n && w.iter().all(Option::is_some) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("weights never became usable: {:?}", lb.weights());
}

/// Counts which backend answers each of `n` requests (by body).
async fn shares(balance: &Lb, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let rsp = balance.clone().oneshot(get()).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        *seen
            .entry(String::from_utf8_lossy(&body).into_owned())
            .or_default() += 1;
    }
    seen
}

/// A backend named `name` reporting `cpu` utilization at 100 requests a second.
fn reporting(name: &'static str, cpu: f64, encoding: Encoding) -> Router {
    named(name).layer(
        AttachReportLayer::new(move || {
            Report::new()
                .with_cpu_utilization(cpu)
                .with_rps_fractional(100.0)
        })
        .encoding(encoding),
    )
}

#[tokio::test]
async fn traffic_follows_reported_utilization() {
    // CPU 0.2, 0.4 and 0.8 at 100 qps: weights 500, 250 and 125, shares 4 : 2 : 1, each
    // backend in one of the header forms.
    let servers = [
        TestServer::start(reporting("light", 0.2, Encoding::Text)).await,
        TestServer::start(reporting("medium", 0.4, Encoding::Json)).await,
        TestServer::start(reporting("heavy", 0.8, Encoding::Binary)).await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let (balance, lb) = balancer(&addrs);
    warm_up(&balance, &lb, 3).await;
    let mut weights: Vec<f64> = lb.weights().into_iter().map(Option::unwrap).collect();
    weights.sort_by(f64::total_cmp);
    assert_eq!(weights, [125.0, 250.0, 500.0]);

    // The schedule is exact per cycle of 7 picks and keeps every backend's place when
    // the (unchanged) weights are recomputed, so any 700 consecutive picks hold each
    // backend's share to within two picks of the cycle's (as the deadline schedule's
    // own tests show); 3 allows for the window starting mid-cycle. No timing enters.
    let seen = shares(&balance, 700).await;
    for (name, want) in [("light", 400), ("medium", 200), ("heavy", 100)] {
        let got = seen.get(name).copied().unwrap_or(0);
        assert!(
            got.abs_diff(want) <= 3,
            "{name}: {got} of 700, want {want}: {seen:?}"
        );
    }
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test]
async fn grpc_style_reports_in_http2_trailers() {
    // The report travels in the trailers of an HTTP/2 response, after the body, as
    // gRPC servers send it; application utilization 0.1 and 0.3 at 100 qps wins over
    // CPU (reported as 0.9 by both): weights 1000 and 333.3, shares 3 : 1.
    let trailing = |name: &'static str, app: f64| {
        named(name).layer(
            AttachReportLayer::new(move || {
                Report::new()
                    .with_cpu_utilization(0.9)
                    .with_application_utilization(app)
                    .with_rps_fractional(100.0)
            })
            .encoding(Encoding::GrpcTrailers),
        )
    };
    let servers = [
        TestServer::start(trailing("light", 0.1)).await,
        TestServer::start(trailing("heavy", 0.3)).await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let h2 = HttpEndpoints::<Empty<Bytes>>::http2_with_connect_timeout(Duration::from_secs(5));
    let (balance, lb) = balancer_over(&addrs, h2);
    warm_up(&balance, &lb, 2).await;
    let mut weights: Vec<f64> = lb.weights().into_iter().map(Option::unwrap).collect();
    weights.sort_by(f64::total_cmp);
    assert_eq!(weights, [100.0 / 0.3, 100.0 / 0.1]);
    // Exact per cycle of 4; within 3 of 300 and 100 over 400 picks, as above.
    let seen = shares(&balance, 400).await;
    assert!(seen["light"].abs_diff(300) <= 3, "{seen:?}");
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test]
async fn without_reports_it_is_round_robin() {
    let servers = [
        TestServer::start(named("a")).await,
        TestServer::start(named("b")).await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let (balance, lb) = balancer(&addrs);
    let seen = shares(&balance, 200).await;
    assert_eq!((seen["a"], seen["b"]), (100, 100));
    assert_eq!(lb.weights(), [None, None]);
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test]
async fn reads_reports_that_python_protobuf_encodes() {
    if !have_python(&["google.protobuf"]) {
        return;
    }
    // CPU 0.2 and 0.6 at 100 qps with 0.25 errors a second each:
    // 100 ÷ (0.2 + 0.25 ÷ 100) and 100 ÷ (0.6 + 0.25 ÷ 100).
    let light = python_peer("orca_backend.py", &["0.2", "100"]).await;
    let heavy = python_peer("orca_backend.py", &["0.6", "100"]).await;

    // Their bytes, decoded by hand, are what the Python side set.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let uri = format!("http://127.0.0.1:{}/", light.port);
    let rsp = client
        .request(Request::get(uri).body(Empty::new()).unwrap())
        .await
        .unwrap();
    let report = Report::from_headers(rsp.headers())
        .expect("a report")
        .unwrap();
    let mut want = Report::new()
        .with_cpu_utilization(0.2)
        .with_mem_utilization(0.5)
        .with_rps_fractional(100.0)
        .with_eps(0.25)
        .with_named_metric("queue", 12.5);
    want.utilization.insert("disk".into(), 0.125);
    want.request_cost.insert("db_ms".into(), 3.0);
    // (The peer also sets the deprecated integer `rps`, which is read and dropped.)
    assert_eq!(report, want);

    let addrs: Vec<SocketAddr> = [light.port, heavy.port]
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .to_vec();
    let (balance, lb) = balancer(&addrs);
    warm_up(&balance, &lb, 2).await;
    let (w_light, w_heavy) = (100.0 / (0.2 + 0.25 / 100.0), 100.0 / (0.6 + 0.25 / 100.0));
    let mut weights: Vec<f64> = lb.weights().into_iter().map(Option::unwrap).collect();
    weights.sort_by(f64::total_cmp);
    assert_eq!(weights, [w_heavy, w_light]);

    // 1,000 picks: shares of w ÷ Σw (about 748.8 and 251.2), within 3 as above.
    let seen = shares(&balance, 1_000).await;
    let want_light = 1_000.0 * w_light / (w_light + w_heavy);
    let got_light = seen[&light.port.to_string()] as f64;
    assert!(
        (got_light - want_light).abs() <= 3.0,
        "light got {got_light} of 1000, want {want_light:.1}: {seen:?}"
    );
}

/// tonic on both sides: `tonic-health` servers attach reports to their trailers, and a
/// tonic client over the balancer reads them.
#[cfg(feature = "grpc")]
mod grpc {
    use super::*;
    use tokio::net::TcpListener;
    use tonic::transport::{server::TcpIncoming, Endpoint, Server};
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

    async fn server(app: f64) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let report = move || {
            Report::new()
                .with_application_utilization(app)
                .with_rps_fractional(50.0)
        };
        tokio::spawn(
            Server::builder()
                .layer(AttachReportLayer::new(report).encoding(Encoding::GrpcTrailers))
                .add_service(health)
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        addr
    }

    #[tokio::test]
    async fn tonic_backends_report_in_trailers() {
        // Application utilization 0.1 and 0.4 at 50 qps: weights 500 and 125, 4 : 1.
        let addrs = [server(0.1).await, server(0.4).await];
        let lb = Arc::new(
            LoadReport::new()
                .blackout_period(Duration::ZERO)
                .weight_update_period(Duration::from_millis(100)),
        );
        let balance = Balance::builder()
            .strategy(lb.clone())
            .backends(addrs.iter().map(|&a| Backend::new(a)))
            .endpoint_layer(|t: &Target<'_, SocketAddr>| ReadReportsLayer::new(t))
            .build(|t: &Target<'_, SocketAddr>| {
                Endpoint::from_shared(format!("http://{}", t.key()))
                    .unwrap()
                    .connect_lazy()
            })
            .unwrap();
        let mut client = HealthClient::new(balance.clone());
        let mut ready = false;
        for _ in 0..2_000 {
            client.check(HealthCheckRequest::default()).await.unwrap();
            if lb.weights().iter().filter(|w| w.is_some()).count() == 2 {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ready, "weights never became usable: {:?}", lb.weights());
        let before: Vec<u64> = addrs.iter().map(|a| requests(&balance, *a)).collect();
        for _ in 0..500 {
            client.check(HealthCheckRequest::default()).await.unwrap();
        }
        let light = requests(&balance, addrs[0]) - before[0];
        let heavy = requests(&balance, addrs[1]) - before[1];
        // Exact per cycle of 5; within 3 over 500 calls, as above.
        assert!(light.abs_diff(400) <= 3, "light {light}, heavy {heavy}");
        assert_eq!(light + heavy, 500);
    }

    fn requests<S: Clone + Send + Sync + 'static, P>(
        balance: &Balance<SocketAddr, S, P>,
        addr: SocketAddr,
    ) -> u64 {
        let stats = balance.stats();
        stats
            .backends
            .iter()
            .find(|b| b.key == addr)
            .unwrap()
            .requests
    }
}
