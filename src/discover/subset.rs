//! Subsetting: each client connects to `k` of the `n` backends.
//!
//! A client-side balancer runs in every client; with 10,000 clients and 10,000 backends a
//! full mesh is 10⁸ connections. Subsetting sits between discovery and the balancer: every
//! source (the static list, the [`Handle`](super::Handle), DNS, Kubernetes, files, any
//! [`tower::discover::Discover`]) keeps writing the whole set, and the balancer serves only
//! the client's subset of it.
//!
//! | here | Google SRE book, ch. 20 | gRPC A68 |
//! |---|---|---|
//! | [`Subsetting::deterministic`] (size, client id, client count) | deterministic subsetting (`subset_size`, `client_id`) | — |
//! | [`Subsetting::random`] (size, seed) | random subsetting | `random_subsetting` (`subset_size`, per-client seed) |
//!
//! Exact semantics:
//!
//! - **Deterministic** (SRE book): the backends are sorted by their key's text; with
//!   `subset_count = n / k` (rounded down), client `id` is in round `id / subset_count`;
//!   every round shuffles the sorted list with a PRNG seeded by the round number (the same
//!   in every process), and the client takes slice `id % subset_count` of `k` backends.
//!   The clients of one round together use each backend once (when `k` divides `n`), so
//!   over any number of clients the connections per backend differ by at most one. The
//!   client count only validates the id (`id < count`); a change of `n` may move the
//!   whole subset (the algorithm keeps no history; the SRE book accepts this churn).
//! - **Random** (gRPC A68): every backend key is hashed with the client's seed (a stable
//!   64-bit hash, the same in every process) and the `k` smallest hashes are kept. One
//!   backend leaving or joining changes at most one entry of the subset; the balance
//!   across backends is only statistical.
//! - `k ≥ n`: every backend. `k = 0`, a client id ≥ the count, or a count of 0: a typed
//!   [`ConfigError`].
//! - Weights, priority (backup) levels and connection caps inside the subset are the
//!   backends' own; a re-weight, drain or undrain of a backend outside the subset is
//!   remembered and applies when it enters. Draining does not change membership.
//! - The state has one owner: [`Builder::subset`](crate::balance::Builder::subset) gives
//!   the balancer a subset owner, and its [`Handle`](super::Handle) writes the whole set
//!   through it; [`Handle::keys`](super::Handle::keys) and the stats show the subset.
//!   [`SubsetDiscover`] does the same for a [`Discover`] stream on its own.
//!
//! ```
//! use tower_lb::{discover::subset::Subsetting, test_util, Backend, Balance};
//!
//! let subset = Subsetting::random(2, 7).unwrap();
//! let balance = test_util::echo(
//!     Balance::builder()
//!         .subset(subset.clone())
//!         .backends(["a", "b", "c", "d", "e"].map(Backend::new)),
//! );
//! let mut keys = balance.handle().keys();
//! keys.sort();
//! assert_eq!(keys, subset.select(&["a", "b", "c", "d", "e"]));
//! assert_eq!(keys.len(), 2);
//! // The handle takes the whole set; the balancer serves the subset of it.
//! balance.handle().insert(Backend::new("f")).unwrap();
//! assert_eq!(balance.handle().keys().len(), 2);
//!
//! assert!(Subsetting::random(0, 7).is_err());
//! assert!(Subsetting::deterministic(2, 3, 3).is_err());
//! ```

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use futures_util::Stream;
use tower::discover::{Change, Discover};

use crate::{
    backend::{mix64, stable_hash, Backend},
    balance::{EndpointState, Key, Stats},
    error::{ConfigError, DiscoverError},
};

use crate::balance::Apply;

/// How a client chooses its subset: the size `k` and the algorithm. Cheap to clone;
/// compares equal when the settings are the same. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subsetting {
    size: usize,
    mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    Deterministic { client_id: u64, client_count: u64 },
    Random { seed: u64 },
}

impl Subsetting {
    /// Deterministic subsetting (SRE book ch. 20): `size` backends for client `client_id`
    /// of `client_count`. Fails on a zero size, a zero count or an id ≥ the count.
    pub fn deterministic(
        size: usize,
        client_id: u64,
        client_count: u64,
    ) -> Result<Self, ConfigError> {
        check_size(size)?;
        if client_count == 0 || client_id >= client_count {
            return Err(ConfigError::Invalid {
                setting: "subset client id",
                reason: format!(
                    "client id {client_id} is not below the client count {client_count}"
                ),
            });
        }
        Ok(Self {
            size,
            mode: Mode::Deterministic {
                client_id,
                client_count,
            },
        })
    }

