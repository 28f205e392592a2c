//! Statistical outlier detection: compare every endpoint with the others each interval,
//! and eject the ones that fail much more than the rest (Envoy outlier detection's
//! `success_rate` and `failure_percentage`, gRPC A50).
//!
//! The per-request policies ([`Window`](super::Window), [`Consecutive`](super::Consecutive))
//! need a run of failures on one endpoint. A backend that fails a third of its requests,
//! and answers them fast, never makes such a run, and peak-EWMA P2C even favours it for its
//! speed. Outlier detection looks across hosts instead: one task per balancer
//! ([`OutlierDetection::spawn`]) reads, at the end of every `interval`, how many requests
//! each endpoint answered well and badly during that interval, and ejects the outliers.
//!
//! # Semantics
//!
//! The verdicts are passive health's: a request is a success or a failure exactly as the
//! endpoint's [`PassiveHealthLayer`](super::PassiveHealthLayer) classifies it (its
//! classifier, [`FailureStatuses`](super::FailureStatuses) by default), so the layer must
//! be on the endpoints; a detector that sees requests but no verdicts says so once in a
//! `tracing` warning. Every `interval` (default 10 s), over the endpoints that are
//! healthy (neither ejected, on probation, down nor draining):
//!
//! - **success rate** ([`SuccessRate`], on by default): the endpoints with at least
//!   `request_volume` (100) requests in the interval qualify; when at least
//!   `minimum_hosts` (5) qualify, each one whose success rate is below
//!   `mean − stdev_factor × stdev` (1.9; population standard deviation) of the qualifying
//!   rates is ejected, with probability `enforcing` (100 %);
//! - **failure percentage** ([`FailurePercentage`], off by default): the endpoints with at
//!   least `request_volume` (50) requests qualify; when at least `minimum_hosts` (5)
//!   qualify, each one whose failed share is at or above `threshold` (85 %) is ejected,
//!   with probability `enforcing` (100 %).
//!
//! An ejection lasts `base_ejection_time × times ejected` (30 s), at most
//! `max_ejection_time` (300 s). "Times ejected" grows by one with every ejection by the
//! detector, and drops by one after every clean interval (one the endpoint spent
//! serving, from one evaluation to the next, without being ejected), as Envoy's ejection
//! multiplier does.
//!
//! The rest is as for the other policies, and decided in the same places:
//!
//! - **Max ejection share** ([`max_ejection_share`](OutlierDetection::max_ejection_share),
//!   default 50 %), per priority level: an ejection that would put more than this share
//!   of its level out is refused unless another level can serve; the first ejection of a
//!   level is always allowed; a lone endpoint is never ejected. A refusal is a `tracing`
//!   warning.
//! - **Panic mode** is the balancer's
//!   ([`Builder::panic_threshold`](crate::balance::Builder::panic_threshold)).
//! - **When the ejection ends**, the endpoint's passive layer takes over: with probation
//!   on (the default) one trial request readmits it or ejects it again (for the layer's
//!   own policy's time); with probation off it is readmitted.
//! - **A passing active probe readmits** an endpoint the detector ejected (Envoy
//!   `successful_active_health_check_uneject_host`, on by default; see
//!   [`readmit_on_probe`](OutlierDetection::readmit_on_probe)): the
//!   [`Prober`](crate::health::active::Prober) (feature `health-active`) ends the ejection
//!   at the first probe that passes, as it marks endpoints up today.
//!
//! Ejections show in the stats as for the other policies
//! ([`BackendStats::status`](crate::balance::BackendStats::status) `Ejected`,
//! [`BackendStats::ejections`](crate::balance::BackendStats::ejections), the
//! `tower_lb_ejections_total` metric), and every ejection, refusal and readmission is a
//! `tracing` event with the backend, the figures that decided it and the ejection time.
//!
//! The task holds only a weak reference to the balancer: it stops when its
//! [`Guard`] is dropped, or at the first interval after the balancer is. Run one detector
//! per balancer (each reads and resets the same per-endpoint counters).
//!
//! # Settings beside Envoy and gRPC A50
//!
//! | tower-lb | default | Envoy `outlier_detection` | gRPC A50 `outlier_detection` |
//! |---|---|---|---|
//! | [`OutlierDetection::interval`] | 10 s | `interval` 10 s | `interval` 10 s |
//! | [`OutlierDetection::base_ejection_time`] | 30 s | `base_ejection_time` 30 s | `base_ejection_time` 30 s |
//! | [`OutlierDetection::max_ejection_time`] | 300 s | `max_ejection_time` 300 s | `max_ejection_time` 300 s |
//! | [`OutlierDetection::max_ejection_share`] | 50 % | `max_ejection_percent` 10 % | `max_ejection_percent` 10 % |
//! | [`OutlierDetection::readmit_on_probe`] | on | `successful_active_health_check_uneject_host` true | — |
//! | [`SuccessRate::request_volume`] | 100 | `success_rate_request_volume` 100 | `success_rate_ejection.request_volume` 100 |
//! | [`SuccessRate::minimum_hosts`] | 5 | `success_rate_minimum_hosts` 5 | `success_rate_ejection.minimum_hosts` 5 |
//! | [`SuccessRate::stdev_factor`] | 1.9 | `success_rate_stdev_factor` 1900 (÷ 1000) | `success_rate_ejection.stdev_factor` 1900 (÷ 1000) |
//! | [`SuccessRate::enforcing`] | 100 % | `enforcing_success_rate` 100 | `success_rate_ejection.enforcement_percentage` 100 |
//! | [`FailurePercentage::threshold`] | 85 % | `failure_percentage_threshold` 85 | `failure_percentage_ejection.threshold` 85 |
//! | [`FailurePercentage::request_volume`] | 50 | `failure_percentage_request_volume` 50 | `failure_percentage_ejection.request_volume` 50 |
//! | [`FailurePercentage::minimum_hosts`] | 5 | `failure_percentage_minimum_hosts` 5 | `failure_percentage_ejection.minimum_hosts` 5 |
//! | [`FailurePercentage::enforcing`] | 100 % | `enforcing_failure_percentage` 0 | `failure_percentage_ejection.enforcement_percentage` 100 |
//!
//! Two defaults differ from Envoy's on purpose: the max ejection share is the crate's one
//! default (50 %) for every policy (with 5 hosts Envoy's 10 % still allows one ejection,
//! as here), and failure percentage, which is off unless you turn it on, enforces fully
//! when you do (gRPC's default), instead of only counting (Envoy's
//! `enforcing_failure_percentage` 0).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::{convert::Infallible, sync::{atomic::{AtomicU32, Ordering}, Arc}, time::Duration};
//! use tower::{service_fn, Service, ServiceBuilder};
//! use tower_lb::{
//!     balance::{strategy::RoundRobin, Status, Target},
//!     health::passive::{OutlierDetection, PassiveHealthLayer, SuccessRate, Window},
//!     Backend, Balance,
//! };
//!
//! // Five backends; "e" fails one request in three (503), never three in a row.
//! let balance = Balance::builder()
//!     .strategy(RoundRobin::new())
//!     .backends(["a", "b", "c", "d", "e"].map(Backend::new))
//!     .build(|t: &Target<'_, &'static str>| {
//!         let name = *t.key();
//!         let n = Arc::new(AtomicU32::new(0));
//!         ServiceBuilder::new()
//!             // Passive health classifies; `max_fails(0)`: its own policy never ejects.
//!             .layer(PassiveHealthLayer::new(t).policy(Window::new().max_fails(0)))
//!             .service(service_fn(move |_req: http::Request<()>| {
//!                 let i = n.fetch_add(1, Ordering::Relaxed);
//!                 let mut rsp = http::Response::new(String::new());
//!                 if name == "e" && i % 3 == 2 {
//!                     *rsp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
//!                 }
//!                 async move { Ok::<_, Infallible>(rsp) }
//!             }))
//!     })
//!     .unwrap();
//!
//! let _detector = OutlierDetection::new()
//!     .success_rate(SuccessRate::new().request_volume(20))
//!     .spawn(&balance)
//!     .unwrap();
//!
//! for _ in 0..200 {
//!     balance.clone().call(http::Request::new(())).await.unwrap();
//! }
//! tokio::time::sleep(Duration::from_secs(11)).await; // past the first evaluation
//! let stats = balance.stats();
//! assert!(matches!(stats.backends[4].status, Status::Ejected { .. }));
//! assert_eq!(stats.available, 4);
//! # }
//! ```

