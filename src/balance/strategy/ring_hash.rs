use std::{fmt, sync::Arc};

use arc_swap::ArcSwap;

use super::{
    hashing::{fingerprint, last_resort, sorted_members},
    Candidates, RequestKey, RoundRobin, Strategy,
};
use crate::{backend::mix64, error::ConfigError};

/// Points per weight unit, as nginx's `hash … consistent` and libketama use.
pub(super) const DEFAULT_POINTS: u32 = 160;

/// Consistent hashing on a ketama-style ring (nginx `hash $key consistent`).
///
/// Every endpoint owns `160 × weight` points on a 64-bit ring (the count per weight unit
/// is set with [`points_per_weight`](Self::points_per_weight)); a key goes to the owner of
/// the first point at or after its hash. Adding or removing one of N endpoints moves only
/// the keys on its arcs, about 1/N of them, and nothing else.
///
/// When the owner is not available (ejected, draining, at its cap, already tried by this
/// request), the walk goes on clockwise to the next *distinct* endpoint that is, so a key
/// keeps going to the same fallback while its endpoint is away, and comes back after.
/// Requests without a key use the fallback strategy, [`RoundRobin`] by default
/// ([`fallback`](Self::fallback)).
///
/// The ring is built over every endpoint (backups included) in
/// [`rebuild`](Strategy::rebuild), off the request path, and read lock-free. A pick is a
/// bucket lookup plus a short binary search: O(1) expected, about 8.5 bytes of table per
/// point.
///
/// ```
/// use tower_lb::balance::strategy::{list_of, RequestKey, RingHash, Strategy};
///
/// let ring = RingHash::new();
/// let all = list_of(&[1, 1, 2]);
/// ring.rebuild(&all.view());
///
/// let key = RequestKey::from_bytes(b"user-42");
/// let first = ring.pick(&all.view(), Some(&key)).unwrap();
/// assert_eq!(ring.pick(&all.view(), Some(&key)), Some(first)); // same key, same endpoint
/// ```
pub struct RingHash<F = RoundRobin> {
    points: u32,
    ring: ArcSwap<Ring>,
    fallback: F,
}

impl RingHash {
    /// A ring with 160 points per weight unit, round robin for requests without a key.
    pub fn new() -> Self {
        Self {
            points: DEFAULT_POINTS,
            ring: ArcSwap::from_pointee(Ring::default()),
            fallback: RoundRobin::new(),
        }
    }
}

impl Default for RingHash {
    fn default() -> Self {
        Self::new()
    }
}

impl<F> RingHash<F> {
    /// Sets the points per weight unit (default 160). More points spread keys more evenly
    /// and cost more memory; fails on zero.
    ///
    /// ```
    /// use tower_lb::balance::strategy::RingHash;
    ///
    /// let ring = RingHash::new().points_per_weight(40).unwrap();
    /// assert!(RingHash::new().points_per_weight(0).is_err());
    /// # let _ = ring;
    /// ```
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
    pub fn fallback<G: Strategy>(self, fallback: G) -> RingHash<G> {
        RingHash {
            points: self.points,
            ring: self.ring,
            fallback,
        }
    }
}

impl<F> fmt::Debug for RingHash<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self.ring.load();
        f.debug_struct("RingHash")
            .field("points_per_weight", &self.points)
            .field("endpoints", &ring.ids.len())
            .field("points", &ring.points.len())
            .finish_non_exhaustive()
    }
}

impl<F: Strategy> Strategy for RingHash<F> {
    #[inline]
    fn pick(&self, candidates: &Candidates<'_>, key: Option<&RequestKey>) -> Option<usize> {
        let Some(key) = key else {
            return self.fallback.pick(candidates, None);
        };
        if candidates.is_empty() {
            return None;
        }
        let ring = self.ring.load();
        Some(
            ring.walk(key.hash(), |id| candidates.position(id))
                .unwrap_or_else(|| last_resort(candidates, key)),
        )
    }

    fn rebuild(&self, all: &Candidates<'_>) {
        Ring::refresh(&self.ring, all, self.points);
        self.fallback.rebuild(all);
    }

    fn name(&self) -> &'static str {
        "ring-hash"
    }
}

// === impl Ring ===

/// A sorted ring of points with a bucket index over the top bits of the hash, so a lookup
/// is one index read and a binary search over a few neighbouring points.
///
/// Each point is one `u64`: its position in the high bits and its owner (an index into
/// `ids`) in the low `owner_bits`, so a lookup touches one array, and sorting the packed
/// values sorts by position.
#[derive(Default)]
pub(super) struct Ring {
    points: Vec<u64>,
    /// Endpoint ids.
    pub(super) ids: Vec<u64>,
    owner_mask: u64,
    /// `index[b]` is the first point whose top bits are `>= b`; one extra entry at the end.
    index: Vec<u32>,
    shift: u32,
    pub(super) fingerprint: u64,
}

/// The position of an endpoint's `i`-th point: two rounds of splitmix64, so points of
/// different endpoints do not correlate.
#[inline]
fn point(id: u64, i: u64) -> u64 {
    mix64(id ^ mix64(i.wrapping_add(0x243f_6a88_85a3_08d3)))
}

