use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use tower::discover::Discover;
use tower_service::Service;

use tower_layer::Identity;

pub use super::stack::{Around, EndpointLayer, PerEndpoint};
use super::{
    endpoint::{EndpointState, Status},
    future::ResponseFuture,
    handle::Handle,
    set::{Config, Core, Key, Snapshot, Tier},
    strategy::{P2c, Strategy},
    Keyed, RequestPolicy,
};
use crate::{
    backend::Backend,
    error::{BoxError, ConfigError, DiscoverError},
};

/// The load balancer: a cheap `Clone + Send + Sync` service that picks an endpoint for
/// every request at call time. See the [module docs](super) for the readiness contract and
/// an example.
pub struct Balance<K, S, P = ()> {
    pub(crate) core: Arc<Core<K, S>>,
    pub(crate) policy: P,
    /// The last snapshot this clone used, and its publication number: while nothing
    /// changes, a request reads the set with two plain loads instead of an `ArcSwap` load.
    cache: Option<(u64, Arc<Snapshot<K, S>>)>,
}

impl<K, S, P: Clone> Clone for Balance<K, S, P> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            policy: self.policy.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<K: Key, S: Clone, P> Balance<K, S, P> {
    pub(crate) fn from_core(core: Arc<Core<K, S>>, policy: P) -> Self {
        Self {
            core,
            policy,
            cache: None,
        }
    }

    #[inline]
    fn refresh_cache(&mut self) {
        let fresh = matches!(&self.cache, Some((n, snap)) if self.core.is_fresh(*n, snap));
        if !fresh {
            self.cache = Some(self.core.current_full());
        }
    }
}

impl<K: Key, S: Clone, P> fmt::Debug for Balance<K, S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snap = self.core.peek();
        f.debug_struct("Balance")
            .field("strategy", &self.core.strategy.name())
            .field("endpoints", &snap.entries.len())
            .field("available", &snap.candidates.view().len())
            .finish()
    }
}

impl Balance<(), ()> {
    /// Starts configuring a balancer. See [`Builder`].
    pub fn builder<K: Key>() -> Builder<K> {
        Builder::new()
    }
}

impl<K, S, P> Balance<K, S, P>
where
    K: Key,
    S: Clone + Send + Sync + 'static,
{
    /// A handle to change the endpoint set at runtime (insert, remove, re-weight, drain,
    /// replace). Changes apply at once, without request traffic.
    pub fn handle(&self) -> Handle<K> {
        Handle::new(self.core.clone())
    }

    /// A snapshot of every backend's counters and health.
    pub fn stats(&self) -> Stats<K> {
        self.core.stats()
    }

    /// The policy that reads request keys and replays failed requests.
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// Sends one request from a shared reference and returns its response as a boxed
    /// `Send + 'static` future: a clone of the balancer makes the call (no `poll_ready`
    /// needed, the balancer is always ready), so handlers and spawned tasks can write
    /// `balance.send(req).await`.
    ///
    /// Prefer it to `balance.clone().oneshot(req)` inside `async` blocks that must be
    /// `Send` when the backend key borrows (`&'static str`) or the endpoint's error is
    /// `BoxError`: rustc then cannot prove the balancer's bounds for the unboxed future
    /// ("implementation of `From` is not general enough"), while this future's type
    /// carries no such bound. The box costs one allocation per request.
    ///
    /// ```
    /// use tower::util::BoxCloneSyncService;
    /// use tower_lb::{Backend, Balance, BoxError};
    ///
    /// type Endpoint = BoxCloneSyncService<String, String, BoxError>;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let balance: Balance<&'static str, Endpoint> = Balance::builder()
    ///     .backends([Backend::new("a"), Backend::new("b")])
    ///     .build(|t: &tower_lb::balance::Target<'_, &'static str>| -> Endpoint {
    ///         let key = *t.key();
    ///         BoxCloneSyncService::new(tower::service_fn(move |req: String| async move {
    ///             Ok::<_, BoxError>(format!("{key}: {req}"))
    ///         }))
    ///     })
    ///     .unwrap();
    /// let answer = tokio::spawn(async move { balance.send("hi".to_string()).await.unwrap() })
    ///     .await
    ///     .unwrap();
    /// assert!(answer.ends_with(": hi"));
    /// # }
    /// ```
    pub fn send<Req>(&self, req: Req) -> BoxFuture<'static, Result<S::Response, BoxError>>
    where
        Self: Service<Req, Response = S::Response, Error = BoxError>,
        <Self as Service<Req>>::Future: Send + 'static,
        P: Clone,
        S: Service<Req>,
    {
        let mut svc = self.clone();
        Box::pin(svc.call(req))
    }
}

