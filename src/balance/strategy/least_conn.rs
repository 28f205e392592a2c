use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{Candidates, RequestKey, Strategy};

/// Least connections, weighted (nginx `least_conn`): the endpoint with the fewest
/// in-flight requests per unit of weight. Ties rotate, so idle endpoints share the
/// traffic evenly.
///
/// Cost: O(n) per pick (a scan of relaxed atomic loads).
///
/// ```
/// use tower_lb::balance::strategy::{list_of, LeastConn, Strategy};
///
/// let c = list_of(&[1, 1]);
/// let lc = LeastConn::new();
/// // Both idle: ties rotate.
/// assert_ne!(lc.pick(&c.view(), None), lc.pick(&c.view(), None));
/// ```
#[derive(Debug, Default)]
pub struct LeastConn {
    offset: AtomicUsize,
}

impl LeastConn {
    /// A new least-connections strategy.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for LeastConn {
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&RequestKey>) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let start = self.offset.fetch_add(1, Relaxed) % n;
        let mut best = start;
        let mut best_load = candidates[start].in_flight() as u128;
        let mut best_w = u128::from(candidates[start].weight.max(1));
        for step in 1..n {
            let i = (start + step) % n;
            let c = &candidates[i];
            let load = c.in_flight() as u128;
            let w = u128::from(c.weight.max(1));
            // load/w < best_load/best_w, without division.
            if load * best_w < best_load * w {
                best = i;
                best_load = load;
                best_w = w;
            }
        }
        Some(best)
    }

    fn wants_rebuild(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "least-conn"
    }
}
