//! The gateway process while its configuration changes: backends from a watched file
//! and from DNS, whole-configuration reloads on SIGHUP, and a rolling deployment under
//! load.

use std::{
    collections::HashMap,
    future::Future,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{body::Body, routing::get as route, Router};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, Notify};

use crate::common::{self, client, get, Gateway, TestClient};
use crate::dns_server::DnsServer;
use crate::support::{named, TestServer};

/// Polls `cond` every 20 ms for up to 30 s; whether it came to hold.
async fn until<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The gateway's `/status` as JSON.
async fn status(gw: &Gateway) -> serde_json::Value {
    let (s, body) = get(&client(), &gw.url("/status")).await;
    assert_eq!(s, StatusCode::OK);
    serde_json::from_slice(&body).expect("JSON status")
}

/// The backend of pool `pool` whose key ends with `addr`, if it is in the pool.
async fn backend(gw: &Gateway, pool: &str, addr: &str) -> Option<serde_json::Value> {
    let s = status(gw).await;
    s["pools"][pool]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["backend"].as_str().is_some_and(|k| k.ends_with(addr)))
        .cloned()
}

/// The body of `GET path` as text.
async fn text(c: &TestClient, gw: &Gateway, path: &str) -> String {
    let (s, body) = get(c, &gw.url(path)).await;
    assert_eq!(s, StatusCode::OK, "{body:?}");
    String::from_utf8(body.to_vec()).unwrap()
}

/// Writes a temporary file and renames it over `path`, as editors and deploy tools do.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn sighup(gw: &Gateway) {
    let pid = gw.child.id().to_string();
    let ok = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(ok.success());
}

/// A backend answering `name`, and `/slow` (announced on `arrived`) only once `release`
/// is notified.
fn slow_named(
    name: &'static str,
    release: Arc<Notify>,
    arrived: mpsc::UnboundedSender<()>,
) -> Router {
    named(name).route(
        "/slow",
        route(move || {
            let (release, arrived) = (release.clone(), arrived.clone());
            async move {
                let _ = arrived.send(());
                release.notified().await;
                format!("slow {name}")
            }
        }),
    )
}

// === 1. backends that change at runtime ===

