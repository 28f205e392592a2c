//! A deterministic fleet simulator: a real [`Balance`] over model backends, on Tokio's
//! paused clock (feature `test-util`).
//!
//! Describe each backend with a [`BackendModel`] (a [`Latency`] distribution: constant,
//! uniform, exponential, log-normal or Pareto, optionally capped; an error rate; a
//! concurrency limit with a FIFO queue; scripted windows such as "2 s latency from
//! t = 15 s to t = 45 s"), choose the load (open loop at a fixed rate, or N closed-loop
//! clients), a per-request timeout and a seed, and hand [`Simulation::run`] the balancer's
//! [`Builder`] with any strategy and endpoint layers (passive health included). The
//! simulator adds one backend per model, keyed by its index (`usize`), and returns a
//! [`Report`]: per-backend share, p50/p99/p999 latency, success rate within the timeout,
//! retries and hedges.
//!
//! # Semantics
//!
//! - **Time** is Tokio's, paused: `run` builds its own current-thread runtime with the
//!   clock paused, so it must be called outside any runtime (a plain `#[test]`, a `main`).
//!   Service times are `tokio::time::sleep`s; when every request waits, Tokio jumps the
//!   clock to the next timer. A simulated minute at 1,000 requests/s takes well under a
//!   second of real time. The timer's resolution is 1 ms.
//! - **Determinism**: one seeded SplitMix64 stream per backend, one for arrivals and keys;
//!   no wall clock; results in backend order. The same seed and settings give the same
//!   report. Seed the strategy too (`P2c::with_seed`, `Random::with_seed`).
//! - **Requests** are driven from one task (no task per request). Open loop: request `i`
//!   leaves at `i ÷ rate`, whatever the answers. Closed loop: each client sends its next
//!   request as soon as the previous one is answered. Both stop sending at the
//!   [`duration`](Simulation::duration) (default 60 s) or after
//!   [`requests`](Simulation::requests) requests, whichever comes first, and wait for the
//!   answers.
//! - **Timeout** (default 1 s): the client gives up and drops the request, which leaves the
//!   backend's queue or service slot at once (the balancer sees it end).
//! - **Outcomes**: a success is an HTTP 200 within the timeout; a model error is a 503
//!   after its service time (it reached the backend, so the balancer does not retry it); a
//!   refusal is a [`ConnectFailed`](crate::error::ConnectFailed) at once, which the
//!   balancer sends elsewhere within its `retries`.
//! - **Keys**: with [`keys`](Simulation::keys), each request carries one of N random
//!   affinity keys, for hash strategies.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_lb::{
//!     balance::strategy::{P2c, RoundRobin},
//!     test_util::sim::{BackendModel, Latency, Simulation},
//!     Balance,
//! };
//!
//! let ms = Duration::from_millis;
//! let secs = Duration::from_secs;
//! let mut fleet = vec![BackendModel::new(Latency::uniform(ms(5), ms(15))); 4];
//! // Backend 3 takes 2 s from t = 2 s to t = 6 s.
//! fleet[3] = fleet[3].clone().latency_during(secs(2)..secs(6), Latency::constant(secs(2)));
//! let sim = Simulation::new(fleet).seed(7).open_loop(200.0).duration(secs(10));
//!
//! let rr = sim.run(Balance::builder().strategy(RoundRobin::new())).unwrap();
//! let ewma = sim.run(Balance::builder().strategy(P2c::with_seed(7).peak_ewma())).unwrap();
//! assert_eq!(rr.requests, 2_000);
//! // Round robin keeps sending a quarter of the slow window's requests to backend 3.
//! assert!(rr.success_rate() < 0.95);
//! assert!(ewma.success_rate() > rr.success_rate());
//! assert!(ewma.backends[3].share < rr.backends[3].share);
//! // Same seed, same report.
//! assert_eq!(rr, sim.run(Balance::builder().strategy(RoundRobin::new())).unwrap());
//! ```

mod model;
mod report;
#[cfg(test)]
mod tests;

