//! Session affinity end to end: real axum backends on loopback, reached through
//! `HttpEndpoints`, keyed by header, sticky cookie and client IP.
//!
//! Run with `cargo test --test main --features sticky,axum sticky::`.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tower::{Layer, Service, ServiceExt};
use tower_lb::{
    balance::strategy::{IpHash, RingHash, RoundRobin, Strategy},
    http::{HttpEndpoints, HttpPolicy},
    sticky::{ClientIp, ExtractKey, HeaderKey, SessionCookie, StickyLayer},
    Backend, Balance, BoxError,
};

const BACKENDS: usize = 5;

/// One axum backend answering its own name; `stop` shuts it down and closes its port.
struct Server {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(name: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let app = axum::Router::new().fallback(move || {
            let name = name.clone();
            async move { name }
        });
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        // The listener is gone once the server future ends: connections are refused.
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("backend stops")
            .unwrap();
    }
}

async fn servers() -> Vec<Server> {
    let mut v = Vec::new();
    for i in 0..BACKENDS {
        v.push(Server::start(format!("b{i}")).await);
    }
    v
}

/// A client that opens a connection per request, so a stopped backend refuses the very
/// next connection instead of failing on a pooled one.
fn endpoints() -> HttpEndpoints<Full<Bytes>> {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(HttpConnector::new());
    HttpEndpoints::with_client(client)
}

fn balance<S: Strategy>(
    strategy: S,
    servers: &[Server],
) -> Balance<
    String,
    tower_lb::http::TrackBody<tower_lb::http::HttpEndpoint<Full<Bytes>>>,
    tower_lb::http::HttpPolicy<tower_lb::http::CloneBody>,
> {
    Balance::builder()
        .strategy(strategy)
        .backends(servers.iter().map(|s| Backend::new(s.addr.clone())))
        .policy(HttpPolicy::new().replay_clone())
        .build(endpoints())
        .unwrap()
}

