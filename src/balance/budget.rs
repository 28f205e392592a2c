//! A retry budget (Finagle, linkerd): retries may add at most a share of the requests
//! seen recently, plus a small floor per second.

use std::{
    fmt,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering::*},
        Arc,
    },
    time::Duration,
};

use tokio::time::Instant;

/// Windows the TTL is cut into; a deposit counts until its window leaves the TTL.
const SLOTS: usize = 10;
/// Credits are counted in thousandths of a retry.
const MILLI: i64 = 1000;

/// Caps retries at a share of recent requests, so a failing backend cannot turn every
/// request into several (a retry storm): each request deposits `ratio` of a retry, each
/// retry withdraws one, deposits expire after `ttl`, and `min_per_second × ttl` retries
/// are always available on top (Finagle's `RetryBudget`, linkerd's retry budgets).
///
/// Defaults: ratio 0.2 (retries add at most 20 % to the requests), 3 retries per second
/// at least, TTL 10 s (Envoy's 20 % and 3, Finagle's TTL). The ratio is clamped to
/// `0.0..=1000.0` and the TTL to 1–60 s, as Finagle does. Clones share one budget. Time
/// is Tokio's, so a paused clock drives the expiry in tests.
///
/// ```
/// use tower_lb::balance::RetryBudget;
///
/// let budget = RetryBudget::new().ratio(0.1).min_per_second(0);
/// for _ in 0..20 {
///     budget.deposit();
/// }
/// // 20 requests at 10 %: two retries.
/// assert!(budget.withdraw() && budget.withdraw());
/// assert!(!budget.withdraw());
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Instant,
    ratio: f64,
    min_per_second: u32,
    ttl: Duration,
    slot_ns: u64,
    deposit: i64,
    reserve: i64,
    /// Per slot: the window it counts (low 32 bits of the window number) and its credits.
    windows: [AtomicU64; SLOTS],
    credits: [AtomicI64; SLOTS],
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.inner.ratio)
            .field("min_per_second", &self.inner.min_per_second)
            .field("ttl", &self.inner.ttl)
            .field("balance", &self.balance())
            .finish()
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::with(0.2, 3, Duration::from_secs(10))
    }
}

impl RetryBudget {
    /// 20 % of requests, at least 3 per second, over 10 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// The share of requests that may be retried (default 0.2).
    #[must_use]
    pub fn ratio(self, ratio: f64) -> Self {
        Self::with(ratio, self.inner.min_per_second, self.inner.ttl)
    }

    /// Retries always allowed per second, whatever the traffic (default 3).
    #[must_use]
    pub fn min_per_second(self, n: u32) -> Self {
        Self::with(self.inner.ratio, n, self.inner.ttl)
    }

    /// How long a request's deposit counts (default 10 s; 1–60 s).
    #[must_use]
    pub fn ttl(self, ttl: Duration) -> Self {
        Self::with(self.inner.ratio, self.inner.min_per_second, ttl)
    }

    fn with(ratio: f64, min_per_second: u32, ttl: Duration) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1000.0)
        };
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let reserve = i64::from(min_per_second)
            .saturating_mul(ttl.as_secs() as i64)
            .saturating_mul(MILLI);
        Self {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                ratio,
                min_per_second,
                ttl,
                slot_ns: (ttl.as_nanos() / SLOTS as u128) as u64,
                deposit: (ratio * MILLI as f64).round() as i64,
                reserve,
                windows: Default::default(),
                credits: Default::default(),
            }),
        }
    }

    /// The current window number.
    fn window(&self) -> u64 {
        let ns = Instant::now()
            .saturating_duration_since(self.inner.origin)
            .as_nanos() as u64;
        // Window 0 would read as an unused slot: start at 1.
        ns / self.inner.slot_ns.max(1) + 1
    }

    /// The slot of window `w`, cleared first if it still holds an older window.
    fn slot(&self, w: u64) -> &AtomicI64 {
        let i = (w % SLOTS as u64) as usize;
        let held = self.inner.windows[i].load(Acquire);
        if held != w
            && self.inner.windows[i]
                .compare_exchange(held, w, AcqRel, Acquire)
                .is_ok()
        {
            // We moved the slot to this window: its old credits expired.
            self.inner.credits[i].store(0, Release);
        }
        &self.inner.credits[i]
    }

    /// Counts one request: it earns `ratio` of a retry for the TTL.
    pub fn deposit(&self) {
        if self.inner.deposit > 0 {
            let w = self.window();
            self.slot(w).fetch_add(self.inner.deposit, AcqRel);
        }
    }

    /// Takes one retry from the budget; `false` (and nothing taken) if it is spent.
    pub fn withdraw(&self) -> bool {
        let w = self.window();
        if self.credits_at(w) < MILLI {
            return false;
        }
        self.slot(w).fetch_sub(MILLI, AcqRel);
        true
    }

    /// Retries available now.
    pub fn balance(&self) -> f64 {
        self.credits_at(self.window()) as f64 / MILLI as f64
    }

    fn credits_at(&self, w: u64) -> i64 {
        let mut sum = self.inner.reserve;
        for i in 0..SLOTS {
            let held = self.inner.windows[i].load(Acquire);
            if held != 0 && held + (SLOTS as u64) > w && held <= w {
                sum += self.inner.credits[i].load(Acquire);
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_ttl_and_the_floor_stays() {
        let budget = RetryBudget::new()
            .ratio(0.5)
            .min_per_second(1)
            .ttl(Duration::from_secs(10));
        // The floor alone: 1 per second over 10 s.
        assert_eq!(budget.balance(), 10.0);
        for _ in 0..10 {
            assert!(budget.withdraw());
        }
        assert!(!budget.withdraw());
        // 10 requests at 50 %: five retries, for 10 s.
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(budget.balance(), 5.0);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(budget.withdraw());
        assert_eq!(budget.balance(), 4.0);
        // Past the TTL the deposits and the withdrawals made with them are gone.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(budget.balance(), 10.0);
    }

    #[test]
    fn settings_are_clamped() {
        let b = RetryBudget::new()
            .ratio(-1.0)
            .ttl(Duration::from_secs(3600));
        assert_eq!((b.inner.ratio, b.inner.ttl), (0.0, Duration::from_secs(60)));
        let b = RetryBudget::new().ratio(f64::NAN).ttl(Duration::ZERO);
        assert_eq!((b.inner.ratio, b.inner.ttl), (0.0, Duration::from_secs(1)));
    }
}
