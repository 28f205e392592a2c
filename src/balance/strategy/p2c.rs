use super::{Candidate, Candidates, RequestKey, Rng, Strategy};

/// Lowest cost floor for peak EWMA: an endpoint never looks faster than 1 ms.
const EWMA_FLOOR_NS: f64 = 1_000_000.0;

/// Power of two choices: draws two *distinct* endpoints in proportion to weight and sends
/// the request to the one with the lower load ÷ weight.
///
/// Load is the number of in-flight requests by default, or peak-EWMA RTT × (in-flight + 1)
/// with [`P2c::peak_ewma`] (Finagle, linkerd; decay 10 s, 30 ms assumed before the first
/// sample and fading from the endpoint's join as a sample would, 1 ms floor; a peak also
/// fades after ~100 faster answers, see
/// [`EndpointState::observe_rtt`](crate::balance::EndpointState::observe_rtt)). Unlike
/// Envoy, the two draws never hit the same endpoint, so with two endpoints the less loaded
/// always wins; unlike `tower::balance::p2c`, weights count.
///
/// Cost: O(1) with equal weights, O(log n) otherwise.
///
/// ```
/// use tower_lb::balance::strategy::{list_of, P2c, Strategy};
///
/// let p2c = P2c::with_seed(1);
/// let c = list_of(&[1, 1]);
/// // With two endpoints both are always drawn; equal loads tie, either may win.
/// assert!(p2c.pick(&c.view(), None).unwrap() < 2);
/// ```
#[derive(Debug, Default)]
pub struct P2c {
    rng: Rng,
    ewma: bool,
}

impl P2c {
    /// P2C over in-flight requests, seeded from the clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// P2C over in-flight requests with a fixed seed.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            rng: Rng::with_seed(seed),
            ewma: false,
        }
    }

    /// Measures load as peak-EWMA RTT × (in-flight + 1).
    #[must_use]
    pub fn peak_ewma(mut self) -> Self {
        self.ewma = true;
        self
    }

    /// The two distinct candidates this pick would compare (for tests and custom
    /// strategies built on the same draw).
    pub fn draw(&self, candidates: &Candidates<'_>) -> (usize, usize) {
        let n = candidates.len();
        if n < 2 {
            return (0, 0);
        }
        if candidates.uniform() {
            // One draw for both picks: its high and low halves, each scaled by
            // multiply-shift into its range (a bias of at most n / 2^32).
            let r = self.rng.next_u64();
            let scale = |half: u64, n: usize| ((u128::from(half) * n as u128) >> 32) as usize;
            let i = scale(r >> 32, n);
            let mut j = scale(r & 0xffff_ffff, n - 1);
            if j >= i {
                j += 1;
            }
            (i, j)
        } else {
            let total = candidates.total_weight();
            let i = candidates.by_weight_point(self.rng.below(total));
            let cum = candidates.cumulative();
            let wi = u64::from(candidates[i].weight.max(1));
            let start = cum[i] - wi;
            // Draw from the total without i's share, then step over i's interval.
            let mut r = self.rng.below(total - wi);
            if r >= start {
                r += wi;
            }
            let j = candidates.by_weight_point(r);
            (i, j)
        }
    }
}

impl Strategy for P2c {
    #[inline]
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&RequestKey>) -> Option<usize> {
        match candidates.len() {
            0 => None,
            1 => Some(0),
            _ => {
                let (i, j) = self.draw(candidates);
                let (a, b) = (&candidates[i], &candidates[j]);
                let (wa, wb) = (f64::from(a.weight.max(1)), f64::from(b.weight.max(1)));
                let (la, lb) = if self.ewma {
                    let (ea, eb) = Candidate::ewma_nanos_pair(a, b, candidates);
                    (
                        ea.max(EWMA_FLOOR_NS) * (a.in_flight() as f64 + 1.0),
                        eb.max(EWMA_FLOOR_NS) * (b.in_flight() as f64 + 1.0),
                    )
                } else {
                    (a.in_flight() as f64, b.in_flight() as f64)
                };
                // la/wa <= lb/wb, without division.
                Some(if la * wb <= lb * wa { i } else { j })
            }
        }
    }

    fn needs_latency(&self) -> bool {
        self.ewma
    }

    fn wants_rebuild(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        if self.ewma {
            "p2c-peak-ewma"
        } else {
            "p2c"
        }
    }
}
