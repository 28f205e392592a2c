use std::sync::{atomic::Ordering::Relaxed, Mutex};

use super::{Candidates, RequestKey, Strategy};

/// Up to this many candidates, [`WeightedRoundRobin`] runs nginx's exact smooth weighted
/// round robin (O(n) per pick); above it, an earliest-deadline-first scheduler (O(log n)).
pub const EXACT_UP_TO: usize = 32;

/// Weighted round robin: nginx's smooth order for small sets, an earliest-deadline-first
/// scheduler (Envoy) for large ones.
///
/// **Up to [`EXACT_UP_TO`] candidates** (32; change it with
/// [`exact_up_to`](Self::exact_up_to)) it is nginx's smooth weighted round robin: each pick
/// adds every available endpoint's weight to its current value, picks the largest (the
/// first on ties), and subtracts the total weight from the winner. Weights 5, 1, 1 give
/// `a a b a c a a`: exact proportions in every cycle of `Σ weights` picks, and no endpoint
/// gets long bursts. The current values live in each endpoint's state, as nginx keeps them
/// per peer, so they survive changes to the set. This costs O(n) per pick, like nginx.
///
/// **Above it**, picks come from a binary heap of deadlines, as Envoy's EDF scheduler
/// does: endpoint *i* with weight *wᵢ* is due at virtual times (k + ½) / wᵢ, the earliest
/// due endpoint is picked and its next deadline is one step of 1 / wᵢ later. That is
/// O(log n) per pick and gives the same guarantees on a steady set: every cycle of `Σ
/// weights` picks gives each endpoint exactly its weight, spread through the cycle (the
/// order differs from nginx's, not the proportions). Deadlines are kept by endpoint id
/// when the set changes: an endpoint that stays keeps its place in the schedule (its
/// remaining wait rescaled if its weight changed, as slow start does), one that joins is
/// due half a step after the current virtual time. A new candidate list costs one O(n)
/// rebuild, on the first pick that sees it.
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
///
/// // The scheduler for any size: the same proportions in every cycle.
/// let edf = WeightedRoundRobin::new().exact_up_to(0);
/// let mut counts = [0; 3];
/// for _ in 0..7 * 100 {
///     counts[edf.pick(&c.view(), None).unwrap()] += 1;
/// }
/// assert_eq!(counts, [500, 100, 100]);
/// ```
#[derive(Debug)]
pub struct WeightedRoundRobin {
    exact_up_to: usize,
    edf: Mutex<Edf>,
}

impl Default for WeightedRoundRobin {
    fn default() -> Self {
        Self {
            exact_up_to: EXACT_UP_TO,
            edf: Mutex::new(Edf::default()),
        }
    }
}

impl WeightedRoundRobin {
    /// A new weighted round robin: nginx's order up to [`EXACT_UP_TO`] candidates, the
    /// deadline scheduler above.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs nginx's exact smooth order up to `n` candidates and the O(log n) deadline
    /// scheduler above: `0` always schedules by deadline, `usize::MAX` is always nginx
    /// (O(n) per pick at any size).
    #[must_use]
    pub fn exact_up_to(mut self, n: usize) -> Self {
        self.exact_up_to = n;
        self
    }

    /// nginx's smooth weighted round robin over every candidate.
    fn smooth(candidates: &Candidates<'_>) -> usize {
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
        best
    }
}

impl Strategy for WeightedRoundRobin {
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&RequestKey>) -> Option<usize> {
        let n = candidates.len();
        if n <= 1 {
            return if n == 1 { Some(0) } else { None };
        }
        // The lock makes each pick one step over the shared values (the current weights,
        // or the heap); a poisoned lock only means another pick panicked, and both keep
        // their invariants between steps.
        let mut edf = self.edf.lock().unwrap_or_else(|e| e.into_inner());
        if n <= self.exact_up_to {
            return Some(Self::smooth(candidates));
        }
        Some(edf.pick_by(candidates, 0, |i| candidates[i].weight))
    }

    fn wants_rebuild(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "weighted-round-robin"
    }
}

/// One unit of virtual time: a weight-1 endpoint's step.
const UNIT: u128 = 1 << 64;

/// The earliest-deadline-first schedule over one candidate list, shared by
/// [`WeightedRoundRobin`] (the candidates' weights) and
/// [`LoadReport`](super::LoadReport) (weights from load reports).
#[derive(Debug, Default)]
pub(super) struct Edf {
    /// Which list and weights the heap describes: the list's generation, address and
    /// length (lists made by hand all have generation 0), and the caller's weight epoch.
    list: (u64, usize, usize, u64),
    /// A binary min-heap by (deadline, position).
    heap: Vec<Due>,
    /// The deadline of the last pick.
    now: u128,
}

#[derive(Debug, Clone, Copy)]
struct Due {
    deadline: u128,
    pos: u32,
    weight: u32,
    id: u64,
}

impl Due {
    #[inline]
    fn before(&self, other: &Self) -> bool {
        (self.deadline, self.pos) < (other.deadline, other.pos)
    }
}

#[inline]
fn step(weight: u32) -> u128 {
    UNIT / u128::from(weight.max(1))
}

impl Edf {
    /// The next pick, with candidate `i` weighing `weight(i)`. `epoch` names the weights:
    /// the schedule is rebuilt (keeping each endpoint's place) when it or the list
    /// changes.
    pub(super) fn pick_by(
        &mut self,
        candidates: &Candidates<'_>,
        epoch: u64,
        weight: impl Fn(usize) -> u32,
    ) -> usize {
        let list = (
            candidates.generation(),
            candidates.as_ptr() as usize,
            candidates.len(),
            epoch,
        );
        if list != self.list {
            self.rebuild(candidates, &weight);
            self.list = list;
        }
        let top = &mut self.heap[0];
        let pos = top.pos as usize;
        debug_assert_eq!(candidates[pos].id, top.id);
        self.now = top.deadline;
        top.deadline += step(top.weight);
        self.sift_down(0);
        pos
    }

