use std::sync::{atomic::Ordering::Relaxed, Mutex};

use super::{Candidates, RequestKey, Strategy};

/// nginx's smooth weighted round robin.
///
/// Each pick adds every available endpoint's weight to its current value, picks the
/// largest (the first on ties), and subtracts the total weight from the winner. Weights
/// 5, 1, 1 give `a a b a c a a`: exact proportions in every cycle of `Σ weights` picks,
/// and no endpoint gets long bursts. The current values live in each endpoint's state, as
/// nginx keeps them per peer, so they survive changes to the set.
///
/// Cost: O(n) per pick under a short lock, like nginx.
///
/// ```
/// use tower_lb::balance::strategy::{list_of, Strategy, WeightedRoundRobin};
///
/// let wrr = WeightedRoundRobin::new();
/// let c = list_of(&[5, 1, 1]);
/// let order: String = (0..7)
///     .map(|_| (b'a' + wrr.pick(&c.view(), None).unwrap() as u8) as char)
///     .collect();
/// assert_eq!(order, "aabacaa");
/// ```
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    lock: Mutex<()>,
}

impl WeightedRoundRobin {
    /// A new smooth weighted round robin.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for WeightedRoundRobin {
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&RequestKey>) -> Option<usize> {
        let n = candidates.len();
        if n <= 1 {
            return if n == 1 { Some(0) } else { None };
        }
        // The lock makes the read-add-compare-subtract of all current weights one step;
        // a poisoned lock only means another pick panicked, the values are still sound.
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let total = candidates.total_weight() as i64;
        let mut best = 0;
        let mut best_cur = i64::MIN;
        for (i, c) in candidates.iter().enumerate() {
            let cur = c.state.scratch.load(Relaxed) + i64::from(c.weight.max(1));
            c.state.scratch.store(cur, Relaxed);
            if cur > best_cur {
                best = i;
                best_cur = cur;
            }
        }
        candidates[best]
            .state
            .scratch
            .store(best_cur - total, Relaxed);
        Some(best)
    }

    fn wants_rebuild(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "weighted-round-robin"
    }
}