use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    balance::{later, strategy::Rng, EndpointState, Key, Refusal, Status, WeakHandle},
    error::ConfigError,
    Balance, Guard,
};

// === the per-endpoint record ===

/// Outlier detection's record of one endpoint, kept with it
/// ([`EndpointState::slot`]): the interval's verdicts, counted by the endpoint's passive
/// layer as it classifies each outcome, read and reset by the detector at every interval;
/// and the detector's own "times ejected" and current ejection.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    successes: AtomicU64,
    failures: AtomicU64,
    /// The detector's ejection multiplier (Envoy's), written by the detector only.
    times_ejected: AtomicU64,
    /// When the detector's current ejection ends, if a passing probe may end it sooner.
    /// Taken on ejections and probes only.
    probe_may_end: Mutex<Option<Instant>>,
}

impl Tally {
    /// A request succeeded (by passive health's classification).
    #[inline]
    pub(crate) fn success(&self) {
        self.successes.fetch_add(1, Relaxed);
    }

    /// A request failed (by passive health's classification).
    #[inline]
    pub(crate) fn failure(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    /// The interval's successes and failures; the next interval starts from zero.
    fn take(&self) -> (u64, u64) {
        (
            self.successes.swap(0, Relaxed),
            self.failures.swap(0, Relaxed),
        )
    }

    fn probe_may_end(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.probe_may_end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A probe of `state`'s endpoint passed (called by the active prober): ends the outlier
/// detector's ejection of it, if there is one that a probe may end (Envoy
/// `successful_active_health_check_uneject_host`). An ejection by another policy, or
/// one that already gave way to a new ejection, is left alone.
pub(crate) fn probe_passed(backend: &dyn fmt::Display, state: &EndpointState) {
    let tally = state.slot::<Tally>();
    let mut may_end = tally.probe_may_end();
    let Some(until) = *may_end else { return };
    *may_end = None;
    if state.ejected_until() == Some(until) {
        state.readmit();
        tracing::info!(backend = %backend,
            "tower_lb: readmitted: an active probe passed (outlier detection's ejection ended)");
    }
}

// === configuration ===

/// The success-rate test (Envoy `success_rate`, gRPC A50 `success_rate_ejection`): eject
/// the endpoints whose success rate is below `mean − stdev_factor × stdev` of the
/// others'. See the [module docs](self) for the semantics.
///
/// Defaults: `request_volume` 100, `minimum_hosts` 5, `stdev_factor` 1.9, `enforcing`
/// 100 %.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRate {
    request_volume: u64,
    minimum_hosts: usize,
    stdev_factor: f64,
    enforcing: f64,
}

impl Default for SuccessRate {
    fn default() -> Self {
        Self {
            request_volume: 100,
            minimum_hosts: 5,
            stdev_factor: 1.9,
            enforcing: 1.0,
        }
    }
}

impl SuccessRate {
    /// Envoy's defaults: 100 requests, 5 hosts, 1.9 standard deviations, always enforced.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests an endpoint needs in the interval to take part (Envoy
    /// `success_rate_request_volume`, default 100).
    #[must_use]
    pub fn request_volume(mut self, n: u64) -> Self {
        self.request_volume = n;
        self
    }

    /// Endpoints that must take part for the test to run at all (Envoy
    /// `success_rate_minimum_hosts`, default 5).
    #[must_use]
    pub fn minimum_hosts(mut self, n: usize) -> Self {
        self.minimum_hosts = n;
        self
    }

    /// How many standard deviations below the mean an outlier is (Envoy
    /// `success_rate_stdev_factor` ÷ 1000, default 1.9). Finite and not negative.
    #[must_use]
    pub fn stdev_factor(mut self, factor: f64) -> Self {
        self.stdev_factor = factor;
        self
    }

    /// The chance that an outlier found is ejected, `0.0..=1.0` (Envoy
    /// `enforcing_success_rate` ÷ 100, default 1.0).
    #[must_use]
    pub fn enforcing(mut self, share: f64) -> Self {
        self.enforcing = share;
        self
    }
}

/// The failure-percentage test (Envoy `failure_percentage`, gRPC A50
/// `failure_percentage_ejection`): eject the endpoints whose share of failed requests is
/// at or above `threshold`. See the [module docs](self) for the semantics.
///
/// Defaults: `threshold` 85 %, `request_volume` 50, `minimum_hosts` 5, `enforcing` 100 %.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailurePercentage {
    threshold: f64,
    request_volume: u64,
    minimum_hosts: usize,
    enforcing: f64,
}

impl Default for FailurePercentage {
    fn default() -> Self {
        Self {
            threshold: 0.85,
            request_volume: 50,
            minimum_hosts: 5,
            enforcing: 1.0,
        }
    }
}

impl FailurePercentage {
    /// The defaults: 85 % failed, 50 requests, 5 hosts, always enforced (gRPC's).
    pub fn new() -> Self {
        Self::default()
    }