use std::{
    error::Error,
    fmt,
    future::Future,
    pin::pin,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use futures_util::{
    future::{select, Either},
    stream::{FuturesUnordered, StreamExt},
};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

pub use model::{BackendModel, Body, Latency, ModelBackend, Request};
pub use report::{BackendReport, Report};

use crate::{
    balance::{strategy::RequestKey, Builder, EndpointLayer, MakeEndpoint, RequestPolicy, Target},
    error::{BoxError, ConfigError},
    Backend, Balance,
};
use model::{mix, Attempts, Rng, Shared};

/// How clients send requests. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Load {
    /// A fixed arrival rate, requests per second.
    Open(f64),
    /// This many clients, each with one request at a time.
    Closed(usize),
}

/// A simulation's settings; [`run`](Self::run) it over a balancer. See the
/// [module docs](self) for the semantics and an example.
///
/// Defaults: seed 0, one closed-loop client, 60 s, no request cap, 1 s timeout, no keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    backends: Vec<BackendModel>,
    seed: u64,
    load: Load,
    duration: Duration,
    requests: Option<u64>,
    timeout: Duration,
    keys: Option<u64>,
}

impl Simulation {
    /// A simulation of `backends`, keyed `0..n` in the balancer.
    pub fn new(backends: impl IntoIterator<Item = BackendModel>) -> Self {
        Self {
            backends: backends.into_iter().collect(),
            seed: 0,
            load: Load::Closed(1),
            duration: Duration::from_secs(60),
            requests: None,
            timeout: Duration::from_secs(1),
            keys: None,
        }
    }

    /// The seed of every random draw the simulator makes (not the strategy's).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Open loop: `per_second` requests each second, evenly spaced (must be > 0).
    #[must_use]
    pub fn open_loop(mut self, per_second: f64) -> Self {
        self.load = Load::Open(per_second);
        self
    }

    /// Closed loop: `clients` clients (at least 1), each sending its next request when
    /// the previous one is answered.
    #[must_use]
    pub fn closed_loop(mut self, clients: usize) -> Self {
        self.load = Load::Closed(clients);
        self
    }

