//! One pool of backends: a balancer and the stack of library layers in front of it.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::body::Body;
use http::{Request, Response};
use tower::{
    timeout::TimeoutLayer,
    util::{BoxCloneSyncService, Either},
    ServiceBuilder, ServiceExt,
};
use tower_lb::{
    balance::{
        strategy::{
            BoundedLoad, IpHash, LeastConn, Maglev, P2c, Random, Rendezvous, RingHash, Strategy,
            WeightedRoundRobin,
        },
        MakeEndpoint, Target,
    },
    health::{
        active::{BodyMatch, HttpProbe, Prober},
        passive::{PassiveHealthLayer, Window},
    },
    http::{
        proxy::ProxyLayer, ErrorResponseLayer, HttpEndpoints, HttpPolicy, PooledEndpoints,
        ReplayBodies, ReplayBody,
    },
    metrics::BalanceMetrics,
    sticky::{ClientIp, CookieKey, ExtractKey, HeaderKey, QueryKey, SessionCookie, StickyLayer},
    Backend, Balance, BoxError,
};

use crate::cli::{Args, BackendSpec, HashKey, StrategyName};

/// What the balancer sends upstream: the client's body, its first bytes kept for replay.
pub(crate) type UpstreamBody = ReplayBody<Body>;
/// One backend's endpoint stack, boxed.
pub(crate) type Endpoint = BoxCloneSyncService<Request<UpstreamBody>, Response<Body>, BoxError>;
/// A pool as the router sees it.
pub(crate) type PoolService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

pub(crate) struct Pool {
    pub(crate) name: String,
    pub(crate) balance: Balance<String, Endpoint, HttpPolicy<ReplayBodies>>,
    /// Error answers, time limit, proxy header rules, affinity keys, replay, balancer.
    pub(crate) service: PoolService,
    /// Stops the active prober when the pool goes away.
    _prober: Option<tower_lb::Guard>,
}

fn strategy(name: StrategyName) -> Arc<dyn Strategy> {
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
    }
}

/// The extractor of each request's affinity key: a valid sticky cookie wins, then the
/// `--hash-key` source; hash strategies without `--hash-key` hash the client IP (nginx
/// `ip_hash`, or `hash $remote_addr consistent`).
fn key_extractor(
    args: &Args,
    cookie: Option<&SessionCookie>,
) -> Result<Option<Arc<dyn ExtractKey<Body>>>, String> {
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

pub(crate) fn build(
    name: &str,
    specs: &[BackendSpec],
    args: &Args,
    metrics: &BalanceMetrics,
) -> Result<Pool, String> {
    let cookie = match &args.sticky_cookie {
        None => None,
        Some(name) => Some(
            SessionCookie::new()
                .name(name.clone())
                .map_err(|e| format!("--sticky-cookie: {e}"))?,
        ),
    };
    let keys = key_extractor(args, cookie.as_ref())?;
    let strategy = strategy(args.strategy);
    let strategy: Arc<dyn Strategy> = match &cookie {
        Some(c) => Arc::new(c.strategy(strategy)),
        None => strategy,
    };
    // HTTP/1.1: a lean keep-alive pool per backend; HTTP/2: hyper-util's client.
    let pooled = PooledEndpoints::<UpstreamBody>::new().connect_timeout(args.connect_timeout);
    let h2 = args
        .http2
        .then(|| HttpEndpoints::<UpstreamBody>::http2_with_connect_timeout(args.connect_timeout));
    let pool_metrics = metrics.pool(name);
    let timing = pool_metrics.clone();
    let (max_fails, fail_timeout) = (args.max_fails, args.fail_timeout);
    let stamp = cookie.clone();
    let maker = move |t: &Target<'_, String>| -> Result<Endpoint, BoxError> {
        let http = match &h2 {
            Some(client) => Either::Right(
                ServiceBuilder::new()
                    .map_response(|r: Response<_>| r.map(Body::new))
                    .map_err(BoxError::from)
                    .service(client.make_endpoint(t)?),
            ),
            None => Either::Left(
                ServiceBuilder::new()
                    .map_response(|r: Response<_>| r.map(Body::new))
                    .map_err(BoxError::from)
                    .service(pooled.make_endpoint(t)?),
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
        Ok(BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(timing.layer(t))
                .option_layer(stamp.as_ref().map(|c| c.layer(t)))
                .map_response(|r: Response<_>| r.map(Body::new))
                .layer(passive)
                .service(http),
        ))
    };
    let balance = Balance::builder()
        .strategy(strategy)
        .retries(args.retries)
        .fail_fast(args.fail_fast)
        .slow_start(args.slow_start.unwrap_or(Duration::ZERO))
        .track_latency(true)
        .backends(specs.iter().map(|s| {
            Backend::new(s.url.clone())
                .with_weight(s.weight)
                .with_priority(s.priority)
        }))
        .policy(HttpPolicy::new().replay_body())
        .build(Maker(maker))
        .map_err(|e| format!("pool {name}: {e}"))?;
    pool_metrics.watch(&balance);
    let prober = match &args.health_path {
        None => None,
        Some(path) => {
            let mut probe = HttpProbe::new(path).map_err(|e| format!("--health-path: {e}"))?;
            if let Some(text) = &args.health_expect_body {
                probe = probe.expect_body(BodyMatch::contains(text.clone()));
            }
            if let Some((pointer, value)) = &args.health_expect_json {
                let want = BodyMatch::json(pointer, value)
                    .map_err(|e| format!("--health-expect-json: {e}"))?;
                probe = probe.expect_body(want);
            }
            Some(
                Prober::new(probe)
                    .interval(args.health_interval)
                    .spawn(&balance)
                    .map_err(|e| format!("--health-interval: {e}"))?,
            )
        }
    };
    let replay_cap = args.replay_buffer;
    let front = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(TimeoutLayer::new(args.timeout))
        .layer(ProxyLayer::new().rewrite_host(args.rewrite_host))
        .layer(StickyLayer::new(keys))
        .map_request(move |req: Request<Body>| req.map(|b| ReplayBody::new(b, replay_cap)))
        .service(balance.clone())
        .map_response(|r| r.map(Body::new));
    Ok(Pool {
        name: name.to_string(),
        balance,
        service: BoxCloneSyncService::new(front),
        _prober: prober,
    })
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
