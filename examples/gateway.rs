//! An HTTP load balancer built from tower-lb's public layers, axum and hyper-util.
//!
//! ```sh
//! cargo run --release --example gateway
//! ```
//!
//! With no `--backend`, it starts three demo backends in-process and balances over them on
//! 127.0.0.1:8080. See `--help` for every flag; bad input exits with status 2 and one line
//! naming the flag.
//!
//! Reserved paths on the listener: `/health` (the gateway's own liveness), `/metrics`
//! (Prometheus text) and `/status` (JSON).

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request, State},
    http::{header, HeaderValue, Response, StatusCode},
    routing::{any, get},
    Router,
};
use clap::{Parser, ValueEnum};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, time::Instant};
use tower::{
    retry::budget::{Budget, TpsBudget},
    util::{BoxCloneSyncService, Either},
    ServiceBuilder,
};
use tower_lb::{
    balance::{
        strategy::{
            BoundedLoad, IpHash, LeastConn, Maglev, P2c, Random, Rendezvous, RequestKey, RingHash,
            Strategy, WeightedRoundRobin,
        },
        MakeEndpoint, RequestPolicy, Target,
    },
    error::is_connect_error,
    health::{
        active::{HttpProbe, Prober, ProberHandle},
        passive::{PassiveHealthLayer, Window},
    },
    http::{
        is_idempotent, is_transport_error, parse_base,
        proxy::{forward_request_headers, forward_response_headers, upgrade_protocol},
        status_for, HttpEndpoints, PooledBody, PooledEndpoints, ReplayBody,
    },
    sticky::{
        Cidr, ClientAddr, ClientIp, CookieKey, ExtractKey, HeaderKey, QueryKey, SessionCookie,
    },
    Backend, Balance, BoxError,
};

// === command line ===

/// A load-balancing HTTP reverse proxy.
/// glibc's allocator spends ~5 % of the gateway's time per request (arena locking and
/// consolidation); mimalloc's thread-local free lists cost less for the small, short-lived
/// allocations of a proxied request.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "A load-balancing HTTP reverse proxy built from tower-lb's layers."
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// A backend of the default pool: URL[,weight=N][,backup][,priority=N]. `backup` is
    /// priority 1; a priority level serves only while no lower level can. Repeatable; with
    /// none (and no --pool), three demo backends are started in-process.
    #[arg(long = "backend", value_name = "URL[,weight=N][,backup]", value_parser = parse_backend)]
    backends: Vec<BackendSpec>,

    /// Backends as a comma-separated list of URLs (used when no --backend is given).
    #[arg(long = "backends-env", env = "BACKENDS", hide = true, value_delimiter = ',', value_parser = parse_backend)]
    backends_env: Vec<BackendSpec>,

    /// Pick strategy. `round-robin` honours weights smoothly, as nginx does.
    #[arg(long, value_enum, default_value_t = StrategyName::P2cEwma)]
    strategy: StrategyName,

    /// Connect timeout to a backend.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,

    /// Time limit for a whole request, retries included (504 when it expires).
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,

    /// How many times a failed request may be sent to another backend: always when the
    /// connection failed, after bytes went upstream only for idempotent methods.
    #[arg(long, default_value_t = 2)]
    retries: usize,

    /// Bytes of each request body kept so the request can be replayed on another backend.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    replay_buffer: usize,

    /// Speak HTTP/2 to backends (prior knowledge, h2c) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,

    /// Send the backend's address as Host instead of the client's Host header.
    #[arg(long)]
    rewrite_host: bool,

    /// A named pool for path routing: NAME=URL,URL,… (repeatable).
    #[arg(long = "pool", value_name = "NAME=URL,URL…", value_parser = parse_pool)]
    pools: Vec<PoolSpec>,

    /// Route a path prefix to a pool: PREFIX=POOL (repeatable; longest prefix wins; other
    /// paths go to the default pool).
    #[arg(long = "route", value_name = "PREFIX=POOL", value_parser = parse_route)]
    routes: Vec<(String, String)>,

    /// How long a request waits for a backend when none is available before a 503.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
    fail_fast: Duration,

    /// Passive health (nginx `max_fails`): failures within --fail-timeout that eject a
    /// backend for --fail-timeout. 0 turns passive health off.
    #[arg(long, value_name = "N", default_value_t = 1)]
    max_fails: u32,

    /// Passive health (nginx `fail_timeout`): the failure window and the ejection time.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    fail_timeout: Duration,

    /// Active health: GET this path on every backend (2xx/3xx is up). Off unless given.
    #[arg(long, value_name = "PATH")]
    health_path: Option<String>,

    /// Where hash strategies read a request's key: header:NAME, cookie:NAME, query:NAME
    /// or client-ip (the default for hash strategies).
    #[arg(long, value_name = "SOURCE", value_parser = parse_hash_key)]
    hash_key: Option<HashKey>,

    /// Sticky sessions: the gateway sets this cookie to an opaque token of the backend
    /// that served the client, and sends the client back there while it is available.
    #[arg(long, value_name = "NAME")]
    sticky_cookie: Option<String>,

    /// A proxy whose X-Forwarded-For is trusted for --hash-key client-ip (repeatable).
    #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = parse_cidr)]
    trusted_proxies: Vec<Cidr>,

    /// Worker threads; 1 runs everything on one thread (like an nginx worker), which is
    /// fastest when the gateway shares a small machine with its load. Default: one per
    /// core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,

    /// Active health: probe interval (jittered ±10 %; 1 s while a backend is down).
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = parse_duration)]
    health_interval: Duration,

    /// Slow start (nginx Plus `slow_start`): a backend that joins or recovers gets a
    /// share of its weight rising from 10 % to 100 % over this time. Off unless given.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    slow_start: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StrategyName {
    RoundRobin,
    LeastConn,
    Random,
    P2c,
    P2cEwma,
    IpHash,
    RingHash,
    Maglev,
    BoundedLoad,
    Rendezvous,
}