async fn body_text<B>(rsp: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = rsp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Sends `rounds` requests per key and checks each key always reached one backend.
async fn placements<S, F>(
    svc: &S,
    keys: &[String],
    rounds: usize,
    make: F,
) -> HashMap<String, String>
where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<tower_lb::http::TrackedBody<hyper::body::Incoming>>,
            Error = BoxError,
        > + Clone,
    F: Fn(&str) -> Request<Full<Bytes>>,
{
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    for _ in 0..rounds {
        for k in keys {
            let rsp = svc.clone().oneshot(make(k)).await.unwrap();
            assert_eq!(rsp.status(), StatusCode::OK);
            seen.entry(k.clone())
                .or_default()
                .insert(body_text(rsp).await);
        }
    }
    seen.into_iter()
        .map(|(k, backends)| {
            assert_eq!(backends.len(), 1, "key {k} reached {backends:?}");
            (k, backends.into_iter().next().unwrap())
        })
        .collect()
}

/// Checks that after a backend went away, only its keys moved, each to one backend.
fn check_moves(before: &HashMap<String, String>, after: &HashMap<String, String>, victim: &str) {
    let mut targets = HashSet::new();
    for (k, was) in before {
        let now = &after[k];
        if was == victim {
            assert_ne!(now, victim, "key {k} still on the stopped backend");
            targets.insert(now.clone());
        } else {
            assert_eq!(now, was, "key {k} moved although its backend is up");
        }
    }
    assert!(!targets.is_empty());
}

#[tokio::test]
async fn header_key_stays_and_moves_consistently_when_its_backend_stops() {
    let mut servers = servers().await;
    let lb = balance(RingHash::new(), &servers);
    let svc = StickyLayer::new(HeaderKey::from_static("x-user")).layer(lb);
    let keys: Vec<String> = (0..100).map(|i| format!("user-{i}")).collect();
    let req = |k: &str| {
        Request::get("/")
            .header("x-user", k)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    // 100 keys × 10 rounds = 1,000 requests, each key on one backend.
    let before = placements(&svc, &keys, 10, req).await;
    let used: HashSet<_> = before.values().collect();
    assert!(used.len() >= 3, "keys spread over {used:?}");

    // Stop the first key's backend; the endpoint stays in the set, its connections are
    // refused, and the balancer replays each request on the key's ring fallback.
    let victim = before[&keys[0]].clone();
    let idx: usize = victim[1..].parse().unwrap();
    servers.remove(idx).stop().await;
    let after = placements(&svc, &keys, 3, req).await;
    check_moves(&before, &after, &victim);
}

#[tokio::test]
async fn sticky_cookie_pins_clients_and_reissues_when_the_backend_is_removed() {
    let servers = servers().await;
    let cookie = SessionCookie::new().name("route").unwrap();
    let lb: Balance<String, _, _> = Balance::builder()
        .strategy(cookie.strategy(RoundRobin::new()))
        .backends(servers.iter().map(|s| Backend::new(s.addr.clone())))
        .policy(HttpPolicy::new().replay_clone())
        .build(cookie.endpoints(endpoints()))
        .unwrap();
    let handle = lb.handle();
    let svc = StickyLayer::new(cookie.clone()).layer(lb);

    // Twenty clients with cookie jars, 50 requests each.
    let mut jars: Vec<Option<String>> = vec![None; 20];
    let mut home: Vec<Option<String>> = vec![None; 20];
    let send = |jar: &Option<String>| {
        let mut b = Request::get("/");
        if let Some(c) = jar {
            b = b.header(header::COOKIE, c);
        }
        let svc = svc.clone();
        let req = b.body(Full::new(Bytes::new())).unwrap();
        async move {
            let rsp = svc.oneshot(req).await.unwrap();
            let set = rsp
                .headers()
                .get(header::SET_COOKIE)
                .map(|v| v.to_str().unwrap().to_owned());
            (body_text(rsp).await, set)
        }
    };
    for round in 0..50 {
        for c in 0..jars.len() {
            let (backend, set) = send(&jars[c]).await;
            if round == 0 {
                let set = set.expect("a first response sets the cookie");
                assert!(set.contains("; HttpOnly; SameSite=Lax"), "{set}");
                assert!(!set.contains("127.0.0.1"), "{set}");
                jars[c] = Some(set.split(';').next().unwrap().to_owned());
                home[c] = Some(backend);
            } else {
                assert_eq!(set, None, "client {c} got a new cookie in round {round}");
                assert_eq!(home[c].as_deref(), Some(backend.as_str()), "client {c}");
            }
        }
    }

    // A tampered cookie gets a normal pick and a fresh cookie.
    let mut bad = jars[0].clone().unwrap();
    let last = bad.pop().unwrap();
    bad.push(if last == '0' { '1' } else { '0' });
    let (_, set) = send(&Some(bad)).await;
    assert!(set.is_some(), "a tampered cookie is replaced");

    // Remove client 0's backend: its clients move once, get a new cookie, and stay.
    let victim = home[0].clone().unwrap();
    let idx: usize = victim[1..].parse().unwrap();
    assert!(handle.remove(&servers[idx].addr));
    let mut moved = HashMap::new();
    for round in 0..5 {
        for c in 0..jars.len() {
            let (backend, set) = send(&jars[c]).await;
            let was = home[c].as_deref().unwrap();
            if was == victim {
                assert_ne!(backend, victim);
                if round == 0 {
                    let set = set.expect("a moved client gets a new cookie");
                    jars[c] = Some(set.split(';').next().unwrap().to_owned());
                    moved.insert(c, backend);
                } else {
                    assert_eq!(set, None);
                    assert_eq!(moved[&c], backend, "client {c} keeps its new backend");
                }
            } else {
                assert_eq!(backend, was, "client {c} moved although its backend is up");
                assert_eq!(set, None);
            }
        }
    }
    assert!(!moved.is_empty());
    drop(servers);
}

/// A gateway on loopback: axum with `ConnectInfo`, the key layer, then the balancer.
async fn gateway<E, L>(extract: E, lb: L) -> SocketAddr
where
    E: ExtractKey<Full<Bytes>>,
    L: Service<
            Request<Full<Bytes>>,
            Response = Response<tower_lb::http::TrackedBody<hyper::body::Incoming>>,
            Error = BoxError,
        > + Clone
        + Send
        + Sync
        + 'static,
    L::Future: Send,
{
    let svc = StickyLayer::new(extract).layer(lb);
    let app = axum::Router::new().fallback(move |req: Request<axum::body::Body>| {
        let mut svc = svc.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let req = Request::from_parts(parts, Full::new(bytes));
            match std::future::poll_fn(|cx| svc.poll_ready(cx)).await {
                Ok(()) => {}
                Err(_) => {
                    return Response::builder()
                        .status(502)
                        .body(axum::body::Body::empty())
                        .unwrap()
                }
            }
            match svc.call(req).await {
                Ok(rsp) => rsp.map(axum::body::Body::new),
                Err(_) => Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            }
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

async fn via_gateway(
    client: &Client<HttpConnector, Empty<Bytes>>,
    gw: SocketAddr,
    xff: &str,
) -> String {
    let req = Request::get(format!("http://{gw}/"))
        .header("x-forwarded-for", xff)
        .body(Empty::new())
        .unwrap();
    let rsp = client.request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    body_text(rsp).await
}

#[tokio::test]
async fn client_ip_through_a_trusted_proxy_stays_and_moves_consistently() {
    let mut servers = servers().await;
    let lb = balance(IpHash::new(), &servers);
    let ip = ClientIp::new().trust("127.0.0.1/32".parse().unwrap());
    let gw = gateway(ip, lb).await;
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());

    // Clients in 50 different /24s, behind a proxy on 127.0.0.1 that appends to XFF; each
    // also claims a spoofed address on the left, which must not matter.
    let clients: Vec<String> = (0..50).map(|i| format!("198.51.{i}.7")).collect();
    let mut before = HashMap::new();
    for round in 0..20 {
        for (i, c) in clients.iter().enumerate() {
            let xff = format!("10.{round}.{i}.1, {c}");
            let got = via_gateway(&client, gw, &xff).await;
            let first = before.entry(c.clone()).or_insert_with(|| got.clone());
            assert_eq!(*first, got, "client {c} moved in round {round}");
        }
    }
    let used: HashSet<_> = before.values().collect();
    assert!(used.len() >= 3, "clients spread over {used:?}");

    let victim = before[&clients[0]].clone();
    let idx: usize = victim[1..].parse().unwrap();
    servers.remove(idx).stop().await;
    let mut after = HashMap::new();
    for _ in 0..3 {
        for c in &clients {
            let got = via_gateway(&client, gw, &format!("6.6.6.6, {c}")).await;
            let first = after.entry(c.clone()).or_insert_with(|| got.clone());
            assert_eq!(*first, got, "client {c} has no single fallback");
        }
    }
    check_moves(&before, &after, &victim);
}

#[tokio::test]
async fn untrusted_peer_cannot_choose_its_backend_with_forwarded_headers() {
    let servers = servers().await;
    let lb = balance(RingHash::new(), &servers);
    // No trusted proxies: the peer, 127.0.0.1, is the client whatever XFF says.
    let gw = gateway(ClientIp::new(), lb).await;
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut seen = HashSet::new();
    for i in 0..200 {
        seen.insert(via_gateway(&client, gw, &format!("203.0.{i}.9")).await);
    }
    assert_eq!(seen.len(), 1, "spoofed XFF moved requests: {seen:?}");
    drop(servers);
}
