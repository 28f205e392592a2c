//! Hedged requests ("The Tail at Scale"; Envoy hedging, Finagle backup requests): when a
//! request has not answered within a delay, the balancer sends a copy to another backend,
//! takes the first answer and cancels (drops) the other attempt.
//!
//! # When a request is hedged
//!
//! All of these hold:
//!
//! - the balancer was built with [`Builder::hedge`](super::Builder::hedge);
//! - the [`RequestPolicy`](super::RequestPolicy) gives a copy through
//!   [`RequestPolicy::hedge`](super::RequestPolicy::hedge). The default is never;
//!   [`HttpPolicy`](crate::http::HttpPolicy) with a replay mode copies idempotent requests
//!   only (RFC 9110 §9.2.2: `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`), whose
//!   body it can replay. A `POST` is never sent twice;
//! - the first attempt has not answered (nor failed) when the delay passes;
//! - another endpoint than the ones this request already went to can take it (the same
//!   `tried` exclusion retries use): a hedge never goes to the same backend;
//! - the hedge budget has a hedge left (default: 10 % of the balancer's requests, at
//!   least 3 per second over 10 s, see [`Hedge::budget`]), **and** the policy's budget
//!   shared with retries does ([`RequestPolicy::send_hedge`](super::RequestPolicy::send_hedge):
//!   `HttpPolicy` withdraws from its [`RetryBudget`]), so hedges and retries together
//!   stay within the retry budget, and hedges alone within their own share.
//!
//! # The delay
//!
//! [`Hedge::after`] waits a fixed duration. [`Hedge::percentile`] waits the given
//! percentile of the balancer's recent request latencies (a bounded histogram of 496
//! log-linear buckets, 12.5 % wide, over the last 5–10 s), never less than the
//! [floor](Hedge::floor) (default 1 ms). Until 20 latencies were seen in that window, a
//! percentile delay does not hedge: it does not know the tail yet.
//!
//! # The loser
//!
//! The losing attempt is dropped when the winner answers: its endpoint's in-flight count
//! falls at once (its in-flight guard lives in the attempt), and its latency is **not**
//! recorded into the endpoint's EWMA, so a cancelled attempt never looks like a fast
//! success. The balancer's own histogram records each request's time from its start to
//! its answer, which for a hedged request is a lower bound of the first attempt's
//! latency: the tail the percentile reads stays honest.
//!
//! # Design: one owner per piece of state
//!
//! Hedging is part of the balancer rather than a layer around [`Balance`](super::Balance):
//! only the balancer's response future knows which endpoint an attempt holds (for the
//! exclusion), owns the in-flight guards (for the cancellation) and records latencies
//! (to skip the loser's). The delay's histogram and the hedge budget are the balancer's,
//! in one place shared by its clones; the budget shared with retries stays the policy's,
//! which decides what may be replayed.
//!
//! # Anchors
//!
//! | | tower-lb | Envoy | Finagle |
//! |---|---|---|---|
//! | switch | [`Builder::hedge`](super::Builder::hedge), off | route `hedge_policy`, off | `BackupRequestFilter` (`.idempotent(maxExtraLoad)`), off |
//! | delay | [`Hedge::after`] or [`Hedge::percentile`], floor 1 ms | the per-try timeout (`hedge_on_per_try_timeout`, default false) | the `1 − maxExtraLoad` percentile of recent latency |
//! | which requests | idempotent and replayable, per the policy | what the route's retry policy allows | the requests of the client it is put on |
//! | budget | 10 % of requests, ≥ 3/s over 10 s, and the retry budget (20 %, ≥ 3/s) | the retry budget (`budget_percent` 20 %, `min_retry_concurrency` 3) | `maxExtraLoad` (e.g. 1 %), a retry budget of its own |
//! | other backend | always (the `tried` exclusion of retries) | not guaranteed | not guaranteed |
//! | loser | dropped: in-flight released, no RTT sample | reset | interrupted |
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//! use tower::{service_fn, ServiceExt};
//! use tower_lb::{balance::{Hedge, Target}, http::HttpPolicy, Backend, Balance, BoxError};
//!
//! let balance = Balance::builder()
//!     .backends([Backend::new("a"), Backend::new("b")])
//!     .policy(HttpPolicy::new().replay_clone())
//!     .hedge(Hedge::percentile(0.95).floor(Duration::from_millis(2)))
//!     .build(|t: &Target<'_, &'static str>| {
//!         let name = *t.key();
//!         service_fn(move |_req: http::Request<String>| async move {
//!             Ok::<_, BoxError>(name)
//!         })
//!     })
//!     .unwrap();
//! let rsp = balance.oneshot(http::Request::new(String::new())).await.unwrap();
//! assert!(rsp == "a" || rsp == "b");
//! # }
//! ```

