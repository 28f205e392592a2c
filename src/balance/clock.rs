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

/// Which clock a balancer reads for latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Latency is not measured.
    Off,
    /// Tokio's clock (exact when paused).
    Tokio,
    /// The calibrated time-stamp counter.
    Counter,
}

/// The moment a balancer counts its times from: the hot path keeps times as nanoseconds
/// since it (`u64`), so reading the clock and measuring a request are integer
/// arithmetic, with no `Instant` built or compared. Every endpoint of the balancer counts
/// its own times (EWMA stamps, ejection ends) from the same moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The origin on Tokio's (and std's) time line.
    pub(crate) at: Instant,
    /// The counter's reading at `at` (for [`Kind::Counter`]).
    raw: u64,
}

impl Default for Origin {
    fn default() -> Self {
        Self {
            at: Instant::now(),
            raw: 0,
        }
    }
}

/// The clock one balancer reads for latency, and its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clock {
    pub(crate) kind: Kind,
    pub(crate) origin: Origin,
}

struct Counter {
    clock: quanta::Clock,
    raw0: u64,
    base: Instant,
}

static COUNTER: OnceLock<Counter> = OnceLock::new();

#[inline]
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

impl Default for Clock {
    fn default() -> Self {
        Self::of(Kind::Off)
    }
}

impl Clock {
    /// The clock for a balancer built now: off without latency tracking, Tokio's when its
    /// clock is paused, else the counter.
    pub(crate) fn choose(track_latency: bool) -> Self {
        Self::of(if !track_latency {
            Kind::Off
        } else if tokio_paused() {
            Kind::Tokio
        } else {
            Kind::Counter
        })
    }

    /// A clock of `kind` whose origin is now.
    pub(crate) fn of(kind: Kind) -> Self {
        let origin = match kind {
            Kind::Counter => {
                let c = counter();
                let raw = c.clock.raw();
                Origin {
                    at: c.base + Duration::from_nanos(c.clock.delta_as_nanos(c.raw0, raw)),
                    raw,
                }
            }
            Kind::Off | Kind::Tokio => Origin::default(),
        };
        Self { kind, origin }
    }

    /// Nanoseconds since the origin (Tokio's clock when latency is off).
    #[inline]
    pub(crate) fn now_ns(&self) -> u64 {
        match self.kind {
            Kind::Counter => {
                // `of` made the counter before any balancer could use it.
                let c = counter();
                c.clock.delta_as_nanos(self.origin.raw, c.clock.raw())
            }
            Kind::Off | Kind::Tokio => Instant::now()
                .saturating_duration_since(self.origin.at)
                .as_nanos() as u64,
        }
    }

    /// The instant `ns` nanoseconds after the origin.
    #[inline]
    pub(crate) fn instant(&self, ns: u64) -> Instant {
        self.origin.at + Duration::from_nanos(ns)
    }

    /// Whether latency is measured.
    #[inline]
    pub(crate) fn on(&self) -> bool {
        self.kind != Kind::Off
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
        let clock = Clock::choose(true);
        assert_eq!(clock.kind, Kind::Tokio);
        let ns = clock.now_ns();
        let t = clock.instant(ns);
        tokio::time::advance(Duration::from_millis(7)).await;
        assert_eq!(clock.instant(clock.now_ns()) - t, Duration::from_millis(7));
        assert_eq!(clock.now_ns() - ns, 7_000_000);
    }

    #[tokio::test]
    async fn a_running_clock_is_read_from_the_counter() {
        let clock = Clock::choose(true);
        assert_eq!(clock.kind, Kind::Counter);
        assert_eq!(Clock::choose(false).kind, Kind::Off);
        // The counter's time line is Tokio's (and std's): within a generous bound of
        // calibration error, and monotonic.
        let a = clock.instant(clock.now_ns());
        let t = Instant::now();
        let b = clock.instant(clock.now_ns());
        assert!(b >= a);
        let gap = if t > a { t - a } else { a - t };
        assert!(gap < Duration::from_millis(50), "{gap:?}");
    }
}