    /// The failed share, `0.0..=1.0`, at or above which an endpoint is ejected (Envoy
    /// `failure_percentage_threshold` ÷ 100, default 0.85).
    #[must_use]
    pub fn threshold(mut self, share: f64) -> Self {
        self.threshold = share;
        self
    }

    /// Requests an endpoint needs in the interval to take part (Envoy
    /// `failure_percentage_request_volume`, default 50).
    #[must_use]
    pub fn request_volume(mut self, n: u64) -> Self {
        self.request_volume = n;
        self
    }

    /// Endpoints that must take part for the test to run at all (Envoy
    /// `failure_percentage_minimum_hosts`, default 5).
    #[must_use]
    pub fn minimum_hosts(mut self, n: usize) -> Self {
        self.minimum_hosts = n;
        self
    }

    /// The chance that an endpoint over the threshold is ejected, `0.0..=1.0` (Envoy
    /// `enforcing_failure_percentage` ÷ 100; default 1.0, gRPC's).
    #[must_use]
    pub fn enforcing(mut self, share: f64) -> Self {
        self.enforcing = share;
        self
    }
}

/// Configures and spawns the outlier detector of one balancer. See the
/// [module docs](self) for the semantics, the defaults beside Envoy's and gRPC's, and an
/// example.
///
/// Defaults: every 10 s, success rate on ([`SuccessRate::new`]), failure percentage off,
/// 30 s × times ejected up to 300 s, max ejection share 50 %, a passing probe readmits.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct OutlierDetection {
    interval: Duration,
    base_ejection_time: Duration,
    max_ejection_time: Duration,
    max_share: f64,
    success_rate: Option<SuccessRate>,
    failure_percentage: Option<FailurePercentage>,
    readmit_on_probe: bool,
    seed: Option<u64>,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_share: 0.5,
            success_rate: Some(SuccessRate::new()),
            failure_percentage: None,
            readmit_on_probe: true,
            seed: None,
        }
    }
}