impl<K, S, P, Req> Service<Req> for Balance<K, S, P>
where
    K: Key,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    P: RequestPolicy<Req> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<K, S, P, Req>;

    /// Always ready: the endpoint is chosen in `call`, and its own readiness is driven
    /// inside the response future.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.refresh_cache();
        let Some((_, snap)) = &self.cache else {
            unreachable!("cache filled above")
        };
        ResponseFuture::new(&self.core, snap, self.policy.clone(), req)
    }
}

// === impl Core (stats) ===

impl<K: Key, S: Clone> Core<K, S> {
    pub(crate) fn stats(&self) -> Stats<K> {
        // `current` refreshes health first, so tier and status agree.
        let snap = self.current();
        let now = tokio::time::Instant::now();
        Stats {
            strategy: self.strategy.name(),
            tier: snap.tier,
            level: snap.level,
            available: snap.candidates.view().len(),
            backends: snap
                .entries
                .iter()
                .map(|e| BackendStats::read(&e.backend, &e.state, now, self.cfg.slow_start))
                .collect(),
            discover_error: self.discover_error().map(|e| e.to_string()),
        }
    }
}

/// Counters and health of every backend at one moment; from [`Balance::stats`] or
/// [`Handle::stats`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Stats<K> {
    /// The strategy's name.
    pub strategy: &'static str,
    /// Which tier serves: primaries, backups, or everything in panic mode.
    pub tier: Tier,
    /// The priority level the tier's endpoints belong to: 0 for primaries, the lowest
    /// level with an available backend while backups serve.
    pub level: u8,
    /// How many endpoints currently take new requests.
    pub available: usize,
    /// One entry per backend: in insertion order until a backend is removed, which moves
    /// the last backend into the removed one's place.
    pub backends: Vec<BackendStats<K>>,
    /// The last discovery error, while the source is failing.
    pub discover_error: Option<String>,
}

impl<K> Stats<K> {
    /// True in panic mode (health ignored because too few endpoints are available).
    pub fn panic(&self) -> bool {
        self.tier == Tier::Panic
    }

    /// The same stats with every backend key mapped, e.g. to text.
    pub fn map_keys<K2>(self, mut f: impl FnMut(K) -> K2) -> Stats<K2> {
        Stats {
            strategy: self.strategy,
            tier: self.tier,
            level: self.level,
            available: self.available,
            backends: self
                .backends
                .into_iter()
                .map(|b| BackendStats {
                    key: f(b.key),
                    weight: b.weight,
                    effective_weight: b.effective_weight,
                    backup: b.backup,
                    priority: b.priority,
                    status: b.status,
                    requests: b.requests,
                    failures: b.failures,
                    in_flight: b.in_flight,
                    ewma: b.ewma,
                    ejections: b.ejections,
                    last_failure: b.last_failure,
                })
                .collect(),
            discover_error: self.discover_error,
        }
    }
}

/// One backend's counters and health; see [`Stats`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BackendStats<K> {
    /// The backend key.
    pub key: K,
    /// Its weight.
    pub weight: u32,
    /// The weight strategies give it now when it is available: `weight`, or a share of it
    /// while slow start ramps the backend up after it joined or recovered (see
    /// [`Builder::slow_start`]).
    pub effective_weight: f64,
    /// Whether it is a backup.
    pub backup: bool,
    /// Its priority level (0: primary).
    pub priority: u8,
    /// Health status.
    pub status: Status,
    /// Requests sent in total.
    pub requests: u64,
    /// Requests that failed.
    pub failures: u64,
    /// Requests in flight.
    pub in_flight: usize,
    /// Peak-EWMA latency, when latency is tracked and sampled.
    pub ewma: Option<Duration>,
    /// Times ejected by passive health.
    pub ejections: u64,
    /// Why the backend last failed (an error chain or a status): for operators, never
    /// for clients (see [`ErrorResponseLayer`](crate::http::ErrorResponseLayer)).
    pub last_failure: Option<String>,
}

