use std::sync::{
    atomic::{AtomicUsize, Ordering::*},
    Arc,
};

use super::{Candidates, RequestKey, Strategy};
use crate::balance::endpoint::{LoadQueue, NOT_INDEXED};

/// Up to this many candidates [`LeastConn`] scans them all (O(n)); above it, it keeps an
/// index of their loads (O(log n)).
pub const SCAN_UP_TO: usize = 32;

/// Least connections, weighted (nginx `least_conn`): the endpoint with the fewest
/// in-flight requests per unit of weight. Ties rotate, so idle endpoints share the
/// traffic evenly.
///
/// **Up to [`SCAN_UP_TO`] candidates** (32; change it with [`scan_up_to`](Self::scan_up_to))
/// each pick scans them, as nginx does, starting one further each time so ties rotate.
///
/// **Above it**, on the candidate lists a balancer publishes, picks come from a
/// tournament tree keyed by in-flight ÷ weight, as HAProxy's `leastconn` keeps its servers
/// in a tree: an endpoint whose load changes queues itself (once until the next pick looks)
/// and the next pick re-reads it and updates its path, so a pick costs O(log n) per load
/// change since the last one, and the choice is the same exact minimum the scan finds.
/// Among equal loads the endpoint whose load changed longest ago wins, so ties rotate
/// first-in first-out, as in HAProxy's tree. A new candidate list costs one O(n) rebuild
/// on the first pick that sees it. Lists made by hand ([`CandidateList::new`], and the
/// balancer's retry lists) are always scanned.
///
/// [`CandidateList::new`]: super::CandidateList::new
///
/// ```
/// use tower_lb::balance::strategy::{list_of, LeastConn, Strategy};
///
/// let c = list_of(&[1, 1]);
/// let lc = LeastConn::new();
/// // Both idle: ties rotate.
/// assert_ne!(lc.pick(&c.view(), None), lc.pick(&c.view(), None));
/// ```
#[derive(Debug)]
pub struct LeastConn {
    offset: AtomicUsize,
    scan_up_to: usize,
    /// The index and the queue its endpoints report to.
    queue: Arc<LoadQueue>,
}

impl Default for LeastConn {
    fn default() -> Self {
        Self {
            offset: AtomicUsize::new(0),
            scan_up_to: SCAN_UP_TO,
            queue: Arc::new(LoadQueue::default()),
        }
    }
}

impl LeastConn {
    /// A new least-connections strategy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans up to `n` candidates and indexes larger lists: `0` indexes every list a
    /// balancer publishes, `usize::MAX` always scans (O(n) per pick at any size).
    #[must_use]
    pub fn scan_up_to(mut self, n: usize) -> Self {
        self.scan_up_to = n;
        self
    }

    fn scan(&self, candidates: &Candidates<'_>) -> usize {
        let n = candidates.len();
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
        best
    }
}

impl Strategy for LeastConn {
    fn pick(&self, candidates: &Candidates<'_>, _key: Option<&RequestKey>) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        if n <= self.scan_up_to || candidates.generation() == 0 || n >= NOT_INDEXED as usize {
            return Some(self.scan(candidates));
        }
        let mut index = self.queue.lock();
        match index.pick(candidates, &self.queue) {
            Some(i) => Some(i),
            None => {
                drop(index);
                Some(self.scan(candidates))
            }
        }
    }

    fn wants_rebuild(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "least-conn"
    }
}

/// One candidate's load as last read, and its position: the leaves of the tree, and each
/// inner node's copy of its subtree's best leaf (so a walk up compares neighbours in
/// memory, without looking leaves up). 16 bytes, four to a cache line: at 10,000
/// endpoints the tree's lower levels are what a pick waits on.
#[derive(Debug, Clone, Copy)]
struct Key {
    load: u32,
    weight: u32,
    /// When the load was last read: the older (lower) wins among equal loads. Numbered
    /// afresh, in the same order, before it could reach [`Key::EMPTY`]'s.
    seq: u32,
    pos: u32,
}

impl Key {
    /// An empty slot: worse than any endpoint (in-flight counts stay below 2²⁴).
    const EMPTY: Self = Self {
        load: u32::MAX,
        weight: 1,
        seq: u32::MAX,
        pos: NOT_INDEXED,
    };

    /// Lower load ÷ weight, then the older reading.
    #[inline]
    fn before(&self, other: &Self) -> bool {
        let lhs = u64::from(self.load) * u64::from(other.weight);
        let rhs = u64::from(other.load) * u64::from(self.weight);
        lhs < rhs || (lhs == rhs && self.seq < other.seq)
    }
}

/// The last reading number handed out before the leaves are numbered afresh (below
/// [`Key::EMPTY`]'s, so an empty slot never ties with a leaf).
const LAST_SEQ: u32 = u32::MAX - 1;

/// Children per node of the tree: half the levels of a binary tree, and the four
/// children's keys side by side in 64 bytes.
const FANOUT: usize = 4;

