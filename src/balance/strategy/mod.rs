//! Pick strategies: the one decision a balancer makes per request.
//!
//! A strategy is small, synchronous and pure: it sees the list of available endpoints
//! ([`Candidates`]: weight, in-flight count, latency, a stable id) and the request's
//! optional [`RequestKey`], and returns an index into the list. It knows nothing of
//! `Service`, readiness or health: the balancer filters ejected, down, draining and backup
//! endpoints before it asks, and checks concurrency caps after.
//!
//! | strategy | picks | cost per pick |
//! |---|---|---|
//! | [`RoundRobin`] | the next endpoint in turn, weights ignored | O(1) |
//! | [`WeightedRoundRobin`] | nginx smooth weighted round robin (5,1,1 → a a b a c a a) up to [`EXACT_UP_TO`] endpoints, an EDF schedule above | O(n) up to 32, O(log n) above |
//! | [`LeastConn`] | fewest in-flight ÷ weight, ties rotate (nginx `least_conn`); a tree above [`SCAN_UP_TO`] endpoints | O(n) up to 32, O(log n) above |
//! | [`Random`] | uniformly, or by weight with [`Random::weighted`] | O(1) / O(log n) |
//! | [`P2c`] | the less loaded of two distinct endpoints drawn by weight | O(log n) |
//! | [`IpHash`] | nginx `ip_hash`: by client /24 (IPv4) or address (IPv6); rehash, then round robin | O(log n) |
//! | [`RingHash`] | ketama-style consistent hashing, 160 points per weight unit | O(1) expected |
//! | [`Maglev`] | Maglev lookup table of prime size (65537) | O(1) |
//! | [`BoundedLoad`] | consistent hashing with bounded loads, at most ⌈1.25 × mean in-flight⌉ | O(n) |
//! | [`Rendezvous`] | weighted highest random weight | O(n) |
//! | [`LoadReport`] | weighted round robin by each backend's reported load, qps ÷ utilization (gRPC A58, ORCA) | O(n) up to 32, O(log n) above; O(n) once per second |
//!
//! The hash strategies read the request's [`RequestKey`] (a header, a cookie, the client
//! IP…; see the `sticky` module with feature `sticky`). They build their tables in
//! [`Strategy::rebuild`], off the request path, over every endpoint, and read them
//! lock-free. When a key's endpoint is not available, each walks on to the next candidate
//! in its own deterministic order, so the key keeps going to the same fallback and comes
//! back when its endpoint does. Requests without a key go to a fallback strategy,
//! [`RoundRobin`] by default (`.fallback(..)` on each).
//!
//! [`P2c`] measures load as in-flight requests by default, or as peak-EWMA RTT ×
//! (in-flight + 1) with [`P2c::peak_ewma`] (Finagle, linkerd), always divided by weight.
//!
//! Randomness is injected: every random strategy has `with_seed(u64)` beside `new()` so
//! tests are exact.
//!
//! # Writing a strategy
//!
//! Implement [`Strategy`], or pass a closure:
//!
//! ```
//! use tower_lb::balance::strategy::{Candidates, RequestKey};
//!
//! // Always the endpoint with the highest weight.
//! let heaviest = |c: &Candidates<'_>, _key: Option<&RequestKey>| {
//!     (0..c.len()).max_by_key(|&i| c[i].weight())
//! };
//! # let b = tower_lb::Balance::builder::<&str>().strategy(heaviest);
//! # let _ = b;
//! ```

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasherDefault, Hasher},
    net::IpAddr,
    ops::Deref,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
};

use tokio::time::Instant;

use super::{clock::Clock, endpoint::EndpointState};
use crate::backend::mix64;

mod bounded;
#[cfg(test)]
mod hash_tests;
mod hashing;
mod ip_hash;
mod least_conn;
mod load_report;
mod maglev;
mod p2c;
mod random;
mod rendezvous;
mod ring_hash;
mod round_robin;
mod weighted_rr;

