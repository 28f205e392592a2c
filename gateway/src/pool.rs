//! One pool of backends: a balancer and the stack of library layers in front of it.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use tower::{
    timeout::{Timeout, TimeoutLayer},
    util::{BoxCloneSyncService, Either, MapErr, MapResponse},
    Layer, Service, ServiceBuilder, ServiceExt,
};
use tower_lb::{
    balance::{
        strategy::{
            BoundedLoad, IpHash, LeastConn, LoadReport, Maglev, P2c, Random, Rendezvous, RingHash,
            Strategy, WeightedRoundRobin,
        },
        MakeEndpoint, Target,
    },
    health::{
        active::{BodyMatch, HttpProbe, Prober},
        passive::{
            FailurePercentage, GrpcEos, OutlierDetection, PassiveHealth, PassiveHealthLayer,
            ResponseBody, SuccessRate, Window,
        },
    },
    http::{
        load_report::{ReadBody, ReadReports, ReadReportsLayer},
        proxy::{Proxy, ProxyLayer},
        ErrorResponse, ErrorResponseBody, ErrorResponseLayer, HttpEndpoint, HttpEndpoints,
        HttpPolicy, PooledBody, PooledEndpoint, PooledEndpoints, ReplayBodies, ReplayBody,
        ReplayBodyLayer, ReplayBodyService, TrackBody, TrackedBody,
    },
    metrics::{Latency, PoolMetrics},
    sticky::{
        ClientIp, CookieKey, ExtractKey, HeaderKey, QueryKey, SessionCookie, SetCookie, Sticky,
        StickyLayer,
    },
    Backend, Balance, BoxError, Guard,
};

use crate::{
    cli::{Args, HashKey, OutlierTest, StrategyName, HEALTH_INTERVAL},
    source::Feed,
    tls::BackendTls,
    upkeep::{SpawnProbe, Upkeep},
};

/// What the balancer sends upstream: the client's body, its first bytes kept for replay.
pub(crate) type UpstreamBody = ReplayBody<Body>;

/// An HTTP/1.1 backend: the lean keep-alive pool.
type H1 = TrackBody<PooledEndpoint<UpstreamBody>>;
/// An HTTP/2 backend: hyper-util's client, its errors boxed as the pool's are.
type H2 = MapErr<
    TrackBody<HttpEndpoint<UpstreamBody>>,
    fn(
        <TrackBody<HttpEndpoint<UpstreamBody>> as Service<Request<UpstreamBody>>>::Error,
    ) -> BoxError,
>;
/// Either client's response body.
type ClientBody =
    http_body_util::Either<TrackedBody<PooledBody<UpstreamBody>>, TrackedBody<Incoming>>;
/// One backend's client, HTTP/1.1 or HTTP/2.
type Client = Either<
    MapResponse<H1, fn(Response<TrackedBody<PooledBody<UpstreamBody>>>) -> Response<ClientBody>>,
    MapResponse<H2, fn(Response<TrackedBody<Incoming>>) -> Response<ClientBody>>,
>;
/// A client's body, its load reports read or not.
type ReportBody = http_body_util::Either<ReadBody<ClientBody>, ClientBody>;
/// The client, reading the load reports of its responses for the load-report strategy.
type Reported = Either<
    MapResponse<ReadReports<Client>, fn(Response<ReadBody<ClientBody>>) -> Response<ReportBody>>,
    MapResponse<Client, fn(Response<ClientBody>) -> Response<ReportBody>>,
>;
/// What an endpoint answers with: the backend's body, watched by passive health (its end,
/// and gRPC's status in the trailers).
pub(crate) type EndpointBody = ResponseBody<ReportBody, GrpcEos>;
/// One backend's endpoint stack, outermost first: latency histogram, sticky cookie,
/// passive health, load reports, HTTP client. A named type, so the balancer clones and
/// calls it without a boxed service or future per request.
pub(crate) type Endpoint =
    Latency<Either<SetCookie<PassiveHealth<Reported>>, PassiveHealth<Reported>>>;

/// A pool as the router sees it: its [`Front`], boxed.
pub(crate) type PoolService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;
/// Which key, if any, a request is balanced by (see [`key_extractor`]).
type Keys = Option<Arc<dyn ExtractKey<Body>>>;
/// A pool's layers in front of its balancer, outermost first: error answers, time limit,
/// proxy header rules, affinity keys, replay. A named type, so the listener can call the
/// only pool there is (no routes) without a boxed service or future per request.
pub(crate) type Front = ErrorResponse<Timeout<Proxy<Sticky<ReplayBodyService<HttpBalance>, Keys>>>>;
/// What a [`Front`] answers with.
pub(crate) type FrontBody = ErrorResponseBody<EndpointBody>;

