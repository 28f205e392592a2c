use std::fmt;

use arc_swap::ArcSwap;

use super::{
    ring_hash::{Ring, DEFAULT_POINTS},
    Candidates, RequestKey, RoundRobin, Strategy,
};
use crate::error::ConfigError;

/// Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2016; HAProxy
/// `hash-balance-factor`, Vimeo).
///
/// Keys sit on the same ketama-style ring as [`RingHash`](super::RingHash) (160 points
/// per weight unit), but an endpoint takes a request only while it stays within its
/// bound: with `L` requests in flight over the available endpoints (this one included),
/// total weight `W` and balance factor `c` (default 1.25), endpoint `i` may hold at most
/// `⌈c × L × wᵢ ÷ W⌉` requests, `⌈c × mean in-flight⌉` with equal weights. A key whose
/// endpoint is full walks on clockwise to the next distinct endpoint with room, so it
/// stays as close to its home as load allows, and the same key under the same load always
/// lands on the same endpoint. Since the bounds add up to at least `L`, some endpoint
/// always has room.
///
/// Unavailable endpoints are skipped the same way. Requests without a key use the
/// fallback strategy, [`RoundRobin`] by default.
///
/// Cost: O(n) per pick to sum the in-flight counts, plus the walk. The ring is built in
/// [`rebuild`](Strategy::rebuild), off the request path.
///
/// ```
/// use tower_lb::balance::strategy::{list_of, BoundedLoad, RequestKey, Strategy};
///
/// let hash = BoundedLoad::new().balance_factor(1.5).unwrap();
/// let all = list_of(&[1, 1, 1]);
/// hash.rebuild(&all.view());
/// let key = RequestKey::from_bytes(b"cart-9");
/// assert!(hash.pick(&all.view(), Some(&key)).is_some());
/// assert!(BoundedLoad::new().balance_factor(0.9).is_err());
/// ```
pub struct BoundedLoad<F = RoundRobin> {
    factor: f64,
    points: u32,
    ring: ArcSwap<Ring>,
    fallback: F,
}

impl BoundedLoad {
    /// Balance factor 1.25, 160 points per weight unit, round robin without a key.
    pub fn new() -> Self {
        Self {
            factor: 1.25,
            points: DEFAULT_POINTS,
            ring: ArcSwap::from_pointee(Ring::default()),
            fallback: RoundRobin::new(),
        }
    }
}

impl Default for BoundedLoad {
    fn default() -> Self {
        Self::new()
    }
}

impl<F> BoundedLoad<F> {
    /// Sets the balance factor `c` (default 1.25): how far above the mean an endpoint may
    /// go. Must be finite and at least 1; 1 gives the most even load and the most key
    /// movement.
    pub fn balance_factor(mut self, c: f64) -> Result<Self, ConfigError> {
        if !c.is_finite() || c < 1.0 {
            return Err(ConfigError::Invalid {
                setting: "balance_factor",
                reason: format!("{c} is not a finite number of at least 1"),
            });
        }
        self.factor = c;
        Ok(self)
    }

    /// Sets the ring points per weight unit (default 160); fails on zero.
    pub fn points_per_weight(mut self, points: u32) -> Result<Self, ConfigError> {
        if points == 0 {
            return Err(ConfigError::Invalid {
                setting: "points_per_weight",
                reason: "must be at least 1".into(),
            });
        }
        self.points = points;
        Ok(self)
    }

    /// Uses `fallback` for requests without a key.
    pub fn fallback<G: Strategy>(self, fallback: G) -> BoundedLoad<G> {
        BoundedLoad {
            factor: self.factor,
            points: self.points,
            ring: self.ring,
            fallback,
        }
    }

    /// The bound for an endpoint of weight `weight` when `load` requests (the new one
    /// included) are in flight over candidates of total weight `total_weight`:
    /// `⌈c × load × weight ÷ total_weight⌉`.
    ///
    /// ```
    /// use tower_lb::balance::strategy::BoundedLoad;
    ///
    /// // 4 endpoints, 8 in flight: the mean is 2, the bound ⌈1.25 × 2⌉ = 3.
    /// assert_eq!(BoundedLoad::new().bound(8, 1, 4), 3);
    /// ```
    pub fn bound(&self, load: usize, weight: u32, total_weight: u64) -> usize {
        let share = f64::from(weight.max(1)) / total_weight.max(1) as f64;
        // A tiny slack absorbs float error, so exact products do not round up.
        (self.factor * load as f64 * share - 1e-9).ceil().max(1.0) as usize
    }
}

impl<F> fmt::Debug for BoundedLoad<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedLoad")
            .field("balance_factor", &self.factor)
            .field("points_per_weight", &self.points)
            .field("endpoints", &self.ring.load().ids.len())
            .finish_non_exhaustive()
    }
}

impl<F: Strategy> Strategy for BoundedLoad<F> {
    fn pick(&self, candidates: &Candidates<'_>, key: Option<&RequestKey>) -> Option<usize> {
        let Some(key) = key else {
            return self.fallback.pick(candidates, None);
        };
        if candidates.is_empty() {
            return None;
        }
        let load = candidates.iter().map(|c| c.in_flight()).sum::<usize>() + 1;
        let total = candidates.total_weight();
        let has_room = |i: usize| {
            let c = &candidates[i];
            c.in_flight() < self.bound(load, c.weight(), total)
        };
        let ring = self.ring.load();
        let found = ring.walk(key.hash(), |id| {
            candidates.position(id).filter(|&i| has_room(i))
        });
        // Nothing on the ring had room: counts moved under us, or the ring is stale or
        // not built yet. The least loaded per weight (first on ties) keeps the bound best.
        Some(found.unwrap_or_else(|| {
            (0..candidates.len())
                .min_by(|&a, &b| {
                    let (ca, cb) = (&candidates[a], &candidates[b]);
                    (ca.in_flight() as u128 * u128::from(cb.weight()))
                        .cmp(&(cb.in_flight() as u128 * u128::from(ca.weight())))
                })
                .unwrap_or(0)
        }))
    }

    fn rebuild(&self, all: &Candidates<'_>) {
        Ring::refresh(&self.ring, all, self.points);
        self.fallback.rebuild(all);
    }

    fn name(&self) -> &'static str {
        "bounded-load"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::strategy::{hash_tests::check_fall_through, list_of};

    #[test]
    fn bound_matches_the_formula() {
        let b = BoundedLoad::new();
        assert_eq!(b.bound(1, 1, 10), 1);
        assert_eq!(b.bound(10, 1, 10), 2); // ⌈1.25⌉
        assert_eq!(b.bound(40, 1, 10), 5); // exactly 5
        assert_eq!(b.bound(40, 2, 10), 10);
    }

    #[test]
    fn idle_endpoints_behave_like_the_ring() {
        check_fall_through(&BoundedLoad::new(), 8);
    }

    #[test]
    fn a_full_endpoint_sends_its_key_elsewhere() {
        let b = BoundedLoad::new();
        let all = list_of(&[1, 1, 1, 1]);
        b.rebuild(&all.view());
        let key = RequestKey::from_bytes(b"hot");
        let home = b.pick(&all.view(), Some(&key)).unwrap();
        // Load the home endpoint: 3 in flight, 3 in total; bound ⌈1.25 × 4 ÷ 4⌉ = 2.
        for _ in 0..3 {
            all.view()[home].state.start_request();
        }
        let other = b.pick(&all.view(), Some(&key)).unwrap();
        assert_ne!(other, home);
        assert_eq!(b.pick(&all.view(), Some(&key)), Some(other));
    }
}