/// Where a request's affinity key comes from (`--hash-key`).
#[derive(Debug, Clone)]
enum HashKey {
    Header(String),
    Cookie(String),
    Query(String),
    ClientIp,
}

fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    match s.split_once(':') {
        Some(("header", name)) => axum::http::HeaderName::from_bytes(name.as_bytes())
            .map(|_| HashKey::Header(name.to_ascii_lowercase()))
            .map_err(|_| format!("invalid header name {name:?}")),
        Some(("cookie", name)) if !name.is_empty() => Ok(HashKey::Cookie(name.to_string())),
        Some(("query", name)) if !name.is_empty() => Ok(HashKey::Query(name.to_string())),
        None if s == "client-ip" => Ok(HashKey::ClientIp),
        _ => Err(format!(
            "expected header:NAME, cookie:NAME, query:NAME or client-ip, got {s:?}"
        )),
    }
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse::<Cidr>().map_err(|e| format!("{s:?}: {e}"))
}

#[derive(Debug, Clone)]
struct BackendSpec {
    url: String,
    weight: u32,
    /// Priority level: 0 primary, 1 for `backup`, or `priority=N`.
    priority: u8,
}

#[derive(Debug, Clone)]
struct PoolSpec {
    name: String,
    backends: Vec<BackendSpec>,
}

fn parse_backend(s: &str) -> Result<BackendSpec, String> {
    let mut parts = s.split(',');
    let url = parts.next().unwrap_or_default().trim();
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let (scheme, authority) = parse_base(&url).map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let mut spec = BackendSpec {
        url: format!("{scheme}://{authority}"),
        weight: 1,
        priority: 0,
    };
    for opt in parts {
        match opt.trim().split_once('=') {
            Some(("weight", w)) => {
                spec.weight = w
                    .parse::<u32>()
                    .ok()
                    .filter(|&w| w > 0)
                    .ok_or_else(|| format!("weight must be a whole number ≥ 1, got {w:?}"))?;
            }
            Some(("priority", p)) => {
                spec.priority = p
                    .parse::<u8>()
                    .map_err(|_| format!("priority must be a whole number 0-255, got {p:?}"))?;
            }
            None if opt.trim() == "backup" => spec.priority = spec.priority.max(1),
            _ => return Err(format!("unknown backend option {opt:?}")),
        }
    }
    Ok(spec)
}

