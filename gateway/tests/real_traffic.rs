//! The gateway against clients and servers this project did not write (gRPC's C core,
//! the Python `websockets` library, a FastAPI app, curl, h2load, raw edge-case HTTP/1.1),
//! and the failures they found: backups, gRPC, Host rules, error pages, stalled clients,
//! in-flight counts, unresolvable backends, body-checking probes.

use std::{process::Stdio, sync::Arc, time::Duration};

use axum::{body::Body, extract::Request, routing::get as route_get, Router};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

use crate::common::{client, gateway_bin, get, send, Gateway};
use crate::support::{self, have_command, have_python, named, python_peer, TestServer};

/// The gateway's `/status` as JSON.
async fn status(gw: &Gateway) -> serde_json::Value {
    let (s, body) = get(&client(), &gw.url("/status")).await;
    assert_eq!(s, StatusCode::OK);
    serde_json::from_slice(&body).expect("JSON status")
}

/// One field of one backend of the default pool in `/status`.
async fn backend_field(gw: &Gateway, backend: &str, field: &str) -> serde_json::Value {
    let s = status(gw).await;
    s["pools"]["default"]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|b| b["backend"].as_str().is_some_and(|k| k.ends_with(backend)))
        .unwrap_or_else(|| panic!("no backend {backend} in {s}"))[field]
        .clone()
}

/// Sends raw bytes on a fresh connection and reads the answer until the connection
/// closes (or a whole response with `Connection: close` arrived).
async fn raw(gw: &Gateway, request: &[u8]) -> String {
    let mut c = TcpStream::connect(gw.addr).await.unwrap();
    c.write_all(request).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut got))
        .await
        .expect("the gateway answers and closes")
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

/// A backend that answers with the headers it received, one per line.
fn echo_headers() -> Router {
    Router::new().fallback(|req: Request| async move {
        let mut out = String::new();
        for (k, v) in req.headers() {
            out += &format!("{k}: {}\n", v.to_str().unwrap_or("?"));
        }
        out
    })
}

// === 1. backups ===

