//! Model backends: latency distributions, error rates, concurrency limits, scripted phases.

use std::{
    fmt,
    ops::{Bound, RangeBounds},
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use tokio::{sync::Semaphore, time::Instant};
use tower_service::Service;

use super::SimulationError;
use crate::{
    balance::strategy::RequestKey,
    error::{BoxError, ConnectFailed},
};

// === impl Rng ===

/// SplitMix64: small, fast, and the same sequence on every platform for a given seed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// The SplitMix64 finalizer: spreads small integers over the whole `u64` range.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// === impl Latency ===

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dist {
    Constant(Duration),
    Uniform(Duration, Duration),
    Exponential(Duration),
    LogNormal { median: Duration, sigma: f64 },
    Pareto { scale: Duration, shape: f64 },
}

/// A backend's service-time distribution, optionally capped.
///
/// Samples are slept with `tokio::time::sleep`, so Tokio's timer resolution (1 ms) applies:
/// a 0.3 ms sample takes 1 ms of simulated time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    dist: Dist,
    cap: Option<Duration>,
}

impl Latency {
    /// Always `d`.
    pub fn constant(d: Duration) -> Self {
        Self::of(Dist::Constant(d))
    }

    /// Uniform in `[min, max)` (the tower-balance demo's model with `min` zero).
    pub fn uniform(min: Duration, max: Duration) -> Self {
        Self::of(Dist::Uniform(min, max))
    }

    /// Exponential with mean `mean`.
    pub fn exponential(mean: Duration) -> Self {
        Self::of(Dist::Exponential(mean))
    }

    /// Log-normal with median `median` and shape `sigma` (the standard deviation of the
    /// logarithm; 0.5 is a moderate tail, 1.5 a heavy one). `sigma` must be finite and ≥ 0.
    pub fn log_normal(median: Duration, sigma: f64) -> Self {
        Self::of(Dist::LogNormal { median, sigma })
    }

    /// Pareto (heavy tail) with minimum `scale` and tail index `shape` (> 0; the mean is
    /// finite above 1, the variance above 2).
    pub fn pareto(scale: Duration, shape: f64) -> Self {
        Self::of(Dist::Pareto { scale, shape })
    }

    /// No sample above `max`.
    #[must_use]
    pub fn capped(mut self, max: Duration) -> Self {
        self.cap = Some(max);
        self
    }

    fn of(dist: Dist) -> Self {
        Self { dist, cap: None }
    }

    pub(crate) fn validate(&self) -> Result<(), SimulationError> {
        let ok = match self.dist {
            Dist::Constant(_) | Dist::Exponential(_) => true,
            Dist::Uniform(min, max) => min <= max,
            Dist::LogNormal { sigma, .. } => sigma.is_finite() && sigma >= 0.0,
            Dist::Pareto { shape, .. } => shape.is_finite() && shape > 0.0,
        };
        if ok {
            Ok(())
        } else {
            Err(SimulationError::InvalidLatency(*self))
        }
    }

    fn sample(&self, rng: &mut Rng) -> Duration {
        let secs = match self.dist {
            Dist::Constant(d) => d.as_secs_f64(),
            Dist::Uniform(min, max) => {
                min.as_secs_f64() + (max.as_secs_f64() - min.as_secs_f64()) * rng.unit()
            }
            Dist::Exponential(mean) => -mean.as_secs_f64() * (1.0 - rng.unit()).ln(),
            Dist::LogNormal { median, sigma } => {
                median.as_secs_f64() * (sigma * rng.normal()).exp()
            }
            Dist::Pareto { scale, shape } => {
                scale.as_secs_f64() / (1.0 - rng.unit()).powf(1.0 / shape)
            }
        };
        // Far tails of Pareto samples can overflow a Duration: an hour is "never" here.
        let d = Duration::from_secs_f64(secs.clamp(0.0, 3600.0));
        self.cap.map_or(d, |cap| d.min(cap))
    }
}

// === impl BackendModel ===

