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

use std::time::Duration;

use crate::{
    balance::{strategy::Rng, Key},
    error::ConfigError,
    Balance, Guard,
};

mod tally;
mod task;

#[cfg(feature = "health-active")]
pub(crate) use tally::probe_passed;
pub(crate) use tally::Tally;

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
        self.max_share = super::ejection_share(share);
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
        let rng = self.seed.map_or_else(Rng::new, Rng::with_seed);
        let mut book = task::Book::new(self, rng);
        // Counts from before the detector started do not belong to its first interval.
        book.sync(handle.endpoints(), false);
        let weak = handle.downgrade();
        drop(handle);
        Guard::spawn("outlier detection", task::run(weak, book))
    }
}

#[cfg(test)]
mod tests;