pub use bounded::BoundedLoad;
pub use ip_hash::IpHash;
pub(crate) use least_conn::Index as LoadIndex;
pub use least_conn::{LeastConn, SCAN_UP_TO};
pub use load_report::{LoadReport, ReportedLoad};
pub use maglev::{Maglev, DEFAULT_TABLE_SIZE};
pub use p2c::P2c;
pub use random::Random;
pub use rendezvous::Rendezvous;
pub use ring_hash::RingHash;
pub use round_robin::RoundRobin;
pub use weighted_rr::{WeightedRoundRobin, EXACT_UP_TO};

/// Chooses an endpoint for a request. See the [module docs](self).
pub trait Strategy: Send + Sync + 'static {
    /// Returns an index into `candidates`, or `None` to refuse (the request then fails
    /// with [`AllUnavailable`](crate::error::AllUnavailable)). `candidates` is never empty.
    fn pick(&self, candidates: &Candidates<'_>, key: Option<&RequestKey>) -> Option<usize>;

    /// Whether the balancer must time responses for this strategy (peak EWMA). Latency
    /// costs two clock reads per request, so it is only measured when a strategy needs it
    /// or [`Builder::track_latency`](crate::balance::Builder::track_latency) asks for it.
    fn needs_latency(&self) -> bool {
        false
    }

    /// Called off the request path whenever the endpoint set changes, with every endpoint
    /// (available or not): where hash strategies rebuild their tables. Only called when
    /// [`wants_rebuild`](Self::wants_rebuild) is true.
    fn rebuild(&self, all: &Candidates<'_>) {
        let _ = all;
    }

    /// Whether [`rebuild`](Self::rebuild) must be called when the endpoint set changes.
    ///
    /// Listing every endpoint for `rebuild` costs O(n) per discovery change, so strategies
    /// that keep no table return `false` (every built-in strategy without a table does,
    /// and so do closures). The default is `true`, so that a custom strategy that
    /// overrides `rebuild` keeps being called; wrappers forward to what they wrap.
    fn wants_rebuild(&self) -> bool {
        true
    }

    /// A short name for logs and stats.
    fn name(&self) -> &'static str {
        "custom"
    }
}