/// What the balancer of a pool is built from: a reload with the same settings keeps the
/// balancer, and so the state of every backend that stays (health, counters, latency).
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    strategy: StrategyName,
    sticky_cookie: Option<String>,
    http2: bool,
    connect_timeout: Duration,
    max_fails: u32,
    fail_timeout: Duration,
    retries: usize,
    fail_fast: Duration,
    slow_start: Option<Duration>,
    /// Hedging (`--hedge-after`, `--hedge-budget` as bits, compared exactly), when on.
    hedge: Option<(crate::cli::HedgeAfter, u64)>,
    /// `--subset-*`: which K of the pool's backends this gateway uses.
    subset: Option<tower_lb::discover::subset::Subsetting>,
    /// Outlier detection (`--outlier-*`), when on.
    outlier: Option<OutlierDetection>,
    /// How `https://` backends are reached (compared by the files' contents).
    tls: BackendTls,
}

impl Settings {
    fn of(args: &Args, tls: &BackendTls) -> Self {
        Self {
            strategy: args.strategy,
            sticky_cookie: args.sticky_cookie.clone(),
            http2: args.http2,
            connect_timeout: args.connect_timeout,
            max_fails: args.max_fails,
            fail_timeout: args.fail_timeout,
            retries: args.retries,
            fail_fast: args.fail_fast,
            slow_start: args.slow_start,
            hedge: args.hedge_after.map(|h| (h, args.hedge_budget.to_bits())),
            subset: args.subsetting(),
            outlier: outlier_detection(args),
            tls: tls.clone(),
        }
    }
}

pub(crate) type HttpBalance = Balance<String, Endpoint, HttpPolicy<ReplayBodies>>;

pub(crate) struct Pool {
    pub(crate) balance: HttpBalance,
    /// Error answers, time limit, proxy header rules, affinity keys, replay, balancer.
    pub(crate) front: Front,
    /// The same, boxed, for the router.
    pub(crate) service: PoolService,
    pub(crate) upkeep: Upkeep,
    settings: Settings,
    cookie: Option<SessionCookie>,
    metrics: PoolMetrics,
    /// The balancer's outlier detector: one per balancer, so a pool that keeps its
    /// balancer across a reload shares the running one (same settings, compared above).
    outlier: std::sync::Mutex<Option<Arc<Guard>>>,
}

impl Pool {
    /// Takes effect: the metrics read this balancer, the set follows the feed, the
    /// prober and the outlier detector run.
    pub(crate) fn start(&self) {
        self.metrics.watch(&self.balance);
        self.upkeep.start();
        let mut outlier = self
            .outlier
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (None, Some(detector)) = (&*outlier, &self.settings.outlier) {
            match detector.clone().spawn(&self.balance) {
                Ok(guard) => *outlier = Some(Arc::new(guard)),
                Err(e) => tracing::error!(error = %e, "cannot start outlier detection"),
            }
        }
    }
}

/// The outlier detector `--outlier-*` ask for (settings checked when it starts; the
/// flags' parsers already refuse what it would).
fn outlier_detection(args: &Args) -> Option<OutlierDetection> {
    let detector = OutlierDetection::new().interval(args.outlier_interval);
    Some(match args.outlier_detection? {
        OutlierTest::SuccessRate => {
            let mut test = SuccessRate::new();
            if let Some(n) = args.outlier_min_requests {
                test = test.request_volume(n);
            }
            if let Some(n) = args.outlier_min_hosts {
                test = test.minimum_hosts(n);
            }
            detector.success_rate(test)
        }
        OutlierTest::FailurePercentage => {
            let mut test = FailurePercentage::new();
            if let Some(n) = args.outlier_min_requests {
                test = test.request_volume(n);
            }
            if let Some(n) = args.outlier_min_hosts {
                test = test.minimum_hosts(n);
            }
            detector.success_rate(None).failure_percentage(test)
        }
    })
}

pub(crate) fn strategy(name: StrategyName) -> Arc<dyn Strategy> {
    match name {
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
        StrategyName::LoadReport => Arc::new(LoadReport::new()),
    }
}

