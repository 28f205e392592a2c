//! The registry: named checks, one cached run shared by every caller, draining.

use std::{
    any::Any,
    fmt,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::FutureExt;
use tokio::{sync::watch, time::Instant};

use crate::error::ConfigError;

type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The default per-check timeout (1 s, Kubernetes' `timeoutSeconds` default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The default time a run's results are served from cache (1 s).
pub const DEFAULT_CACHE_FOR: Duration = Duration::from_secs(1);

/// One named health check: an async closure that passes with `Ok(())` and fails with an
/// error whose `Display` is the message reported. See the [module docs](super).
///
/// Defaults: a [timeout](Self::timeout) of 1 s, and the check counts for both liveness
/// and readiness ([`liveness(false)`](Self::liveness) makes it readiness-only).
///
/// ```
/// use std::time::Duration;
/// use tower_lb::health::service::Check;
///
/// let db = Check::new("database", || async { Ok::<_, std::io::Error>(()) })
///     .timeout(Duration::from_millis(500))
///     .liveness(false);
/// assert_eq!(db.name(), "database");
/// ```
#[derive(Clone)]
pub struct Check {
    name: String,
    run: CheckFn,
    timeout: Duration,
    liveness: bool,
}

impl Check {
    /// A check named `name` that calls `check` on every run.
    pub fn new<F, Fut, E>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        let run: CheckFn = Arc::new(move || {
            let fut = check();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        });
        Self {
            name: name.into(),
            run,
            timeout: DEFAULT_TIMEOUT,
            liveness: true,
        }
    }

    /// How long one run of this check may take before it fails as timed out (default 1 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether the check counts for liveness (default `true`). Readiness always counts
    /// it. Mark checks of shared dependencies (a database, a cache) `false`: when they
    /// fail, restarting this process does not help, and Kubernetes would restart every
    /// replica at once.
    #[must_use]
    pub fn liveness(mut self, counts: bool) -> Self {
        self.liveness = counts;
        self
    }

    /// The check's name, the key of its entry in the JSON body.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("liveness", &self.liveness)
            .finish_non_exhaustive()
    }
}

/// Which question a report answers (Kubernetes' probe kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    /// Should this process be restarted? Only the checks that count for
    /// [liveness](Check::liveness); draining does not change it (`/livez`).
    Liveness,
    /// Should this process get traffic? Every check, and not while draining
    /// (`/readyz`, `/health`).
    Readiness,
}

/// The verdict of a [`Report`], as its JSON `status` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Every check passed: `"healthy"`, HTTP 200, gRPC `SERVING`.
    Healthy,
    /// A check failed: `"unhealthy"`, HTTP 503, gRPC `NOT_SERVING`.
    Unhealthy,
    /// [`Drain::drain`] was called (readiness only): `"draining"`, HTTP 503, gRPC
    /// `NOT_SERVING`.
    Draining,
}

impl Status {
    /// The word in the JSON body: `healthy`, `unhealthy` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Draining => "draining",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one check in one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    name: String,
    error: Option<String>,
    duration: Duration,
    liveness: bool,
}

impl CheckResult {
    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.error.is_none()
    }

    /// Why it failed: the check's error, `timed out after …`, or `panicked: …`.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// How long it ran (up to its timeout).
    pub fn duration(&self) -> Duration {
        self.duration
    }
}

/// What a probe answers: a [`Status`] and the results it was decided from, in the order
/// the checks were added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    status: Status,
    checks: Vec<CheckResult>,
}

impl Report {
    /// The verdict.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether the verdict is [`Status::Healthy`].
    pub fn is_healthy(&self) -> bool {
        self.status == Status::Healthy
    }

    /// The results behind the verdict (none while draining: no checks run then).
    pub fn checks(&self) -> &[CheckResult] {
        &self.checks
    }

    /// The JSON body: `{"status": "healthy", "checks": {"database": {"status":
    /// "healthy", "duration_ms": 1.5}, "cache": {"status": "unhealthy", "error": "…",
    /// "duration_ms": 1000.0}}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let checks = self
            .checks
            .iter()
            .map(|c| {
                let mut entry = serde_json::Map::new();
                let status = if c.passed() { "healthy" } else { "unhealthy" };
                entry.insert("status".into(), status.into());
                if let Some(e) = &c.error {
                    entry.insert("error".into(), e.as_str().into());
                }
                entry.insert(
                    "duration_ms".into(),
                    (c.duration.as_secs_f64() * 1000.0).into(),
                );
                (c.name.clone(), entry.into())
            })
            .collect::<serde_json::Map<_, _>>();
        serde_json::json!({ "status": self.status.as_str(), "checks": checks })
    }
}