impl<K: Clone> BackendStats<K> {
    fn read(
        backend: &Backend<K>,
        state: &EndpointState,
        now: tokio::time::Instant,
        slow_start: Option<Duration>,
    ) -> Self {
        let weight = backend.weight();
        let share = slow_start
            .and_then(|window| super::set::ramp_share(window, state.ramp_start(), now))
            .unwrap_or(1.0);
        Self {
            key: backend.key().clone(),
            weight,
            effective_weight: f64::from(weight) * share,
            backup: backend.is_backup(),
            priority: backend.priority(),
            status: state.status_at(now),
            requests: state.requests(),
            failures: state.failures(),
            in_flight: state.in_flight(),
            ewma: state.ewma(),
            ejections: state.ejections(),
            last_failure: state.last_failure(),
        }
    }
}

/// One backend and its live state, as given to an endpoint maker.
///
/// Endpoint layers that record health (passive checks) or load keep a clone of
/// [`state_arc`](Self::state_arc).
#[derive(Debug)]
pub struct Target<'a, K> {
    pub(crate) backend: &'a Backend<K>,
    pub(crate) state: &'a Arc<EndpointState>,
}

impl<'a, K> Target<'a, K> {
    /// The backend description.
    pub fn backend(&self) -> &'a Backend<K> {
        self.backend
    }

    /// The backend key.
    pub fn key(&self) -> &'a K {
        self.backend.key()
    }

    /// The endpoint's live state.
    pub fn state(&self) -> &'a EndpointState {
        self.state
    }

    /// The endpoint's live state, shared.
    pub fn state_arc(&self) -> Arc<EndpointState> {
        self.state.clone()
    }
}

/// Builds the service for one backend: where each endpoint's stack of tower layers
/// (timeouts, passive health, …) is assembled.
///
/// Implemented for closures `Fn(&Target<'_, K>) -> S`; fallible makers implement the trait
/// (a failure is reported as [`ConfigError::Make`]).
///
/// ```
/// use tower::{service_fn, ServiceBuilder};
/// use tower_lb::{balance::Target, Backend, Balance};
/// use std::{convert::Infallible, time::Duration};
///
/// let balance = Balance::builder()
///     .backends([Backend::new("a"), Backend::new("b")])
///     .build(|t: &Target<'_, &'static str>| {
///         let name = *t.key();
///         ServiceBuilder::new()
///             .timeout(Duration::from_secs(1))
///             .service(service_fn(move |_req: ()| async move { Ok::<_, Infallible>(name) }))
///     })
///     .unwrap();
/// # let _ = balance;
/// ```
pub trait MakeEndpoint<K> {
    /// The endpoint service.
    type Service;

    /// Makes the service for `target`.
    fn make_endpoint(&self, target: &Target<'_, K>) -> Result<Self::Service, BoxError>;
}

impl<K, F, S> MakeEndpoint<K> for F
where
    F: Fn(&Target<'_, K>) -> S,
{
    type Service = S;

    fn make_endpoint(&self, target: &Target<'_, K>) -> Result<S, BoxError> {
        Ok(self(target))
    }
}

/// Configures and builds a [`Balance`].
///
/// Defaults: strategy [`P2c`] over in-flight requests; fail-fast wait 1 s; 2 retries of
/// connect-phase failures (when the policy can replay requests); panic threshold 50 %;
/// latency tracked only if the strategy needs it; empty discovery snapshots applied.
#[must_use]
pub struct Builder<K, P = (), L = Identity> {
    strategy: Arc<dyn Strategy>,
    /// Wrappers of the strategy applied at build time, whatever `strategy` was set to
    /// (a sticky cookie pins requests before the strategy picks).
    pub(crate) wrap_with: Vec<Box<dyn FnOnce(Arc<dyn Strategy>) -> Arc<dyn Strategy> + Send>>,
    cfg: Config,
    backends: Vec<Backend<K>>,
    subset: Option<crate::discover::subset::Subsetting>,
    pub(crate) policy: P,
    pub(crate) layer: L,
    error: Option<ConfigError>,
}

impl<K, P: fmt::Debug, L> fmt::Debug for Builder<K, P, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("strategy", &self.strategy.name())
            .field("config", &self.cfg)
            .field("backends", &self.backends.len())
            .field("policy", &self.policy)
            .field("endpoint_layers", &std::any::type_name::<L>())
            .finish()
    }
}