    /// Random subsetting with a per-client seed (gRPC A68): the `size` backends whose keys
    /// hash smallest with `seed`. Fails on a zero size.
    pub fn random(size: usize, seed: u64) -> Result<Self, ConfigError> {
        check_size(size)?;
        Ok(Self {
            size,
            mode: Mode::Random { seed },
        })
    }

    /// The subset size `k`.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The subset of `keys` (duplicates count once), sorted by the keys' text. A pure
    /// function of the set: every client with the same settings computes the same subset.
    pub fn select<K: fmt::Display + Clone>(&self, keys: &[K]) -> Vec<K> {
        let mut named: Vec<(String, &K)> = keys.iter().map(|k| (k.to_string(), k)).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named.dedup_by(|a, b| a.0 == b.0);
        let names: Vec<&str> = named.iter().map(|(s, _)| s.as_str()).collect();
        let mut chosen = self.choose(&names);
        chosen.sort_unstable();
        chosen.into_iter().map(|i| named[i].1.clone()).collect()
    }

    /// Indices into `sorted` (distinct names, sorted) of the subset.
    fn choose(&self, sorted: &[&str]) -> Vec<usize> {
        let n = sorted.len();
        if self.size >= n {
            return (0..n).collect();
        }
        match self.mode {
            Mode::Deterministic { client_id, .. } => {
                let k = self.size;
                let subset_count = (n / k) as u64;
                let round = client_id / subset_count;
                let mut order: Vec<usize> = (0..n).collect();
                shuffle(&mut order, round);
                let start = (client_id % subset_count) as usize * k;
                order[start..start + k].to_vec()
            }
            Mode::Random { seed } => {
                let mut hashed: Vec<(u64, usize)> = sorted
                    .iter()
                    .enumerate()
                    .map(|(i, name)| (stable_hash(&(seed, *name)), i))
                    .collect();
                // Ties (astronomically rare) break by the key's text (the index into the
                // sorted names), so every client agrees.
                hashed.select_nth_unstable(self.size - 1);
                hashed.truncate(self.size);
                hashed.into_iter().map(|(_, i)| i).collect()
            }
        }
    }

    fn subset_of<'a, K: Key>(&self, keys: impl Iterator<Item = &'a K>) -> HashSet<K> {
        let keys: Vec<K> = keys.cloned().collect();
        self.select(&keys).into_iter().collect()
    }
}

fn check_size(size: usize) -> Result<(), ConfigError> {
    if size == 0 {
        return Err(ConfigError::Invalid {
            setting: "subset size",
            reason: "must be at least 1".into(),
        });
    }
    Ok(())
}