fn parse_pool(s: &str) -> Result<PoolSpec, String> {
    let (name, urls) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=URL,URL…, got {s:?}"))?;
    if name.is_empty() {
        return Err("pool name is empty".into());
    }
    let backends = urls
        .split(',')
        .filter(|u| !u.trim().is_empty())
        .map(parse_backend)
        .collect::<Result<Vec<_>, _>>()?;
    if backends.is_empty() {
        return Err(format!("pool {name:?} has no backend"));
    }
    Ok(PoolSpec {
        name: name.to_string(),
        backends,
    })
}

fn parse_route(s: &str) -> Result<(String, String), String> {
    let (prefix, pool) = s
        .split_once('=')
        .ok_or_else(|| format!("expected PREFIX=POOL, got {s:?}"))?;
    if !prefix.starts_with('/') {
        return Err(format!("prefix must start with '/', got {prefix:?}"));
    }
    Ok((prefix.to_string(), pool.to_string()))
}

/// Parses `250ms`, `2s`, `1m`, `1h` (a bare number is seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 500ms, 2s or 1m, got {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown duration unit {unit:?} in {s:?}")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

// === metrics ===

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Counts one observation in its own bucket only (one atomic add); the cumulative
    /// counts Prometheus expects are summed when exported.
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }
}

type Histograms = Arc<Mutex<BTreeMap<String, Arc<Histogram>>>>;

// === the proxy ===

type UpstreamBody = ReplayBody<Body>;
type Endpoint = BoxCloneSyncService<Request<UpstreamBody>, Response<Body>, BoxError>;

/// How the gateway treats requests: affinity key from extensions, replay through the
/// kept body prefix, retries of connect failures (always) and of idempotent requests
/// after bytes went upstream (within a retry budget: 20 % of requests, at least 3 per
/// second, Envoy's defaults).
#[derive(Clone)]
struct GatewayPolicy {
    budget: Arc<TpsBudget>,
}

impl RequestPolicy<Request<UpstreamBody>> for GatewayPolicy {
    fn key(&self, req: &Request<UpstreamBody>) -> Option<RequestKey> {
        req.extensions().get::<RequestKey>().copied()
    }

    fn replay(&self, req: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
        if !req.body().is_replayable() {
            return None;
        }
        let mut copy = Request::new(req.body().clone());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        // Extensions never reach the backend; the balancer only needs the key.
        if let Some(key) = req.extensions().get::<RequestKey>() {
            copy.extensions_mut().insert(*key);
        }
        Some(copy)
    }

