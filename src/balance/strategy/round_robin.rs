use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::{Candidates, RequestKey, Strategy};

/// Rotates over the available endpoints in order, ignoring weights. O(1) per pick, one
/// relaxed atomic increment.
///
/// For nginx's weighted round robin use [`WeightedRoundRobin`](super::WeightedRoundRobin).
///
/// ```
/// use tower_lb::balance::strategy::{list_of, RoundRobin, Strategy};
///
/// let rr = RoundRobin::new();
/// let c = list_of(&[1, 1, 1]);
/// let picks: Vec<_> = (0..6).map(|_| rr.pick(&c.view(), None).unwrap()).collect();
/// assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
/// ```
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// Starts at the first endpoint.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for RoundRobin {
    #[inline]
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&RequestKey>) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        let i = self.next.fetch_add(1, Relaxed);
        // 32-bit division is several times cheaper than 64-bit on common x86 cores.
        Some(match u32::try_from(n) {
            Ok(n32) => (i as u32 % n32) as usize,
            Err(_) => i % n,
        })
    }

    fn wants_rebuild(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "round-robin"
    }
}