impl Ring {
    /// Rebuilds the ring in `cell` for the endpoints in `all`, unless the (id, weight) set
    /// and the points per weight are those it was built for. Shared by [`RingHash`] and
    /// [`BoundedLoad`](super::BoundedLoad), which walks the same ring.
    pub(super) fn refresh(cell: &ArcSwap<Self>, all: &Candidates<'_>, per_weight: u32) {
        let members = sorted_members(all);
        let print = fingerprint(&members) ^ u64::from(per_weight);
        if cell.load().fingerprint != print || members.is_empty() {
            cell.store(Arc::new(Self::build(&members, per_weight, print)));
        }
    }

    pub(super) fn build(members: &[(u64, u32)], per_weight: u32, fingerprint: u64) -> Self {
        let total: usize = members
            .iter()
            .map(|&(_, w)| w as usize * per_weight as usize)
            .sum();
        let owner_bits = (members.len().max(2).next_power_of_two().trailing_zeros()).max(1);
        let owner_mask = (1u64 << owner_bits) - 1;
        let mut points: Vec<u64> = Vec::with_capacity(total);
        for (j, &(id, w)) in members.iter().enumerate() {
            for i in 0..u64::from(w) * u64::from(per_weight) {
                points.push((point(id, i) & !owner_mask) | j as u64);
            }
        }
        // Members are sorted by id, so equal positions order by id: the ring does not
        // depend on the order endpoints arrived in.
        points.sort_unstable();
        // About four points per bucket: the index stays a quarter of the ring's size.
        let bits = ((total / 4).max(2).next_power_of_two().trailing_zeros()).clamp(1, 22);
        let buckets = 1usize << bits;
        let shift = 64 - bits;
        let mut index = Vec::with_capacity(buckets + 1);
        let mut p = 0usize;
        for b in 0..buckets as u64 {
            while p < points.len() && (points[p] >> shift) < b {
                p += 1;
            }
            index.push(p as u32);
        }
        index.push(points.len() as u32);
        Self {
            points,
            ids: members.iter().map(|m| m.0).collect(),
            owner_mask,
            index,
            shift,
            fingerprint,
        }
    }

    /// The first point at or after `hash`, wrapping around.
    #[inline]
    fn first_point(&self, hash: u64) -> usize {
        let b = (hash >> self.shift) as usize;
        let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
        let h = hash & !self.owner_mask;
        let i = lo + self.points[lo..hi].partition_point(|&p| p < h);
        if i == self.points.len() {
            0
        } else {
            i
        }
    }

    /// Walks clockwise from `hash` and returns the first `accept`ed endpoint, testing each
    /// distinct owner in ring order; `None` after a full turn or on an empty ring.
    #[inline]
    pub(super) fn walk(
        &self,
        hash: u64,
        mut accept: impl FnMut(u64) -> Option<usize>,
    ) -> Option<usize> {
        let n = self.points.len();
        if n == 0 {
            return None;
        }
        let mut i = self.first_point(hash);
        let mut last = u64::MAX;
        for _ in 0..n {
            let owner = self.points[i] & self.owner_mask;
            if owner != last {
                if let Some(pos) = accept(self.ids[owner as usize]) {
                    return Some(pos);
                }
                last = owner;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::strategy::{
        hash_tests::check_fall_through, list_of, Candidate, CandidateList,
    };

    #[test]
    fn same_key_same_endpoint_and_no_key_rotates() {
        let ring = RingHash::new();
        let all = list_of(&[1, 1, 1]);
        ring.rebuild(&all.view());
        let key = RequestKey::from_bytes(b"k");
        let first = ring.pick(&all.view(), Some(&key)).unwrap();
        for _ in 0..100 {
            assert_eq!(ring.pick(&all.view(), Some(&key)), Some(first));
        }
        let rr: Vec<_> = (0..3)
            .map(|_| ring.pick(&all.view(), None).unwrap())
            .collect();
        assert_eq!(rr, [0, 1, 2]);
    }

    #[test]
    fn ring_does_not_depend_on_insertion_order() {
        let a = list_of(&[1, 2, 3, 1]);
        let mut rev: Vec<Candidate> = a.view().to_vec();
        rev.reverse();
        let b = CandidateList::new(rev);
        let (ra, rb) = (RingHash::new(), RingHash::new());
        ra.rebuild(&a.view());
        rb.rebuild(&b.view());
        for k in 0..1000u64 {
            let key = RequestKey::from_hash(mix64(k));
            let ia = ra.pick(&a.view(), Some(&key)).unwrap();
            let ib = rb.pick(&b.view(), Some(&key)).unwrap();
            assert_eq!(a.view()[ia].id(), b.view()[ib].id());
        }
    }

    #[test]
    fn unavailable_endpoint_falls_through_to_one_fallback() {
        let ring = RingHash::new();
        check_fall_through(&ring, 8);
    }

    #[test]
    fn empty_ring_uses_last_resort() {
        let ring = RingHash::new();
        let c = list_of(&[1, 1]);
        let key = RequestKey::from_bytes(b"x");
        let i = ring.pick(&c.view(), Some(&key)).unwrap();
        assert_eq!(ring.pick(&c.view(), Some(&key)), Some(i));
    }

    #[test]
    fn unchanged_set_keeps_the_table() {
        let ring = RingHash::new();
        let all = list_of(&[1, 1]);
        ring.rebuild(&all.view());
        let before = Arc::as_ptr(&ring.ring.load_full());
        ring.rebuild(&all.view());
        assert_eq!(before, Arc::as_ptr(&ring.ring.load_full()));
    }
}