    fn retry_on(&self, replay: &Request<UpstreamBody>, error: &BoxError) -> bool {
        let e: &(dyn std::error::Error + 'static) = &**error;
        if !replay.body().is_replayable() {
            return false;
        }
        // Nothing reached the backend: always safe, and it adds no load to backends, so
        // it does not draw on the budget (which guards backends against retry storms).
        if is_connect_error(e) {
            return true;
        }
        // After bytes may have left: idempotent methods only, within the budget.
        is_idempotent(replay.method()) && is_transport_error(e) && self.budget.withdraw()
    }
}

struct Pool {
    name: String,
    /// Reads each request's affinity key (--hash-key, --sticky-cookie).
    key: Option<Arc<dyn ExtractKey<Body>>>,
    balance: Balance<String, Endpoint, GatewayPolicy>,
    budget: Arc<TpsBudget>,
    /// Stops the active prober when the pool goes away.
    _prober: Option<ProberHandle>,
}

struct Gateway {
    pools: HashMap<String, Arc<Pool>>,
    histograms: Histograms,
    args: Args,
    started: Instant,
}

fn build_pool(
    name: &str,
    specs: &[BackendSpec],
    args: &Args,
    histograms: &Histograms,
) -> Result<Pool, String> {
    let strategy: Arc<dyn Strategy> = match args.strategy {
        StrategyName::RoundRobin => Arc::new(WeightedRoundRobin::new()),
        StrategyName::LeastConn => Arc::new(LeastConn::new()),
        StrategyName::Random => Arc::new(Random::new().weighted()),
        StrategyName::P2c => Arc::new(P2c::new()),
        StrategyName::P2cEwma => Arc::new(P2c::new().peak_ewma()),
        StrategyName::IpHash => Arc::new(IpHash::new()),
        StrategyName::RingHash => Arc::new(RingHash::new()),
        StrategyName::Maglev => Arc::new(Maglev::new()),
        StrategyName::BoundedLoad => Arc::new(BoundedLoad::new()),
        StrategyName::Rendezvous => Arc::new(Rendezvous::new()),
    };
    // Hash strategies without --hash-key hash the client IP (nginx `ip_hash`, or
    // `hash $remote_addr consistent`).
    let is_hash = matches!(
        args.strategy,
        StrategyName::IpHash
            | StrategyName::RingHash
            | StrategyName::Maglev
            | StrategyName::BoundedLoad
            | StrategyName::Rendezvous
    );
    let source = match (&args.hash_key, is_hash) {
        (None, true) => Some(HashKey::ClientIp),
        (k, _) => k.clone(),
    };
    let hash_key: Option<Arc<dyn ExtractKey<Body>>> = match &source {
        None => None,
        Some(HashKey::Header(name)) => Some(Arc::new(HeaderKey::new(
            axum::http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("--hash-key: {e}"))?,
        ))),
        Some(HashKey::Cookie(name)) => Some(Arc::new(CookieKey::new(name.clone()))),
        Some(HashKey::Query(name)) => Some(Arc::new(QueryKey::new(name.clone()))),
        Some(HashKey::ClientIp) => Some(Arc::new(
            ClientIp::new().trusted_proxies(args.trusted_proxies.iter().copied()),
        )),
    };
    let cookie = match &args.sticky_cookie {
        None => None,
        Some(name) => Some(
            SessionCookie::new()
                .name(name.clone())
                .map_err(|e| format!("--sticky-cookie: {e}"))?,
        ),
    };
    // A valid sticky cookie wins; otherwise the --hash-key source, if any.
    let key: Option<Arc<dyn ExtractKey<Body>>> = match (&cookie, hash_key) {
        (Some(c), Some(k)) => {
            let k2 = k.clone();
            let c = c.clone();
            Some(Arc::new(move |req: &Request<Body>| {
                c.extract(req).or_else(|| k2.extract(req))
            }))
        }
        (Some(c), None) => Some(Arc::new(c.clone())),
        (None, k) => k,
    };
    let strategy: Arc<dyn Strategy> = match &cookie {
        Some(c) => Arc::new(c.strategy(strategy)),
        None => strategy,
    };
    let budget = Arc::new(TpsBudget::new(Duration::from_secs(10), 3, 0.2));
    // HTTP/1.1: a lean keep-alive pool per backend; HTTP/2: hyper-util's client.
    let pooled = PooledEndpoints::<UpstreamBody>::new().connect_timeout(args.connect_timeout);
    let h2 = args
        .http2
        .then(|| HttpEndpoints::<UpstreamBody>::http2_with_connect_timeout(args.connect_timeout));
    let histograms = histograms.clone();
    let pool_name = name.to_string();
    let (max_fails, fail_timeout) = (args.max_fails, args.fail_timeout);
    let stamp = cookie.clone();
    let maker = move |t: &Target<'_, String>| -> Endpoint {
        let hist = Arc::new(Histogram::default());
        histograms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(format!("{pool_name}\u{0}{}", t.key()), hist.clone());
        let http = match &h2 {
            Some(client) => Either::Right(
                ServiceBuilder::new()
                    .map_response(|r: Response<tower_lb::http::TrackedBody<Incoming>>| {
                        r.map(Body::new)
                    })
                    .map_err(BoxError::from)
                    .service(
                        client
                            .make_endpoint(t)
                            .expect("backend URLs are validated when parsed"),
                    ),
            ),
            None => Either::Left(
                ServiceBuilder::new()
                    .map_response(
                        |r: Response<tower_lb::http::TrackedBody<PooledBody<UpstreamBody>>>| {
                            r.map(Body::new)
                        },
                    )
                    .map_err(BoxError::from)
                    .service(
                        pooled
                            .make_endpoint(t)
                            .expect("backend URLs are validated when parsed"),
                    ),
            ),
        };
        // Passive health (`max_fails(0)` classifies but never ejects, as nginx).
        let passive = PassiveHealthLayer::new(t).policy(
            Window::new()
                .max_fails(max_fails)
                .fail_timeout(fail_timeout),
        );
        // Outermost first: latency histogram, sticky cookie, passive health, HTTP client;
        // one boxed service, so one allocation per request for the whole stack.
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_future(move |fut| {
                    let hist = hist.clone();
                    async move {
                        let t0 = Instant::now();
                        let res: Result<Response<Body>, BoxError> = fut.await;
                        hist.observe(t0.elapsed());
                        res
                    }
                })
                .option_layer(stamp.as_ref().map(|c| c.layer(t)))
                .map_response(|r: Response<_>| r.map(Body::new))
                .layer(passive)
                .service(http),
        )
    };
    let balance = Balance::builder()
        .strategy(strategy)
        .retries(args.retries)
        .fail_fast(args.fail_fast)
        .slow_start(args.slow_start.unwrap_or(Duration::ZERO))
        .track_latency(true)
        .backends(specs.iter().map(|s| {
            Backend::new(s.url.clone())
                .weight(s.weight)
                .priority(s.priority)
        }))
        .policy(GatewayPolicy {
            budget: budget.clone(),
        })
        .build(maker)
        .map_err(|e| format!("pool {name}: {e}"))?;
    let prober = match &args.health_path {
        None => None,
        Some(path) => {
            let probe = HttpProbe::new(path).map_err(|e| format!("--health-path: {e}"))?;
            Some(
                Prober::new(probe)
                    .interval(args.health_interval)
                    .spawn(&balance)
                    .map_err(|e| format!("--health-interval: {e}"))?,
            )
        }
    };
    Ok(Pool {
        name: name.to_string(),
        key,
        balance,
        budget,
        _prober: prober,
    })
}