use std::{
    fmt,
    sync::atomic::{AtomicU32, AtomicU64, Ordering::*},
    time::Duration,
};

use super::RetryBudget;
use crate::error::ConfigError;

/// Latencies a percentile delay needs in its window before it hedges.
const MIN_SAMPLES: u64 = 20;
/// Sub-buckets per power of two: 2^3 = 8, so a bucket is 12.5 % wide.
const SUB: u32 = 3;
/// Buckets for every `u64` nanosecond value.
const BUCKETS: usize = (62 << SUB) as usize;
/// Each of the two windows covers this much time: samples count for 5 to 10 s.
const WINDOW_NS: u64 = 5_000_000_000;

/// When and how much a balancer hedges; see the [module docs](self).
///
/// Defaults: floor 1 ms; budget 10 % of requests, at least 3 per second over 10 s.
#[derive(Debug, Clone)]
pub struct Hedge {
    delay: Delay,
    floor: Duration,
    budget: RetryBudget,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Delay {
    After(Duration),
    Percentile(f64),
}

impl Hedge {
    /// Hedges a request that has not answered after `delay` (never less than the floor).
    pub fn after(delay: Duration) -> Self {
        Self::with(Delay::After(delay))
    }

    /// Hedges a request that has not answered after the `q` quantile of recent request
    /// latencies (`0.95` for p95), never less than the floor. `q` must be within
    /// `0.0..1.0` (exclusive), or the balancer's `build` fails.
    pub fn percentile(q: f64) -> Self {
        Self::with(Delay::Percentile(q))
    }

    fn with(delay: Delay) -> Self {
        Self {
            delay,
            floor: Duration::from_millis(1),
            budget: RetryBudget::new().ratio(0.1),
        }
    }

    /// The shortest delay (default 1 ms): a percentile of very fast answers would
    /// otherwise double every request.
    #[must_use]
    pub fn floor(mut self, floor: Duration) -> Self {
        self.floor = floor;
        self
    }

    /// The hedges' own cap (default `RetryBudget::new().ratio(0.1)`: 10 % of requests,
    /// at least 3 per second over 10 s). Every request the balancer takes deposits; each
    /// hedge withdraws. Hedges also draw on the policy's retry budget
    /// ([`RequestPolicy::send_hedge`](super::RequestPolicy::send_hedge)).
    #[must_use]
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Checks the settings, as the builder does.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if let Delay::Percentile(q) = self.delay
            && !(q > 0.0 && q < 1.0)
        {
            return Err(ConfigError::Invalid {
                setting: "hedge percentile",
                reason: format!("{q} is not within 0.0..1.0 (exclusive)"),
            });
        }
        Ok(())
    }

    pub(crate) fn into_shared(self) -> Shared {
        Shared {
            delay: self.delay,
            floor_ns: self.floor.as_nanos().min(u128::from(u64::MAX)) as u64,
            budget: self.budget,
            latency: Histogram::new(),
        }
    }
}

/// A balancer's hedging state, shared by its clones and their requests.
pub(crate) struct Shared {
    delay: Delay,
    floor_ns: u64,
    pub(crate) budget: RetryBudget,
    latency: Histogram,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("delay", &self.delay)
            .field("floor_ns", &self.floor_ns)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The delay for a request starting at `now` (ns on the balancer's clock); `None`
    /// when a percentile has too few samples yet.
    pub(crate) fn delay(&self, now: u64) -> Option<Duration> {
        let ns = match self.delay {
            Delay::After(d) => d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Delay::Percentile(q) => self.latency.quantile(q, now)?,
        };
        Some(Duration::from_nanos(ns.max(self.floor_ns)))
    }

    /// Records one request's latency (ns) at `now`.
    pub(crate) fn record(&self, latency: u64, now: u64) {
        if matches!(self.delay, Delay::Percentile(_)) {
            self.latency.record(latency, now);
        }
    }
}

/// Two windows of log-linear bucket counts: the current and the previous one, so a
/// quantile reads the last 5 to 10 s. Updates are relaxed atomics: a sample racing with
/// a window's reset may be lost, which a tail estimate tolerates.
struct Histogram {
    windows: [Window; 2],
}

struct Window {
    /// Which window number the counts belong to (0: none yet).
    epoch: AtomicU64,
    counts: Box<[AtomicU32]>,
}

impl Histogram {
    fn new() -> Self {
        let window = || Window {
            epoch: AtomicU64::new(0),
            counts: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        };
        Self {
            windows: [window(), window()],
        }
    }

