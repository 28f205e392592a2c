//! Prometheus metrics of balancers (feature `metrics`), through the Prometheus project's
//! own [`prometheus_client`] crate.
//!
//! [`BalanceMetrics`] is one [`Collector`] for any number of pools: register it once in
//! your [`Registry`], add each pool with [`BalanceMetrics::pool`], put the pool's
//! [`layer`](PoolMetrics::layer) in the endpoint maker (it times responses) and
//! [`watch`](PoolMetrics::watch) the built balancer (its counters and health are read at
//! each scrape, so nothing is sampled in between and nothing is counted twice). Backends
//! that leave the set leave the output at the next scrape, histograms included.
//!
//! `prometheus-client` rather than the `metrics` facade: these figures are pulled from the
//! balancer's own state when scraped (a collector), which the facade's push model would
//! have to copy on a timer; and it is the Prometheus project's client, with the classic
//! text format ([`prometheus_text`]) and OpenMetrics.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tower_lb_requests_total` | counter | `pool`, `backend` |
//! | `tower_lb_failures_total` | counter | `pool`, `backend` |
//! | `tower_lb_ejections_total` | counter | `pool`, `backend` |
//! | `tower_lb_in_flight` | gauge | `pool`, `backend` |
//! | `tower_lb_backend_up` | gauge (1 takes new requests) | `pool`, `backend` |
//! | `tower_lb_backend_state` | gauge (1 for the current state) | `pool`, `backend`, `state` |
//! | `tower_lb_ewma_seconds` | gauge (peak-EWMA latency) | `pool`, `backend` |
//! | `tower_lb_response_seconds` | histogram (time to response headers) | `pool`, `backend` |
//! | `tower_lb_pool_available` | gauge | `pool` |
//! | `tower_lb_pool_level` | gauge (serving priority level) | `pool` |
//! | `tower_lb_pool_panic` | gauge (1 in panic mode) | `pool` |
//!
//! ```
//! use prometheus_client::{encoding::prometheus_text, registry::Registry};
//! use tower::{service_fn, ServiceBuilder};
//! use tower_lb::{balance::Target, metrics::BalanceMetrics, Backend, Balance};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let metrics = BalanceMetrics::new();
//! let mut registry = Registry::default();
//! metrics.register(&mut registry);
//!
//! let api = metrics.pool("api");
//! let layer = api.clone();
//! let balance = Balance::builder()
//!     .backends([Backend::new("10.0.0.1:80")])
//!     .build(move |t: &Target<'_, &'static str>| {
//!         ServiceBuilder::new().layer(layer.layer(t)).service(service_fn(|_req: ()| async {
//!             Ok::<_, std::convert::Infallible>(http::Response::new(()))
//!         }))
//!     })
//!     .unwrap();
//! api.watch(&balance);
//!
//! tower::ServiceExt::oneshot(balance.clone(), ()).await.unwrap();
//! let mut text = String::new();
//! prometheus_text::encode(&mut text, &registry).unwrap();
//! assert!(text.contains(r#"tower_lb_requests_total{pool="api",backend="10.0.0.1:80"} 1"#));
//! # }
//! ```

use std::{
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    task::{ready, Context, Poll},
};

use pin_project_lite::pin_project;
pub use prometheus_client::{self, encoding::prometheus_text};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    balance::clock::Clock,
    balance::WeakHandle,
    balance::{Key, Stats, Status, Target},
};

/// Finite buckets of `tower_lb_response_seconds`: 0.5 ms … about 16 s, doubling (then
/// `+Inf`).
const BUCKETS: usize = 16;

/// The first bucket's upper bound, in nanoseconds; bucket `i`'s is this `<< i`.
const FIRST_BOUND_NS: u64 = 500_000;

