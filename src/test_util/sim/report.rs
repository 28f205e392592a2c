//! What a simulation measured.

use std::{fmt, time::Duration};

/// The outcome of one [`Simulation`](super::Simulation) run. Equal seeds and settings give
/// equal reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Report {
    /// Requests the clients sent.
    pub requests: u64,
    /// Requests answered with success (HTTP 200) within the timeout.
    pub successes: u64,
    /// Requests answered with an error (a 503 from the model, or the balancer's error).
    pub errors: u64,
    /// Requests still unanswered at the timeout.
    pub timeouts: u64,
    /// Client-observed latency percentiles over every request (a timed-out request counts
    /// as the timeout), nearest rank, microsecond precision.
    pub p50: Duration,
    /// See [`p50`](Self::p50).
    pub p99: Duration,
    /// See [`p50`](Self::p50).
    pub p999: Duration,
    /// Extra attempts backends saw that started after the request's earlier attempts had
    /// ended (the balancer's retries of refused attempts).
    pub retries: u64,
    /// Extra attempts backends saw that started while an earlier attempt of the same
    /// request was still running (hedged requests); zero for a balancer that never hedges.
    pub hedges: u64,
    /// Simulated time from the first request to the last answer.
    pub elapsed: Duration,
    /// One entry per backend, in the order given.
    pub backends: Vec<BackendReport>,
}

/// What one backend saw. See [`Report`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BackendReport {
    /// Attempts that reached this backend (retries and hedges included).
    pub requests: u64,
    /// This backend's share of all attempts, 0 to 1.
    pub share: f64,
    /// Attempts it answered with an error (503).
    pub errors: u64,
    /// Attempts it refused (connect failures).
    pub refused: u64,
    /// Median time from arrival (queueing included) to answer, of attempts it finished.
    pub p50: Duration,
    /// 99th percentile of the same.
    pub p99: Duration,
}

impl Report {
    /// The share of requests answered with success within the timeout, 0 to 1.
    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.successes as f64 / self.requests as f64
        }
    }

    /// Requests per second of simulated time.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs == 0.0 {
            0.0
        } else {
            self.requests as f64 / secs
        }
    }
}

/// Nearest-rank percentile of sorted microseconds.
pub(crate) fn percentile(sorted: &[u64], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Duration::from_micros(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A short text summary: totals, percentiles, then one line per backend.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "requests {} success {:.2} % (errors {}, timeouts {}) p50 {:.1} ms p99 {:.1} ms \
             p999 {:.1} ms retries {} hedges {} over {:.1} s",
            self.requests,
            self.success_rate() * 100.0,
            self.errors,
            self.timeouts,
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            self.retries,
            self.hedges,
            self.elapsed.as_secs_f64(),
        )?;
        for (i, b) in self.backends.iter().enumerate() {
            writeln!(
                f,
                "  backend {i}: {:.2} % of {} attempts, errors {}, refused {}, p50 {:.1} ms p99 {:.1} ms",
                b.share * 100.0,
                b.requests,
                b.errors,
                b.refused,
                ms(b.p50),
                ms(b.p99),
            )?;
        }
        Ok(())
    }
}