impl OutlierDetection {
    /// Envoy's defaults: the success-rate test every 10 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Time between evaluations, and the span whose requests each one judges (Envoy
    /// `interval`, default 10 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Ejection time per time ejected (Envoy `base_ejection_time`, default 30 s).
    pub fn base_ejection_time(mut self, base: Duration) -> Self {
        self.base_ejection_time = base;
        self
    }

    /// Cap on the ejection time (Envoy `max_ejection_time`, default 300 s); at least
    /// `base_ejection_time`.
    pub fn max_ejection_time(mut self, max: Duration) -> Self {
        self.max_ejection_time = max;
        self
    }

    /// Never eject more than this share of a priority level (Envoy
    /// `max_ejection_percent` ÷ 100, default 0.5, the crate's default for every policy),
    /// but always allow one; clamped to `0.0..=1.0`. The rule is the one
    /// [`PassiveHealthLayer::max_ejection_share`](super::PassiveHealthLayer::max_ejection_share)
    /// describes.
    pub fn max_ejection_share(mut self, share: f64) -> Self {
        self.max_share = if share.is_nan() {
            0.5
        } else {
            share.clamp(0.0, 1.0)
        };
        self
    }

    /// The success-rate test, or `None` to turn it off (on by default).
    pub fn success_rate(mut self, test: impl Into<Option<SuccessRate>>) -> Self {
        self.success_rate = test.into();
        self
    }

