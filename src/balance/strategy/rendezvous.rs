use std::fmt;

use super::{Candidates, RequestKey, RoundRobin, Strategy};
use crate::backend::mix64;

/// Rendezvous hashing, also called highest random weight (Thaler and Ravishankar, 1996),
/// weighted as in Schindelhauer and Schomaker's logarithmic method.
///
/// Every available endpoint scores `−wᵢ ÷ ln(h(key, idᵢ))` with `h` uniform in `(0, 1)`;
/// the highest score wins (with equal weights, simply the highest `h`). Each endpoint
/// wins a share of keys equal to its weight share; removing an endpoint moves only its own
/// keys, each to its second-highest scorer, and adding one takes about 1/N of the keys
/// from the others, with no table at all.
///
/// Since only available endpoints score, an unavailable endpoint's keys go to their
/// next-highest scorer, the same one every time. Requests without a key use the fallback
/// strategy, [`RoundRobin`] by default.
///
/// Cost: O(n) per pick (one hash, and a logarithm when weights differ, per endpoint): the
/// right choice for tens or hundreds of endpoints; prefer [`Maglev`](super::Maglev) or
/// [`RingHash`](super::RingHash) for thousands.
///
/// ```
/// use tower_lb::balance::strategy::{list_of, Rendezvous, RequestKey, Strategy};
///
/// let hrw = Rendezvous::new();
/// let all = list_of(&[1, 3]);
/// let key = RequestKey::from_bytes(b"tenant-1");
/// let i = hrw.pick(&all.view(), Some(&key)).unwrap();
/// assert_eq!(hrw.pick(&all.view(), Some(&key)), Some(i));
/// ```
pub struct Rendezvous<F = RoundRobin> {
    fallback: F,
}

impl Rendezvous {
    /// Round robin for requests without a key.
    pub fn new() -> Self {
        Self {
            fallback: RoundRobin::new(),
        }
    }
}

impl Default for Rendezvous {
    fn default() -> Self {
        Self::new()
    }
}

impl<F> Rendezvous<F> {
    /// Uses `fallback` for requests without a key.
    pub fn fallback<G: Strategy>(self, fallback: G) -> Rendezvous<G> {
        Rendezvous { fallback }
    }
}

impl<F> fmt::Debug for Rendezvous<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendezvous").finish_non_exhaustive()
    }
}

/// The key's uniform 64-bit draw for one endpoint.
#[inline]
fn draw(key: u64, id: u64) -> u64 {
    mix64(key ^ mix64(id ^ 0x9e37_79b9_7f4a_7c15))
}

impl<F: Strategy> Strategy for Rendezvous<F> {
    fn pick(&self, candidates: &Candidates<'_>, key: Option<&RequestKey>) -> Option<usize> {
        let Some(key) = key else {
            return self.fallback.pick(candidates, None);
        };
        let k = key.hash();
        if candidates.uniform() {
            // Ties (equal draws) go to the lower id, so the order of candidates is moot.
            return (0..candidates.len()).max_by_key(|&i| {
                let id = candidates[i].id();
                (draw(k, id), std::cmp::Reverse(id))
            });
        }
        let mut best = None;
        let mut best_cost = f64::INFINITY;
        let mut best_id = u64::MAX;
        for (i, c) in candidates.iter().enumerate() {
            // u in (0, 1): 53 random bits, shifted off zero by half a step.
            let u = ((draw(k, c.id()) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            // Highest −w ÷ ln u is lowest −ln u ÷ w.
            let cost = -u.ln() / f64::from(c.weight().max(1));
            if cost < best_cost || (cost == best_cost && c.id() < best_id) {
                best = Some(i);
                best_cost = cost;
                best_id = c.id();
            }
        }
        best
    }

    fn rebuild(&self, all: &Candidates<'_>) {
        self.fallback.rebuild(all);
    }

    fn wants_rebuild(&self) -> bool {
        self.fallback.wants_rebuild()
    }

    fn name(&self) -> &'static str {
        "rendezvous"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::strategy::hash_tests::check_fall_through;

    #[test]
    fn unavailable_endpoint_falls_through_to_one_fallback() {
        check_fall_through(&Rendezvous::new(), 8);
    }
}
