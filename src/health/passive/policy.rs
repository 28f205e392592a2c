//! Ejection policies: when failures eject an endpoint, and for how long.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use tokio::time::Instant;

/// Passive health's memory of one endpoint: the failure streak or window, and how many
/// times it was ejected lately. It belongs to passive health alone (the balancer reads
/// only the verdict), and is kept with the endpoint
/// ([`EndpointState::slot`](crate::balance::EndpointState::slot)), so it survives
/// discovery updates. A [`Policy`] reads and writes it through these methods.
#[derive(Debug)]
pub struct Memory {
    base: Instant,
    /// Failures in a row, or within the window.
    streak: AtomicU64,
    /// Start of the failure window, ns since `base` + 1 (0: no window).
    window: AtomicU64,
    /// "Times ejected", decayed while healthy.
    level: AtomicU64,
    /// When the last ejection ended or will end, ns since `base`: where the decay starts.
    level_at: AtomicU64,
}

impl Default for Memory {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            streak: AtomicU64::new(0),
            window: AtomicU64::new(0),
            level: AtomicU64::new(0),
            level_at: AtomicU64::new(0),
        }
    }
}

impl Memory {
    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// Failures counted in the current streak or window.
    pub fn streak(&self) -> u64 {
        self.streak.load(Relaxed)
    }

    /// Counts one more failure; returns the new count.
    pub fn extend_streak(&self) -> u64 {
        self.streak.fetch_add(1, Relaxed) + 1
    }

    /// A success: the streak starts again from zero.
    pub fn reset_streak(&self) {
        self.streak.store(0, Relaxed);
    }

    /// When the current failure window opened, if one is open.
    pub fn window_start(&self) -> Option<Instant> {
        match self.window.load(Relaxed) {
            0 => None,
            ns => Some(self.base + Duration::from_nanos(ns - 1)),
        }
    }

    /// Opens a new failure window at `now`, with this failure as its first.
    pub fn start_window(&self, now: Instant) {
        self.window.store(self.nanos(now) + 1, Relaxed);
        self.streak.store(1, Relaxed);
    }

    /// The next ejection's time: `base × times ejected`, capped at `max`. "Times ejected"
    /// drops by one for every `base` spent healthy since the last ejection ended (Envoy
    /// decays its multiplier the same way), so an endpoint that failed once long ago
    /// starts again from `base`.
    pub fn backoff(&self, now: Instant, base: Duration, max: Duration) -> Duration {
        let level = self.level.load(Relaxed);
        let last_end = self.base + Duration::from_nanos(self.level_at.load(Relaxed));
        let healthy = now.saturating_duration_since(last_end);
        let decay = if base.is_zero() {
            0
        } else {
            (healthy.as_nanos() / base.as_nanos()).min(u128::from(u64::MAX)) as u64
        };
        // Levels past the cap add nothing but would slow the decay.
        let top = if base.is_zero() {
            1
        } else {
            max.as_nanos().div_ceil(base.as_nanos()).clamp(1, 1 << 20) as u64
        };
        let level = level.saturating_sub(decay).saturating_add(1).min(top);
        let time = base
            .checked_mul(u32::try_from(level).unwrap_or(u32::MAX))
            .map_or(max, |t| t.min(max));
        self.level.store(level, Relaxed);
        self.level_at
            .store(self.nanos(crate::balance::later(now, time)), Relaxed);
        time
    }

    /// "Times ejected" as of the last ejection (before its decay while healthy).
    pub fn times_ejected(&self) -> u64 {
        self.level.load(Relaxed)
    }

    /// The endpoint was readmitted: no streak, no window.
    pub(crate) fn clear(&self) {
        self.streak.store(0, Relaxed);
        self.window.store(0, Relaxed);
    }
}

/// Decides when an endpoint's failures eject it, and for how long. See the
/// [module docs](super) for the stock policies, [`Window`] (nginx) and [`Consecutive`]
/// (Envoy).
///
/// The [`PassiveHealth`](super::PassiveHealth) service calls the policy for every outcome
/// of an endpoint that is neither ejected nor on probation, and owns everything else:
/// probation trials, the max ejection share, readmission, `tracing` events. A policy keeps
/// its per-endpoint memory in the [`Memory`] it is handed (the stock ones do) or in
/// itself: one policy value serves one endpoint's layer.
pub trait Policy: fmt::Debug + Send + Sync + 'static {
    /// A request succeeded.
    fn on_success(&self, memory: &Memory, now: Instant);

    /// A request failed. Returns why the endpoint should be ejected (for logs), or `None`
    /// if the failure is only counted.
    fn on_failure(&self, memory: &Memory, now: Instant) -> Option<String>;

    /// How long the endpoint is ejected, called once per ejection: when
    /// [`on_failure`](Self::on_failure) asked for one, and when a probation trial failed.
    /// Policies grow this with repeated ejections ([`Memory::backoff`]).
    fn ejection_time(&self, memory: &Memory, now: Instant) -> Duration;
}

/// nginx's passive health: `max_fails` failures within `fail_timeout` eject the endpoint
/// for `fail_timeout` (the same duration is both the window and the ejection time).
///
/// Defaults: `max_fails` 1, `fail_timeout` 10 s (nginx's). `max_fails(0)` never ejects,
/// like nginx. The window opens at the first failure and counts failures for
/// `fail_timeout`; successes in between do not reset it (nginx). A failed probation trial
/// ejects again for `fail_timeout × times ejected`, capped by
/// [`max_ejection_time`](Self::max_ejection_time) (300 s); the count decays by one for
/// every `fail_timeout` the endpoint stays healthy.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::health::passive::Window;
///
/// let nginx = Window::new().max_fails(3).fail_timeout(Duration::from_secs(30));
/// # let _ = nginx;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Window {
    max_fails: u32,
    fail_timeout: Duration,
    max_ejection_time: Duration,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
        }
    }
}