    /// The failure-percentage test, or `None` to turn it off (off by default).
    pub fn failure_percentage(mut self, test: impl Into<Option<FailurePercentage>>) -> Self {
        self.failure_percentage = test.into();
        self
    }

    /// Whether a passing active probe ends the detector's ejection of an endpoint (Envoy
    /// `successful_active_health_check_uneject_host`, default on). Without a
    /// [`Prober`](crate::health::active::Prober) this changes nothing.
    pub fn readmit_on_probe(mut self, on: bool) -> Self {
        self.readmit_on_probe = on;
        self
    }

    /// Seeds the `enforcing` draws, so tests are repeatable.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.into(),
            })
        };
        let share = |x: f64| (0.0..=1.0).contains(&x);
        if self.interval.is_zero() {
            return invalid("outlier interval", "must be positive");
        }
        if self.base_ejection_time.is_zero() {
            return invalid("base_ejection_time", "must be positive");
        }
        if self.max_ejection_time < self.base_ejection_time {
            return invalid("max_ejection_time", "must be at least base_ejection_time");
        }
        if self.success_rate.is_none() && self.failure_percentage.is_none() {
            return invalid(
                "outlier detection",
                "needs the success-rate or the failure-percentage test",
            );
        }
        if let Some(sr) = &self.success_rate {
            if !(sr.stdev_factor.is_finite() && sr.stdev_factor >= 0.0) {
                return invalid("stdev_factor", "must be finite and not negative");
            }
            if !share(sr.enforcing) {
                return invalid("enforcing", "must be within 0.0..=1.0");
            }
        }
        if let Some(fp) = &self.failure_percentage {
            if !share(fp.threshold) {
                return invalid("threshold", "must be within 0.0..=1.0");
            }
            if !share(fp.enforcing) {
                return invalid("enforcing", "must be within 0.0..=1.0");
            }
        }
        Ok(())
    }

    /// Starts evaluating every endpoint of `balance` (and those added later) each
    /// interval, in a task on the current Tokio runtime, stopped when the returned
    /// [`Guard`] is dropped (ejections already made run their course) or when the
    /// balancer is. The first evaluation is one interval from now, over the requests of
    /// that interval.
    ///
    /// Fails with a [`ConfigError`] on an invalid setting or outside a Tokio runtime.
    pub fn spawn<K, S, P>(self, balance: &Balance<K, S, P>) -> Result<Guard, ConfigError>
    where
        K: Key,
        S: Clone + Send + Sync + 'static,
    {
        self.check()?;
        let handle = balance.handle();
        let mut book = Book {
            cfg: self.clone(),
            rng: self.seed.map_or_else(Rng::new, Rng::with_seed),
            hosts: HashMap::new(),
            warned: false,
        };
        // Counts from before the detector started do not belong to its first interval.
        book.sync(handle.endpoints(), false);
        let weak = handle.downgrade();
        drop(handle);
        Guard::spawn("outlier detection", run(weak, book))
    }
}

// === the task ===

async fn run<K: Key>(members: WeakHandle<K>, mut book: Book<K>) {
    let mut next = later(Instant::now(), book.cfg.interval);
    loop {
        tokio::time::sleep_until(next).await;
        // A weak reference: the detector never keeps a dropped balancer alive.
        let Some(set) = members.upgrade() else { return };
        let list = set.endpoints();
        drop(set);
        book.sync(list, true);
        book.evaluate(Instant::now());
        // Intervals keep their length even when an evaluation is late.
        next = later(Instant::now(), book.cfg.interval);
    }
}

/// One endpoint as the detector follows it.
struct Host {
    state: Arc<EndpointState>,
    tally: Arc<Tally>,
    /// This interval's verdicts.
    successes: u64,
    failures: u64,
    /// Requests sent in total at the last evaluation (to notice a missing passive layer).
    requests: u64,
    /// Serving (not ejected) after the last evaluation: the start of a clean interval.
    serving: bool,
}