fn text_response(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut rsp = Response::new(Body::from(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

async fn proxy(
    pool: Arc<Pool>,
    gw: Arc<Gateway>,
    peer: SocketAddr,
    mut req: Request<Body>,
) -> Response<Body> {
    let client_upgrade = upgrade_protocol(&req)
        .is_some()
        .then(|| hyper::upgrade::on(&mut req));
    req.extensions_mut().insert(ClientAddr(peer));
    if let Some(key) = pool.key.as_ref().and_then(|k| k.extract(&req)) {
        req.extensions_mut().insert(key);
    }
    forward_request_headers(&mut req, peer.ip(), "http");
    if gw.args.rewrite_host {
        req.headers_mut().remove(header::HOST);
    }
    let req = req.map(|b| ReplayBody::new(b, gw.args.replay_buffer));
    pool.budget.deposit();
    // Boxed and `Send`, whatever the endpoint's error type (see `Balance::send`).
    let call = pool.balance.send(req);
    let mut rsp = match tokio::time::timeout(gw.args.timeout, call).await {
        Ok(Ok(rsp)) => rsp,
        Ok(Err(e)) => {
            let status = status_for(&e);
            tracing::debug!(pool = %pool.name, error = %e, %status, "request failed");
            let mut msg = format!("{status}: {e}");
            let mut src = std::error::Error::source(&*e);
            while let Some(cause) = src {
                let _ = write!(msg, ": {cause}");
                src = cause.source();
            }
            return text_response(status, msg + "\n");
        }
        Err(_) => {
            return text_response(StatusCode::GATEWAY_TIMEOUT, "504 Gateway Timeout\n");
        }
    };
    let status = rsp.status();
    forward_response_headers(status, rsp.headers_mut());
    if status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = client_upgrade {
            let backend = hyper::upgrade::on(&mut rsp);
            tokio::spawn(async move {
                match tokio::try_join!(client, backend) {
                    Ok((c, b)) => {
                        let mut c = TokioIo::new(c);
                        let mut b = TokioIo::new(b);
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
        }
    }
    rsp
}

// === admin endpoints ===

fn metrics(gw: &Gateway) -> String {
    let mut out = String::new();
    let hists = gw
        .histograms
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut pools: Vec<_> = gw.pools.values().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    // One snapshot per pool for the whole scrape: every family reads the same moment.
    let pools: Vec<_> = pools.into_iter().map(|p| (p, p.balance.stats())).collect();
    let families = [
        (
            "tower_lb_requests_total",
            "counter",
            "Requests sent to the backend.",
        ),
        (
            "tower_lb_failures_total",
            "counter",
            "Requests that failed on the backend.",
        ),
        (
            "tower_lb_in_flight",
            "gauge",
            "Requests in flight to the backend.",
        ),
        (
            "tower_lb_ejections_total",
            "counter",
            "Times the backend was ejected.",
        ),
        (
            "tower_lb_backend_up",
            "gauge",
            "1 if the backend takes new requests.",
        ),
        (
            "tower_lb_backend_state",
            "gauge",
            "1 for the backend's current health state.",
        ),
        ("tower_lb_ewma_seconds", "gauge", "Peak-EWMA response time."),
    ];
    for (name, kind, help) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (pool, stats) in &pools {
            for b in &stats.backends {
                let value = match name {
                    "tower_lb_requests_total" => b.requests as f64,
                    "tower_lb_failures_total" => b.failures as f64,
                    "tower_lb_in_flight" => b.in_flight as f64,
                    "tower_lb_ejections_total" => b.ejections as f64,
                    "tower_lb_backend_up" => f64::from(u8::from(matches!(
                        b.status,
                        tower_lb::balance::Status::Healthy | tower_lb::balance::Status::Probation
                    ))),
                    "tower_lb_backend_state" => 1.0,
                    _ => b.ewma.map_or(0.0, |d| d.as_secs_f64()),
                };
                let extra = if name == "tower_lb_backend_state" {
                    format!(",state=\"{}\"", b.status)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "{name}{{pool=\"{}\",backend=\"{}\"{extra}}} {value}",
                    pool.name, b.key
                );
            }
        }
    }
    let name = "tower_lb_response_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time to response headers from the backend.\n# TYPE {name} histogram"
    );
    for (key, h) in &hists {
        let (pool, backend) = key.split_once('\u{0}').unwrap_or(("", key));
        let labels = format!("pool=\"{pool}\",backend=\"{backend}\"");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = h.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            h.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
    let pool_families: [(&str, &str, fn(&tower_lb::balance::Stats<String>) -> f64); 3] = [
        (
            "tower_lb_pool_available",
            "Backends of the pool taking new requests.",
            |s| s.available as f64,
        ),
        (
            "tower_lb_pool_level",
            "Priority level serving (0: primaries).",
            |s| f64::from(s.level),
        ),
        (
            "tower_lb_pool_panic",
            "1 in panic mode (too few backends available: health ignored).",
            |s| f64::from(u8::from(s.panic())),
        ),
    ];
    for (name, help, value) in pool_families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (pool, stats) in &pools {
            let _ = writeln!(out, "{name}{{pool=\"{}\"}} {}", pool.name, value(stats));
        }
    }
    out
}

fn status_json(gw: &Gateway) -> serde_json::Value {
    let pools: serde_json::Map<String, serde_json::Value> = gw
        .pools
        .values()
        .map(|p| {
            let s = p.balance.stats();
            let backends: Vec<_> = s
                .backends
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "backend": b.key,
                        "weight": b.weight,
                        "effective_weight": b.effective_weight,
                        "backup": b.backup,
                        "priority": b.priority,
                        "state": b.status.to_string(),
                        "requests": b.requests,
                        "failures": b.failures,
                        "in_flight": b.in_flight,
                        "ejections": b.ejections,
                        "ewma_ms": b.ewma.map(|d| d.as_secs_f64() * 1e3),
                    })
                })
                .collect();
            (
                p.name.clone(),
                serde_json::json!({
                    "strategy": s.strategy,
                    "tier": format!("{:?}", s.tier),
                    "level": s.level,
                    "panic": s.panic(),
                    "available": s.available,
                    "backends": backends,
                }),
            )
        })
        .collect();
    serde_json::json!({
        "uptime_seconds": gw.started.elapsed().as_secs(),
        "pools": pools,
    })
}