/// A tournament tree over one candidate list's loads.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Positions of endpoints whose load changed since the last pick.
    pub(crate) pending: Vec<u32>,
    /// Which list the tree describes: its generation, address and length.
    list: (u64, usize, usize),
    /// The list's endpoints could not all be indexed (another index holds their pool):
    /// it is scanned.
    unindexed: bool,
    /// `nodes[0]` is the root; `nodes[k]` holds the best key of its subtree, whose
    /// children are `nodes[4k + 1 ..= 4k + 4]`; the leaves sit at `leaves + i`.
    nodes: Vec<Key>,
    /// Where the leaves start: the number of inner nodes.
    leaves: usize,
    /// The last reading number handed out.
    seq: u32,
    /// The queue drained last, kept to reuse its allocation.
    spare: Vec<u32>,
}

impl Index {
    /// The pick over `candidates`, or `None` when the list can't be indexed.
    fn pick(&mut self, candidates: &Candidates<'_>, queue: &Arc<LoadQueue>) -> Option<usize> {
        let list = (
            candidates.generation(),
            candidates.as_ptr() as usize,
            candidates.len(),
        );
        if list != self.list {
            self.list = list;
            self.rebuild(candidates, queue);
        } else if !self.unindexed {
            self.drain(candidates);
        }
        if self.unindexed {
            return None;
        }
        Some(self.nodes[0].pos as usize)
    }

    fn rebuild(&mut self, candidates: &Candidates<'_>, queue: &Arc<LoadQueue>) {
        let n = candidates.len();
        self.unindexed = false;
        // Positions queued for an earlier list mean nothing now; every load is read anew.
        self.pending.clear();
        self.seq = 0;
        let mut width = 1;
        while width < n {
            width *= FANOUT;
        }
        self.leaves = (width - 1) / (FANOUT - 1);
        self.nodes.clear();
        self.nodes.resize(self.leaves + width, Key::EMPTY);
        for (pos, c) in candidates.iter().enumerate() {
            let state = &c.state;
            let ours = state.pool.loads.get_or_init(|| queue.clone());
            if !Arc::ptr_eq(ours, queue) {
                self.unindexed = true;
            }
            state.index_pos.store(pos as u32, Release);
            state.index_dirty.swap(false, AcqRel);
            let seq = self.next_seq();
            self.nodes[self.leaves + pos] = Key {
                load: state.in_flight() as u32,
                weight: c.weight.max(1),
                seq,
                pos: pos as u32,
            };
        }
        self.build_inner();
    }

    /// Sets every inner node from its children, the lowest first.
    fn build_inner(&mut self) {
        for k in (0..self.leaves).rev() {
            self.nodes[k] = self.best_child(k);
        }
    }

    /// Re-reads every endpoint that queued a load change and updates its path.
    fn drain(&mut self, candidates: &Candidates<'_>) {
        if self.pending.is_empty() {
            return;
        }
        let mut changed = std::mem::replace(&mut self.pending, std::mem::take(&mut self.spare));
        for &pos in &changed {
            let pos = pos as usize;
            let Some(c) = candidates.get(pos) else {
                continue;
            };
            // Clear the flag before reading, so a change after the read queues again.
            c.state.index_dirty.swap(false, AcqRel);
            let load = c.state.in_flight() as u32;
            let seq = self.next_seq();
            let leaf = &mut self.nodes[self.leaves + pos];
            leaf.load = load;
            leaf.seq = seq;
            self.update(pos);
        }
        changed.clear();
        self.spare = changed;
    }

    /// The next reading number. Before the numbers run out, the leaves are numbered
    /// 1, 2, 3… in the order they already have, and the inner nodes are built again: ties
    /// keep rotating in the same order (at a million load changes a second, once an hour).
    fn next_seq(&mut self) -> u32 {
        if self.seq >= LAST_SEQ {
            self.renumber();
        }
        self.seq += 1;
        self.seq
    }

    fn renumber(&mut self) {
        let leaves = &mut self.nodes[self.leaves..];
        let mut order: Vec<usize> = (0..leaves.len())
            .filter(|&i| leaves[i].pos != NOT_INDEXED)
            .collect();
        order.sort_unstable_by_key(|&i| leaves[i].seq);
        for (n, &i) in order.iter().enumerate() {
            leaves[i].seq = n as u32 + 1;
        }
        self.seq = order.len() as u32;
        self.build_inner();
    }

    fn update(&mut self, pos: usize) {
        let mut child = self.leaves + pos;
        while child > 0 {
            let k = (child - 1) / FANOUT;
            let best = self.best_child(k);
            // A subtree whose winner stayed the same, and is not the leaf whose key
            // moved, changes nothing above it.
            let node = &mut self.nodes[k];
            if node.pos == best.pos && best.pos as usize != pos {
                break;
            }
            *node = best;
            child = k;
        }
    }