struct Book<K> {
    cfg: OutlierDetection,
    rng: Rng,
    hosts: HashMap<K, Host>,
    /// The "no verdicts" warning was given.
    warned: bool,
}

/// Why the detector ejects an endpoint, for the `tracing` event.
enum Finding {
    SuccessRate {
        rate: f64,
        threshold: f64,
        mean: f64,
        stdev: f64,
    },
    FailurePercentage {
        failed: f64,
        threshold: f64,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::SuccessRate {
                rate,
                threshold,
                mean,
                stdev,
            } => write!(
                f,
                "success rate {:.1} % below {:.1} % (mean {:.1} % − stdev_factor × stdev {:.1} %)",
                rate * 100.0,
                threshold * 100.0,
                mean * 100.0,
                stdev * 100.0
            ),
            Self::FailurePercentage { failed, threshold } => write!(
                f,
                "{:.1} % of requests failed, threshold {:.1} %",
                failed * 100.0,
                threshold * 100.0
            ),
        }
    }
}

impl<K: Key> Book<K> {
    /// Follows the balancer's set and reads (and resets) every endpoint's verdicts of
    /// the interval; `keep` false drops them (the counts before the first interval).
    fn sync(&mut self, members: Vec<(K, Arc<EndpointState>)>, keep: bool) {
        let mut seen = std::collections::HashSet::with_capacity(members.len());
        for (key, state) in members {
            let fresh = self
                .hosts
                .get(&key)
                .is_none_or(|h| !Arc::ptr_eq(&h.state, &state));
            if fresh {
                let tally = state.slot::<Tally>();
                let requests = state.requests();
                self.hosts.insert(
                    key.clone(),
                    Host {
                        state,
                        tally,
                        successes: 0,
                        failures: 0,
                        requests,
                        serving: false,
                    },
                );
            }
            let host = self.hosts.get_mut(&key).expect("inserted above");
            let (s, f) = host.tally.take();
            (host.successes, host.failures) = if keep { (s, f) } else { (0, 0) };
            seen.insert(key);
        }
        self.hosts.retain(|k, _| seen.contains(k));
    }

    /// One evaluation: the two tests, then the clean-interval decay.
    fn evaluate(&mut self, now: Instant) {
        self.warn_without_verdicts();
        // Only endpoints that serve normally are judged; the others are out already.
        let healthy = |h: &Host| h.state.status_at(now) == Status::Healthy;
        let mut ejected: Vec<K> = Vec::new();

        if let Some(sr) = self.cfg.success_rate {
            let qualify: Vec<(&K, f64)> = self
                .hosts
                .iter()
                .filter(|(_, h)| healthy(h))
                .filter_map(|(k, h)| {
                    let volume = h.successes + h.failures;
                    (volume > 0 && volume >= sr.request_volume)
                        .then(|| (k, h.successes as f64 / volume as f64))
                })
                .collect();
            if !qualify.is_empty() && qualify.len() >= sr.minimum_hosts {
                let n = qualify.len() as f64;
                let mean = qualify.iter().map(|(_, r)| r).sum::<f64>() / n;
                let var = qualify.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
                let stdev = var.sqrt();
                let threshold = mean - sr.stdev_factor * stdev;
                let outliers: Vec<(K, Finding)> = qualify
                    .iter()
                    .filter(|(_, rate)| *rate < threshold)
                    .map(|(k, rate)| {
                        let finding = Finding::SuccessRate {
                            rate: *rate,
                            threshold,
                            mean,
                            stdev,
                        };
                        ((*k).clone(), finding)
                    })
                    .collect();
                for (key, finding) in outliers {
                    if self.enforce(sr.enforcing) && self.eject(&key, &finding, now) {
                        ejected.push(key);
                    }
                }
            } else {
                tracing::trace!(
                    qualifying = qualify.len(),
                    minimum_hosts = sr.minimum_hosts,
                    "tower_lb: outlier detection: too few endpoints with enough requests \
                     for the success-rate test"
                );
            }
        }

        if let Some(fp) = self.cfg.failure_percentage {
            let qualify: Vec<(&K, f64)> = self
                .hosts
                .iter()
                .filter(|(k, h)| healthy(h) && !ejected.contains(k))
                .filter_map(|(k, h)| {
                    let volume = h.successes + h.failures;
                    (volume > 0 && volume >= fp.request_volume)
                        .then(|| (k, h.failures as f64 / volume as f64))
                })
                .collect();
            if !qualify.is_empty() && qualify.len() >= fp.minimum_hosts {
                let outliers: Vec<(K, Finding)> = qualify
                    .iter()
                    .filter(|(_, failed)| *failed >= fp.threshold)
                    .map(|(k, failed)| {
                        let finding = Finding::FailurePercentage {
                            failed: *failed,
                            threshold: fp.threshold,
                        };
                        ((*k).clone(), finding)
                    })
                    .collect();
                for (key, finding) in outliers {
                    if self.enforce(fp.enforcing) && self.eject(&key, &finding, now) {
                        ejected.push(key);
                    }
                }
            }
        }

        // Envoy's multiplier decay: one less for every interval spent serving.
        for (key, host) in &mut self.hosts {
            let serving = !host.state.on_probation_or_ejected();
            if host.serving && serving && !ejected.contains(key) {
                let times = host.tally.times_ejected.load(Relaxed);
                if times > 0 {
                    host.tally.times_ejected.store(times - 1, Relaxed);
                    tracing::debug!(backend = %key, times_ejected = times - 1,
                        "tower_lb: outlier detection: a clean interval; times ejected decreased");
                }
            }
            host.serving = serving;
        }
    }