#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    Latency(Latency),
    ErrorRate(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Phase {
    from: Duration,
    until: Option<Duration>,
    change: Change,
}

impl Phase {
    fn covers(&self, t: Duration) -> bool {
        t >= self.from && self.until.is_none_or(|u| t < u)
    }
}

/// One model backend: how long it takes, how often it fails, how many requests it serves
/// at once, and what changes when. See the [module docs](super) for an example.
///
/// Defaults: no errors, no refusals, unlimited concurrency, weight 1.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendModel {
    latency: Latency,
    error_rate: f64,
    refuse_rate: f64,
    concurrency: Option<usize>,
    weight: u32,
    phases: Vec<Phase>,
}

impl BackendModel {
    /// A backend whose service times follow `latency`.
    pub fn new(latency: Latency) -> Self {
        Self {
            latency,
            error_rate: 0.0,
            refuse_rate: 0.0,
            concurrency: None,
            weight: 1,
            phases: Vec::new(),
        }
    }

    /// The share of requests (0 to 1) answered with an error (HTTP 503) after their service
    /// time. Such a request reached the backend, so the balancer does not retry it.
    #[must_use]
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.error_rate = rate;
        self
    }

    /// The share of attempts (0 to 1) refused at once, before the request is sent (a
    /// [`ConnectFailed`] error): the balancer sends those elsewhere within its
    /// [`retries`](crate::balance::Builder::retries), and the report counts them.
    #[must_use]
    pub fn refuse_rate(mut self, rate: f64) -> Self {
        self.refuse_rate = rate;
        self
    }

    /// Serve at most `n` requests at once; the others queue, first come first served
    /// (the queueing time counts in the latency). `n` must be at least 1.
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n);
        self
    }

    /// The backend's weight in the balancer ([`Backend::with_weight`](crate::Backend::with_weight)).
    #[must_use]
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Service times follow `latency` during `window` of simulated time, e.g.
    /// `secs(15)..secs(45)` or `secs(10)..`. Where windows overlap, the last one added wins.
    #[must_use]
    pub fn latency_during(mut self, window: impl RangeBounds<Duration>, latency: Latency) -> Self {
        self.push(window, Change::Latency(latency));
        self
    }

    /// The error rate is `rate` during `window` of simulated time (see
    /// [`latency_during`](Self::latency_during)).
    #[must_use]
    pub fn error_rate_during(mut self, window: impl RangeBounds<Duration>, rate: f64) -> Self {
        self.push(window, Change::ErrorRate(rate));
        self
    }

    fn push(&mut self, window: impl RangeBounds<Duration>, change: Change) {
        let from = match window.start_bound() {
            Bound::Included(d) | Bound::Excluded(d) => *d,
            Bound::Unbounded => Duration::ZERO,
        };
        let until = match window.end_bound() {
            Bound::Included(d) | Bound::Excluded(d) => Some(*d),
            Bound::Unbounded => None,
        };
        self.phases.push(Phase {
            from,
            until,
            change,
        });
    }

    pub(crate) fn weight_of(&self) -> u32 {
        self.weight
    }

    pub(crate) fn validate(&self, index: usize) -> Result<(), SimulationError> {
        let share = |p: f64| (0.0..=1.0).contains(&p);
        let mut rates = vec![self.error_rate, self.refuse_rate];
        self.latency.validate()?;
        for phase in &self.phases {
            match phase.change {
                Change::Latency(l) => l.validate()?,
                Change::ErrorRate(r) => rates.push(r),
            }
        }
        if !rates.into_iter().all(share) {
            return Err(SimulationError::InvalidRate { backend: index });
        }
        if self.concurrency == Some(0) {
            return Err(SimulationError::ZeroConcurrency { backend: index });
        }
        Ok(())
    }

    /// The latency and error rate in force at `t`.
    fn at(&self, t: Duration) -> (Latency, f64) {
        let mut latency = self.latency;
        let mut errors = self.error_rate;
        for phase in self.phases.iter().filter(|p| p.covers(t)) {
            match phase.change {
                Change::Latency(l) => latency = l,
                Change::ErrorRate(r) => errors = r,
            }
        }
        (latency, errors)
    }
}

// === impl ModelBackend ===