/// Fisher–Yates with splitmix64 seeded by `round`: the same order in every process.
fn shuffle(order: &mut [usize], round: u64) {
    let mut state = mix64(round ^ 0x5eed_5b5e_7000_0000);
    for i in (1..order.len()).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let r = mix64(state);
        // Multiply-shift: an unbiased-enough index in 0..=i for any set size used here.
        let j = ((u128::from(r) * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
}

// === impl SubsetState ===

/// The whole set a client's sources wrote, and which part of it the balancer holds: the
/// one owner of subset state, kept by the balancer's core.
pub(crate) struct SubsetState<K> {
    cfg: Subsetting,
    all: Mutex<Universe<K>>,
}

struct Universe<K> {
    backends: HashMap<K, Backend<K>>,
    draining: HashSet<K>,
    current: HashSet<K>,
}

impl<K: Key> SubsetState<K> {
    pub(crate) fn new(cfg: Subsetting) -> Self {
        Self {
            cfg,
            all: Mutex::new(Universe {
                backends: HashMap::new(),
                draining: HashSet::new(),
                current: HashSet::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Universe<K>> {
        self.all
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A [`Handle`](super::Handle)'s writes through a subset: the whole set is remembered,
/// the balancer gets the subset's differences.
pub(crate) struct SubsetApply<K> {
    state: Arc<SubsetState<K>>,
    inner: Arc<dyn Apply<K>>,
}

impl<K: Key> SubsetApply<K> {
    pub(crate) fn new(state: Arc<SubsetState<K>>, inner: Arc<dyn Apply<K>>) -> Self {
        Self { state, inner }
    }

    /// Moves the balancer to the subset of `u.backends`: joins first, then leaves, so the
    /// set never shrinks below what the old and new subsets share. `touched` is a member
    /// whose backend changed and is re-inserted if it stays.
    fn resubset(&self, u: &mut Universe<K>, touched: Option<&K>) -> Result<(), ConfigError> {
        let next = self.state.cfg.subset_of(u.backends.keys());
        for k in &next {
            let joins = !u.current.contains(k);
            if joins || touched == Some(k) {
                self.inner.insert(u.backends[k].clone())?;
                if joins && u.draining.contains(k) {
                    self.inner.set_draining(k, true)?;
                }
            }
        }
        for k in u.current.difference(&next) {
            self.inner.remove(k);
        }
        u.current = next;
        Ok(())
    }
}

fn check_weight<K: Key>(backend: &Backend<K>) -> Result<(), ConfigError> {
    if backend.weight() == 0 {
        return Err(ConfigError::ZeroWeight {
            backend: backend.key().to_string(),
        });
    }
    Ok(())
}

impl<K: Key> Apply<K> for SubsetApply<K> {
    fn insert(&self, backend: Backend<K>) -> Result<(), ConfigError> {
        check_weight(&backend)?;
        let mut u = self.state.lock();
        let key = backend.key().clone();
        let old = u.backends.insert(key.clone(), backend);
        let res = self.resubset(&mut u, Some(&key));
        if res.is_err() {
            // Forget a backend the balancer refused, so both agree.
            match old {
                Some(b) => u.backends.insert(key, b),
                None => u.backends.remove(&key),
            };
        }
        res
    }

    fn remove(&self, key: &K) -> bool {
        let mut u = self.state.lock();
        if u.backends.remove(key).is_none() {
            return false;
        }
        u.draining.remove(key);
        if let Err(e) = self.resubset(&mut u, None) {
            tracing::warn!(error = %e, "tower_lb: a backend refused to join the subset");
        }
        true
    }

    fn set_weight(&self, key: &K, weight: u32) -> Result<(), ConfigError> {
        let mut u = self.state.lock();
        let Some(b) = u.backends.get(key) else {
            return Err(ConfigError::UnknownBackend {
                backend: key.to_string(),
            });
        };
        let next = b.clone().with_weight(weight);
        check_weight(&next)?;
        if u.current.contains(key) {
            self.inner.set_weight(key, weight)?;
        }
        u.backends.insert(key.clone(), next);
        Ok(())
    }

    fn set_draining(&self, key: &K, draining: bool) -> Result<(), ConfigError> {
        let mut u = self.state.lock();
        if !u.backends.contains_key(key) {
            return Err(ConfigError::UnknownBackend {
                backend: key.to_string(),
            });
        }
        if u.current.contains(key) {
            self.inner.set_draining(key, draining)?;
        }
        if draining {
            u.draining.insert(key.clone());
        } else {
            u.draining.remove(key);
        }
        Ok(())
    }

    fn replace(&self, backends: Vec<Backend<K>>) -> Result<(), ConfigError> {
        let mut all = HashMap::with_capacity(backends.len());
        for b in backends {
            check_weight(&b)?;
            all.entry(b.key().clone()).or_insert(b);
        }
        let mut u = self.state.lock();
        let next = self.state.cfg.subset_of(all.keys());
        let chosen: Vec<Backend<K>> = next.iter().map(|k| all[k].clone()).collect();
        self.inner.replace(chosen)?;
        u.draining.retain(|k| all.contains_key(k));
        for k in next.difference(&u.current) {
            if u.draining.contains(k) {
                self.inner.set_draining(k, true)?;
            }
        }
        u.backends = all;
        u.current = next;
        Ok(())
    }

    fn keys(&self) -> Vec<K> {
        self.inner.keys()
    }

    fn len(&self) -> usize {
        self.inner.len()
    }

    fn listing(&self) -> Vec<crate::balance::Listed<K>> {
        self.inner.listing()
    }

    fn stats(&self) -> Stats<K> {
        self.inner.stats()
    }

    fn set_error(&self, error: Option<DiscoverError>) {
        self.inner.set_error(error);
    }

    fn members(&self) -> Vec<(K, Arc<EndpointState>)> {
        self.inner.members()
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.subscribe()
    }
}

// === impl SubsetDiscover ===

/// A [`Discover`] adapter: reads every change of `inner`, remembers each service, and
/// yields the changes of the client's subset only (a backend that joins the subset is
/// inserted before one that leaves it is removed).
/// [`Builder::build_discover`](crate::balance::Builder::build_discover) with
/// [`Builder::subset`](crate::balance::Builder::subset) wraps its source in one.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use futures_util::{stream, StreamExt};
/// use tower::discover::Change;
/// use tower_lb::discover::subset::{SubsetDiscover, Subsetting};
///
/// let changes = stream::iter((0..6).map(|i| Ok::<_, std::convert::Infallible>(Change::Insert(i, ()))));
/// let subset = SubsetDiscover::new(changes, Subsetting::deterministic(2, 0, 3).unwrap());
/// let out: Vec<_> = subset.collect().await;
/// let mut held = std::collections::HashSet::new();
/// for change in out {
///     match change.unwrap() {
///         Change::Insert(k, ()) => { held.insert(k); }
///         Change::Remove(k) => { held.remove(&k); }
///     }
/// }
/// assert_eq!(held.len(), 2);
/// # }
/// ```
pub struct SubsetDiscover<D: Discover> {
    inner: Pin<Box<D>>,
    cfg: Subsetting,
    all: HashMap<D::Key, D::Service>,
    current: HashSet<D::Key>,
    pending: VecDeque<Change<D::Key, D::Service>>,
}

// No field is pinned: the source sits in its own box, the rest is plain data.
impl<D: Discover> Unpin for SubsetDiscover<D> {}

impl<D: Discover> fmt::Debug for SubsetDiscover<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubsetDiscover")
            .field("subsetting", &self.cfg)
            .field("backends", &self.all.len())
            .field("subset", &self.current.len())
            .finish_non_exhaustive()
    }
}

impl<D> SubsetDiscover<D>
where
    D: Discover,
    D::Key: Key,
    D::Service: Clone,
{
    /// Wraps `inner`, keeping its changes to the subset `cfg` chooses.
    pub fn new(inner: D, cfg: Subsetting) -> Self {
        Self {
            inner: Box::pin(inner),
            cfg,
            all: HashMap::new(),
            current: HashSet::new(),
            pending: VecDeque::new(),
        }
    }

    fn resubset(&mut self, touched: Option<&D::Key>) {
        let next = self.cfg.subset_of(self.all.keys());
        for k in &next {
            if !self.current.contains(k) || touched == Some(k) {
                self.pending
                    .push_back(Change::Insert(k.clone(), self.all[k].clone()));
            }
        }
        for k in self.current.difference(&next) {
            self.pending.push_back(Change::Remove(k.clone()));
        }
        self.current = next;
    }
}

impl<D> Stream for SubsetDiscover<D>
where
    D: Discover,
    D::Key: Key,
    D::Service: Clone,
{
    type Item = Result<Change<D::Key, D::Service>, D::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(change) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match this.inner.as_mut().poll_discover(cx) {
                Poll::Ready(Some(Ok(Change::Insert(k, svc)))) => {
                    this.all.insert(k.clone(), svc);
                    this.resubset(Some(&k));
                }
                Poll::Ready(Some(Ok(Change::Remove(k)))) => {
                    if this.all.remove(&k).is_some() {
                        this.resubset(None);
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_round_uses_each_backend_once() {
        let keys: Vec<u32> = (0..12).collect();
        let mut seen = Vec::new();
        for id in 0..4 {
            seen.extend(Subsetting::deterministic(3, id, 8).unwrap().select(&keys));
        }
        seen.sort_unstable();
        assert_eq!(seen, keys);
    }

    #[test]
    fn bad_settings_are_typed_errors() {
        assert!(matches!(
            Subsetting::deterministic(0, 0, 1),
            Err(ConfigError::Invalid { .. })
        ));
        assert!(Subsetting::deterministic(1, 0, 0).is_err());
        assert!(Subsetting::deterministic(1, 5, 5).is_err());
        assert!(Subsetting::random(0, 1).is_err());
    }

    #[test]
    fn small_sets_are_whole_and_empty_is_empty() {
        let s = Subsetting::random(5, 1).unwrap();
        assert_eq!(s.select(&[3, 1, 2]), [1, 2, 3]);
        assert!(s.select::<u32>(&[]).is_empty());
    }
}