    /// The `enforcing` draw.
    fn enforce(&self, share: f64) -> bool {
        share >= 1.0 || ((self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < share
    }

    /// Ejects `key` if the max ejection share allows it; true if it did.
    fn eject(&self, key: &K, finding: &Finding, now: Instant) -> bool {
        let Some(host) = self.hosts.get(key) else {
            return false;
        };
        let volume = host.successes + host.failures;
        if let Err(refusal) = host.state.ejection_verdict(self.cfg.max_share) {
            match refusal {
                Refusal::Lone => tracing::warn!(backend = %key, why = %finding,
                    "tower_lb: not ejecting: it is the only endpoint"),
                Refusal::Share {
                    level,
                    ejected,
                    live,
                } => tracing::warn!(backend = %key, why = %finding,
                    level, ejected, live, max_ejection_share = self.cfg.max_share,
                    "tower_lb: not ejecting: the max ejection share of its priority level is \
                     reached and no other level can serve"),
            }
            return false;
        }
        let base = self.cfg.base_ejection_time;
        let max = self.cfg.max_ejection_time;
        // Counts past the cap add nothing but would slow the decay.
        let top = max.as_nanos().div_ceil(base.as_nanos()).clamp(1, 1 << 20) as u64;
        let times = (host.tally.times_ejected.load(Relaxed) + 1).min(top);
        host.tally.times_ejected.store(times, Relaxed);
        let time = base
            .checked_mul(u32::try_from(times).unwrap_or(u32::MAX))
            .map_or(max, |t| t.min(max));
        let until = later(now, time);
        // Set before the ejection, so a probe that passes right after it finds it.
        *host.tally.probe_may_end() = self.cfg.readmit_on_probe.then_some(until);
        host.state.eject_until(until);
        tracing::warn!(backend = %key, why = %finding, requests = volume,
            failures = host.failures, ejected_for = ?time, times_ejected = times,
            "tower_lb: ejected by outlier detection");
        true
    }

    /// Requests went out but no verdict came in: the passive layer is missing.
    fn warn_without_verdicts(&mut self) {
        let mut sent = 0;
        let mut judged = 0;
        for host in self.hosts.values_mut() {
            let now = host.state.requests();
            sent += now.saturating_sub(host.requests);
            host.requests = now;
            judged += host.successes + host.failures;
        }
        if !self.warned && sent > 0 && judged == 0 {
            self.warned = true;
            tracing::warn!(
                requests = sent,
                "tower_lb: outlier detection sees requests but no verdicts: put \
                 PassiveHealthLayer on the endpoints (it classifies their outcomes)"
            );
        }
    }
}

#[cfg(test)]
mod tests;