    /// Stop sending after this much simulated time (default 60 s).
    #[must_use]
    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = duration;
        self
    }

    /// Stop sending after `n` requests (default: no cap, only the duration).
    #[must_use]
    pub fn requests(mut self, n: u64) -> Self {
        self.requests = Some(n);
        self
    }

    /// Each request's timeout, from the client's side (default 1 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Give each request one of `distinct` random affinity keys (at least 1), for hash
    /// strategies (default: no key).
    #[must_use]
    pub fn keys(mut self, distinct: u64) -> Self {
        self.keys = Some(distinct);
        self
    }

    fn validate(&self) -> Result<(), SimulationError> {
        if self.backends.is_empty() {
            return Err(SimulationError::NoBackends);
        }
        for (i, b) in self.backends.iter().enumerate() {
            b.validate(i)?;
        }
        let load_ok = match self.load {
            Load::Open(rate) => rate.is_finite() && rate > 0.0,
            Load::Closed(n) => n > 0,
        };
        if !load_ok || self.keys == Some(0) {
            return Err(SimulationError::InvalidLoad);
        }
        Ok(())
    }

    /// Runs the simulation over a balancer built from `builder` (its strategy, retries,
    /// endpoint layers…) plus one backend per model, on a fresh current-thread runtime
    /// with the clock paused.
    ///
    /// # Errors
    ///
    /// [`SimulationError`] for invalid settings or an invalid balancer configuration.
    ///
    /// # Panics
    ///
    /// If called from inside a Tokio runtime (as Tokio's `block_on` does).
    pub fn run<L, B>(&self, builder: Builder<usize, (), L>) -> Result<Report, SimulationError>
    where
        L: EndpointLayer<usize, ModelBackend> + Send + Sync + 'static,
        L::Service: Service<Request, Response = http::Response<B>> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Error: Into<BoxError>,
    {
        self.validate()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(SimulationError::Runtime)?;
        rt.block_on(self.drive(builder))
    }

    async fn drive<L, B>(&self, builder: Builder<usize, (), L>) -> Result<Report, SimulationError>
    where
        L: EndpointLayer<usize, ModelBackend> + Send + Sync + 'static,
        L::Service: Service<Request, Response = http::Response<B>> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Error: Into<BoxError>,
    {
        let origin = Instant::now();
        let shared = Arc::new(Shared::default());
        let models: Vec<ModelBackend> = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let seed = mix(self.seed ^ mix(i as u64 + 1));
                ModelBackend::new(m.clone(), origin, seed, shared.clone())
            })
            .collect();
        let balance = builder
            .policy(Keys)
            .backends(
                self.backends
                    .iter()
                    .enumerate()
                    .map(|(i, m)| Backend::new(i).with_weight(m.weight_of())),
            )
            .build(Models(models.clone()))
            .map_err(SimulationError::Config)?;

        let mut rng = Rng::new(mix(self.seed));
        let mut out = Outcomes::default();
        let mut running = FuturesUnordered::new();
        let cap = self.requests.unwrap_or(u64::MAX);
        let mut sent = 0u64;
        let request = |rng: &mut Rng| Request {
            key: self
                .keys
                .map(|n| RequestKey::from_hash(mix(rng.next_u64() % n))),
            attempts: Arc::new(Attempts::default()),
        };
        match self.load {
            Load::Open(rate) => loop {
                let at = Duration::from_secs_f64(sent as f64 / rate);
                if sent >= cap || at >= self.duration {
                    break;
                }
                // Collect answers until the next departure.
                let mut wait = pin!(tokio::time::sleep_until(origin + at));
                while !running.is_empty() {
                    match select(wait.as_mut(), running.next()).await {
                        Either::Left(_) => break,
                        Either::Right((Some(o), _)) => out.record(o),
                        Either::Right((None, _)) => {}
                    }
                }
                wait.await;
                running.push(send(&balance, request(&mut rng), self.timeout));
                sent += 1;
            },
            Load::Closed(clients) => {
                while sent < cap.min(clients as u64) {
                    running.push(send(&balance, request(&mut rng), self.timeout));
                    sent += 1;
                }
            }
        }
        while let Some(o) = running.next().await {
            out.record(o);
            if matches!(self.load, Load::Closed(_))
                && sent < cap
                && Instant::now() - origin < self.duration
            {
                running.push(send(&balance, request(&mut rng), self.timeout));
                sent += 1;
            }
        }
        let elapsed = Instant::now() - origin;
        drop(balance);
        Ok(out.report(sent, elapsed, &models, &shared))
    }
}

/// One request's end.
#[derive(Clone, Copy)]
enum Outcome {
    Success(Duration),
    Error(Duration),
    Timeout(Duration),
}

fn send<S, B>(
    balance: &Balance<usize, S, Keys>,
    req: Request,
    timeout: Duration,
) -> impl Future<Output = Outcome> + use<S, B>
where
    S: Service<Request, Response = http::Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
{
    let call = tokio::time::timeout(timeout, balance.clone().oneshot(req));
    async move {
        let start = Instant::now();
        let result = call.await;
        let took = Instant::now() - start;
        match result {
            Ok(Ok(rsp)) if rsp.status().is_success() => Outcome::Success(took),
            Ok(_) => Outcome::Error(took),
            Err(_) => Outcome::Timeout(took),
        }
    }
}

#[derive(Default)]
struct Outcomes {
    successes: u64,
    errors: u64,
    timeouts: u64,
    latencies: Vec<u64>,
}

impl Outcomes {
    fn record(&mut self, o: Outcome) {
        let took = match o {
            Outcome::Success(d) => {
                self.successes += 1;
                d
            }
            Outcome::Error(d) => {
                self.errors += 1;
                d
            }
            Outcome::Timeout(d) => {
                self.timeouts += 1;
                d
            }
        };
        self.latencies.push(took.as_micros() as u64);
    }