/// One backend's response times: a count per bucket and their sum, each an atomic, in
/// one allocation (144 bytes of counts, 160 with the `Arc`'s). (`prometheus_client`'s
/// `Histogram` is a mutex around a vector of (bound, count) pairs, about 720 bytes, and
/// the labelled family that holds it keeps the pool's name once per backend: at 10,000
/// backends that was 9 MB.)
#[derive(Debug, Default)]
struct Timings {
    /// `counts[i]`: responses in bucket `i` alone (above bucket `i - 1`'s bound, at most
    /// `i`'s); the last is `+Inf`. Made cumulative when encoded.
    counts: [AtomicU64; BUCKETS + 1],
    sum_ns: AtomicU64,
}

impl Timings {
    fn observe(&self, ns: u64) {
        self.counts[bucket(ns)].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        let mut buckets = [(f64::INFINITY, 0u64); BUCKETS + 1];
        let mut count = 0;
        for (i, (bucket, n)) in buckets.iter_mut().zip(&self.counts).enumerate() {
            if i < BUCKETS {
                bucket.0 = (FIRST_BOUND_NS << i) as f64 * 1e-9;
            }
            bucket.1 = n.load(Relaxed);
            count += bucket.1;
        }
        let sum = self.sum_ns.load(Relaxed) as f64 * 1e-9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// The bucket of a response time: the first whose bound is at least `ns`.
fn bucket(ns: u64) -> usize {
    if ns <= FIRST_BOUND_NS {
        return 0;
    }
    // `ns <= FIRST_BOUND_NS << i` exactly when `(ns - 1) / FIRST_BOUND_NS < 1 << i`.
    let above = (ns - 1) / FIRST_BOUND_NS;
    ((u64::BITS - above.leading_zeros()) as usize).min(BUCKETS)
}

/// The metrics of every pool added to it, as one Prometheus [`Collector`]; see the
/// [module docs](self).
#[derive(Clone, Default)]
pub struct BalanceMetrics {
    pools: Arc<Mutex<Vec<PoolMetrics>>>,
}

impl fmt::Debug for BalanceMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("BalanceMetrics")
            .field(
                "pools",
                &pools.iter().map(|p| &p.inner.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl BalanceMetrics {
    /// No pools yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the collector in `registry` (once; pools added later are included).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(self.clone()));
    }

    /// Adds a pool named `name` (the `pool` label) and returns its handle.
    pub fn pool(&self, name: impl Into<String>) -> PoolMetrics {
        let pool = PoolMetrics {
            inner: Arc::new(PoolInner {
                name: name.into(),
                latency: Mutex::new(HashMap::new()),
                source: Mutex::new(None),
            }),
        };
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pool.clone());
        pool
    }
}

/// One pool's metrics: the latency layer for its endpoints, and the balancer it reads
/// at each scrape. Made by [`BalanceMetrics::pool`].
#[derive(Clone)]
pub struct PoolMetrics {
    inner: Arc<PoolInner>,
}

type Source = Box<dyn Fn() -> Option<Stats<String>> + Send + Sync>;

struct PoolInner {
    name: String,
    /// Each timed backend's histogram, by key; those that left the set are dropped at
    /// the next scrape.
    latency: Mutex<HashMap<String, Arc<Timings>>>,
    source: Mutex<Option<Source>>,
}

impl fmt::Debug for PoolMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolMetrics")
            .field("pool", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl PoolMetrics {
    /// Times each response of `target`'s endpoint (to its headers) into
    /// `tower_lb_response_seconds`.
    pub fn layer<K: fmt::Display>(&self, target: &Target<'_, K>) -> LatencyLayer {
        let timings = self
            .inner
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(target.key().to_string())
            .or_default()
            .clone();
        LatencyLayer {
            timings,
            clock: target.state().clock(),
        }
    }

    /// Reads `balance`'s counters and health at each scrape. The pool holds it weakly:
    /// once the balancer is gone, the pool's figures leave the output.
    pub fn watch<K: Key, S, P>(&self, balance: &crate::Balance<K, S, P>)
    where
        S: Clone + Send + Sync + 'static,
    {
        let weak: WeakHandle<K> = balance.handle().downgrade();
        let source: Source = Box::new(move || {
            let stats = weak.upgrade()?.stats();
            Some(stats.map_keys(|k| k.to_string()))
        });
        *self.inner.source.lock().unwrap_or_else(|e| e.into_inner()) = Some(source);
    }

    fn stats(&self) -> Option<Stats<String>> {
        let source = self.inner.source.lock().unwrap_or_else(|e| e.into_inner());
        source.as_ref().and_then(|f| f())
    }

    /// Drops the histograms of backends that left the set.
    fn prune(&self, stats: Option<&Stats<String>>) {
        let keep: HashSet<&str> = stats
            .map(|s| s.backends.iter().map(|b| b.key.as_str()).collect())
            .unwrap_or_default();
        self.inner
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|b, _| keep.contains(b.as_str()));
    }
}

// === the collector ===

/// A per-backend figure read from the stats.
type Read = fn(&crate::balance::BackendStats<String>) -> f64;
/// A per-backend count read from the stats.
type Count = fn(&crate::balance::BackendStats<String>) -> u64;

const BACKEND_COUNTERS: [(&str, &str, Count); 3] = [
    ("tower_lb_requests", "Requests sent to the backend.", |b| {
        b.requests
    }),
    (
        "tower_lb_failures",
        "Requests that failed on the backend.",
        |b| b.failures,
    ),
    (
        "tower_lb_ejections",
        "Times the backend was ejected.",
        |b| b.ejections,
    ),
];

const BACKEND_GAUGES: [(&str, &str, Read); 3] = [
    (
        "tower_lb_in_flight",
        "Requests in flight to the backend.",
        |b| b.in_flight as f64,
    ),
    (
        "tower_lb_backend_up",
        "1 if the backend takes new requests.",
        |b| {
            f64::from(u8::from(matches!(
                b.status,
                Status::Healthy | Status::Probation
            )))
        },
    ),
    ("tower_lb_ewma_seconds", "Peak-EWMA response time.", |b| {
        b.ewma.map_or(0.0, |d| d.as_secs_f64())
    }),
];

/// A per-pool figure read from the stats.
type ReadPool = fn(&Stats<String>) -> u64;

const POOL_GAUGES: [(&str, &str, ReadPool); 3] = [
    (
        "tower_lb_pool_available",
        "Backends of the pool taking new requests.",
        |s| s.available as u64,
    ),
    (
        "tower_lb_pool_level",
        "Priority level serving (0: primaries).",
        |s| u64::from(s.level),
    ),
    (
        "tower_lb_pool_panic",
        "1 in panic mode (too few backends available: health ignored).",
        |s| u64::from(s.panic()),
    ),
];

impl Collector for BalanceMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let pools: Vec<PoolMetrics> = self.pools.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // One snapshot per pool for the whole scrape: every family reads one moment.
        let stats: Vec<(PoolMetrics, Option<Stats<String>>)> = pools
            .into_iter()
            .map(|p| {
                let s = p.stats();
                p.prune(s.as_ref());
                (p, s)
            })
            .collect();
        let backends = || {
            stats
                .iter()
                .filter_map(|(p, s)| s.as_ref().map(|s| (p, s)))
                .flat_map(|(p, s)| s.backends.iter().map(move |b| (&p.inner.name, b)))
        };
        for (name, help, count) in BACKEND_COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (pool, b) in backends() {
                let labels = [("pool", pool.as_str()), ("backend", b.key.as_str())];
                family
                    .encode_family(&labels)?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                        &count(b),
                        None,
                    )?;
            }
        }
        for (name, help, read) in BACKEND_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (pool, b) in backends() {
                let labels = [("pool", pool.as_str()), ("backend", b.key.as_str())];
                family.encode_family(&labels)?.encode_gauge(&read(b))?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "tower_lb_backend_state",
            "1 for the backend's current health state.",
            None,
            MetricType::Gauge,
        )?;
        for (pool, b) in backends() {
            let state = b.status.to_string();
            let labels = [
                ("pool", pool.as_str()),
                ("backend", b.key.as_str()),
                ("state", state.as_str()),
            ];
            family.encode_family(&labels)?.encode_gauge(&1u32)?;
        }
        for (name, help, read) in POOL_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (pool, s) in &stats {
                if let Some(s) = s {
                    let labels = [("pool", pool.inner.name.as_str())];
                    family.encode_family(&labels)?.encode_gauge(&read(s))?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "tower_lb_response_seconds",
            "Time to response headers from the backend.",
            None,
            MetricType::Histogram,
        )?;
        for (pool, _) in &stats {
            let mut timed: Vec<(String, Arc<Timings>)> = pool
                .inner
                .latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(b, t)| (b.clone(), t.clone()))
                .collect();
            timed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (backend, timings) in &timed {
                let labels = [("pool", pool.inner.name.as_str()), ("backend", backend)];
                timings.encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

// === the latency layer ===

/// Times each response into a backend's histogram; made by [`PoolMetrics::layer`].
#[derive(Clone, Debug)]
pub struct LatencyLayer {
    timings: Arc<Timings>,
    /// The balancer's latency clock (the time-stamp counter where it tracks latency).
    clock: Clock,
}

impl<S> Layer<S> for LatencyLayer {
    type Service = Latency<S>;

    fn layer(&self, inner: S) -> Latency<S> {
        Latency {
            inner,
            timings: self.timings.clone(),
            clock: self.clock,
        }
    }
}

/// The service made by [`LatencyLayer`].
#[derive(Clone, Debug)]
pub struct Latency<S> {
    inner: S,
    timings: Arc<Timings>,
    clock: Clock,
}

impl<S> Latency<S> {
    define_inner_service_accessors!();
}

impl<S: Service<Req>, Req> Service<Req> for Latency<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = LatencyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        LatencyFuture {
            fut: self.inner.call(req),
            timings: self.timings.clone(),
            clock: self.clock,
            start: self.clock.now_ns(),
        }
    }
}