impl<K: Key> Default for Builder<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Key> Builder<K> {
    /// A builder with the defaults above.
    pub fn new() -> Self {
        Self {
            strategy: Arc::new(P2c::new()),
            wrap_with: Vec::new(),
            cfg: Config::default(),
            backends: Vec::new(),
            subset: None,
            policy: (),
            layer: Identity::new(),
            error: None,
        }
    }
}

impl<K: Key, P, L> Builder<K, P, L> {
    /// Sets the pick strategy.
    pub fn strategy(mut self, strategy: impl Strategy) -> Self {
        self.strategy = Arc::new(strategy);
        self
    }

    /// How long a request waits for an endpoint when none is available (an empty set at
    /// start-up, every endpoint ejected) before failing with
    /// [`NoEndpoints`](crate::error::NoEndpoints) or
    /// [`AllUnavailable`](crate::error::AllUnavailable). Zero fails at once.
    pub fn fail_fast(mut self, wait: Duration) -> Self {
        self.cfg.fail_fast = wait;
        self
    }

    /// How many times a request that failed before reaching its backend (connection
    /// refused) is sent to another endpoint. Needs a [`RequestPolicy`] that can replay
    /// requests. Endpoints whose `poll_ready` fails are always skipped, not counted here.
    pub fn retries(mut self, retries: usize) -> Self {
        self.cfg.retries = retries;
        self
    }

    /// Hedges idempotent, replayable requests: after `hedge`'s delay without an answer,
    /// a copy goes to another endpoint, the first answer wins and the other attempt is
    /// cancelled (Envoy hedging, Finagle backup requests). Off by default; needs a
    /// [`RequestPolicy`] that gives copies ([`RequestPolicy::hedge`]). See
    /// [`balance::hedge`](super::hedge) for the exact semantics.
    pub fn hedge(mut self, hedge: super::Hedge) -> Self {
        if let Err(e) = hedge.validate() {
            self.error = Some(e);
        }
        self.cfg.hedge = Some(Arc::new(hedge.into_shared()));
        self
    }

    /// Panic threshold in `0.0..=1.0` (Envoy, default 0.5), applied per priority level: a
    /// level serves while the share of its endpoints that are available is at least this;
    /// below it, the next level that is healthy enough serves instead; when no level is,
    /// health is ignored and every non-draining endpoint of the lowest level with an
    /// available one is used (panic mode). `0.0` disables panic mode: the lowest level
    /// with any available endpoint serves.
    pub fn panic_threshold(mut self, share: f64) -> Self {
        if !(0.0..=1.0).contains(&share) {
            self.error = Some(ConfigError::Invalid {
                setting: "panic_threshold",
                reason: format!("{share} is not within 0.0..=1.0"),
            });
        }
        self.cfg.panic_threshold = share;
        self
    }

    /// Slow start (nginx Plus `slow_start`, Envoy slow start with aggression 1): for
    /// `window` after a backend joins the set or recovers (an ejection ends, the prober
    /// marks it up), its effective weight ramps linearly from 10 % to 100 %:
    /// `weight × max(0.1, elapsed ÷ window)`. Default: off. A zero window turns it off.
    /// Backends present at build time ramp together, so their shares do not change; the
    /// candidate list is rebuilt 20 times per window while any backend ramps.
    ///
    /// While slow start is on, [`Candidate::weight`](super::strategy::Candidate::weight)
    /// is in hundredths of the configured weight, so the ramp is smooth even for weight 1.
    pub fn slow_start(mut self, window: Duration) -> Self {
        self.cfg.slow_start = (!window.is_zero()).then_some(window);
        self
    }

    /// When a discovery source replaces the set with an empty one, keep the last non-empty
    /// set instead (default: apply it).
    pub fn keep_last_on_empty(mut self, keep: bool) -> Self {
        self.cfg.keep_last_on_empty = keep;
        self
    }

    /// Time every response to keep a peak-EWMA latency per endpoint, even when the
    /// strategy does not need it (for stats).
    pub fn track_latency(mut self, track: bool) -> Self {
        self.cfg.track_latency = track;
        self
    }

    /// Adds one backend to the initial (static) set.
    pub fn backend(mut self, backend: Backend<K>) -> Self {
        self.backends.push(backend);
        self
    }

    /// Adds backends to the initial (static) set.
    pub fn backends(mut self, backends: impl IntoIterator<Item = Backend<K>>) -> Self {
        self.backends.extend(backends);
        self
    }

