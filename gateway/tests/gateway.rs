//! The gateway binary as a process, against real servers on loopback.

use std::{
    net::SocketAddr,
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::Request,
    http::{Method, StatusCode},
    routing::any,
    Router,
};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

use crate::common::{client, gateway_bin, get, send, Gateway};
use crate::support::{named, wait_for, TestServer};

/// A backend that answers with the method and the headers it received, one per line.
fn echo_headers() -> Router {
    Router::new().fallback(|req: Request| async move {
        let mut out = format!("{}\n", req.method());
        for (k, v) in req.headers() {
            out += &format!("{k}: {}\n", v.to_str().unwrap_or("?"));
        }
        (
            [
                ("keep-alive", "timeout=5"),
                ("x-hop", "secret"),
                ("connection", "x-hop"),
            ],
            out,
        )
    })
}

#[tokio::test]
async fn cli_rejects_bad_input_with_status_2() {
    let cases: &[&[&str]] = &[
        &["--backend", "ftp://127.0.0.1:1"],
        &["--backend", "not a url"],
        &["--backend", "127.0.0.1:1,weight=0"],
        &["--backend", "127.0.0.1:1,weight=-3"],
        &["--backend", "127.0.0.1:1,heavy"],
        &["--backend", "127.0.0.1:1,priority=300"],
        &["--strategy", "fastest"],
        &["--timeout", "5parsecs"],
        &["--connect-timeout=-1s"],
        &["--retries", "many"],
        &["--max-fails=-1"],
        &["--fail-timeout", "soon"],
        &["--health-interval", "1x"],
        &["--slow-start", "gradually"],
        &["--pool", "api"],
        &["--route", "api=x"],
        &["--backend", "127.0.0.1:1", "--route", "/api/=nopool"],
        &["--listen", "nowhere"],
        &["--backends-file", "/nonexistent/backends.toml"],
        &["--backend", "127.0.0.1:1", "--backends-file", "b.toml"],
        &["--dns", "no-port"],
        &["--dns", "localhost:1", "--dns-server", "nowhere"],
        &["--pool", "api=dns:"],
        &["--tcp-listen", "127.0.0.1:1"],
        &["--tcp-listen", "127.0.0.1:0", "--tcp-backend", "nohost"],
        &[
            "--tcp-listen",
            "127.0.0.1:0",
            "--tcp-backend",
            "127.0.0.1:1,weight=0",
        ],
        &[
            "--tcp-listen",
            "127.0.0.1:0",
            "--tcp-backend",
            "127.0.0.1:1",
            "--tcp-strategy",
            "fast",
        ],
        &["--tcp-proxy", "127.0.0.1:0=strategy=fastest,127.0.0.1:1"],
        &["--tcp-proxy", "nowhere=127.0.0.1:1"],
    ];
    for args in cases {
        let out = tokio::task::spawn_blocking({
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            move || {
                Command::new(gateway_bin())
                    .args(&args)
                    .env_remove("BACKENDS")
                    .env_remove("LISTEN")
                    .output()
                    .expect("run gateway")
            }
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        let flag = args
            .iter()
            .rev()
            .find(|a| a.starts_with("--"))
            .unwrap()
            .trim_start_matches("--")
            .split('=')
            .next()
            .unwrap();
        assert!(
            stderr.contains(flag),
            "{args:?}: message does not name --{flag}: {stderr}"
        );
    }
}

#[tokio::test]
async fn proxies_every_method_and_sets_and_strips_headers() {
    let backend = TestServer::start(echo_headers()).await;
    let gw = Gateway::start(&["--backend", &backend.addr.to_string()]).await;
    let c = client();
    for m in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        let (s, _, body) = send(&c, method, &gw.url("/m"), &[], Body::from("x")).await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.starts_with(m.as_bytes()), "{m}: {body:?}");
    }
    let (s, _, body) = send(&c, Method::HEAD, &gw.url("/m"), &[], Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.is_empty());

    let (s, headers, body) = send(
        &c,
        Method::GET,
        &gw.url("/h"),
        &[
            // Naming X-Forwarded-For in Connection must not remove the proxy's own value.
            ("connection", "keep-alive, X-Forwarded-For, x-drop-me"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=1"),
            ("te", "gzip, trailers;q=0.5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-keep-me", "1"),
            ("host", "example.test"),
        ],
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let seen = String::from_utf8(body.to_vec()).unwrap();
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-real-ip: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(seen.contains("x-keep-me: 1\n"), "{seen}");
    assert!(
        seen.contains("host: example.test\n"),
        "Host is kept: {seen}"
    );
    // TE is hop-by-hop, but its `trailers` token is passed on alone (gRPC needs it).
    assert!(seen.contains("te: trailers\n"), "{seen}");
    for gone in [
        "x-drop-me",
        "keep-alive",
        "gzip",
        "proxy-authorization",
        "6.6.6.6",
    ] {
        assert!(!seen.contains(gone), "{gone} reached the backend: {seen}");
    }
    // Hop-by-hop headers of the response are stripped too.
    assert!(!headers.contains_key("x-hop"), "{headers:?}");
    assert!(!headers.contains_key("keep-alive"), "{headers:?}");
}

#[tokio::test]
async fn ten_megabyte_bodies_pass_intact_both_ways() {
    let backend = TestServer::start(
        Router::new()
            .fallback(|body: Bytes| async move {
                // Echo the body back, reversed, so the check sees it went both ways.
                let mut v = body.to_vec();
                v.reverse();
                v
            })
            .layer(axum::extract::DefaultBodyLimit::disable()),
    )
    .await;
    let gw = Gateway::start(&["--backend", &backend.addr.to_string()]).await;
    let payload: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (s, _, body) = send(
        &client(),
        Method::POST,
        &gw.url("/big"),
        &[],
        Body::from(payload.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let mut want = payload;
    want.reverse();
    assert_eq!(body.len(), want.len());
    assert!(body[..] == want[..]);
}

#[tokio::test]
async fn bodies_stream_without_buffering() {
    // The backend sends a first chunk, then waits for the test to see that chunk through
    // the gateway before sending the rest: a gateway that buffered whole bodies would
    // never deliver the first chunk.
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let seen_rx = Arc::new(tokio::sync::Mutex::new(seen_rx));
    let backend = TestServer::start(Router::new().fallback(move || {
        let seen_rx = seen_rx.clone();
        async move {
            let stream = async_stream_chunks(seen_rx);
            Body::from_stream(stream)
        }
    }))
    .await;
    let gw = Gateway::start(&["--backend", &backend.addr.to_string()]).await;
    let rsp = client()
        .request(
            http::Request::get(gw.url("/stream"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let mut body = rsp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(20), body.frame())
        .await
        .expect("first chunk arrives before the body ends")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first;");
    seen_tx.send(()).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "rest");
}

fn async_stream_chunks(
    seen: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<()>>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(0, move |step| {
        let seen = seen.clone();
        async move {
            match step {
                0 => Some((Ok(Bytes::from_static(b"first;")), 1)),
                1 => {
                    seen.lock().await.recv().await;
                    Some((Ok(Bytes::from_static(b"rest")), 2))
                }
                _ => None,
            }
        }
    })
}

/// A raw backend that reads one request, counts it, and closes the connection without
/// answering: the request's bytes left, and no response came back.
async fn black_hole() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
                drop(s);
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn a_post_is_never_sent_twice_but_a_get_is_retried() {
    let (hole, hole_count) = black_hole().await;
    let posts = Arc::new(AtomicUsize::new(0));
    let p = posts.clone();
    let good = TestServer::start(Router::new().fallback(move |req: Request| {
        let p = p.clone();
        async move {
            if req.method() == Method::POST {
                p.fetch_add(1, Ordering::SeqCst);
            }
            "good"
        }
    }))
    .await;
    // Passive health off: the black hole must stay in rotation for the GET.
    let gw = Gateway::start(&[
        "--strategy",
        "round-robin",
        "--max-fails",
        "0",
        "--backend",
        &hole.to_string(),
        "--backend",
        &good.addr.to_string(),
    ])
    .await;
    let c = client();
    // Round robin starts at the black hole.
    let (s, _, _) = send(&c, Method::POST, &gw.url("/pay"), &[], Body::from("once")).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(hole_count.load(Ordering::SeqCst), 1);
    assert_eq!(posts.load(Ordering::SeqCst), 0, "the POST was sent twice");
    // Next pick is the good one; then the black hole again, for a GET: retried.
    let (s, _) = get(&c, &gw.url("/a")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = get(&c, &gw.url("/b")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, "good");
    assert_eq!(hole_count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_backend_stopped_under_load_loses_no_get() {
    let mut servers = Vec::new();
    for n in ["one", "two", "three"] {
        servers.push(TestServer::start(named(n)).await);
    }
    let mut args = vec!["--strategy".to_string(), "round-robin".to_string()];
    for s in &servers {
        args.push("--backend".into());
        args.push(s.addr.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Arc::new(Gateway::start(&args).await);
    let c = client();
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (c, gw, done, failed) = (c.clone(), gw.clone(), done.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..150 {
                let (s, body) = get(&c, &gw.url("/load")).await;
                if s != StatusCode::OK {
                    eprintln!("failed GET: {s} {body:?}");
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Kill a backend, connections included, while the load runs.
    wait_for(|| done.load(Ordering::SeqCst) >= 300).await;
    servers.remove(1).stop().await;
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 1200);
    assert_eq!(failed.load(Ordering::SeqCst), 0, "GETs were lost");
}

#[tokio::test]
async fn all_backends_down_answer_503_or_502_quickly() {
    let mut dead = Vec::new();
    for _ in 0..2 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        dead.push(l.local_addr().unwrap().to_string());
    }
    let gw = Gateway::start(&["--backend", &dead[0], "--backend", &dead[1]]).await;
    let start = tokio::time::Instant::now();
    let (s, _) = tokio::time::timeout(Duration::from_secs(30), get(&client(), &gw.url("/")))
        .await
        .expect("no hang");
    assert!(
        s == StatusCode::SERVICE_UNAVAILABLE || s == StatusCode::BAD_GATEWAY,
        "{s}"
    );
    // Generous bound: well under the 30 s request timeout, whatever the machine.
    assert!(start.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn priority_levels_serve_in_order() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().to_string()
    };
    let one = TestServer::start(named("one")).await;
    let two = TestServer::start(named("two")).await;
    let gw = Gateway::start(&[
        "--backend",
        &dead,
        "--backend",
        &format!("{},priority=1", one.addr),
        "--backend",
        &format!("{},priority=2", two.addr),
    ])
    .await;
    let c = client();
    // The refused primary is ejected at its first failure; level 1 serves, never level 2.
    for _ in 0..10 {
        let (s, body) = get(&c, &gw.url("/x")).await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.starts_with(b"one"), "{body:?}");
    }
    let (_, body) = get(&c, &gw.url("/status")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let levels: Vec<_> = v["pools"]["default"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["priority"].as_u64().unwrap())
        .collect();
    assert_eq!(levels, [0, 1, 2]);
}

fn check_prometheus_text(text: &str) -> usize {
    let mut samples = 0;
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment {line:?}"
            );
            if let Some(t) = rest.strip_prefix("TYPE ") {
                let kind = t.split_whitespace().nth(1).unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line:?}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf",
            "bad value in {line:?}"
        );
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                assert!(!v.trim_end_matches('"').contains('"'), "{line:?}");
            }
        }
        samples += 1;
    }
    samples
}

#[tokio::test]
async fn health_metrics_and_status_endpoints() {
    let backend = TestServer::start(named("only")).await;
    let gw = Gateway::start(&["--backend", &backend.addr.to_string()]).await;
    let c = client();
    for _ in 0..5 {
        assert_eq!(get(&c, &gw.url("/x")).await.0, StatusCode::OK);
    }
    let (s, body) = get(&c, &gw.url("/health")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, "OK\n");
    let (s, body) = get(&c, &gw.url("/metrics")).await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(check_prometheus_text(&text) > 10, "{text}");
    let backend_label = format!("backend=\"http://{}\"", backend.addr);
    assert!(
        text.lines()
            .any(|l| l.starts_with("tower_lb_requests_total")
                && l.contains(&backend_label)
                && l.ends_with(" 5")),
        "{text}"
    );
    assert!(text.contains("tower_lb_response_seconds_bucket"), "{text}");
    for line in [
        "tower_lb_pool_available{pool=\"default\"} 1",
        "tower_lb_pool_level{pool=\"default\"} 0",
        "tower_lb_pool_panic{pool=\"default\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in {text}");
    }
    let (s, body) = get(&c, &gw.url("/status")).await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["pools"]["default"]["backends"][0]["requests"], 5);
    // Only the admin paths themselves are the gateway's: their neighbours are proxied.
    for path in [
        "/health/",
        "/healthz",
        "/metrics/x",
        "/Status",
        "/status.json",
    ] {
        let (s, body) = get(&c, &gw.url(path)).await;
        assert_eq!((s, &body[..]), (StatusCode::OK, &b"only"[..]), "{path}");
    }
    // And the admin paths answer GET only (axum's 405 for another method).
    let (s, _, _) = send(&c, Method::POST, &gw.url("/health"), &[], Body::empty()).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (_, body) = get(&c, &gw.url("/status")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["pools"]["default"]["backends"][0]["requests"], 10);
}

#[tokio::test]
async fn slow_start_shows_in_status() {
    let backend = TestServer::start(named("only")).await;
    let plain = Gateway::start(&["--backend", &format!("http://{},weight=3", backend.addr)]).await;
    let ramping = Gateway::start(&[
        "--slow-start",
        "1h",
        "--backend",
        &format!("http://{},weight=3", backend.addr),
    ])
    .await;
    let c = client();
    let effective = |body: Bytes| {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["pools"]["default"]["backends"][0]["effective_weight"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(effective(get(&c, &plain.url("/status")).await.1), 3.0);
    // Just joined, an hour-long ramp: the 10 % floor.
    let w = effective(get(&c, &ramping.url("/status")).await.1);
    assert!((0.3..0.31).contains(&w), "{w}");
    // The ramping backend still serves: the weight shapes shares, not availability.
    assert_eq!(get(&c, &ramping.url("/x")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn path_routes_reach_their_pools() {
    let api = TestServer::start(named("api")).await;
    let files = TestServer::start(named("static")).await;
    let other = TestServer::start(named("default")).await;
    let gw = Gateway::start(&[
        "--backend",
        &other.addr.to_string(),
        "--pool",
        &format!("api={}", api.addr),
        "--pool",
        &format!("files=http://{}", files.addr),
        "--route",
        "/api/=api",
        "--route",
        "/static/=files",
    ])
    .await;
    let c = client();
    assert_eq!(get(&c, &gw.url("/api/users/1")).await.1, "api");
    assert_eq!(get(&c, &gw.url("/api/")).await.1, "api");
    assert_eq!(get(&c, &gw.url("/static/app.js")).await.1, "static");
    assert_eq!(get(&c, &gw.url("/elsewhere")).await.1, "default");
}

#[tokio::test]
async fn upgrades_pass_through() {
    // A backend that switches protocols and then echoes bytes.
    let backend = TestServer::start(Router::new().route(
        "/ws",
        any(|mut req: Request| async move {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on.await {
                    let mut io = hyper_util::rt::TokioIo::new(up);
                    let mut buf = [0u8; 4];
                    if io.read_exact(&mut buf).await.is_ok() {
                        let _ = io.write_all(&buf).await;
                    }
                }
            });
            http::Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "echo")
                .body(Body::empty())
                .unwrap()
        }),
    ))
    .await;
    let gw = Gateway::start(&["--backend", &backend.addr.to_string()]).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
    }
    r.get_mut().write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(20), r.read_exact(&mut buf))
        .await
        .expect("echo through the tunnel")
        .unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn max_fails_ejects_a_failing_backend() {
    let bad = TestServer::start(
        Router::new().fallback(|| async { (StatusCode::SERVICE_UNAVAILABLE, "overloaded") }),
    )
    .await;
    let good = TestServer::start(named("good")).await;
    let gw = Gateway::start(&[
        "--strategy",
        "round-robin",
        "--max-fails",
        "1",
        "--fail-timeout",
        "60s",
        "--backend",
        &bad.addr.to_string(),
        "--backend",
        &good.addr.to_string(),
    ])
    .await;
    let c = client();
    let mut unavailable = 0;
    for _ in 0..20 {
        let (s, _) = get(&c, &gw.url("/x")).await;
        if s == StatusCode::SERVICE_UNAVAILABLE {
            unavailable += 1;
        }
    }
    // The first 503 ejects the backend for a minute: every later request goes elsewhere.
    assert_eq!(unavailable, 1);
    let (_, body) = get(&c, &gw.url("/status")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let states: Vec<_> = v["pools"]["default"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states, ["ejected", "healthy"]);
}

#[tokio::test]
async fn health_path_probes_mark_backends_down_and_up() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = healthy.clone();
    let flaky = TestServer::start(
        Router::new()
            .route(
                "/ready",
                axum::routing::get(move || {
                    let ok = h.load(Ordering::SeqCst);
                    async move {
                        if ok {
                            StatusCode::OK
                        } else {
                            StatusCode::INTERNAL_SERVER_ERROR
                        }
                    }
                }),
            )
            .fallback(|| async { "flaky" }),
    )
    .await;
    let steady =
        TestServer::start(named("steady").route("/ready", axum::routing::get(|| async { "OK" })))
            .await;
    let gw = Gateway::start(&[
        "--health-path",
        "/ready",
        "--health-interval",
        "100ms",
        "--backend",
        &flaky.addr.to_string(),
        "--backend",
        &steady.addr.to_string(),
    ])
    .await;
    let c = client();
    let state = |body: Bytes| -> String {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["pools"]["default"]["backends"][0]["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut last = String::new();
    for _ in 0..200 {
        last = state(get(&c, &gw.url("/status")).await.1);
        if last == "down" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, "down");
    for _ in 0..10 {
        assert_eq!(get(&c, &gw.url("/x")).await.1, "steady");
    }
    healthy.store(true, Ordering::SeqCst);
    for _ in 0..200 {
        last = state(get(&c, &gw.url("/status")).await.1);
        if last == "healthy" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, "healthy");
}

/// Starts three named backends and a gateway over them with `extra` flags.
async fn three_backends(extra: &[&str]) -> (Vec<TestServer>, Gateway) {
    let mut servers = Vec::new();
    for n in ["one", "two", "three"] {
        servers.push(TestServer::start(named(n)).await);
    }
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    for s in &servers {
        args.push("--backend".into());
        args.push(s.addr.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = Gateway::start(&args).await;
    (servers, gw)
}

#[tokio::test]
async fn hash_key_header_keeps_users_on_one_backend() {
    let (_servers, gw) =
        three_backends(&["--strategy", "maglev", "--hash-key", "header:x-user"]).await;
    let c = client();
    let mut homes = std::collections::HashMap::new();
    for round in 0..5 {
        for user in 0..20 {
            let u = format!("user-{user}");
            let (s, _, body) = send(
                &c,
                Method::GET,
                &gw.url("/"),
                &[("x-user", &u)],
                Body::empty(),
            )
            .await;
            assert_eq!(s, StatusCode::OK);
            let home = homes.entry(u).or_insert_with(|| body.clone());
            assert_eq!(*home, body, "round {round}");
        }
    }
    // 20 users spread over more than one backend.
    let distinct: std::collections::HashSet<_> = homes.values().collect();
    assert!(distinct.len() > 1);
}

#[tokio::test]
async fn sticky_cookie_pins_a_client_and_bad_cookies_are_reissued() {
    let (_servers, gw) =
        three_backends(&["--strategy", "round-robin", "--sticky-cookie", "lb"]).await;
    let c = client();
    let (s, headers, first) = send(&c, Method::GET, &gw.url("/"), &[], Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    let set = headers["set-cookie"].to_str().unwrap().to_string();
    assert!(set.starts_with("lb="), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(
        !cookie.contains("127.0.0.1"),
        "the cookie must not reveal the address"
    );
    for _ in 0..20 {
        let (_, headers, body) = send(
            &c,
            Method::GET,
            &gw.url("/"),
            &[("cookie", &cookie)],
            Body::empty(),
        )
        .await;
        assert_eq!(body, first);
        assert!(!headers.contains_key("set-cookie"));
    }
    let (s, headers, _) = send(
        &c,
        Method::GET,
        &gw.url("/"),
        &[("cookie", "lb=0123456789abcdef")],
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        headers.contains_key("set-cookie"),
        "a forged cookie gets a new one"
    );
}

#[tokio::test]
async fn bad_affinity_flags_exit_with_status_2() {
    for args in [
        &["--trusted-proxy", "10.0.0.0/99"][..],
        &["--trusted-proxy", "banana"],
        &["--hash-key", "body:x"],
        &["--hash-key", "header:bad header"],
        &["--sticky-cookie", "bad;name"],
    ] {
        let out = Command::new(gateway_bin())
            .args(args)
            .args(["--backend", "127.0.0.1:1"])
            .env_remove("BACKENDS")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            stderr.contains(args[0].trim_start_matches("--")),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn slow_backends_answer_504_at_the_time_limit() {
    let slow = TestServer::start(Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        "late"
    }))
    .await;
    let gw = Gateway::start(&["--timeout", "300ms", "--backend", &slow.addr.to_string()]).await;
    let (s, _) = get(&client(), &gw.url("/")).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn http2_to_backends() {
    // axum serves h2c with prior knowledge on the same port (hyper-util auto).
    let backend = TestServer::start(
        Router::new().fallback(|req: Request| async move { format!("{:?}", req.version()) }),
    )
    .await;
    let gw = Gateway::start(&["--http2", "--backend", &backend.addr.to_string()]).await;
    let (s, body) = get(&client(), &gw.url("/")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, "HTTP/2.0");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let backend = TestServer::start(Router::new().fallback(move || {
        let release_rx = release_rx.clone();
        let arrived_tx = arrived_tx.clone();
        async move {
            let _ = arrived_tx.send(());
            if let Some(rx) = release_rx.lock().await.take() {
                let _ = rx.await;
            }
            "finished"
        }
    }))
    .await;
    let mut gw = Gateway::start(&["--backend", &backend.addr.to_string()]).await;
    let url = gw.url("/slow");
    let c = client();
    let in_flight = tokio::spawn(async move { get(&c, &url).await });
    arrived_rx
        .recv()
        .await
        .expect("request reached the backend");
    let pid = gw.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    // The gateway stops accepting but lets the request in flight finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    release_tx.send(()).unwrap();
    let (s, body) = in_flight.await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, "finished");
    let exit = tokio::task::spawn_blocking(move || gw.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn a_config_file_sets_what_the_flags_set_and_check_validates_it() {
    let dir = std::env::temp_dir().join(format!("tower-lb-gw-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = TestServer::start(named("a")).await;
    let b = TestServer::start(named("b")).await;
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        format!(
            "strategy = \"round-robin\"\nmax-fails = 2\n\n[[backend]]\nurl = \"{}\"\nweight = 3\n\n[[backend]]\nurl = \"{}\"\n",
            a.addr, b.addr
        ),
    )
    .unwrap();
    // --check: validates and exits 0.
    let out = Command::new(gateway_bin())
        .args(["--check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configuration OK"
    );
    // The file's settings are used: weights 3:1 with smooth round robin.
    let gw = Gateway::start(&["--config", good.to_str().unwrap()]).await;
    let c = client();
    let mut seen = Vec::new();
    for _ in 0..8 {
        seen.push(String::from_utf8(get(&c, &gw.url("/")).await.1.to_vec()).unwrap());
    }
    assert_eq!(seen.iter().filter(|s| *s == "a").count(), 6, "{seen:?}");
    // A bad file: status 2, one line with the file, the line and the field.
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "strategy = \"round-robin\"\n\n[[backend]]\nurl = \"127.0.0.1:1\"\nweight = 0\n",
    )
    .unwrap();
    for extra in [&["--check"][..], &[][..]] {
        let out = Command::new(gateway_bin())
            .args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&bad)
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("bad.toml:4: backend:") && err.contains("weight"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