    fn report(
        mut self,
        requests: u64,
        elapsed: Duration,
        models: &[ModelBackend],
        shared: &Shared,
    ) -> Report {
        self.latencies.sort_unstable();
        let tallies: Vec<_> = models
            .iter()
            .map(|m| {
                let mut t = m.inner.tally.lock().unwrap_or_else(|e| e.into_inner());
                t.latencies.sort_unstable();
                (
                    t.attempts,
                    t.errors,
                    t.refused,
                    report::percentile(&t.latencies, 0.5),
                    report::percentile(&t.latencies, 0.99),
                )
            })
            .collect();
        let attempts: u64 = tallies.iter().map(|t| t.0).sum();
        Report {
            requests,
            successes: self.successes,
            errors: self.errors,
            timeouts: self.timeouts,
            p50: report::percentile(&self.latencies, 0.5),
            p99: report::percentile(&self.latencies, 0.99),
            p999: report::percentile(&self.latencies, 0.999),
            retries: shared.retries.load(Ordering::Relaxed),
            hedges: shared.hedges.load(Ordering::Relaxed),
            elapsed,
            backends: tallies
                .into_iter()
                .map(|(n, errors, refused, p50, p99)| BackendReport {
                    requests: n,
                    share: if attempts == 0 {
                        0.0
                    } else {
                        n as f64 / attempts as f64
                    },
                    errors,
                    refused,
                    p50,
                    p99,
                })
                .collect(),
        }
    }
}

/// Makes each backend's [`ModelBackend`] from its index.
struct Models(Vec<ModelBackend>);

impl MakeEndpoint<usize> for Models {
    type Service = ModelBackend;

    fn make_endpoint(&self, target: &Target<'_, usize>) -> Result<ModelBackend, BoxError> {
        self.0
            .get(*target.key())
            .cloned()
            .ok_or_else(|| format!("no model for backend {}", target.key()).into())
    }
}

/// The simulator's request policy: the request's key, and replay (requests are `Clone`).
#[derive(Debug, Clone, Copy)]
pub struct Keys;

impl RequestPolicy<Request> for Keys {
    fn key(&self, req: &Request) -> Option<RequestKey> {
        req.key
    }

    fn replay(&self, req: &Request) -> Option<Request> {
        Some(req.clone())
    }
}

/// Invalid simulation settings, from [`Simulation::run`].
#[derive(Debug)]
#[non_exhaustive]
pub enum SimulationError {
    /// No backend model.
    NoBackends,
    /// An open-loop rate that is not a positive number, zero clients, or zero keys.
    InvalidLoad,
    /// An error or refusal rate outside 0 to 1.
    InvalidRate {
        /// The backend's index.
        backend: usize,
    },
    /// A concurrency limit of zero.
    ZeroConcurrency {
        /// The backend's index.
        backend: usize,
    },
    /// A latency distribution with invalid parameters (a negative or non-finite shape,
    /// `min > max`).
    InvalidLatency(Latency),
    /// The balancer's configuration is invalid.
    Config(ConfigError),
    /// The runtime could not be built.
    Runtime(std::io::Error),
}

impl fmt::Display for SimulationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoBackends => f.write_str("simulation has no backends"),
            Self::InvalidLoad => f.write_str(
                "simulation load must be a positive rate, at least one client and one key",
            ),
            Self::InvalidRate { backend } => {
                write!(
                    f,
                    "backend {backend}: error and refusal rates must be within 0 to 1"
                )
            }
            Self::ZeroConcurrency { backend } => {
                write!(f, "backend {backend}: concurrency limit must be at least 1")
            }
            Self::InvalidLatency(l) => write!(f, "invalid latency distribution {l:?}"),
            Self::Config(_) => f.write_str("invalid balancer configuration"),
            Self::Runtime(_) => f.write_str("could not build the simulation runtime"),
        }
    }
}

impl Error for SimulationError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::Runtime(e) => Some(e),
            _ => None,
        }
    }
}