    /// Serves only this client's subset of the backends its sources name (deterministic
    /// subsetting, SRE book ch. 20, or random subsetting, gRPC A68); default: all of
    /// them (`None` turns it off again). The static backends, every [`Handle`] write (so
    /// DNS, Kubernetes and file sources) and a [`Discover`] source all go through it. See
    /// [`discover::subset`](crate::discover::subset) for the exact semantics and an
    /// example.
    pub fn subset(
        mut self,
        subsetting: impl Into<Option<crate::discover::subset::Subsetting>>,
    ) -> Self {
        self.subset = subsetting.into();
        self
    }

    /// Sets the request policy: how to read a request's affinity key and replay a failed
    /// request. See [`RequestPolicy`].
    pub fn policy<P2>(self, policy: P2) -> Builder<K, P2, L> {
        self.map_parts(|_| policy, |l| l)
    }

    /// The same builder with its policy and endpoint layers replaced.
    fn map_parts<P2, L2>(
        self,
        policy: impl FnOnce(P) -> P2,
        layer: impl FnOnce(L) -> L2,
    ) -> Builder<K, P2, L2> {
        Builder {
            strategy: self.strategy,
            wrap_with: self.wrap_with,
            cfg: self.cfg,
            backends: self.backends,
            subset: self.subset,
            policy: policy(self.policy),
            layer: layer(self.layer),
            error: self.error,
        }
    }

    /// Keys each `http::Request` with `extractor` (a header, a cookie, the client IP…;
    /// see the `sticky` module), for hash strategies: one call, with any request policy
    /// (a key the policy finds itself wins).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tower::ServiceExt;
    /// use tower_lb::{balance::strategy::{RequestKey, RingHash}, test_util, Backend, Balance};
    ///
    /// let user = |req: &http::Request<()>| {
    ///     req.headers().get("x-user").map(|v| RequestKey::from_bytes(v.as_bytes()))
    /// };
    /// let balance = test_util::echo(
    ///     Balance::builder()
    ///         .strategy(RingHash::new())
    ///         .backends(["a", "b", "c"].map(Backend::new))
    ///         .sticky_key(user),
    /// );
    /// let req = || http::Request::get("/").header("x-user", "42").body(()).unwrap();
    /// let first = balance.clone().oneshot(req()).await.unwrap();
    /// for _ in 0..10 {
    ///     assert_eq!(balance.clone().oneshot(req()).await.unwrap(), first);
    /// }
    /// # }
    /// ```
    pub fn sticky_key<E>(self, extractor: E) -> Builder<K, Keyed<P, E>, L> {
        self.map_parts(|p| Keyed::new(p, extractor), |l| l)
    }

    /// Wraps every endpoint the maker makes in a layer made from its [`Target`]. Each
    /// call wraps the layers added before, so the last one added is the outermost (the
    /// first to see a request).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::{service_fn, timeout::TimeoutLayer};
    /// use tower_lb::{balance::Target, Backend, Balance};
    ///
    /// let balance = Balance::builder()
    ///     .backends([Backend::new("a")])
    ///     .endpoint_layer(|_t: &Target<'_, &'static str>| TimeoutLayer::new(Duration::from_secs(1)))
    ///     .build(|_t: &Target<'_, &'static str>| {
    ///         service_fn(|_req: ()| async { Ok::<_, std::convert::Infallible>("hi") })
    ///     })
    ///     .unwrap();
    /// # let _ = balance;
    /// ```
    pub fn endpoint_layer<F>(self, make: F) -> Builder<K, P, Around<L, PerEndpoint<F>>> {
        self.map_parts(
            |p| p,
            |inner| Around {
                inner,
                outer: PerEndpoint(make),
            },
        )
    }