    /// The heap for a new list, keeping each staying endpoint's deadline.
    fn rebuild(&mut self, candidates: &Candidates<'_>, weight_of: &impl Fn(usize) -> u32) {
        let n = candidates.len();
        let now = self.now;
        let mut seen = vec![false; n];
        let mut heap = Vec::with_capacity(n);
        for old in self.heap.drain(..) {
            let Some(pos) = candidates.position(old.id) else {
                continue;
            };
            if std::mem::replace(&mut seen[pos], true) {
                continue;
            }
            let weight = weight_of(pos).max(1);
            let mut deadline = old.deadline.max(now);
            if weight != old.weight {
                // The remaining wait, in the new weight's steps.
                let left = (deadline - now) * u128::from(old.weight) / u128::from(weight);
                deadline = now + left.min(step(weight));
            }
            heap.push(Due {
                deadline,
                pos: pos as u32,
                weight,
                id: old.id,
            });
        }
        for (pos, c) in candidates.iter().enumerate() {
            if !seen[pos] {
                let weight = weight_of(pos).max(1);
                heap.push(Due {
                    deadline: now + step(weight) / 2,
                    pos: pos as u32,
                    weight,
                    id: c.id,
                });
            }
        }
        self.heap = heap;
        for i in (0..n / 2).rev() {
            self.sift_down(i);
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let heap = &mut self.heap;
        let n = heap.len();
        let item = heap[i];
        loop {
            let left = 2 * i + 1;
            if left >= n {
                break;
            }
            let right = left + 1;
            let child = if right < n && heap[right].before(&heap[left]) {
                right
            } else {
                left
            };
            if !heap[child].before(&item) {
                break;
            }
            heap[i] = heap[child];
            i = child;
        }
        heap[i] = item;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::strategy::{list_of, Candidate, CandidateList};

    fn counts(wrr: &WeightedRoundRobin, list: &CandidateList, picks: usize) -> Vec<u64> {
        let mut counts = vec![0u64; list.view().len()];
        for _ in 0..picks {
            counts[wrr.pick(&list.view(), None).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn edf_is_exact_per_cycle_on_large_sets() {
        let weights: Vec<u32> = (0..1_000).map(|i| 1 + i % 7).collect();
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let list = list_of(&weights);
        let wrr = WeightedRoundRobin::new();
        for _cycle in 0..3 {
            let got = counts(&wrr, &list, total as usize);
            let want: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn edf_keeps_deadlines_across_list_changes() {
        // 40 endpoints of weight 1; after each pick the list is rebuilt with the same
        // endpoints (a new generation): the schedule goes on instead of restarting, so
        // every endpoint is still picked once per 40 picks.
        let items: Vec<Candidate> = (0..40).map(|i| Candidate::detached(i, 1)).collect();
        let wrr = WeightedRoundRobin::new();
        let mut seen = [0u32; 40];
        for g in 1..=80u64 {
            let list = CandidateList::with_generation(items.clone(), g);
            seen[wrr.pick(&list.view(), None).unwrap()] += 1;
        }
        assert_eq!(seen, [2; 40]);
    }

    #[test]
    fn edf_newcomer_and_leaver() {
        let items: Vec<Candidate> = (0..40).map(|i| Candidate::detached(i, 1)).collect();
        let wrr = WeightedRoundRobin::new();
        let first = CandidateList::with_generation(items.clone(), 1);
        let _ = counts(&wrr, &first, 10);
        // Endpoint 0 leaves, endpoint 99 (weight 2) joins at the end.
        let mut next: Vec<Candidate> = items[1..].to_vec();
        next.push(Candidate::detached(99, 2));
        let second = CandidateList::with_generation(next, 2);
        let got = counts(&wrr, &second, 41 * 4);
        // 39 of weight 1 and one of weight 2 over four cycles of 41 picks.
        assert!(got[..39].iter().all(|&c| c == 4), "{got:?}");
        assert_eq!(got[39], 8);
    }

    #[test]
    fn edf_weight_change_rescales_the_wait() {
        // A slow-start newcomer joins at weight 1 beside 39 endpoints of weight 100, then
        // ramps to 100: once at full weight it gets its share at once, not after the long
        // wait its first weight set.
        let mut items: Vec<Candidate> = (0..39).map(|i| Candidate::detached(i, 100)).collect();
        items.push(Candidate::detached(99, 1));
        let wrr = WeightedRoundRobin::new();
        let _ = counts(&wrr, &CandidateList::with_generation(items.clone(), 1), 5);
        items[39] = Candidate::detached(99, 100);
        let full = CandidateList::with_generation(items, 2);
        let got = counts(&wrr, &full, 40 * 2);
        assert!(got[39] >= 1, "{got:?}");
    }

    #[test]
    fn exact_up_to_switches_to_the_schedule() {
        let list = list_of(&[5, 1, 1]);
        let edf = WeightedRoundRobin::new().exact_up_to(0);
        let order: String = (0..14)
            .map(|_| (b'a' + edf.pick(&list.view(), None).unwrap() as u8) as char)
            .collect();
        // Deadlines 0.1 0.3 0.5 0.7 0.9 for a, 0.5 for b and c: a a (a b c by position at
        // 0.5) a a; proportions exact per cycle.
        assert_eq!(order, "aaabcaaaaabcaa");
    }
}