impl Window {
    /// nginx's defaults: 1 failure within 10 s ejects for 10 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Failures within the window that eject the endpoint (nginx `max_fails`); `0` never
    /// ejects.
    #[must_use]
    pub fn max_fails(mut self, max_fails: u32) -> Self {
        self.max_fails = max_fails;
        self
    }

    /// The window in which failures count, and the ejection time (nginx `fail_timeout`).
    #[must_use]
    pub fn fail_timeout(mut self, fail_timeout: Duration) -> Self {
        self.fail_timeout = fail_timeout;
        self
    }

    /// Cap on the ejection time after repeated ejections (default 300 s).
    #[must_use]
    pub fn max_ejection_time(mut self, max: Duration) -> Self {
        self.max_ejection_time = max;
        self
    }
}

impl Policy for Window {
    fn on_success(&self, _memory: &Memory, _now: Instant) {}

    fn on_failure(&self, memory: &Memory, now: Instant) -> Option<String> {
        if self.max_fails == 0 {
            return None;
        }
        let open = memory
            .window_start()
            .is_some_and(|start| now < crate::balance::later(start, self.fail_timeout));
        let count = if open {
            memory.extend_streak()
        } else {
            // A new window opens at this failure.
            memory.start_window(now);
            1
        };
        (count >= u64::from(self.max_fails)).then(|| {
            format!(
                "{count} failure(s) within fail_timeout {:?} (max_fails {})",
                self.fail_timeout, self.max_fails
            )
        })
    }

    fn ejection_time(&self, memory: &Memory, now: Instant) -> Duration {
        memory.backoff(now, self.fail_timeout, self.max_ejection_time)
    }
}

/// Envoy's `consecutive_5xx` outlier detection: `consecutive` failures in a row eject the
/// endpoint for `base_ejection_time × times ejected`, capped at `max_ejection_time`; a
/// success resets the streak.
///
/// Defaults (Envoy's): 5 failures, 30 s base, 300 s cap. "Times ejected" decays by one
/// for every `base_ejection_time` the endpoint stays healthy, as Envoy's multiplier does.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::health::passive::Consecutive;
///
/// let envoy = Consecutive::new().consecutive(3).base_ejection_time(Duration::from_secs(10));
/// # let _ = envoy;
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Consecutive {
    consecutive: u32,
    base: Duration,
    max: Duration,
}

impl Default for Consecutive {
    fn default() -> Self {
        Self {
            consecutive: 5,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
        }
    }
}

impl Consecutive {
    /// Envoy's defaults: 5 in a row, 30 s × times ejected, at most 300 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Failures in a row that eject (Envoy `consecutive_5xx`); `0` never ejects.
    #[must_use]
    pub fn consecutive(mut self, n: u32) -> Self {
        self.consecutive = n;
        self
    }

    /// Ejection time per time ejected (Envoy `base_ejection_time`).
    #[must_use]
    pub fn base_ejection_time(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// Cap on the ejection time (Envoy `max_ejection_time`).
    #[must_use]
    pub fn max_ejection_time(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }
}

impl Policy for Consecutive {
    fn on_success(&self, memory: &Memory, _now: Instant) {
        memory.reset_streak();
    }

    fn on_failure(&self, memory: &Memory, _now: Instant) -> Option<String> {
        if self.consecutive == 0 {
            return None;
        }
        let streak = memory.extend_streak();
        (streak >= u64::from(self.consecutive)).then(|| {
            format!(
                "{streak} consecutive failures (consecutive {})",
                self.consecutive
            )
        })
    }

    fn ejection_time(&self, memory: &Memory, now: Instant) -> Duration {
        memory.backoff(now, self.base, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn window_counts_failures_within_fail_timeout_only() {
        let st = Memory::default();
        let w = Window::new()
            .max_fails(2)
            .fail_timeout(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(w.on_failure(&st, t0).is_none());
        // The second failure falls outside the window: a new window opens.
        assert!(w.on_failure(&st, t0 + Duration::from_secs(10)).is_none());
        assert!(w
            .on_failure(&st, t0 + Duration::from_secs(19))
            .is_some_and(|why| why.starts_with("2 failure")));
    }

    #[tokio::test(start_paused = true)]
    async fn window_max_fails_zero_never_trips() {
        let st = Memory::default();
        let w = Window::new().max_fails(0);
        for _ in 0..10 {
            assert!(w.on_failure(&st, Instant::now()).is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_success_resets_streak() {
        let st = Memory::default();
        let c = Consecutive::new().consecutive(3);
        let now = Instant::now();
        assert!(c.on_failure(&st, now).is_none());
        assert!(c.on_failure(&st, now).is_none());
        c.on_success(&st, now);
        assert!(c.on_failure(&st, now).is_none());
        assert!(c.on_failure(&st, now).is_none());
        assert!(c.on_failure(&st, now).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_caps_and_decays() {
        let st = Memory::default();
        let c = Consecutive::new();
        let mut now = Instant::now();
        let mut times = Vec::new();
        for _ in 0..12 {
            let t = c.ejection_time(&st, now);
            times.push(t.as_secs());
            // The next ejection happens right when this one ends (a failed trial).
            now += t;
        }
        assert_eq!(
            times,
            [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
        );
        // Healthy for 10 × 30 s after the last ejection: back to the base.
        now += Duration::from_secs(300);
        assert_eq!(c.ejection_time(&st, now), Duration::from_secs(30));
    }
}