    /// The best of inner node `k`'s four children: two pairs compared side by side, then
    /// their winners.
    #[inline]
    fn best_child(&self, k: usize) -> Key {
        let first = FANOUT * k + 1;
        let c = &self.nodes[first..first + FANOUT];
        let left = if c[1].before(&c[0]) { c[1] } else { c[0] };
        let right = if c[3].before(&c[2]) { c[3] } else { c[2] };
        if right.before(&left) {
            right
        } else {
            left
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{
        strategy::{Candidate, CandidateList},
        EndpointState,
    };

    fn states(n: usize) -> Vec<Arc<EndpointState>> {
        // One pool for all, as in a balancer.
        let first = Arc::new(EndpointState::detached());
        let pool = first.pool.clone();
        let mut v = vec![first];
        v.extend((1..n).map(|_| Arc::new(EndpointState::new(pool.clone(), 0, 0))));
        v
    }

    fn list(states: &[Arc<EndpointState>], weights: &[u32], generation: u64) -> CandidateList {
        CandidateList::with_generation(
            states
                .iter()
                .zip(weights)
                .enumerate()
                .map(|(i, (s, &w))| Candidate::with_state(s.clone(), i as u64, w))
                .collect(),
            generation,
        )
    }

    fn minimum(states: &[Arc<EndpointState>], weights: &[u32]) -> f64 {
        states
            .iter()
            .zip(weights)
            .map(|(s, &w)| s.in_flight() as f64 / f64::from(w))
            .fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn index_picks_the_exact_minimum_as_loads_change() {
        let n = 300;
        let st = states(n);
        let weights: Vec<u32> = (0..n as u32).map(|i| 1 + i % 5).collect();
        let l = list(&st, &weights, 7);
        let lc = LeastConn::new();
        let mut rng = 0x1234_5678_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..5_000 {
            let i = lc.pick(&l.view(), None).unwrap();
            let cost = st[i].in_flight() as f64 / f64::from(weights[i]);
            assert_eq!(cost, minimum(&st, &weights));
            st[i].start_request();
            // Some random endpoint finishes a request.
            let j = (next() % n as u64) as usize;
            if st[j].in_flight() > 0 {
                st[j].finish_request();
            }
        }
    }

    #[test]
    fn index_rotates_ties_first_in_first_out() {
        // Sizes that fill the tree's last level, and sizes that leave it part empty.
        for n in [1, 2, 3, 4, 5, 16, 17, 64, 65] {
            let st = states(n);
            let l = list(&st, &vec![1; n], 1);
            // Every set is indexed, the smallest too.
            let lc = LeastConn::new().scan_up_to(0);
            let mut seen = vec![0u32; n];
            for _ in 0..n * 3 {
                let i = lc.pick(&l.view(), None).unwrap();
                seen[i] += 1;
                // An answer at once, as from an in-memory service.
                st[i].start_request();
                st[i].finish_request();
            }
            assert_eq!(seen, vec![3; n], "{n} endpoints");
        }
    }

    #[test]
    fn numbering_the_readings_afresh_keeps_the_order_of_ties() {
        // Two indexes over the same loads; one runs out of reading numbers on the way.
        let (a, b) = (states(64), states(64));
        let weights: Vec<u32> = (0..64).map(|i| 1 + i % 3).collect();
        let (la, lb) = (list(&a, &weights, 1), list(&b, &weights, 1));
        let (lca, lcb) = (LeastConn::new(), LeastConn::new());
        let step = |k: usize| {
            let i = lca.pick(&la.view(), None).unwrap();
            assert_eq!(lcb.pick(&lb.view(), None), Some(i), "pick {k}");
            // One request in three stays in flight, so loads and weights both count.
            a[i].start_request();
            b[i].start_request();
            if !k.is_multiple_of(3) {
                a[i].finish_request();
                b[i].finish_request();
            }
        };
        for k in 0..100 {
            step(k);
        }
        lcb.queue.lock().seq = LAST_SEQ - 5;
        for k in 100..400 {
            step(k);
        }
        // The numbers ran out, and were handed out afresh from the set's size up.
        let seq = lcb.queue.lock().seq;
        assert!(seq < 64 + 300, "{seq}");
    }

    #[test]
    fn index_rebuilds_for_a_new_list() {
        let st = states(100);
        let lc = LeastConn::new();
        let first = list(&st[..50], &[1; 50], 1);
        for s in &st[..50] {
            s.start_request();
        }
        let i = lc.pick(&first.view(), None).unwrap();
        assert!(i < 50);
        // The new list adds 50 idle endpoints: one of them wins.
        let second = list(&st, &[1; 100], 2);
        let i = lc.pick(&second.view(), None).unwrap();
        assert!(i >= 50, "{i}");
    }

    #[test]
    fn endpoints_of_another_index_are_scanned() {
        let st = states(40);
        let l = list(&st, &[1; 40], 3);
        let other = LeastConn::new();
        let _ = other.pick(&l.view(), None); // the pool now reports to `other`
        let lc = LeastConn::new();
        st[0].start_request();
        for _ in 0..40 {
            assert_ne!(lc.pick(&l.view(), None), Some(0));
        }
    }
}