impl<F> Strategy for F
where
    F: Fn(&Candidates<'_>, Option<&RequestKey>) -> Option<usize> + Send + Sync + 'static,
{
    fn pick(&self, candidates: &Candidates<'_>, key: Option<&RequestKey>) -> Option<usize> {
        self(candidates, key)
    }

    /// A closure keeps no table.
    fn wants_rebuild(&self) -> bool {
        false
    }
}

impl<T: Strategy + ?Sized> Strategy for Arc<T> {
    fn pick(&self, candidates: &Candidates<'_>, key: Option<&RequestKey>) -> Option<usize> {
        (**self).pick(candidates, key)
    }
    fn needs_latency(&self) -> bool {
        (**self).needs_latency()
    }
    fn rebuild(&self, all: &Candidates<'_>) {
        (**self).rebuild(all)
    }
    fn wants_rebuild(&self) -> bool {
        (**self).wants_rebuild()
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
}

/// One endpoint as a strategy sees it.
#[derive(Clone)]
pub struct Candidate {
    pub(crate) state: Arc<EndpointState>,
    pub(crate) weight: u32,
    pub(crate) id: u64,
    pub(crate) pos: usize,
}

impl fmt::Debug for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidate")
            .field("id", &self.id)
            .field("weight", &self.weight)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Candidate {
    /// A candidate over a detached state: for unit tests of custom strategies.
    ///
    /// ```
    /// use tower_lb::balance::strategy::{Candidate, CandidateList, RoundRobin, Strategy};
    ///
    /// let list = CandidateList::new((0..3).map(|i| Candidate::detached(i, 1)).collect());
    /// let rr = RoundRobin::new();
    /// let picks: Vec<_> = (0..4).map(|_| rr.pick(&list.view(), None).unwrap()).collect();
    /// assert_eq!(picks, [0, 1, 2, 0]);
    /// ```
    pub fn detached(id: u64, weight: u32) -> Self {
        Self {
            state: Arc::new(EndpointState::detached()),
            weight,
            id,
            pos: 0,
        }
    }

    /// The effective weight (at least 1).
    #[inline]
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// A stable id: the [`stable_hash`](crate::backend::stable_hash) of the backend key.
    #[inline]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Requests in flight.
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.state.in_flight()
    }

    /// What a strategy may read of the endpoint's live state: load, latency, health.
    /// (Health is written by the passive layer and the prober, never by a strategy.)
    #[inline]
    pub fn load(&self) -> Load<'_> {
        Load(&self.state)
    }

    /// The balancer's strategy's own word of per-endpoint state, kept with the endpoint
    /// across discovery updates and candidate-list rebuilds: a balancer has one strategy,
    /// and this is its memory (smooth weighted round robin keeps nginx's `current_weight`
    /// here). Starts at 0.
    #[inline]
    pub fn scratch(&self) -> &std::sync::atomic::AtomicI64 {
        &self.state.scratch
    }

    /// A candidate over `state`, which the test keeps to set the load a strategy sees
    /// (`state.start_request()`, `state.observe_rtt(..)`): for unit tests of strategies.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_lb::balance::{strategy::{Candidate, CandidateList, LeastConn, Strategy}, EndpointState};
    ///
    /// let busy = Arc::new(EndpointState::detached());
    /// busy.start_request();
    /// let list = CandidateList::new(vec![
    ///     Candidate::with_state(busy.clone(), 1, 1),
    ///     Candidate::detached(2, 1),
    /// ]);
    /// assert_eq!(LeastConn::new().pick(&list.view(), None), Some(1));
    /// ```
    pub fn with_state(state: Arc<EndpointState>, id: u64, weight: u32) -> Self {
        Self {
            state,
            weight,
            id,
            pos: 0,
        }
    }

    /// Peak-EWMA RTT in nanoseconds at `now` (without samples, 30 ms decayed since the
    /// endpoint joined).
    #[inline]
    pub fn ewma_nanos(&self, now: Instant) -> f64 {
        self.state.ewma_nanos_at(now)
    }

    /// [`ewma_nanos`](Self::ewma_nanos) of two candidates at the pick's time (read once),
    /// without building an `Instant` inside a balancer's pick.
    #[inline(always)]
    pub(crate) fn ewma_nanos_pair(a: &Self, b: &Self, candidates: &Candidates<'_>) -> (f64, f64) {
        match candidates.now_ns() {
            Some(ns) => (a.state.ewma_at_ns(ns), b.state.ewma_at_ns(ns)),
            None => {
                let now = candidates.now();
                (a.state.ewma_nanos_at(now), b.state.ewma_nanos_at(now))
            }
        }
    }
}

/// A read-only view of an endpoint's live state, for strategies; from
/// [`Candidate::load`].
#[derive(Debug, Clone, Copy)]
pub struct Load<'a>(&'a EndpointState);

impl Load<'_> {
    /// Requests in flight.
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.0.in_flight()
    }

    /// Requests sent in total.
    pub fn requests(&self) -> u64 {
        self.0.requests()
    }

    /// Requests that failed.
    pub fn failures(&self) -> u64 {
        self.0.failures()
    }

    /// The latest peak-EWMA RTT, if any sample was observed.
    pub fn ewma(&self) -> Option<std::time::Duration> {
        self.0.ewma()
    }

    /// The peak-EWMA RTT in nanoseconds at `now`, decayed; without samples, 30 ms
    /// decayed since the endpoint joined.
    #[inline]
    pub fn ewma_nanos_at(&self, now: Instant) -> f64 {
        self.0.ewma_nanos_at(now)
    }

    /// The endpoint's health status at `now`.
    pub fn status_at(&self, now: Instant) -> super::Status {
        self.0.status_at(now)
    }

    /// Whether the endpoint is at its concurrency cap (or has its probation trial in
    /// flight).
    #[inline]
    pub fn at_capacity(&self) -> bool {
        self.0.at_capacity()
    }
}