/// What one backend saw, kept while the simulation runs.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) attempts: u64,
    pub(crate) errors: u64,
    pub(crate) refused: u64,
    /// Microseconds from arrival (queueing included) to answer, of attempts that finished.
    pub(crate) latencies: Vec<u64>,
}

/// Counters shared by all backends of one run.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) retries: AtomicU64,
    pub(crate) hedges: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Inner {
    model: BackendModel,
    origin: Instant,
    rng: Mutex<Rng>,
    queue: Option<Arc<Semaphore>>,
    pub(crate) tally: Mutex<Tally>,
    shared: Arc<Shared>,
}

/// The endpoint service the simulator builds for each [`BackendModel`]; the balancer's
/// endpoint layers (passive health, timeouts…) wrap it. It answers HTTP 200 or 503 with an
/// empty [`Body`], or fails with [`ConnectFailed`] when it refuses.
#[derive(Clone)]
pub struct ModelBackend {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for ModelBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelBackend")
            .field("model", &self.inner.model)
            .finish_non_exhaustive()
    }
}

impl ModelBackend {
    pub(crate) fn new(
        model: BackendModel,
        origin: Instant,
        seed: u64,
        shared: Arc<Shared>,
    ) -> Self {
        let queue = model.concurrency.map(|n| Arc::new(Semaphore::new(n)));
        Self {
            inner: Arc::new(Inner {
                model,
                origin,
                rng: Mutex::new(Rng::new(seed)),
                queue,
                tally: Mutex::new(Tally::default()),
                shared,
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A simulated request: its affinity key and the tally of its attempts.
#[derive(Debug, Clone)]
pub struct Request {
    pub(crate) key: Option<RequestKey>,
    pub(crate) attempts: Arc<Attempts>,
}

impl Request {
    /// The request's affinity key, when the simulation draws keys.
    pub fn key(&self) -> Option<RequestKey> {
        self.key
    }
}

/// How many attempts of one request backends saw, and how many are running.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    started: AtomicU32,
    running: AtomicU32,
}

/// Ends an attempt when its future completes or is dropped (timeout, cancelled hedge).
struct Running(Arc<Attempts>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The empty body of a model backend's responses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Body;

#[cfg(feature = "health-passive")]
impl http_body::Body for Body {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }
}

/// The message of a refused attempt.
#[derive(Debug)]
struct Refused;

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("model backend refused the connection")
    }
}

impl std::error::Error for Refused {}

impl Service<Request> for ModelBackend {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let inner = self.inner.clone();
        let arrived = Instant::now();
        // An attempt that starts while another of the same request runs is a hedge; one
        // that starts after the earlier ones ended is a retry.
        let earlier = req.attempts.started.fetch_add(1, Ordering::Relaxed);
        let running = req.attempts.running.fetch_add(1, Ordering::Relaxed);
        if running > 0 {
            inner.shared.hedges.fetch_add(1, Ordering::Relaxed);
        } else if earlier > 0 {
            inner.shared.retries.fetch_add(1, Ordering::Relaxed);
        }
        let guard = Running(req.attempts);
        let refused = {
            let mut tally = lock(&inner.tally);
            tally.attempts += 1;
            let refused = lock(&inner.rng).unit() < inner.model.refuse_rate;
            tally.refused += u64::from(refused);
            refused
        };
        Box::pin(async move {
            let _guard = guard;
            if refused {
                return Err(ConnectFailed::new(Refused).into());
            }
            let _permit = match &inner.queue {
                Some(q) => Some(q.clone().acquire_owned().await?),
                None => None,
            };
            let (latency, error_rate) = inner.model.at(Instant::now() - inner.origin);
            let (took, failed) = {
                let mut rng = lock(&inner.rng);
                (latency.sample(&mut rng), rng.unit() < error_rate)
            };
            tokio::time::sleep(took).await;
            let status = if failed {
                http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                http::StatusCode::OK
            };
            let mut tally = lock(&inner.tally);
            tally.errors += u64::from(failed);
            tally
                .latencies
                .push((Instant::now() - arrived).as_micros() as u64);
            drop(tally);
            let mut rsp = http::Response::new(Body);
            *rsp.status_mut() = status;
            Ok(rsp)
        })
    }
}