pin_project! {
    /// The response future of [`Latency`].
    pub struct LatencyFuture<F> {
        #[pin]
        fut: F,
        timings: Arc<Timings>,
        clock: Clock,
        // Nanoseconds since the clock's origin.
        start: u64,
    }
}

impl<F> fmt::Debug for LatencyFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencyFuture").finish_non_exhaustive()
    }
}

impl<F: Future> Future for LatencyFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = ready!(this.fut.poll(cx));
        let elapsed = this.clock.now_ns().saturating_sub(*this.start);
        this.timings.observe(elapsed);
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Backend;

    type Ep = tower::util::BoxCloneSyncService<(), (), std::convert::Infallible>;

    fn balance(
        metrics: &PoolMetrics,
        keys: &[&'static str],
    ) -> crate::Balance<&'static str, Latency<Ep>> {
        let m = metrics.clone();
        let b = crate::Balance::builder()
            .backends(keys.iter().map(|k| Backend::new(*k)))
            .build(move |t: &Target<'_, &'static str>| {
                m.layer(t)
                    .layer(Ep::new(tower::service_fn(|()| async { Ok(()) })))
            })
            .unwrap();
        metrics.watch(&b);
        b
    }

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_text::encode(&mut text, registry).unwrap();
        text
    }

    #[tokio::test]
    async fn pools_share_families_and_departed_backends_leave() {
        use tower::ServiceExt;
        let metrics = BalanceMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let (api, web) = (metrics.pool("api"), metrics.pool("web"));
        let a = balance(&api, &["a1", "a2"]);
        let w = balance(&web, &["w1"]);
        for _ in 0..4 {
            a.clone().oneshot(()).await.unwrap();
        }
        w.clone().oneshot(()).await.unwrap();
        let text = scrape(&registry);
        // One HELP/TYPE per family, whatever the number of pools.
        assert_eq!(
            text.matches("# TYPE tower_lb_requests_total").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains(r#"tower_lb_requests_total{pool="web",backend="w1"} 1"#),
            "{text}"
        );
        let api_requests: u64 = text
            .lines()
            .filter(|l| l.starts_with(r#"tower_lb_requests_total{pool="api""#))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(api_requests, 4);
        assert!(text.contains(r#"tower_lb_response_seconds_count{pool="api",backend="a1"}"#));

        // A backend leaves: its series go, histogram included.
        a.handle().remove(&"a1");
        let text = scrape(&registry);
        assert!(!text.contains(r#"backend="a1""#), "{text}");
        assert!(text.contains(r#"backend="a2""#));
        // The balancer goes: its pool leaves the output.
        drop(w);
        let text = scrape(&registry);
        assert!(!text.contains(r#"pool="web""#), "{text}");
    }

    #[test]
    fn a_bucket_holds_what_is_at_most_its_bound() {
        let ms = 1_000_000;
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(ms / 2), 0);
        assert_eq!(bucket(ms / 2 + 1), 1);
        assert_eq!(bucket(ms), 1);
        assert_eq!(bucket(ms + 1), 2);
        assert_eq!(bucket(FIRST_BOUND_NS << 15), 15);
        assert_eq!(bucket((FIRST_BOUND_NS << 15) + 1), BUCKETS);
        assert_eq!(bucket(u64::MAX), BUCKETS);
    }

    /// The same response times give the same text as the Prometheus project's own
    /// histogram with the buckets this module used to give it.
    #[test]
    fn encodes_as_the_prometheus_client_histogram_does() {
        use prometheus_client::metrics::{
            family::Family,
            histogram::{exponential_buckets, Histogram},
        };
        type Labels = [(&'static str, &'static str); 2];
        let labels: Labels = [("pool", "api"), ("backend", "a1")];
        let theirs: Family<Labels, Histogram> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        let ours = Timings::default();
        // Bucket bounds, just above them, and beyond the last: every bucket and +Inf.
        let mut times: Vec<u64> = (0..16).map(|i| FIRST_BOUND_NS << i).collect();
        times.extend((0..16).map(|i| (FIRST_BOUND_NS << i) + 1));
        times.extend([0, 1, 40_000_000_000, u64::from(u32::MAX)]);
        for &ns in &times {
            theirs.get_or_create(&labels).observe(ns as f64 * 1e-9);
            ours.observe(ns);
        }
        let mut registry = Registry::default();
        // `register` ends the help text with a full stop.
        registry.register("tower_lb_response", "Time", theirs);
        let expected = scrape(&registry);

        struct One(Timings, Labels);
        impl fmt::Debug for One {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("One")
            }
        }
        impl Collector for One {
            fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
                let mut family = encoder.encode_descriptor(
                    "tower_lb_response",
                    "Time.",
                    None,
                    MetricType::Histogram,
                )?;
                self.0.encode(family.encode_family(&self.1)?)
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(One(ours, labels)));
        let got = scrape(&registry);

        // Every line the same, but the sum's last digits (added in nanoseconds here, in
        // floating-point seconds there).
        let split = |text: &str| -> (f64, Vec<String>) {
            let sum = text
                .lines()
                .find(|l| l.starts_with("tower_lb_response_sum"))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap();
            let rest = text
                .lines()
                .filter(|l| !l.starts_with("tower_lb_response_sum"))
                .map(str::to_owned)
                .collect();
            (sum, rest)
        };
        let (theirs_sum, theirs_rest) = split(&expected);
        let (ours_sum, ours_rest) = split(&got);
        assert_eq!(ours_rest, theirs_rest, "{got}\n{expected}");
        assert!(ours_rest.iter().any(|l| l.contains(r#"le="+Inf""#)));
        assert!(
            (ours_sum - theirs_sum).abs() <= 1e-9 * theirs_sum,
            "{ours_sum} {theirs_sum}"
        );
    }
}
