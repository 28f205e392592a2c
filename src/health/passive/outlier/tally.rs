//! Outlier detection's per-endpoint record, and the probe's way to end its ejections.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Mutex,
};

use tokio::time::Instant;

/// Outlier detection's record of one endpoint, kept with it
/// ([`EndpointState::slot`](crate::balance::EndpointState::slot)): the interval's
/// verdicts, counted by the endpoint's passive layer as it classifies each outcome, read
/// and reset by the detector at every interval; and the detector's own "times ejected"
/// and current ejection.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    successes: AtomicU64,
    failures: AtomicU64,
    /// The detector's ejection multiplier (Envoy's), written by the detector only.
    pub(super) times_ejected: AtomicU64,
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
    pub(super) fn take(&self) -> (u64, u64) {
        (
            self.successes.swap(0, Relaxed),
            self.failures.swap(0, Relaxed),
        )
    }

    pub(super) fn probe_may_end(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.probe_may_end
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A probe of `state`'s endpoint passed (called by the active prober): ends the outlier
/// detector's ejection of it, if there is one that a probe may end (Envoy
/// `successful_active_health_check_uneject_host`). An ejection by another policy, or
/// one that already gave way to a new ejection, is left alone.
#[cfg(feature = "health-active")]
pub(crate) fn probe_passed(backend: &dyn std::fmt::Display, state: &crate::balance::EndpointState) {
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