/// A registry of named [`Check`]s behind the HTTP and gRPC health services. Cheap to
/// clone (shared state behind an `Arc`). See the [module docs](super) for an example.
///
/// Built with [`HealthChecks::builder`]; serve it with [`readiness`](Self::readiness)
/// and [`liveness`](Self::liveness), take it out of rotation with
/// [`drain_handle`](Self::drain_handle).
#[derive(Clone)]
pub struct HealthChecks {
    shared: Arc<Shared>,
}

struct Shared {
    checks: Vec<Check>,
    cache_for: Duration,
    state: Mutex<State>,
    draining: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    /// The last finished run and when it finished.
    last: Option<(Instant, Arc<Vec<CheckResult>>)>,
    /// The run under way, which every caller waits on (single flight).
    running: Option<watch::Receiver<Option<Arc<Vec<CheckResult>>>>>,
    /// How many runs were started, for tests and debugging.
    runs: u64,
}

/// Builds [`HealthChecks`]. See [`HealthChecks::builder`].
#[derive(Debug)]
#[must_use]
pub struct Builder {
    checks: Vec<Check>,
    cache_for: Duration,
}

impl Builder {
    /// Adds a check. Checks run concurrently; the report lists them in this order.
    pub fn check(mut self, check: Check) -> Self {
        self.checks.push(check);
        self
    }

    /// How long a run's results are served before the next request runs the checks
    /// again (default 1 s; Spring Boot `management.endpoint.health.cache.time-to-live`).
    /// `Duration::ZERO` runs them for every request, still once for requests that
    /// arrive during a run.
    pub fn cache_for(mut self, ttl: Duration) -> Self {
        self.cache_for = ttl;
        self
    }

    /// The registry, or [`ConfigError::Invalid`] for an empty or repeated check name or
    /// a zero timeout.
    pub fn build(self) -> Result<HealthChecks, ConfigError> {
        for (i, c) in self.checks.iter().enumerate() {
            if c.name.is_empty() {
                return Err(ConfigError::Invalid {
                    setting: "health check name",
                    reason: "a check needs a name".into(),
                });
            }
            if self.checks[..i].iter().any(|o| o.name == c.name) {
                return Err(ConfigError::Invalid {
                    setting: "health check name",
                    reason: format!("{:?} is used by two checks", c.name),
                });
            }
            if c.timeout.is_zero() {
                return Err(ConfigError::Invalid {
                    setting: "health check timeout",
                    reason: format!("check {:?}: the timeout must be above zero", c.name),
                });
            }
        }
        Ok(HealthChecks {
            shared: Arc::new(Shared {
                checks: self.checks,
                cache_for: self.cache_for,
                state: Mutex::new(State::default()),
                draining: watch::Sender::new(false),
            }),
        })
    }
}

// === impl HealthChecks ===

impl HealthChecks {
    /// A builder with no checks and a cache of 1 s.
    pub fn builder() -> Builder {
        Builder {
            checks: Vec::new(),
            cache_for: DEFAULT_CACHE_FOR,
        }
    }

    /// The report for `probe`: from the cached run when it is younger than the cache
    /// interval, else from a new run (or the one under way). Never panics, whatever the
    /// checks do; a run takes at most the longest check timeout.
    ///
    /// Must be called within a Tokio runtime: a run is a task of its own, so a caller
    /// that goes away (a probe that gave up) does not cancel it for the others.
    pub async fn report(&self, probe: Probe) -> Report {
        if probe == Probe::Readiness && self.is_draining() {
            return Report {
                status: Status::Draining,
                checks: Vec::new(),
            };
        }
        let counts = |c: &Check| probe == Probe::Readiness || c.liveness;
        if !self.shared.checks.iter().any(counts) {
            return Report {
                status: Status::Healthy,
                checks: Vec::new(),
            };
        }
        let results = self.run().await;
        let checks: Vec<CheckResult> = results
            .iter()
            .filter(|r| probe == Probe::Readiness || r.liveness)
            .cloned()
            .collect();
        let status = if checks.iter().all(CheckResult::passed) {
            Status::Healthy
        } else {
            Status::Unhealthy
        };
        Report { status, checks }
    }