/// An owned candidate list with its precomputed weight sums; see [`Candidates`].
#[derive(Debug, Clone, Default)]
pub struct CandidateList {
    items: Vec<Candidate>,
    cumulative: Vec<u64>,
    total: u64,
    uniform: bool,
    by_id: HashMap<u64, usize, BuildHasherDefault<IdHasher>>,
    generation: u64,
    /// After in-place edits, the first position whose weight sums must be recomputed.
    stale_from: Option<usize>,
}

impl CandidateList {
    /// Builds a list, precomputing the weight prefix sums and id index.
    pub fn new(items: Vec<Candidate>) -> Self {
        Self::with_generation(items, 0)
    }

    pub(crate) fn with_generation(items: Vec<Candidate>, generation: u64) -> Self {
        let mut total = 0u64;
        let cumulative = items
            .iter()
            .map(|c| {
                total += u64::from(c.weight.max(1));
                total
            })
            .collect();
        let uniform = items.windows(2).all(|w| w[0].weight == w[1].weight);
        let by_id = items.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
        Self {
            items,
            cumulative,
            total,
            uniform,
            by_id,
            generation,
            stale_from: None,
        }
    }

    /// Replaces the candidate at `i` (an endpoint's weight or position changed). Call
    /// [`finish`](Self::finish) after the last edit.
    pub(crate) fn replace(&mut self, i: usize, c: Candidate) {
        let old = std::mem::replace(&mut self.items[i], c);
        if old.id != self.items[i].id {
            self.by_id.remove(&old.id);
            self.by_id.insert(self.items[i].id, i);
        }
        if old.weight != self.items[i].weight {
            self.mark(i);
        }
    }

    /// Removes the candidate at `i`, moving the last one into its place.
    pub(crate) fn swap_remove(&mut self, i: usize) {
        let gone = self.items.swap_remove(i);
        self.by_id.remove(&gone.id);
        // Sums below `i` stand; from `i` on they stand too if the moved candidate weighs
        // what the removed one did.
        self.cumulative.pop();
        if let Some(moved) = self.items.get(i) {
            self.by_id.insert(moved.id, i);
            if moved.weight != gone.weight {
                self.mark(i);
            }
        }
        if !self.uniform {
            self.mark(self.items.len()); // may have become uniform
        }
    }

    /// Appends a candidate.
    pub(crate) fn push(&mut self, c: Candidate) {
        let i = self.items.len();
        if self.items.first().is_some_and(|f| f.weight != c.weight) {
            self.mark(i);
        }
        let before = self.cumulative.last().copied().unwrap_or(0);
        self.cumulative.push(before + u64::from(c.weight.max(1)));
        self.by_id.insert(c.id, i);
        self.items.push(c);
    }

    fn mark(&mut self, i: usize) {
        self.stale_from = Some(self.stale_from.map_or(i, |s| s.min(i)));
    }

    /// Recomputes the weight sums from the first position whose weight changed, and sets
    /// the generation.
    pub(crate) fn finish(&mut self, generation: u64) {
        self.generation = generation;
        if let Some(from) = self.stale_from.take() {
            let from = from.min(self.items.len());
            self.cumulative.truncate(from);
            let mut total = self.cumulative.last().copied().unwrap_or(0);
            let items = &self.items[from..];
            self.cumulative.extend(items.iter().map(|c| {
                total += u64::from(c.weight.max(1));
                total
            }));
            self.uniform = self.items.windows(2).all(|w| w[0].weight == w[1].weight);
        }
        self.total = self.cumulative.last().copied().unwrap_or(0);
    }