#[tokio::test]
async fn a_backends_file_adds_backends_at_once_and_drains_those_that_leave() {
    let release = Arc::new(Notify::new());
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let a = TestServer::start(slow_named("a", release.clone(), arrived_tx)).await;
    let b = TestServer::start(named("b")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backends.toml");
    // `HOST:PORT` and `http://` URLs are the same kind of address.
    save(&file, &format!("[[backend]]\naddress = \"{}\"\n", a.addr));
    let gw = Gateway::start(&[
        "--backends-file",
        file.to_str().unwrap(),
        "--slow-start",
        "1h",
    ])
    .await;
    let c = client();
    assert_eq!(text(&c, &gw, "/").await, "a");
    assert_eq!(
        status(&gw).await["pools"]["default"]["source"],
        format!("file:{}", file.display())
    );

    // A request in flight on `a` when `a` leaves the file.
    let slow = tokio::spawn({
        let (c, url) = (c.clone(), gw.url("/slow"));
        async move { get(&c, &url).await }
    });
    arrived.recv().await.expect("the slow request reached a");
    save(
        &file,
        &format!("[[backend]]\naddress = \"http://{}\"\nweight = 3\n", b.addr),
    );

    // `b` takes traffic at once (ramping: slow start is on), `a` gets no new request and
    // stays, draining, while its request is in flight.
    assert!(
        until(|| async { text(&c, &gw, "/").await == "b" }).await,
        "b never served"
    );
    let b_now = backend(&gw, "default", &b.addr.to_string())
        .await
        .expect("b in the pool");
    assert_eq!(b_now["weight"], 3);
    assert!(b_now["effective_weight"].as_f64().unwrap() < 3.0, "{b_now}");
    let a_now = backend(&gw, "default", &a.addr.to_string())
        .await
        .expect("a drains");
    assert_eq!(
        (a_now["state"].as_str(), a_now["in_flight"].as_u64()),
        (Some("draining"), Some(1))
    );
    for _ in 0..20 {
        assert_eq!(text(&c, &gw, "/").await, "b");
    }

    // Its request finishes, then it is removed.
    release.notify_one();
    let (s, body) = slow.await.unwrap();
    assert_eq!((s, &body[..]), (StatusCode::OK, &b"slow a"[..]));
    assert!(
        until(|| async { backend(&gw, "default", &a.addr.to_string()).await.is_none() }).await,
        "a was never removed"
    );
}

#[tokio::test]
async fn a_missing_or_bad_backends_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[backend]]\naddress = \"ftp://127.0.0.1:1\"\n").unwrap();
    let missing = dir.path().join("missing.toml");
    for (path, says) in [(&bad, "ftp"), (&missing, "missing.toml")] {
        let out = Command::new(common::gateway_bin())
            .args(["--listen", "127.0.0.1:0", "--backends-file"])
            .arg(path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("--backends-file") && err.contains(says),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[tokio::test]
async fn dns_answers_become_the_pool_and_it_follows_their_changes() {
    let a = TestServer::start(named("a")).await;
    let b = TestServer::start(named("b")).await;
    let dns = DnsServer::start(1).await;
    dns.set_host("a.api.test.", &["127.0.0.1"]);
    dns.set_host("b.api.test.", &["127.0.0.1"]);
    // SRV priorities are levels: b serves only while a cannot.
    dns.set_srv(
        "_http._tcp.api.test.",
        &[
            (10, 1, a.addr.port(), "a.api.test."),
            (20, 1, b.addr.port(), "b.api.test."),
        ],
    );
    let gw = Gateway::start(&[
        "--dns",
        "_http._tcp.api.test.",
        "--dns-server",
        &dns.addr.to_string(),
    ])
    .await;
    let c = client();
    assert!(
        until(|| async { get(&c, &gw.url("/")).await.1 == "a" }).await,
        "the first answer never arrived"
    );
    let b_now = backend(&gw, "default", &b.addr.to_string())
        .await
        .expect("b");
    assert_eq!(b_now["priority"], 1);

    // The record of a goes away: a drains and leaves, b is the primary.
    dns.set_srv(
        "_http._tcp.api.test.",
        &[(10, 1, b.addr.port(), "b.api.test.")],
    );
    assert!(
        until(|| async { backend(&gw, "default", &a.addr.to_string()).await.is_none() }).await,
        "a never left"
    );
    for _ in 0..10 {
        assert_eq!(text(&c, &gw, "/").await, "b");
    }
    assert_eq!(
        backend(&gw, "default", &b.addr.to_string()).await.unwrap()["priority"],
        0
    );

    // `HOST:PORT` of an address: a fixed set, nothing to ask the server.
    let gw = Gateway::start(&[
        "--dns",
        &a.addr.to_string(),
        "--dns-server",
        &dns.addr.to_string(),
    ])
    .await;
    assert!(until(|| async { get(&c, &gw.url("/")).await.1 == "a" }).await);
}

// === 2. SIGHUP ===

/// One HTTP/1.1 connection kept open across requests.
async fn connection(gw: &Gateway) -> hyper::client::conn::http1::SendRequest<Body> {
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn send_on(conn: &mut hyper::client::conn::http1::SendRequest<Body>, path: &str) -> String {
    conn.ready().await.expect("the connection is still open");
    let req = http::Request::get(path)
        .header("host", "gateway.test")
        .body(Body::empty())
        .unwrap();
    let rsp = conn.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    String::from_utf8(rsp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn sighup_reloads_the_whole_configuration_and_a_bad_one_changes_nothing() {
    let release = Arc::new(Notify::new());
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let a = TestServer::start(slow_named("a", release.clone(), arrived_tx)).await;
    let b = TestServer::start(named("b")).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    save(
        &config,
        &format!(
            "strategy = \"round-robin\"\n\n[[backend]]\nurl = \"{}\"\n",
            a.addr
        ),
    );
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(text(&c, &gw, "/").await, "a");
    }
    let mut kept = connection(&gw).await;
    assert_eq!(send_on(&mut kept, "/").await, "a");
    let slow = tokio::spawn({
        let (c, url) = (c.clone(), gw.url("/slow"));
        async move { get(&c, &url).await }
    });
    arrived.recv().await.expect("the slow request reached a");
    let a_requests = backend(&gw, "default", &a.addr.to_string()).await.unwrap()["requests"]
        .as_u64()
        .unwrap();
    assert_eq!(status(&gw).await["config"]["generation"], 1);

    // A + B, and a routed pool: applied on SIGHUP.
    save(
        &config,
        &format!(
            "strategy = \"round-robin\"\n\n[[backend]]\nurl = \"{a}\"\n\n[[backend]]\nurl = \"{b}\"\n\n\
             [[pool]]\nname = \"api\"\nbackends = [{{ url = \"{b}\" }}]\n\n[[route]]\nprefix = \"/api/\"\npool = \"api\"\n",
            a = a.addr,
            b = b.addr
        ),
    );
    sighup(&gw);
    assert!(
        until(|| async { text(&c, &gw, "/").await == "b" }).await,
        "b never served"
    );
    assert!(until(|| async { status(&gw).await["config"]["generation"] == 2 }).await);
    assert_eq!(text(&c, &gw, "/api/x").await, "b");
    // Same strategy: the balancer, and a's state, are kept.
    let a_now = backend(&gw, "default", &a.addr.to_string()).await.unwrap();
    assert!(a_now["requests"].as_u64().unwrap() >= a_requests, "{a_now}");
    // The open connection and the request in flight survive.
    let on_kept = send_on(&mut kept, "/").await;
    assert!(on_kept == "a" || on_kept == "b", "{on_kept}");
    release.notify_one();
    let (st, body) = slow.await.unwrap();
    assert_eq!((st, &body[..]), (StatusCode::OK, &b"slow a"[..]));

    // A broken file: the reload is refused, the running configuration keeps serving.
    save(&config, "strategy = \"fastest\"\n");
    sighup(&gw);
    assert!(
        until(|| async { status(&gw).await["config"]["failed_reloads"] == 1 }).await,
        "the failed reload was never reported"
    );
    let s = status(&gw).await;
    assert!(
        s["config"]["last_reload_error"]
            .as_str()
            .unwrap()
            .contains("fastest"),
        "{s}"
    );
    assert_eq!(s["config"]["generation"], 2);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(text(&c, &gw, "/").await);
    }
    assert!(
        seen.contains(&"a".to_owned()) && seen.contains(&"b".to_owned()),
        "{seen:?}"
    );
    assert_eq!(text(&c, &gw, "/api/x").await, "b");
    assert_eq!(send_on(&mut kept, "/api/y").await, "b");

    // Another strategy: a new balancer, so backends start with fresh counters.
    let before = backend(&gw, "default", &a.addr.to_string()).await.unwrap()["requests"]
        .as_u64()
        .unwrap();
    assert!(before > 0);
    save(
        &config,
        &format!(
            "strategy = \"least-conn\"\n\n[[backend]]\nurl = \"{}\"\n",
            a.addr
        ),
    );
    sighup(&gw);
    assert!(
        until(|| async {
            let s = status(&gw).await;
            s["config"]["generation"] == 3 && s["pools"]["default"]["strategy"] == "least-conn"
        })
        .await
    );
    let s = status(&gw).await;
    let a_now = backend(&gw, "default", &a.addr.to_string()).await.unwrap();
    assert!(a_now["requests"].as_u64().unwrap() < before, "{a_now}");
    assert!(backend(&gw, "default", &b.addr.to_string()).await.is_none());
    assert!(s["pools"].get("api").is_none(), "{s}");
    assert_eq!(text(&c, &gw, "/").await, "a");
}

// === 3. a rolling deployment under load ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deployment_under_load_loses_no_request() {
    const OLD: [&str; 3] = ["old-1", "old-2", "old-3"];
    const NEW: [&str; 3] = ["new-1", "new-2", "new-3"];
    let mut old = Vec::new();
    for name in OLD {
        old.push(Some(TestServer::start(named(name)).await));
    }
    let mut new: Vec<TestServer> = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backends.toml");
    let write = |addrs: &[String]| {
        let text: String = addrs
            .iter()
            .map(|a| format!("[[backend]]\naddress = \"{a}\"\n\n"))
            .collect();
        save(&file, &text);
    };
    let mut live: Vec<String> = old
        .iter()
        .map(|s| s.as_ref().unwrap().addr.to_string())
        .collect();
    write(&live);
    // No retries: a request sent to a stopped backend would fail, not be retried away.
    // Round robin: with peak-EWMA P2C a backend that joins starts at the default RTT
    // (30 ms), far above loopback latencies, and gets its first requests only once an
    // old backend's latency peaks; that would make "the new one serves" a matter of luck.
    let gw = Arc::new(
        Gateway::start(&[
            "--backends-file",
            file.to_str().unwrap(),
            "--retries",
            "0",
            "--strategy",
            "round-robin",
        ])
        .await,
    );

    // The load: four clients, each sending one request after the other until the
    // deployment is over (at most 100,000 each).
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let served: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (gw, stop, failed, served) = (gw.clone(), stop.clone(), failed.clone(), served.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let url = gw.url("/deploy");
            for _ in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let req = http::Request::get(&url).body(Body::empty()).unwrap();
                let rsp = match c.request(req).await {
                    Ok(rsp) => rsp,
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        failed.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                };
                let status = rsp.status();
                let body = match rsp.into_body().collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        eprintln!("body failed: {e}");
                        failed.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                };
                if status != StatusCode::OK {
                    eprintln!("failed: {status} {body:?}");
                    failed.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let name = String::from_utf8_lossy(&body).into_owned();
                *served.lock().unwrap().entry(name).or_default() += 1;
            }
        }));
    }
    let served_by = |name: &str| served.lock().unwrap().get(name).copied().unwrap_or(0);
    assert!(until(|| async { OLD.iter().all(|n| served_by(n) > 0) }).await);

    for (i, name) in NEW.into_iter().enumerate() {
        // A new version joins and takes traffic…
        let server = TestServer::start(named(name)).await;
        live.push(server.addr.to_string());
        write(&live);
        new.push(server);
        assert!(
            until(|| async { served_by(name) > 0 }).await,
            "{name} never served"
        );
        // …then an old one leaves: drained, removed once its requests in flight are
        // done, and only then stopped.
        let leaving = old[i].take().unwrap();
        let addr = leaving.addr.to_string();
        live.retain(|a| *a != addr);
        write(&live);
        assert!(
            until(|| async {
                match backend(&gw, "default", &addr).await {
                    None => true,
                    Some(b) => b["state"] == "draining" && b["in_flight"] == 0,
                }
            })
            .await,
            "{} never drained",
            OLD[i]
        );
        leaving.stop().await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let served = served.lock().unwrap().clone();
    let total: usize = served.values().sum();
    eprintln!("served during the deployment: {served:?}");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests were lost; served: {served:?}"
    );
    for name in NEW {
        assert!(
            served.get(name).copied().unwrap_or(0) > 0,
            "{name}: {served:?}"
        );
    }
    assert!(total >= 100, "{served:?}");
}