#[tokio::test]
async fn backups_serve_when_both_primaries_die_and_primaries_take_traffic_back() {
    let a = TestServer::start(named("a")).await;
    let b = TestServer::start(named("b")).await;
    let z = TestServer::start(named("z")).await;
    let (a_addr, b_addr) = (a.addr, b.addr);
    let gw = Gateway::start(&[
        "--strategy",
        "round-robin",
        "--fail-timeout",
        "1s",
        "--backend",
        &a.addr.to_string(),
        "--backend",
        &b.addr.to_string(),
        "--backend",
        &format!("{},backup", z.addr),
    ])
    .await;
    let c = client();
    for _ in 0..10 {
        let (s, body) = get(&c, &gw.url("/")).await;
        assert_eq!(s, StatusCode::OK);
        assert_ne!(
            body, "z",
            "the backup serves only when the primaries cannot"
        );
    }
    a.stop().await;
    b.stop().await;
    for i in 0..30 {
        let (s, body) = get(&c, &gw.url("/")).await;
        assert_eq!((s, &body[..]), (StatusCode::OK, &b"z"[..]), "request {i}");
    }
    for k in [a_addr, b_addr] {
        let state = backend_field(&gw, &k.to_string(), "state").await;
        assert!(state == "ejected" || state == "probation", "{k}: {state}");
    }
    assert_eq!(status(&gw).await["pools"]["default"]["level"], 1);

    // The primaries come back: after fail_timeout their trial requests succeed and they
    // take the traffic back; the backup is released.
    let _a = TestServer::restart(a_addr, named("a")).await;
    let _b = TestServer::restart(b_addr, named("b")).await;
    let mut in_a_row = 0;
    for _ in 0..3000 {
        let (s, body) = get(&c, &gw.url("/")).await;
        assert_eq!(s, StatusCode::OK);
        in_a_row = if body == "z" { 0 } else { in_a_row + 1 };
        if in_a_row == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(in_a_row, 20, "the primaries never took the traffic back");
    assert_eq!(status(&gw).await["pools"]["default"]["level"], 0);
}

// === 2. gRPC against gRPC's C core ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_the_gateway_against_grpcio_servers_and_client() {
    if !have_python(&["grpc"]) {
        return;
    }
    let g1 = python_peer("grpc_server.py", &["g1"]).await;
    let g2 = python_peer("grpc_server.py", &["g2"]).await;
    let gw = Gateway::start(&[
        "--http2",
        "--strategy",
        "round-robin",
        "--backend",
        &g1.addr().to_string(),
        "--backend",
        &g2.addr().to_string(),
    ])
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/peers/grpc_client.py");
    let run = tokio::process::Command::new("python3")
        .args([script, &gw.addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the gRPC client finished")
        .unwrap();
    assert!(
        out.status.success(),
        "grpc client failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Unary calls, spread over both servers by round robin.
    let served: Vec<&str> = seen["unary_served_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().expect("trailing metadata passed through"))
        .collect();
    assert_eq!(served.len(), 20);
    let g1_calls = served.iter().filter(|s| **s == "g1").count();
    let g2_calls = served.iter().filter(|s| **s == "g2").count();
    assert_eq!((g1_calls, g2_calls), (10, 10), "{served:?}");
    // Server streaming: five messages from one server, then its trailers.
    let by = seen["server_stream_trailer"].as_str().unwrap();
    let expected: Vec<String> = (0..5).map(|i| format!("{by}:{i}")).collect();
    assert_eq!(seen["server_stream"], serde_json::json!(expected));
    // Client streaming of 2 MB in 32 messages.
    let upload = seen["client_stream"].as_str().unwrap();
    assert!(upload.ends_with(":32:2097152"), "{upload}");
    // A status other than OK, with its message and trailing metadata.
    assert_eq!(seen["fail"]["code"], "FAILED_PRECONDITION", "{seen}");
    assert_eq!(seen["fail"]["details"], "the widget is not ready");
    assert!(seen["fail"]["served_by"].is_string(), "{seen}");
}

// === 3. Host rules ===

#[tokio::test]
async fn host_rules_of_rfc_9112() {
    let backend = TestServer::start(echo_headers()).await;
    let gw = Gateway::start(&["--backend", &backend.addr.to_string()]).await;
    let missing = raw(&gw, b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert!(missing.starts_with("HTTP/1.1 400"), "{missing}");
    let twice = raw(
        &gw,
        b"GET / HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(twice.starts_with("HTTP/1.1 400"), "{twice}");
    let list = raw(
        &gw,
        b"GET / HTTP/1.1\r\nhost: a.example, b.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(list.starts_with("HTTP/1.1 400"), "{list}");
    let absolute = raw(
        &gw,
        b"GET http://a.example/p HTTP/1.1\r\nhost: b.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(absolute.starts_with("HTTP/1.1 200"), "{absolute}");
    assert!(absolute.contains("host: a.example\n"), "{absolute}");
    assert!(!absolute.contains("b.example"), "{absolute}");
    let http10 = raw(&gw, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(http10.starts_with("HTTP/1.0 200"), "{http10}");

    // curl as a proxy client sends the absolute form, here with another Host.
    if have_command("curl") {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "--max-time", "20", "-x", &gw.url("")])
            .args(["-H", "Host: b.example", "http://a.example/p"])
            .output()
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(body.contains("host: a.example\n"), "{body}");
    }
}

// === 4. error answers ===

/// A backend that reads each request head and closes the connection without answering.
async fn hang_up() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0; 4096];
                let _ = c.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn error_answers_name_the_error_type_never_the_backend() {
    let dropper = hang_up().await;
    let gw = Gateway::start(&["--backend", &dropper.to_string()]).await;
    let c = client();
    let (s, headers, body) = send(&c, Method::POST, &gw.url("/p"), &[], Body::from("x")).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "502 Bad Gateway\n");
    let proxy_status = headers["proxy-status"].to_str().unwrap();
    assert!(
        proxy_status == "tower-lb; error=http_response_incomplete"
            || proxy_status == "tower-lb; error=connection_terminated",
        "{proxy_status}"
    );
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains("127.0.0.1") && !text.contains(&dropper.port().to_string()));
    // The details are for the operator, in /status.
    let why = backend_field(&gw, &dropper.to_string(), "last_failure").await;
    assert!(why.as_str().is_some_and(|w| !w.is_empty()), "{why}");

    // A refused backend.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gateway::start(&["--backend", &dead.to_string()]).await;
    let (s, headers, body) = send(&c, Method::GET, &gw.url("/"), &[], Body::empty()).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(
        headers["proxy-status"],
        "tower-lb; error=connection_refused"
    );
    assert!(!String::from_utf8_lossy(&body).contains(&dead.port().to_string()));
}

// === 5. slow and stalled clients ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_get_408_while_normal_requests_are_served() {
    let backend = TestServer::start(named("a")).await;
    let gw = Gateway::start(&[
        "--backend",
        &backend.addr.to_string(),
        "--client-header-timeout",
        "2s",
        "--keepalive-timeout",
        "2s",
        "--max-connections",
        "1000",
    ])
    .await;
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Half: ")
            .await
            .unwrap();
        stalled.push(s);
    }
    let c = client();
    for _ in 0..50 {
        let (s, body) = tokio::time::timeout(Duration::from_secs(10), get(&c, &gw.url("/")))
            .await
            .expect("served promptly beside 300 stalled clients");
        assert_eq!((s, &body[..]), (StatusCode::OK, &b"a"[..]));
    }
    for mut s in stalled {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut got))
            .await
            .expect("closed by the header timeout")
            .unwrap();
        assert!(got.starts_with(b"HTTP/1.1 408"), "{got:?}");
    }
    // An idle kept-alive connection is closed by the keep-alive timeout.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), idle.read_to_end(&mut got))
        .await
        .expect("closed by the keep-alive timeout")
        .unwrap();
    assert!(got.starts_with(b"HTTP/1.1 200"));
}