    /// Borrows the list as strategies see it.
    pub fn view(&self) -> Candidates<'_> {
        Candidates {
            list: self,
            time: None,
        }
    }

    /// The list as a balancer's pick sees it: [`Candidates::now`] reads `time`'s clock
    /// once and keeps the instant there.
    pub(crate) fn view_timed<'a>(&'a self, time: &'a PickTime<'a>) -> Candidates<'a> {
        Candidates {
            list: self,
            time: Some(time),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Ids are already well-mixed 64-bit hashes of the backend keys, so the id index needs no
/// further hashing: a third of the cost of a hash strategy's pick was SipHash here.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // One multiply (Fibonacci hashing) so that small ids, as in tests, still fill the
        // high bits the table uses for its tags.
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used for ids; mix anything else in FNV style.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    #[inline]
    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
}

/// The endpoints a strategy may choose from, never empty when passed to
/// [`Strategy::pick`]. Derefs to `[Candidate]`.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'a> {
    list: &'a CandidateList,
    time: Option<&'a PickTime<'a>>,
}

impl<'a> Deref for Candidates<'a> {
    type Target = [Candidate];
    fn deref(&self) -> &[Candidate] {
        &self.list.items
    }
}

impl<'a> Candidates<'a> {
    /// Sum of all weights.
    #[inline]
    pub fn total_weight(&self) -> u64 {
        self.list.total
    }

    /// True when every candidate has the same weight (weights can then be ignored).
    #[inline]
    pub fn uniform(&self) -> bool {
        self.list.uniform
    }

    /// The candidate holding point `r` of `0..total_weight()`: a weighted draw in
    /// O(log n).
    #[inline]
    pub fn by_weight_point(&self, r: u64) -> usize {
        let cum = &self.list.cumulative;
        let i = cum.partition_point(|&c| c <= r);
        i.min(cum.len().saturating_sub(1))
    }

    /// Weight prefix sums (`cumulative()[i]` = weights of `0..=i`).
    pub fn cumulative(&self) -> &'a [u64] {
        &self.list.cumulative
    }

    /// Position of the candidate with the given [`id`](Candidate::id), if available.
    #[inline]
    pub fn position(&self, id: u64) -> Option<usize> {
        self.list.by_id.get(&id).copied()
    }

    /// Changes whenever the list is rebuilt (0 for ad-hoc lists).
    pub fn generation(&self) -> u64 {
        self.list.generation
    }

    /// The time of this pick, for strategies that weigh time (peak-EWMA decay).
    ///
    /// Inside the balancer the clock is read once per request: the first call during a
    /// pick reads it, later calls of the same pick get the same instant, and the balancer
    /// times the request's latency from it (when the endpoint takes the request at once),
    /// so a strategy that reads the time costs no extra clock read. Outside a balancer's
    /// pick (a strategy's unit test) each call reads Tokio's clock. The balancer reads
    /// the CPU's time-stamp counter (about a third of the cost of `Instant::now()`), or
    /// Tokio's clock if that was paused when the balancer was built, so paused-time tests
    /// are exact.
    ///
    /// ```
    /// use tower_lb::balance::strategy::list_of;
    ///
    /// let c = list_of(&[1, 1]);
    /// assert!(c.view().now() <= tokio::time::Instant::now());
    /// ```
    #[inline]
    pub fn now(&self) -> Instant {
        match self.time {
            None => Instant::now(),
            Some(time) => time.clock.instant(self.now_ns().unwrap_or(0)),
        }
    }

    /// The pick's time in nanoseconds since the balancer's clock's origin (the time line
    /// of the endpoints' own stamps), read once per pick; `None` outside a balancer's pick.
    #[inline]
    pub(crate) fn now_ns(&self) -> Option<u64> {
        self.time.map(PickTime::read)
    }
}

/// The time of one pick of a balancer: its clock, and the time once read (nanoseconds
/// since the clock's origin).
#[derive(Debug)]
pub(crate) struct PickTime<'a> {
    clock: &'a Clock,
    at: std::cell::Cell<Option<u64>>,
}