/// The extractor of each request's affinity key: a valid sticky cookie wins, then the
/// `--hash-key` source; hash strategies without `--hash-key` hash the client IP (nginx
/// `ip_hash`, or `hash $remote_addr consistent`).
fn key_extractor(args: &Args, cookie: Option<&SessionCookie>) -> Result<Keys, String> {
    let source = match (&args.hash_key, args.strategy.is_hash()) {
        (None, true) => Some(HashKey::ClientIp),
        (k, _) => k.clone(),
    };
    let hash: Option<Arc<dyn ExtractKey<Body>>> = match source {
        None => None,
        Some(HashKey::Header(name)) => Some(Arc::new(HeaderKey::new(
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("--hash-key: {e}"))?,
        ))),
        Some(HashKey::Cookie(name)) => Some(Arc::new(CookieKey::new(name))),
        Some(HashKey::Query(name)) => Some(Arc::new(QueryKey::new(name))),
        Some(HashKey::ClientIp) => Some(Arc::new(
            ClientIp::new().trusted_proxies(args.trusted_proxies.iter().copied()),
        )),
    };
    Ok(match (cookie, hash) {
        (Some(c), hash) => Some(Arc::new((c.clone(), hash))),
        (None, hash) => hash,
    })
}

/// The sticky cookie, with the gateway's secret: the same backend gets the same value in
/// every configuration, so a reload keeps clients on their backends.
fn session_cookie(args: &Args, secret: [u8; 16]) -> Result<Option<SessionCookie>, String> {
    args.sticky_cookie
        .as_ref()
        .map(|name| {
            SessionCookie::new()
                .name(name.clone())
                .map(|c| c.secret(secret))
                .map_err(|e| format!("--sticky-cookie: {e}"))
        })
        .transpose()
}

/// The active prober `args` ask for, not started: its settings (to compare across
/// reloads) and how to start it on `balance`.
fn prober(args: &Args, balance: &HttpBalance) -> Result<Option<(String, SpawnProbe)>, String> {
    let Some(path) = &args.health_path else {
        return Ok(None);
    };
    let interval = args.health_interval.unwrap_or(HEALTH_INTERVAL);
    let mut probe = HttpProbe::new(path).map_err(|e| format!("--health-path: {e}"))?;
    if let Some(text) = &args.health_expect_body {
        probe = probe.expect_body(BodyMatch::contains(text.clone()));
    }
    if let Some((pointer, value)) = &args.health_expect_json {
        let want =
            BodyMatch::json(pointer, value).map_err(|e| format!("--health-expect-json: {e}"))?;
        probe = probe.expect_body(want);
    }
    let settings = format!(
        "{path:?} {interval:?} {:?} {:?}",
        args.health_expect_body, args.health_expect_json
    );
    let balance = balance.clone();
    let spawn: SpawnProbe = Box::new(move || {
        Prober::new(probe)
            .interval(interval)
            .spawn(&balance)
            .map_err(|e| format!("--health-interval: {e}"))
    });
    Ok(Some((settings, spawn)))
}

/// Builds pool `name` over what `feed` wants. With `previous` (the pool of that name in
/// the configuration being replaced) built from the same settings, its balancer is kept
/// and only the set's differences are applied when the pool starts; the layers in front
/// (time limit, header rules, affinity keys) are always rebuilt. Nothing runs until
/// [`Pool::start`].
pub(crate) fn build(
    name: &str,
    feed: Arc<Feed>,
    args: &Args,
    metrics: PoolMetrics,
    cookie_secret: [u8; 16],
    tls: &BackendTls,
    previous: Option<&Pool>,
) -> Result<Pool, String> {
    let settings = Settings::of(args, tls);
    let fresh = balancer(name, &feed, args, &metrics, cookie_secret, tls)?;
    let (balance, cookie, previous) = match previous {
        Some(p) if p.settings == settings => (p.balance.clone(), p.cookie.clone(), Some(p)),
        _ => (fresh.0, fresh.1, None),
    };
    let outlier = previous
        .and_then(|p| p.outlier.lock().ok().and_then(|g| g.clone()))
        .into();
    let keys = key_extractor(args, cookie.as_ref())?;
    let probe = prober(args, &balance)?;
    let upkeep = Upkeep::new(
        name,
        balance.handle(),
        feed,
        probe,
        previous.map(|p| &p.upkeep),
    );
    let front: Front = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(TimeoutLayer::new(args.timeout))
        .layer(ProxyLayer::new().rewrite_host(args.rewrite_host))
        .layer(StickyLayer::new(keys))
        .layer(ReplayBodyLayer::new(args.replay_buffer))
        .service(balance.clone());
    let service = BoxCloneSyncService::new(
        front
            .clone()
            .map_response(|r: Response<FrontBody>| r.map(Body::new)),
    );
    Ok(Pool {
        balance,
        front,
        service,
        upkeep,
        settings,
        cookie,
        metrics,
        outlier,
    })
}

