use super::{Candidates, RequestKey, Rng, Strategy};

/// Picks uniformly at random, or in proportion to weight with [`Random::weighted`].
///
/// ```
/// use tower_lb::balance::strategy::{list_of, Random, Strategy};
///
/// let r = Random::with_seed(7).weighted();
/// let c = list_of(&[9, 1]);
/// let heavy = (0..1000).filter(|_| r.pick(&c.view(), None) == Some(0)).count();
/// assert!(heavy > 850);
/// ```
#[derive(Debug, Default)]
pub struct Random {
    rng: Rng,
    weighted: bool,
}

impl Random {
    /// Uniform, seeded from the clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uniform, with a fixed seed (repeatable).
    pub fn with_seed(seed: u64) -> Self {
        Self {
            rng: Rng::with_seed(seed),
            weighted: false,
        }
    }

    /// Draws in proportion to weight instead of uniformly.
    #[must_use]
    pub fn weighted(mut self) -> Self {
        self.weighted = true;
        self
    }
}

impl Strategy for Random {
    #[inline]
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&RequestKey>) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        if self.weighted && !candidates.uniform() {
            Some(candidates.by_weight_point(self.rng.below(candidates.total_weight())))
        } else {
            Some(self.rng.below(n as u64) as usize)
        }
    }

    fn wants_rebuild(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        if self.weighted {
            "weighted-random"
        } else {
            "random"
        }
    }
}