// === demo backends ===

async fn demo_backends() -> Vec<BackendSpec> {
    let mut specs = Vec::new();
    for i in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let port = listener.local_addr().expect("bound").port();
        let app = Router::new()
            .route("/health", get(|| async { "OK" }))
            .fallback(move |req: Request| async move {
                format!(
                    "hello from demo backend {i} (port {port}), {} {}\n",
                    req.method(),
                    req.uri()
                )
            });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        specs.push(BackendSpec {
            url: format!("http://127.0.0.1:{port}"),
            weight: 1,
            priority: 0,
        });
    }
    specs
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    eprintln!("shutting down: draining in-flight requests");
}

/// Prints a line to stdout, ignoring a closed pipe.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2);
}

fn main() {
    let args = Args::parse();
    let mut rt = match args.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = rt
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("--workers: cannot start the runtime: {e}")));
    rt.block_on(run(args));
}

async fn run(mut args: Args) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if args.backends.is_empty() {
        args.backends = std::mem::take(&mut args.backends_env);
    }
    let demo = args.backends.is_empty() && args.pools.is_empty();
    if demo {
        args.backends = demo_backends().await;
    }

    let histograms: Histograms = Arc::default();
    let mut pools = HashMap::new();
    if !args.backends.is_empty() {
        let pool = build_pool("default", &args.backends, &args, &histograms)
            .unwrap_or_else(|e| fail(format!("--backend: {e}")));
        pools.insert("default".to_string(), Arc::new(pool));
    }
    for spec in &args.pools {
        let pool = build_pool(&spec.name, &spec.backends, &args, &histograms)
            .unwrap_or_else(|e| fail(format!("--pool: {e}")));
        if pools.insert(spec.name.clone(), Arc::new(pool)).is_some() {
            fail(format!("--pool: pool {:?} is defined twice", spec.name));
        }
    }
    for (prefix, pool) in &args.routes {
        if !pools.contains_key(pool) {
            fail(format!("--route: {prefix}={pool} names an unknown pool"));
        }
    }
    let listen = args.listen;
    let routes = args.routes.clone();
    let gw = Arc::new(Gateway {
        pools,
        histograms,
        args,
        started: Instant::now(),
    });

    // Admin endpoints, then one route per prefix (the URI is passed on unchanged, as
    // nginx `proxy_pass` without a URI does), then the default pool.
    let mut app: Router = Router::new()
        .route("/health", get(|| async { "OK\n" }))
        .route(
            "/metrics",
            get({
                let gw = gw.clone();
                move || async move {
                    let mut rsp = Response::new(Body::from(metrics(&gw)));
                    rsp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    rsp
                }
            }),
        )
        .route(
            "/status",
            get({
                let gw = gw.clone();
                move || async move { axum::Json(status_json(&gw)) }
            }),
        );
    for (prefix, pool_name) in &routes {
        let pool = gw.pools[pool_name].clone();
        let handler = {
            let gw = gw.clone();
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request| {
                let (pool, gw) = (pool.clone(), gw.clone());
                async move { Ok::<_, Infallible>(proxy(pool, gw, peer, req).await) }
            }
        };
        let base = prefix.trim_end_matches('/');
        app = app
            .route(&format!("{base}/{{*rest}}"), any(handler.clone()))
            .route(
                if base.is_empty() { "/" } else { base },
                any(handler.clone()),
            );
        if !base.is_empty() {
            app = app.route(&format!("{base}/"), any(handler));
        }
    }
    if let Some(default) = gw.pools.get("default").cloned() {
        let gw2 = gw.clone();
        app = app.fallback(
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                  State(()): State<()>,
                  req: Request| {
                let (pool, gw) = (default.clone(), gw2.clone());
                async move { proxy(pool, gw, peer, req).await }
            },
        );
    } else {
        app = app.fallback(|| async { text_response(StatusCode::NOT_FOUND, "no route\n") });
    }

    let listener = TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| fail(format!("--listen {listen}: {e}")));
    let addr = listener.local_addr().unwrap_or(listen);
    say!("gateway listening on http://{addr}");
    let mut names: Vec<_> = gw.pools.keys().collect();
    names.sort();
    for name in names {
        let p = &gw.pools[name];
        let stats = p.balance.stats();
        let list: Vec<String> = stats.backends.iter().map(|b| b.key.clone()).collect();
        say!("  pool {name} ({}): {}", stats.strategy, list.join(", "));
    }
    if demo {
        say!("\nno --backend given: started three demo backends. Try:");
        say!("  curl http://{addr}/hello        # repeat: answers come from different backends");
        say!("  curl http://{addr}/status       # per-backend counters and health (JSON)");
        say!("  curl http://{addr}/metrics      # Prometheus text");
        say!("press Ctrl-C to stop");
    }
    // No Nagle delay on client connections (the client side of each backend connection
    // sets it too, in `HttpEndpoints`).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    {
        fail(format!("server: {e}"));
    }
}