    fn record(&self, latency: u64, now: u64) {
        let w = now / WINDOW_NS + 1;
        let win = &self.windows[(w % 2) as usize];
        let held = win.epoch.load(Acquire);
        if held != w && win.epoch.compare_exchange(held, w, AcqRel, Acquire).is_ok() {
            // This window's counts are from an older window: they expired.
            for c in win.counts.iter() {
                c.store(0, Relaxed);
            }
        }
        win.counts[index(latency)].fetch_add(1, Relaxed);
    }

    /// The upper bound of the bucket holding the `q` quantile, if enough samples.
    fn quantile(&self, q: f64, now: u64) -> Option<u64> {
        let w = now / WINDOW_NS + 1;
        let live: Vec<&Window> = self
            .windows
            .iter()
            .filter(|win| {
                let e = win.epoch.load(Acquire);
                e != 0 && e <= w && e + 1 >= w
            })
            .collect();
        let count = |i: usize| -> u64 {
            live.iter()
                .map(|win| u64::from(win.counts[i].load(Relaxed)))
                .sum()
        };
        let total: u64 = (0..BUCKETS).map(count).sum();
        if total < MIN_SAMPLES {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for i in 0..BUCKETS {
            seen += count(i);
            if seen >= rank {
                return Some(upper(i));
            }
        }
        Some(upper(BUCKETS - 1))
    }
}

/// The bucket of `v`: exact below 16, then 8 buckets per power of two.
fn index(v: u64) -> usize {
    let e = 63 - v.max(1).leading_zeros();
    if e <= SUB {
        return v as usize;
    }
    let sub = (v >> (e - SUB)) & ((1 << SUB) - 1);
    (((e - SUB + 1) << SUB) as u64 + sub) as usize
}

/// The smallest value of bucket `i`.
fn lower(i: usize) -> u64 {
    if i < 2 << SUB {
        return i as u64;
    }
    let e = (i >> SUB) as u32 + SUB - 1;
    let sub = (i & ((1 << SUB) - 1)) as u64;
    ((1 << SUB) + sub) << (e - SUB)
}

/// The largest value of bucket `i`.
fn upper(i: usize) -> u64 {
    if i + 1 >= BUCKETS {
        u64::MAX
    } else {
        lower(i + 1) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_at_most_an_eighth_wide() {
        for v in (0..5000u64).chain([1 << 20, 123_456_789, u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(lower(i) <= v && v <= upper(i), "{v} in bucket {i}");
        }
        for i in 16..BUCKETS - 1 {
            assert_eq!(upper(i) + 1, lower(i + 1));
            assert!((upper(i) - lower(i)) as f64 <= lower(i) as f64 / 8.0);
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantile_needs_samples_and_follows_them() {
        let h = Histogram::new();
        let ms = 1_000_000;
        for _ in 0..19 {
            h.record(10 * ms, 0);
        }
        assert_eq!(h.quantile(0.95, 0), None);
        for _ in 0..81 {
            h.record(10 * ms, 0);
        }
        let p95 = h.quantile(0.95, 0).unwrap();
        assert!((10 * ms..=10 * ms * 9 / 8).contains(&p95), "{p95}");
        // Ten slow ones make the tail: p95 is now about 100 ms, p50 still about 10 ms.
        for _ in 0..10 {
            h.record(100 * ms, 1);
        }
        let p95 = h.quantile(0.95, 1).unwrap();
        assert!((100 * ms..=100 * ms * 9 / 8).contains(&p95), "{p95}");
        assert!(h.quantile(0.5, 1).unwrap() < 12 * ms);
        // Two windows later, the samples expired.
        assert_eq!(h.quantile(0.95, 2 * WINDOW_NS + 1), None);
    }

    #[test]
    fn a_percentile_outside_the_open_unit_interval_is_refused() {
        for q in [0.0, 1.0, -0.5, f64::NAN, 95.0] {
            assert!(Hedge::percentile(q).validate().is_err(), "{q}");
        }
        assert!(Hedge::percentile(0.95).validate().is_ok());
        let s = Hedge::after(Duration::ZERO).into_shared();
        assert_eq!(s.delay(0), Some(Duration::from_millis(1)));
    }
}