    /// Bounds every call to an endpoint (each attempt, not the whole request) with a
    /// `tower::timeout`; an expired call is an endpoint failure (passive health counts it;
    /// `http::status_for` answers 504). Outside the layers added before.
    pub fn endpoint_timeout(
        self,
        timeout: Duration,
    ) -> Builder<
        K,
        P,
        Around<L, PerEndpoint<impl Fn(&Target<'_, K>) -> tower::timeout::TimeoutLayer + Clone>>,
    > {
        self.endpoint_layer(move |_: &Target<'_, K>| tower::timeout::TimeoutLayer::new(timeout))
    }

    fn finish_cfg(&mut self) -> Result<(), ConfigError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        for wrap in std::mem::take(&mut self.wrap_with) {
            self.strategy = wrap(self.strategy.clone());
        }
        self.cfg.track_latency |= self.strategy.needs_latency();
        self.cfg.clock = super::clock::Clock::choose(self.cfg.track_latency);
        Ok(())
    }

    /// Builds the balancer over the static backends, making each endpoint with `maker`.
    /// The balancer's [`handle`](Balance::handle) uses the same maker for later inserts.
    ///
    /// Fails with a [`ConfigError`] on a zero weight, an invalid setting or a maker error.
    pub fn build<M>(mut self, maker: M) -> Result<Balance<K, L::Service, P>, ConfigError>
    where
        M: MakeEndpoint<K> + Send + Sync + 'static,
        L: EndpointLayer<K, M::Service> + Send + Sync + 'static,
        L::Service: Clone + Send + Sync + 'static,
    {
        self.finish_cfg()?;
        let layer = self.layer;
        let maker: super::set::Maker<K, L::Service> =
            Arc::new(move |t: &Target<'_, K>| maker.make_endpoint(t).map(|s| layer.layer(t, s)));
        let core = Core::new(self.strategy, self.cfg, Some(maker.clone()));
        core.rebuild_on_health_changes();
        match self.subset {
            Some(subset) => {
                let _ = core
                    .subset
                    .set(Arc::new(crate::discover::subset::SubsetState::new(subset)));
                Handle::new(core.clone()).replace(self.backends)?;
            }
            None => core.replace_with(self.backends, |t| maker(t))?,
        }
        Ok(Balance::from_core(core, self.policy))
    }
}

impl<K: Key, P> Builder<K, P> {
    /// Builds the balancer over a [`tower::discover::Discover`] source, spawned as a
    /// background task that applies every change at once, with no request traffic needed.
    /// The task stops when the last clone of the balancer (and of its handle) is dropped.
    ///
    /// Discovered endpoints get weight 1. Source errors are logged and kept in the stats;
    /// the last good set stays in use. Must be called within a Tokio runtime.
    pub fn build_discover<D>(
        mut self,
        discover: D,
    ) -> Result<Balance<K, D::Service, P>, ConfigError>
    where
        D: Discover<Key = K> + Send + 'static,
        D::Service: Clone + Send + Sync + 'static,
        D::Error: Into<BoxError>,
    {
        self.finish_cfg()?;
        if !self.backends.is_empty() {
            return Err(ConfigError::NoMaker);
        }
        let rt = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::Invalid {
            setting: "runtime",
            reason: "build_discover must be called within a Tokio runtime".into(),
        })?;
        let core = Core::new(self.strategy, self.cfg, None);
        core.rebuild_on_health_changes();
        let task = match self.subset {
            Some(subset) => rt.spawn(drive(
                Arc::downgrade(&core),
                crate::discover::subset::SubsetDiscover::new(discover, subset),
            )),
            None => rt.spawn(drive(Arc::downgrade(&core), discover)),
        };
        core.set_driver(task.abort_handle());
        Ok(Balance::from_core(core, self.policy))
    }
}

async fn drive<K, D>(core: std::sync::Weak<Core<K, D::Service>>, discover: D)
where
    K: Key,
    D: Discover<Key = K>,
    D::Service: Clone + Send + Sync + 'static,
    D::Error: Into<BoxError>,
{
    use tower::discover::Change;
    let mut discover = std::pin::pin!(discover);
    while let Some(change) =
        futures_util::future::poll_fn(|cx| discover.as_mut().poll_discover(cx)).await
    {
        let Some(core) = core.upgrade() else { return };
        match change {
            Ok(Change::Insert(key, svc)) => {
                let mut svc = Some(svc);
                let res = core.insert_with(Backend::new(key), |_| {
                    svc.take().ok_or_else(|| "service already taken".into())
                });
                if let Err(e) = res {
                    tracing::warn!(error = %e, "tower_lb: discovered endpoint refused");
                }
                core.set_discover_error(None);
            }
            Ok(Change::Remove(key)) => {
                core.remove(&key);
            }
            Err(e) => {
                let e: BoxError = e.into();
                tracing::warn!(error = %e, "tower_lb: discovery error; keeping the last set");
                core.set_discover_error(Some(DiscoverError::new(e)));
            }
        }
    }
    tracing::debug!("tower_lb: discovery source ended; keeping the last set");
}
