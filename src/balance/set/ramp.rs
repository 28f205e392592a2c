//! Slow start: effective weights ramping up after a join or a recovery.

use super::*;

/// Slow start (nginx Plus `slow_start`, Envoy with aggression 1): an endpoint's effective
/// weight is `weight × max(10 %, elapsed ÷ window)` after it joins or recovers.
pub(super) struct Ramp {
    pub(super) window: Duration,
    pub(super) now: Instant,
    /// When the list should next be rebuilt to follow the ramp.
    pub(super) next: std::cell::Cell<Option<Instant>>,
}

/// Slow-start weights are in hundredths of the configured weight.
pub(crate) const RAMP_SCALE: u32 = 100;

/// The smallest share of its weight an endpoint gets while ramping.
pub(super) const RAMP_FLOOR: f64 = 0.1;

/// Rebuilds per window while an endpoint ramps.
pub(super) const RAMP_STEPS: u32 = 20;

/// The share of its weight an endpoint that started ramping at `start` gets at `now`, or
/// `None` once the ramp is over.
pub(crate) fn ramp_share(window: Duration, start: Instant, now: Instant) -> Option<f64> {
    let elapsed = now.saturating_duration_since(start);
    if elapsed >= window || window.is_zero() {
        return None;
    }
    Some((elapsed.as_secs_f64() / window.as_secs_f64()).max(RAMP_FLOOR))
}

impl Ramp {
    pub(super) fn weight(&self, weight: u32, state: &EndpointState) -> u32 {
        let full = weight.saturating_mul(RAMP_SCALE);
        let start = state.ramp_start();
        let Some(share) = ramp_share(self.window, start, self.now) else {
            return full;
        };
        // Rebuild at the next step of the ramp, or when it ends.
        let step = (self.window / RAMP_STEPS).max(Duration::from_millis(1));
        let next = later(self.now, step).min(later(start, self.window));
        self.next
            .set(Some(self.next.get().map_or(next, |n| n.min(next))));
        ((f64::from(full) * share).round() as u32).max(1)
    }
}