impl<'a> PickTime<'a> {
    /// A pick on `clock` that has not read it yet.
    #[inline]
    pub(crate) fn new(clock: &'a Clock) -> Self {
        Self {
            clock,
            at: std::cell::Cell::new(None),
        }
    }

    /// The pick's time, reading the clock on first use.
    #[inline]
    fn read(&self) -> u64 {
        match self.at.get() {
            Some(t) => t,
            None => {
                let t = self.clock.now_ns();
                self.at.set(Some(t));
                t
            }
        }
    }

    /// The time, if the pick read the clock.
    #[inline]
    pub(crate) fn at(&self) -> Option<u64> {
        self.at.get()
    }
}

/// A request's affinity key (from a header, cookie, client IP…), read by hash strategies.
///
/// ```
/// use tower_lb::balance::strategy::RequestKey;
///
/// let a = RequestKey::from_bytes(b"user-42");
/// assert_eq!(a, RequestKey::from_bytes(b"user-42"));
/// let ip = RequestKey::from_ip("192.0.2.7".parse().unwrap());
/// assert!(ip.ip().is_some());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestKey {
    hash: u64,
    ip: Option<IpAddr>,
    pin: Option<u64>,
}

impl RequestKey {
    /// A key from arbitrary bytes (hashed with a stable hash).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self {
            hash: crate::backend::stable_hash(bytes),
            ip: None,
            pin: None,
        }
    }

    /// A key from a precomputed hash.
    pub fn from_hash(hash: u64) -> Self {
        Self {
            hash,
            ip: None,
            pin: None,
        }
    }

    /// A key that names one endpoint through an opaque token (a sticky-cookie value), for
    /// a strategy that knows the token's endpoint, such as `sticky::Pinned` (feature
    /// `sticky`). Other strategies see an ordinary key whose hash is the token.
    ///
    /// ```
    /// use tower_lb::balance::strategy::RequestKey;
    ///
    /// let key = RequestKey::pinned(0x5eed);
    /// assert_eq!(key.pin(), Some(0x5eed));
    /// assert_eq!(RequestKey::from_bytes(b"x").pin(), None);
    /// ```
    pub fn pinned(token: u64) -> Self {
        Self {
            hash: token,
            ip: None,
            pin: Some(token),
        }
    }

    /// A key from a client IP address (kept, for nginx `ip_hash` semantics).
    pub fn from_ip(ip: IpAddr) -> Self {
        let hash = match ip {
            IpAddr::V4(v4) => crate::backend::stable_hash(&v4.octets()),
            IpAddr::V6(v6) => crate::backend::stable_hash(&v6.octets()),
        };
        Self {
            hash,
            ip: Some(ip),
            pin: None,
        }
    }

    /// The key's 64-bit hash.
    #[inline]
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The client IP, when the key was made from one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// The endpoint token, when the key was made with [`pinned`](Self::pinned).
    pub fn pin(&self) -> Option<u64> {
        self.pin
    }
}

/// A lock-free seeded random number generator (splitmix64) shared by random strategies.
#[derive(Debug)]
pub struct Rng(AtomicU64);

impl Rng {
    /// Seeded from the clock and the address of a local, different in each process.
    pub fn new() -> Self {
        let local = 0u8;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (&local as *const u8 as u64);
        Self::with_seed(seed)
    }

    /// A generator with a fixed seed: the same sequence every run.
    pub fn with_seed(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&self) -> u64 {
        mix64(self.0.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed))
    }

    /// A uniform number in `0..n` (`n > 0`), by multiply-shift (no modulo bias to speak of).
    #[inline]
    pub fn below(&self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

/// A candidate list of detached endpoints with the given weights (ids `0..n`): for unit
/// tests of strategies.
pub fn list_of(weights: &[u32]) -> CandidateList {
    CandidateList::new(
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Candidate::detached(i as u64, w))
            .collect(),
    )
}