/// A new balancer over what `feed` wants now (which also checks every backend: a bad
/// one fails the whole configuration).
fn balancer(
    name: &str,
    feed: &Feed,
    args: &Args,
    metrics: &PoolMetrics,
    cookie_secret: [u8; 16],
    tls: &BackendTls,
) -> Result<(HttpBalance, Option<SessionCookie>), String> {
    let cookie = session_cookie(args, cookie_secret)?;
    let strategy = strategy(args.strategy);
    let strategy: Arc<dyn Strategy> = match &cookie {
        Some(c) => Arc::new(c.strategy(strategy)),
        None => strategy,
    };
    // HTTP/1.1: a lean keep-alive pool per backend; HTTP/2: hyper-util's client. Both
    // reach `https://` backends over TLS (verified; a failed handshake is a connect-phase
    // error, retried elsewhere and counted by passive health), `http://` ones in plain.
    let pooled = PooledEndpoints::<UpstreamBody>::new()
        .connect_timeout(args.connect_timeout)
        .tls(tls.config.clone());
    let h2 = args.http2.then(|| {
        HttpEndpoints::<UpstreamBody>::http2_with_connect_timeout(args.connect_timeout)
            .tls(tls.config.clone())
    });
    let timing = metrics.clone();
    let (max_fails, fail_timeout) = (args.max_fails, args.fail_timeout);
    let stamp = cookie.clone();
    let reports = args.strategy == StrategyName::LoadReport;
    let maker = move |t: &Target<'_, String>| -> Result<Endpoint, BoxError> {
        let http: Client = match &h2 {
            Some(client) => {
                let boxed: fn(_) -> BoxError = BoxError::from;
                let body: fn(Response<_>) -> _ = |r| r.map(http_body_util::Either::Right);
                Either::Right(client.make_endpoint(t)?.map_err(boxed).map_response(body))
            }
            None => {
                let body: fn(Response<_>) -> _ = |r| r.map(http_body_util::Either::Left);
                Either::Left(pooled.make_endpoint(t)?.map_response(body))
            }
        };
        // The load-report strategy weighs what each response's report says: read it
        // into the endpoint's record (headers, or trailers for gRPC).
        let http: Reported = if reports {
            let body: fn(Response<_>) -> _ = |r| r.map(http_body_util::Either::Left);
            Either::Left(ReadReportsLayer::new(t).layer(http).map_response(body))
        } else {
            let body: fn(Response<_>) -> _ = |r| r.map(http_body_util::Either::Right);
            Either::Right(http.map_response(body))
        };
        // Passive health (`max_fails(0)` classifies but never ejects, as nginx).
        let passive = PassiveHealthLayer::new(t).policy(
            Window::new()
                .max_fails(max_fails)
                .fail_timeout(fail_timeout),
        );
        // Outermost first: latency histogram, sticky cookie, passive health, HTTP client.
        Ok(ServiceBuilder::new()
            .layer(timing.layer(t))
            .option_layer(stamp.as_ref().map(|c| c.layer(t)))
            .layer(passive)
            .service(http))
    };
    let builder = Balance::builder()
        .strategy(strategy)
        .retries(args.retries)
        .fail_fast(args.fail_fast)
        .slow_start(args.slow_start.unwrap_or(Duration::ZERO))
        .track_latency(true)
        .subset(args.subsetting())
        .backends(feed.wanted().backends.into_iter().map(|w| {
            Backend::new(w.key)
                .with_weight(w.weight)
                .with_priority(w.priority)
        }))
        .policy(HttpPolicy::new().replay_body());
    let builder = match args.hedge_after {
        Some(h) => builder.hedge(h.hedge(args.hedge_budget)),
        None => builder,
    };
    let balance = builder
        .build(Maker(maker))
        .map_err(|e| format!("pool {name}: {e}"))?;
    Ok((balance, cookie))
}

/// A fallible endpoint maker from a closure.
struct Maker<F>(F);

impl<F> MakeEndpoint<String> for Maker<F>
where
    F: Fn(&Target<'_, String>) -> Result<Endpoint, BoxError>,
{
    type Service = Endpoint;

    fn make_endpoint(&self, target: &Target<'_, String>) -> Result<Endpoint, BoxError> {
        (self.0)(target)
    }
}