    /// The HTTP readiness service (`/readyz`, `/health`): every check, 503 while draining.
    pub fn readiness(&self) -> super::HealthService {
        super::HealthService::new(self.clone(), Probe::Readiness)
    }

    /// The HTTP liveness service (`/livez`): only the checks that count for liveness;
    /// draining does not fail it.
    pub fn liveness(&self) -> super::HealthService {
        super::HealthService::new(self.clone(), Probe::Liveness)
    }

    /// The handle that takes this process out of rotation before shutdown.
    pub fn drain_handle(&self) -> Drain {
        Drain {
            shared: self.shared.clone(),
        }
    }

    /// Whether [`Drain::drain`] was called.
    pub fn is_draining(&self) -> bool {
        *self.shared.draining.borrow()
    }

    /// Resolves when draining starts (at once if it has).
    #[cfg(feature = "grpc")]
    pub(crate) async fn drained(&self) {
        let mut rx = self.shared.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// How many runs of the checks were started so far.
    pub fn runs(&self) -> u64 {
        lock(&self.shared.state).runs
    }

    /// The results of a fresh cached run, of the run under way, or of a new run.
    async fn run(&self) -> Arc<Vec<CheckResult>> {
        let mut rx = {
            let mut state = lock(&self.shared.state);
            if let Some((at, results)) = &state.last
                && at.elapsed() < self.shared.cache_for
            {
                return results.clone();
            }
            if let Some(rx) = &state.running {
                rx.clone()
            } else {
                let (tx, rx) = watch::channel(None);
                state.running = Some(rx.clone());
                state.runs += 1;
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let results = Arc::new(run_all(&shared.checks).await);
                    let mut state = lock(&shared.state);
                    state.last = Some((Instant::now(), results.clone()));
                    state.running = None;
                    let _ = tx.send(Some(results));
                });
                rx
            }
        };
        let done = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| r.clone());
        if let Some(results) = done {
            return results;
        }
        // The run's task was dropped (its runtime is shutting down): forget it, and
        // report every check failed rather than hang or panic.
        let mut state = lock(&self.shared.state);
        if state.running.as_ref().is_some_and(|r| r.same_channel(&rx)) {
            state.running = None;
        }
        Arc::new(
            self.shared
                .checks
                .iter()
                .map(|c| CheckResult {
                    name: c.name.clone(),
                    error: Some("the health check run was cancelled".into()),
                    duration: Duration::ZERO,
                    liveness: c.liveness,
                })
                .collect(),
        )
    }
}

impl fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthChecks")
            .field("checks", &self.shared.checks)
            .field("cache_for", &self.shared.cache_for)
            .field("draining", &self.is_draining())
            .finish()
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // The state is consistent at every unlock; a panic elsewhere does not spoil it.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run_all(checks: &[Check]) -> Vec<CheckResult> {
    futures_util::future::join_all(checks.iter().map(run_one)).await
}

async fn run_one(check: &Check) -> CheckResult {
    let start = Instant::now();
    let run = check.run.clone();
    // The closure is called inside the guarded future, so a panic while building the
    // check's future is caught too.
    let guarded = AssertUnwindSafe(async move { run().await }).catch_unwind();
    let error = match tokio::time::timeout(check.timeout, guarded).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(e),
        Ok(Err(panic)) => Some(format!("panicked: {}", panic_message(&*panic))),
        Err(_) => Some(format!("timed out after {:?}", check.timeout)),
    };
    if let Some(e) = &error {
        tracing::warn!(check = %check.name, error = %e, "health check failed");
    }
    CheckResult {
        name: check.name.clone(),
        error,
        duration: start.elapsed(),
        liveness: check.liveness,
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-text payload")
}

/// Takes the process out of rotation: after [`drain`](Self::drain), readiness answers
/// 503 `{"status": "draining"}` and gRPC `NOT_SERVING`, while liveness is unchanged (a
/// draining process must not be restarted). Cheap to clone. See the module docs for the
/// shutdown sequence.
#[derive(Clone)]
pub struct Drain {
    shared: Arc<Shared>,
}

impl Drain {
    /// Starts draining, for good. Idempotent.
    pub fn drain(&self) {
        self.shared.draining.send_replace(true);
        tracing::info!("health: draining, readiness now fails");
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.shared.draining.borrow()
    }
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("draining", &self.is_draining())
            .finish()
    }
}
