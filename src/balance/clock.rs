//! Where the balancer reads the time it measures latency with.
//!
//! Peak EWMA reads the clock when it picks and when the response comes: two reads per
//! request on the hot path. `Instant::now()` costs about 30 ns on a typical virtual
//! machine (a vDSO `clock_gettime`); the CPU's time-stamp counter costs about 10. So a
//! balancer uses the counter (through `quanta`, calibrated once per process against the
//! monotonic clock, and falling back to it where the counter is not invariant) — unless
//! Tokio's clock is paused when the balancer is built, as in tests with
//! `tokio::time::pause` or `#[tokio::test(start_paused = true)]`: then it reads Tokio's
//! clock, so paused-time tests stay exact. Both give `tokio::time::Instant`s on the same
//! time line, so every public method taking an `Instant` accepts either.

use std::{sync::OnceLock, time::Duration};

use tokio::time::Instant;

/// The clock one balancer reads for latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Clock {
    /// Latency is not measured.
    Off,
    /// Tokio's clock (exact when paused).
    Tokio,
    /// The calibrated time-stamp counter.
    Counter,
}

struct Counter {
    clock: quanta::Clock,
    raw0: u64,
    base: Instant,
}

static COUNTER: OnceLock<Counter> = OnceLock::new();

fn counter() -> &'static Counter {
    COUNTER.get_or_init(|| {
        let clock = quanta::Clock::new();
        let raw0 = clock.raw();
        Counter {
            clock,
            raw0,
            base: Instant::now(),
        }
    })
}

impl Clock {
    /// The clock for a balancer built now: off without latency tracking, Tokio's when its
    /// clock is paused, else the counter.
    pub(crate) fn choose(track_latency: bool) -> Self {
        if !track_latency {
            Self::Off
        } else if tokio_paused() {
            Self::Tokio
        } else {
            counter();
            Self::Counter
        }
    }

    /// The current time (Tokio's clock when latency is off).
    #[inline]
    pub(crate) fn now(self) -> Instant {
        match self {
            Self::Counter => {
                // `choose` made the counter before any balancer could use it.
                let c = counter();
                c.base + Duration::from_nanos(c.clock.delta_as_nanos(c.raw0, c.clock.raw()))
            }
            Self::Off | Self::Tokio => Instant::now(),
        }
    }

    /// Whether latency is measured.
    #[inline]
    pub(crate) fn on(self) -> bool {
        self != Self::Off
    }
}

/// Whether Tokio's clock stands still: two reads a few microseconds of real time apart
/// give the same instant only when it is paused (a paused clock moves only when told to,
/// or when the runtime idles, which it can't while this thread spins).
// Real time on purpose: the check compares Tokio's clock against it.
#[allow(clippy::disallowed_types)]
fn tokio_paused() -> bool {
    let before = Instant::now();
    let spin = std::time::Instant::now();
    while spin.elapsed() < Duration::from_micros(5) {
        std::hint::spin_loop();
    }
    Instant::now() == before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_is_read_from_tokio() {
        assert_eq!(Clock::choose(true), Clock::Tokio);
        let t = Clock::Tokio.now();
        tokio::time::advance(Duration::from_millis(7)).await;
        assert_eq!(Clock::Tokio.now() - t, Duration::from_millis(7));
    }

    #[tokio::test]
    async fn a_running_clock_is_read_from_the_counter() {
        assert_eq!(Clock::choose(true), Clock::Counter);
        assert_eq!(Clock::choose(false), Clock::Off);
        // The counter's time line is Tokio's (and std's): within a generous bound of
        // calibration error, and monotonic.
        let a = Clock::Counter.now();
        let t = Instant::now();
        let b = Clock::Counter.now();
        assert!(b >= a);
        let gap = if t > a { t - a } else { a - t };
        assert!(gap < Duration::from_millis(50), "{gap:?}");
    }
}