// === 6. in flight until the response ends ===

/// `/stream` sends one chunk, then waits for `release`.
fn streaming(release: Arc<tokio::sync::Notify>) -> Router {
    Router::new()
        .route(
            "/stream",
            route_get(move || {
                let release = release.clone();
                async move {
                    let chunks = futures_util::stream::unfold(0, move |n| {
                        let release = release.clone();
                        async move {
                            match n {
                                0 => Some((
                                    Ok::<_, std::convert::Infallible>(Bytes::from("first\n")),
                                    1,
                                )),
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
        .fallback(|| async { "a" })
}

#[tokio::test]
async fn least_conn_counts_a_streaming_response_until_it_ends() {
    let release = Arc::new(tokio::sync::Notify::new());
    let a = TestServer::start(streaming(release.clone())).await;
    let b = TestServer::start(named("b")).await;
    let gw = Gateway::start(&[
        "--strategy",
        "least-conn",
        "--backend",
        &a.addr.to_string(),
        "--backend",
        &b.addr.to_string(),
    ])
    .await;
    let c = client();
    // Open streams until one lands on "a" (least connections rotates its ties).
    let mut held = Vec::new();
    loop {
        let req = http::Request::get(gw.url("/stream"))
            .body(Body::empty())
            .unwrap();
        let rsp = c.request(req).await.unwrap();
        if rsp.status() == StatusCode::OK {
            let mut body = rsp.into_body();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            assert_eq!(first, "first\n");
            held.push(body);
            break;
        }
        assert!(held.len() < 5);
    }
    assert_eq!(
        backend_field(&gw, &a.addr.to_string(), "in_flight").await,
        1
    );
    let mut seen = Vec::new();
    for _ in 0..10 {
        seen.push(get(&c, &gw.url("/")).await.1);
    }
    assert!(seen.iter().all(|b| b == "b"), "{seen:?}");
    release.notify_one();
    let rest = held.pop().unwrap().collect().await.unwrap().to_bytes();
    assert_eq!(rest, "last\n");
    let gw_ref = &gw;
    let a_key = a.addr.to_string();
    for _ in 0..1000 {
        if backend_field(gw_ref, &a_key, "in_flight").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(backend_field(&gw, &a_key, "in_flight").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_counts_in_flight_until_it_closes() {
    if !have_python(&["websockets"]) {
        return;
    }
    let ws = python_peer("ws_server.py", &[]).await;
    let gw = Gateway::start(&["--backend", &ws.addr().to_string()]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/peers/ws_client.py");
    let mut client = tokio::process::Command::new("python3")
        .args([script, &format!("ws://{}/echo", gw.addr)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let open = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the WebSocket opened")
        .unwrap();
    assert_eq!(open.as_deref(), Some("OPEN"));
    let key = ws.addr().to_string();
    assert_eq!(backend_field(&gw, &key, "in_flight").await, 1);
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"close\n").await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the WebSocket closed")
        .unwrap();
    assert_eq!(closed.as_deref(), Some("CLOSED"));
    for _ in 0..1000 {
        if backend_field(&gw, &key, "in_flight").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(backend_field(&gw, &key, "in_flight").await, 0);
}

// === 7. backends that do not resolve ===

#[tokio::test]
async fn a_backend_host_that_does_not_resolve_stops_the_start() {
    for args in [
        &["--backend", "notaurl.invalid:8080"][..],
        &["--backend", "notaurl"][..],
        &[
            "--pool",
            "api=127.0.0.1:1,nohost.invalid:80",
            "--route",
            "/api=api",
        ][..],
    ] {
        let out = tokio::process::Command::new(gateway_bin())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(args[0]) && err.contains("host not found"),
            "{err}"
        );
    }
}

// === 9. a health endpoint that answers 200 unhealthy ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_reads_the_verdict_of_a_fastapi_health_endpoint() {
    if !have_python(&["fastapi", "uvicorn"]) {
        return;
    }
    let app = python_peer("health_app.py", &["app"]).await;
    // The other backend passes the same probe: its /health says healthy too.
    let probes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = probes.clone();
    let other = TestServer::start(
        Router::new()
            .route(
                "/health",
                route_get(move || {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async { r#"{"status": "healthy"}"# }
                }),
            )
            .fallback(|| async { "b" }),
    )
    .await;
    let gw = Gateway::start(&[
        "--backend",
        &app.addr().to_string(),
        "--backend",
        &other.addr.to_string(),
        "--health-path",
        "/health",
        "--health-expect-json",
        "/status=healthy",
        "--health-interval",
        "200ms",
    ])
    .await;
    let key = app.addr().to_string();
    let c = client();
    let state = |gw: &Gateway| {
        let key = key.clone();
        let gw_url = gw.url("/status");
        let c = c.clone();
        async move {
            let (_, body) = get(&c, &gw_url).await;
            let s: serde_json::Value = serde_json::from_slice(&body).unwrap();
            s["pools"]["default"]["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["backend"].as_str().unwrap().ends_with(&key))
                .unwrap()["state"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let post = |path: &str| {
        http::Request::post(format!("http://{}{path}", app.addr()))
            .body(Body::empty())
            .unwrap()
    };
    c.request(post("/fail/database")).await.unwrap();
    let mut down = false;
    for _ in 0..1000 {
        if state(&gw).await == "down" {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(down, "a 200 unhealthy body marks the backend down");
    // Three more probes of the other backend (the prober's `fall`): it stays up.
    let seen = probes.load(std::sync::atomic::Ordering::SeqCst);
    support::wait_for(|| probes.load(std::sync::atomic::Ordering::SeqCst) >= seen + 3).await;
    let b_state = backend_field(&gw, &other.addr.to_string(), "state").await;
    assert_eq!(b_state, "healthy");
    for _ in 0..10 {
        assert_eq!(get(&c, &gw.url("/")).await.1, "b");
    }
    c.request(post("/heal/database")).await.unwrap();
    let mut up = false;
    for _ in 0..1000 {
        if state(&gw).await == "healthy" {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up);
}

// === h2c clients ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_over_h2c_gets_every_answer() {
    if !have_command("h2load") {
        return;
    }
    let a = TestServer::start(named("a")).await;
    let b = TestServer::start(named("b")).await;
    let gw = Gateway::start(&[
        "--backend",
        &a.addr.to_string(),
        "--backend",
        &b.addr.to_string(),
    ])
    .await;
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("h2load")
            .args(["-n", "2000", "-c", "4", "-m", "8", &gw.url("/")])
            .output(),
    )
    .await
    .expect("h2load finished")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
}
