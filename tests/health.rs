//! Health against real axum backends on 127.0.0.1 that are stopped and restarted.
//!
//! Run with `cargo test --features health --test main health:: -- --nocapture` to see the
//! measured figures (time to eject, time to readmit, requests lost).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use axum::{routing::get, Router};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use tokio::{net::TcpListener, sync::oneshot, task::JoinSet, time::Instant};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_lb::{
    balance::{strategy::RoundRobin, MakeEndpoint, RequestPolicy, Status, Target},
    health::{
        active::{HttpProbe, Prober},
        passive::{PassiveHealthLayer, Window},
    },
    http::{HttpEndpoints, HttpPolicy},
    Backend, Balance, BoxError,
};

use crate::support;

// === test backends ===

/// One axum backend. `kill` closes its listener and every open connection, as a crashed
/// process would; `restart` binds the same address again.
struct TestBackend {
    addr: SocketAddr,
    /// The status `/` answers.
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestBackend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut me = Self {
            addr: listener.local_addr().unwrap(),
            status: Arc::new(AtomicU16::new(200)),
            hits: Arc::new(AtomicUsize::new(0)),
            stop: None,
            task: None,
        };
        me.serve(listener);
        me
    }

    fn key(&self) -> String {
        self.addr.to_string()
    }

    fn serve(&mut self, listener: TcpListener) {
        let status = self.status.clone();
        let hits = self.hits.clone();
        let app = Router::new()
            .route(
                "/",
                get(move || {
                    let code = status.load(Relaxed);
                    hits.fetch_add(1, Relaxed);
                    async move { (StatusCode::from_u16(code).unwrap(), "hello") }
                }),
            )
            .route("/healthz", get(|| async { "ok" }));
        let (tx, mut rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((io, _)) = accepted else { continue };
                        let app = app.clone();
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let mut app = app.clone();
                                async move { app.call(req).await }
                            });
                            let _ = hyper_util::server::conn::auto::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                            .await;
                        });
                    }
                    _ = &mut rx => break,
                }
            }
            // Dropping the listener and `conns` closes every socket.
        });
        self.stop = Some(tx);
        self.task = Some(task);
    }

    async fn kill(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    async fn restart(&mut self) {
        // The port was just released; binding it again may take a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}; retrying", self.addr);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

// === the balancer under test ===

type Body = Empty<Bytes>;

fn balancer(
    backends: &[&TestBackend],
    layer: impl Fn(&Target<'_, String>) -> PassiveHealthLayer + Send + Sync + 'static,
) -> Balance<
    String,
    impl Service<
            http::Request<Body>,
            Response = http::Response<
                tower_lb::health::passive::ResponseBody<
                    tower_lb::http::TrackedBody<hyper::body::Incoming>,
                    tower_lb::health::passive::GrpcEos,
                >,
            >,
            Error = hyper_util::client::legacy::Error,
            Future = impl Send,
        > + Clone
        + Send
        + Sync
        + 'static,
    HttpPolicy<tower_lb::http::CloneBody>,
> {
    balancer_with(backends, layer, HttpPolicy::new().replay_clone())
}

fn balancer_with<P>(
    backends: &[&TestBackend],
    layer: impl Fn(&Target<'_, String>) -> PassiveHealthLayer + Send + Sync + 'static,
    policy: P,
) -> Balance<
    String,
    impl Service<
            http::Request<Body>,
            Response = http::Response<
                tower_lb::health::passive::ResponseBody<
                    tower_lb::http::TrackedBody<hyper::body::Incoming>,
                    tower_lb::health::passive::GrpcEos,
                >,
            >,
            Error = hyper_util::client::legacy::Error,
            Future = impl Send,
        > + Clone
        + Send
        + Sync
        + 'static,
    P,
> {
    let endpoints = HttpEndpoints::<Body>::new();
    Balance::builder()
        .strategy(RoundRobin::new())
        .backends(backends.iter().map(|b| Backend::new(b.key())))
        .policy(policy)
        .build(move |t: &Target<'_, String>| {
            let endpoint = endpoints.make_endpoint(t).expect("valid backend address");
            ServiceBuilder::new().layer(layer(t)).service(endpoint)
        })
        .unwrap()
}

async fn get_once<S, P>(balance: &Balance<String, S, P>) -> Result<StatusCode, BoxError>
where
    P: RequestPolicy<http::Request<Body>> + Clone,
    S: Service<
            http::Request<Body>,
            Response = http::Response<
                tower_lb::health::passive::ResponseBody<
                    tower_lb::http::TrackedBody<hyper::body::Incoming>,
                    tower_lb::health::passive::GrpcEos,
                >,
            >,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
{
    let req = http::Request::get("/").body(Empty::new()).unwrap();
    let rsp = balance.clone().oneshot(req).await?;
    let status = rsp.status();
    rsp.into_body().collect().await?;
    Ok(status)
}

fn status_of<S: Clone + Send + Sync + 'static, P>(
    balance: &Balance<String, S, P>,
    key: &str,
) -> Status {
    balance
        .stats()
        .backends
        .into_iter()
        .find(|b| b.key == key)
        .expect("backend in the set")
        .status
}

/// Polls `cond` every 5 ms for up to 20 s; returns how long it took.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t0.elapsed()
}

fn window(t: &Target<'_, String>) -> PassiveHealthLayer {
    PassiveHealthLayer::new(t).policy(
        Window::new()
            .max_fails(1)
            .fail_timeout(Duration::from_secs(1)),
    )
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejects_a_backend_that_answers_503_and_one_that_died() {
    let a = TestBackend::start().await;
    let mut b = TestBackend::start().await;
    let c = TestBackend::start().await;
    let balance = balancer(&[&a, &b, &c], window);

    // b answers 503: ejected at its first failure (max_fails 1).
    b.status.store(503, Relaxed);
    let t0 = Instant::now();
    let mut sent = 0;
    while !matches!(status_of(&balance, &b.key()), Status::Ejected { .. }) {
        assert!(sent < 1000, "b was never ejected");
        get_once(&balance).await.unwrap();
        sent += 1;
    }
    eprintln!(
        "measured: 503 backend ejected after {sent} requests, {:?}",
        t0.elapsed()
    );
    let hits = b.hits.load(Relaxed);
    for _ in 0..20 {
        assert_eq!(get_once(&balance).await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        b.hits.load(Relaxed),
        hits,
        "an ejected backend gets no requests"
    );

    // Probation: once healthy again, the trial readmits it.
    b.status.store(200, Relaxed);
    // Traffic drives passive readmission: keep sending until b is healthy again.
    let t0 = Instant::now();
    while status_of(&balance, &b.key()) != Status::Healthy {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "b was never readmitted"
        );
        assert_eq!(get_once(&balance).await.unwrap(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "measured: 503 backend readmitted by its probation trial {:?} after it recovered (fail_timeout 1s)",
        t0.elapsed()
    );

    // The backend dies: connections refused, ejected, no request lost.
    b.kill().await;
    let t0 = Instant::now();
    let mut failed = 0;
    let mut sent = 0;
    while !matches!(status_of(&balance, &b.key()), Status::Ejected { .. }) {
        assert!(sent < 1000, "the dead backend was never ejected");
        if get_once(&balance).await.is_err() {
            failed += 1;
        }
        sent += 1;
    }
    eprintln!(
        "measured: dead backend ejected after {sent} requests, {:?}, {failed} failed",
        t0.elapsed()
    );
    assert_eq!(failed, 0, "connect-refused requests are retried elsewhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prober_marks_a_dead_backend_down_and_readmits_it_after_restart() {
    let a = TestBackend::start().await;
    let mut b = TestBackend::start().await;
    let balance = balancer(&[&a, &b], window);
    let interval = Duration::from_millis(500);
    let _prober = Prober::new(HttpProbe::new("/healthz").unwrap())
        .interval(interval)
        .fast_interval(Duration::from_millis(200))
        .timeout(Duration::from_millis(500))
        .rise(2)
        .fall(2)
        .spawn(&balance)
        .unwrap();
    wait_for("first probes", || balance.stats().available == 2).await;

    // No traffic at all: only the prober can notice.
    b.kill().await;
    let down = wait_for("b marked down", || {
        status_of(&balance, &b.key()) == Status::Down
    })
    .await;
    eprintln!("measured: prober marked the dead backend down after {down:?} (interval {interval:?}, fall 2)");
    assert_eq!(balance.stats().available, 1);
    for _ in 0..10 {
        assert_eq!(get_once(&balance).await.unwrap(), StatusCode::OK);
    }

    b.restart().await;
    let up = wait_for("b marked up", || {
        status_of(&balance, &b.key()) == Status::Healthy
    })
    .await;
    eprintln!("measured: prober readmitted the restarted backend after {up:?} (interval {interval:?}, fast 200ms, rise 2)");
    let hits = b.hits.load(Relaxed);
    for _ in 0..10 {
        assert_eq!(get_once(&balance).await.unwrap(), StatusCode::OK);
    }
    assert!(
        b.hits.load(Relaxed) > hits,
        "the readmitted backend takes traffic"
    );
}

struct LoadReport {
    sent: usize,
    failures: Vec<BoxError>,
    eject: Duration,
}

/// Four workers send GETs back to back; once b has served 200 of them it is killed
/// (listener and open connections closed, like a crashed process). The load goes on until
/// 500 more GETs were sent.
async fn kill_under_load<P>(policy: P) -> LoadReport
where
    P: RequestPolicy<http::Request<Body>> + Clone,
{
    let a = TestBackend::start().await;
    let mut b = TestBackend::start().await;
    let c = TestBackend::start().await;
    let balance = balancer_with(&[&a, &b, &c], window, policy);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = JoinSet::new();
    for _ in 0..4 {
        let (balance, stop, sent, failures) = (
            balance.clone(),
            stop.clone(),
            sent.clone(),
            failures.clone(),
        );
        workers.spawn(async move {
            // Bounded: at most 20 000 requests per worker.
            for _ in 0..20_000 {
                if stop.load(Relaxed) {
                    break;
                }
                let res = get_once(&balance).await;
                sent.fetch_add(1, Relaxed);
                match res {
                    Ok(StatusCode::OK) => {}
                    Ok(other) => failures
                        .lock()
                        .unwrap()
                        .push(format!("unexpected status {other}").into()),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        });
    }
    wait_for("steady load", || b.hits.load(Relaxed) > 200).await;
    b.kill().await;
    let eject = wait_for("b ejected", || {
        matches!(status_of(&balance, &b.key()), Status::Ejected { .. })
    })
    .await;
    let before = sent.load(Relaxed);
    wait_for("more load after the death", || {
        sent.load(Relaxed) > before + 500
    })
    .await;
    stop.store(true, Relaxed);
    while workers.join_next().await.is_some() {}
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    LoadReport {
        sent: sent.load(Relaxed),
        failures,
        eject,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_get_fails_while_a_backend_dies_under_load() {
    // The stock HTTP policy replays connect failures (any method) and transport errors of
    // idempotent requests (nginx `proxy_next_upstream error`), so a GET caught in flight
    // by the crash goes to another backend too.
    let report = kill_under_load(HttpPolicy::new().replay_clone()).await;
    eprintln!(
        "measured (HttpPolicy::replay_clone): dead backend ejected {:?} after the kill; \
         {} GETs, {} failed",
        report.eject,
        report.sent,
        report.failures.len()
    );
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

// === a third-party health endpoint ===

/// `POST`s or `GET`s `path` on `addr` and returns the body.
async fn call_app(addr: SocketAddr, method: http::Method, path: &str) -> String {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let rsp = client.request(req).await.expect("the app answers");
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The application health endpoint of the brief (FastAPI, named checks) answers `200`
/// with `{"status": "unhealthy"}` when a check fails: a status-only probe keeps the
/// backend up, a probe that expects the body's verdict marks it down, and up again when
/// the check passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_expectation_sees_through_a_200_unhealthy_health_endpoint() {
    if !support::have_python(&["fastapi", "uvicorn"]) {
        return;
    }
    let app = support::python_peer("health_app.py", &["app"]).await;
    let key = app.addr().to_string();
    let make = || {
        Balance::builder()
            .backends([Backend::new(key.clone())])
            .build(HttpEndpoints::<Body>::new())
            .unwrap()
    };
    let (by_body, by_status) = (make(), make());
    let probe = |path: &str| {
        HttpProbe::new(path)
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
    };
    let prober = |p: HttpProbe| {
        Prober::new(p)
            .interval(Duration::from_millis(200))
            .fast_interval(Duration::from_millis(200))
            .timeout(Duration::from_secs(2))
            .rise(1)
            .fall(1)
    };
    let expect = tower_lb::health::active::BodyMatch::json("/status", "healthy").unwrap();
    let _body = prober(probe("/health?probe=body").expect_body(expect))
        .spawn(&by_body)
        .unwrap();
    let _status = prober(probe("/health?probe=status"))
        .spawn(&by_status)
        .unwrap();
    let hits = || call_app(app.addr(), http::Method::GET, "/hits?probe=status");
    // Both probers have seen the healthy app.
    let mut seen = 0;
    for _ in 0..200 {
        seen = hits().await.parse::<u32>().unwrap();
        if seen >= 1 && status_of(&by_body, &key) == Status::Healthy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen >= 1, "the status-only prober never probed");

    call_app(app.addr(), http::Method::POST, "/fail/database").await;
    let down = wait_for("marked down by its body", || {
        status_of(&by_body, &key) == Status::Down
    })
    .await;
    eprintln!("measured: an unhealthy body marked the backend down after {down:?}");
    // The status-only prober probes twice more, and still sees the backend up.
    let before = hits().await.parse::<u32>().unwrap();
    for _ in 0..400 {
        if hits().await.parse::<u32>().unwrap() >= before + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hits().await.parse::<u32>().unwrap() >= before + 2);
    assert_eq!(status_of(&by_status, &key), Status::Healthy);

    call_app(app.addr(), http::Method::POST, "/heal/database").await;
    wait_for("marked up again", || {
        status_of(&by_body, &key) == Status::Healthy
    })
    .await;
}
