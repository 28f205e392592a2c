//! The shared endpoint set: copy-on-write snapshots behind an `ArcSwap`, so readers never
//! block, and one writer lock for discovery updates and health-driven rebuilds.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering::*},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use arc_swap::{ArcSwap, Guard};
use tokio::{sync::watch, time::Instant};

use super::Target;
use super::{
    cow::{Pages, ShardedMap},
    endpoint::{later, EndpointState, Pool, Status},
    strategy::{Candidate, CandidateList, Strategy},
};
use crate::{
    backend::{stable_hash, Backend},
    error::{BoxError, ConfigError, DiscoverError},
};

/// What a backend key must be: hashable (state is keyed by it), cloneable, printable (it
/// names the backend in logs, errors and stats), and shareable across threads.
///
/// Implemented for every type with those traits: `SocketAddr`, `String`, `http::Uri`,
/// `http::uri::Authority`, integers, `&'static str`…
///
/// A balancer keyed by `&'static str` works, but its unboxed futures cannot be held
/// inside `tokio::spawn`ed blocks, because the compiler cannot prove the key's traits for
/// the lifetime it erases there ("implementation of `Hash` is not general enough"): await
/// [`Balance::send`](crate::Balance::send) there, or use owned keys.
pub trait Key: std::hash::Hash + Eq + Clone + fmt::Display + Send + Sync + 'static {}

impl<T> Key for T where T: std::hash::Hash + Eq + Clone + fmt::Display + Send + Sync + 'static {}

/// Which group of endpoints the candidate list was drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tier {
    /// Available primaries.
    Primary,
    /// The primaries cannot serve (none available, or fewer than the panic threshold):
    /// the available backups of the lowest priority level that can
    /// ([`Stats::level`](crate::balance::Stats::level)).
    Backup,
    /// Panic mode: no level has enough endpoints available, so health is ignored and
    /// every non-draining endpoint of one level is used (Envoy's panic threshold).
    Panic,
    /// Nothing can serve.
    None,
}

pub(crate) struct Entry<K, S> {
    pub(crate) backend: Backend<K>,
    pub(crate) service: S,
    pub(crate) state: Arc<EndpointState>,
    /// The [`stable_hash`] of the key: the candidate id, and the index shard.
    pub(crate) id: u64,
}

/// The endpoints by position: a paged copy-on-write vector, so an edit copies one page.
pub(crate) type Entries<K, S> = Pages<Arc<Entry<K, S>>>;

/// Key → position in [`Entries`], sharded by the key's id.
pub(crate) type Index<K> = ShardedMap<K, usize>;

pub(crate) struct Snapshot<K, S> {
    /// The balancer, for requests that must wait or re-pick; weak, to avoid a cycle.
    pub(crate) core: Weak<Core<K, S>>,
    /// The strategy, so a request can re-pick from its snapshot even if the balancer is
    /// gone (the last clone was consumed by `oneshot`).
    pub(crate) strategy: Arc<dyn Strategy>,
    /// Every endpoint, in insertion order until a removal moves the last one into the
    /// removed one's place.
    pub(crate) entries: Entries<K, S>,
    pub(crate) index: Index<K>,
    pub(crate) candidates: CandidateList,
    pub(crate) epoch: u64,
    /// The earliest time the candidate list may change by itself (an ejection ends).
    pub(crate) deadline: Option<Instant>,
    pub(crate) tier: Tier,
    /// The priority level the candidates come from (0 for primaries).
    pub(crate) level: u8,
    /// How many endpoints of each priority level are live and available, so one change
    /// can update the candidate list without looking at every endpoint.
    counts: Counts,
    /// How the candidate list was derived from the previous snapshot's, when it was
    /// updated rather than rebuilt.
    delta: Option<Delta>,
}

/// The changes that turned one candidate list into the next: once readers release the
/// older snapshot, the writer replays them on its list (now unshared) instead of copying
/// the current list, so a steady stream of single changes copies no list at all.
struct Delta {
    /// The generation of the list the changes apply to.
    base: u64,
    /// Per endpoint id, its candidate, or `None` to drop it.
    ops: Vec<(u64, Option<Candidate>)>,
}

fn apply(list: &mut CandidateList, ops: &[(u64, Option<Candidate>)]) {
    for (id, wanted) in ops {
        match (list.view().position(*id), wanted) {
            (Some(i), Some(c)) => list.replace(i, c.clone()),
            (Some(i), None) => list.swap_remove(i),
            (None, Some(c)) => list.push(c.clone()),
            (None, None) => {}
        }
    }
}

/// Endpoint counts by priority level (index 0: primaries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Counts {
    /// Per level: not draining.
    live: Vec<usize>,
    /// Per level: healthy or on probation.
    available: Vec<usize>,
}

impl Counts {
    /// Adds (`add` true) or subtracts one endpoint of priority `level` with `status`.
    fn apply(&mut self, level: u8, status: Status, add: bool) {
        let level = usize::from(level);
        if self.live.len() <= level {
            self.live.resize(level + 1, 0);
            self.available.resize(level + 1, 0);
        }
        let step = |n: &mut usize| {
            if add {
                *n += 1
            } else {
                *n -= 1
            }
        };
        if status != Status::Draining {
            step(&mut self.live[level]);
        }
        if matches!(status, Status::Healthy | Status::Probation) {
            step(&mut self.available[level]);
        }
        // No trailing empty levels, so equal counts compare equal however they were made.
        while self.live.last() == Some(&0) && self.available.last() == Some(&0) {
            self.live.pop();
            self.available.pop();
        }
    }

    /// Which tier serves, and from which priority level, given the panic threshold;
    /// the panic threshold applies per level (Envoy):
    ///
    /// 1. the lowest level whose available share (healthy or on probation, of its live
    ///    endpoints) is at least the threshold serves: its available endpoints;
    /// 2. if no level is that healthy, panic mode in the lowest level with an available
    ///    endpoint: every live endpoint of it, whatever its health;
    /// 3. if nothing is available anywhere, panic mode in the lowest live level;
    /// 4. with the threshold at 0 (panic mode off), only step 1, where any available
    ///    endpoint is enough.
    fn tier(&self, threshold: f64) -> (Tier, u8) {
        let level = |l: usize| u8::try_from(l).unwrap_or(u8::MAX);
        let serving = (0..self.live.len()).find(|&l| {
            let (live, available) = (self.live[l], self.available[l]);
            available > 0 && available as f64 >= threshold * live as f64
        });
        if let Some(l) = serving {
            let tier = if l == 0 { Tier::Primary } else { Tier::Backup };
            return (tier, level(l));
        }
        if threshold > 0.0 {
            let panic = (0..self.live.len())
                .find(|&l| self.available[l] > 0)
                .or_else(|| (0..self.live.len()).find(|&l| self.live[l] > 0));
            if let Some(l) = panic {
                return (Tier::Panic, level(l));
            }
        }
        (Tier::None, 0)
    }
}

fn level_of<K, S>(e: &Entry<K, S>) -> u8 {
    e.backend.priority()
}

/// What the writer keeps between edits, under the writer lock.
struct Writer<K, S> {
    /// Snapshots replaced while a reader still held them (a clone's cache, a request in
    /// flight): they are dropped here, off the request path, once readers let go, since
    /// dropping a snapshot releases every candidate (O(n)).
    retired: Vec<Arc<Snapshot<K, S>>>,
    /// The candidate list of the snapshot before the current one, once readers released
    /// it: the next edit replays the current snapshot's [`Delta`] on it and then its own
    /// changes, instead of copying the current list.
    spare: Option<CandidateList>,
}

impl<K, S> Writer<K, S> {
    /// Drops the retired snapshots no reader holds any more, keeping as the spare the
    /// candidate list of generation `base` (the one the current snapshot derives from).
    fn reap(&mut self, base: Option<u64>) {
        let mut i = 0;
        while i < self.retired.len() {
            // `ArcSwap::swap` settled readers' borrowed references into counts, and no
            // new reference can be taken from a retired snapshot: one means only us.
            if Arc::strong_count(&self.retired[i]) > 1 {
                i += 1;
                continue;
            }
            let snap = self.retired.swap_remove(i);
            if base.is_some_and(|b| b == snap.candidates.view().generation()) {
                if let Ok(snap) = Arc::try_unwrap(snap) {
                    self.spare = Some(snap.candidates);
                }
            }
        }
        if base != self.spare.as_ref().map(|l| l.view().generation()) {
            self.spare = None;
        }
    }
}

/// An edit of the endpoint set in progress, under the writer lock: the entries and index
/// being changed (copy-on-write), and which endpoints changed, so the candidate list can
/// be updated instead of rebuilt.
pub(crate) struct Edit<K, S> {
    entries: Entries<K, S>,
    index: Index<K>,
    /// Every endpoint touched, with its entry before the edit (`None`: new).
    touched: Vec<(K, Option<Arc<Entry<K, S>>>)>,
    /// Too many changes to track: rebuild the candidate list.
    full: bool,
}

/// Above this many changed endpoints in one edit, the candidate list is rebuilt.
const MAX_TRACKED: usize = 32;

impl<K: Key, S> Edit<K, S> {
    fn position(&self, key: &K) -> Option<usize> {
        self.index.get(stable_hash(key), key).copied()
    }

    fn get(&self, key: &K) -> Option<&Arc<Entry<K, S>>> {
        self.position(key).map(|i| &self.entries[i])
    }

    fn touch(&mut self, key: &K, before: Option<&Arc<Entry<K, S>>>) {
        if self.full || self.touched.iter().any(|(k, _)| k == key) {
            return;
        }
        if self.touched.len() == MAX_TRACKED {
            self.full = true;
            self.touched = Vec::new();
            return;
        }
        self.touched.push((key.clone(), before.cloned()));
    }

    /// Replaces the entry at `i`, keeping its key.
    fn set(&mut self, i: usize, entry: Entry<K, S>) {
        let old = self.entries[i].clone();
        self.touch(old.backend.key(), Some(&old));
        self.entries.set(i, Arc::new(entry));
    }

    /// Appends a new endpoint.
    fn push(&mut self, entry: Entry<K, S>) {
        self.touch(entry.backend.key(), None);
        self.index
            .insert(entry.id, entry.backend.key().clone(), self.entries.len());
        self.entries.push(Arc::new(entry));
    }

    /// Removes an endpoint: the last one takes its place, so one index entry changes.
    fn remove(&mut self, key: &K) -> bool {
        let Some(i) = self.index.remove(stable_hash(key), key) else {
            return false;
        };
        let gone = self.entries[i].clone();
        self.touch(key, Some(&gone));
        let last = self.entries.len() - 1;
        if i != last {
            let moved = self.entries[last].clone();
            self.touch(moved.backend.key(), Some(&moved));
            if let Some(pos) = self.index.get_mut(moved.id, moved.backend.key()) {
                *pos = i;
            }
        }
        self.entries.swap_remove(i);
        gone.state.leave();
        tracing::debug!(backend = %key, "tower_lb: endpoint removed");
        true
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) panic_threshold: f64,
    pub(crate) keep_last_on_empty: bool,
    pub(crate) fail_fast: Duration,
    pub(crate) retries: usize,
    pub(crate) track_latency: bool,
    /// Slow-start window (off when `None`).
    pub(crate) slow_start: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            panic_threshold: 0.5,
            keep_last_on_empty: false,
            fail_fast: Duration::from_secs(1),
            retries: 2,
            track_latency: false,
            slow_start: None,
        }
    }
}

/// A type-erased endpoint maker.
pub(crate) type Maker<K, S> = Arc<dyn Fn(&Target<'_, K>) -> Result<S, BoxError> + Send + Sync>;

pub(crate) struct Core<K, S> {
    me: Weak<Self>,
    /// Bumped on every published snapshot, so callers can cache one.
    published: AtomicU64,
    pub(crate) maker: Option<Maker<K, S>>,
    snap: ArcSwap<Snapshot<K, S>>,
    /// The writer lock, and what only the writer touches.
    write: Mutex<Writer<K, S>>,
    pub(crate) pool: Arc<Pool>,
    version: watch::Sender<u64>,
    pub(crate) strategy: Arc<dyn Strategy>,
    pub(crate) cfg: Config,
    discover_error: Mutex<Option<DiscoverError>>,
    driver: Mutex<Option<tokio::task::AbortHandle>>,
}

impl<K, S> Drop for Core<K, S> {
    fn drop(&mut self) {
        if let Some(task) = self.driver.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

impl<K: Key, S: Clone> Core<K, S> {
    pub(crate) fn new(
        strategy: Arc<dyn Strategy>,
        cfg: Config,
        maker: Option<Maker<K, S>>,
    ) -> Arc<Self> {
        let pool = Arc::new(Pool::default());
        Arc::new_cyclic(|me| {
            let empty = Snapshot {
                core: me.clone(),
                strategy: strategy.clone(),
                entries: Pages::default(),
                index: ShardedMap::new(),
                candidates: CandidateList::default(),
                epoch: 0,
                deadline: None,
                tier: Tier::None,
                level: 0,
                counts: Counts::default(),
                delta: None,
            };
            Self {
                me: me.clone(),
                published: AtomicU64::new(0),
                maker,
                snap: ArcSwap::from_pointee(empty),
                write: Mutex::new(Writer {
                    retired: Vec::new(),
                    spare: None,
                }),
                pool,
                version: watch::channel(0).0,
                strategy,
                cfg,
                discover_error: Mutex::new(None),
                driver: Mutex::new(None),
            }
        })
    }

    /// Has every health change rebuild the candidate list on the thread that made it.
    pub(crate) fn rebuild_on_health_changes(self: &Arc<Self>)
    where
        K: 'static,
        S: Send + Sync + 'static,
    {
        let me = Arc::downgrade(self);
        let _ = self
            .pool
            .rebuild
            .set(super::endpoint::Rebuild(Box::new(move || {
                if let Some(core) = me.upgrade() {
                    core.refresh_now();
                }
            })));
    }

    pub(crate) fn set_driver(&self, task: tokio::task::AbortHandle) {
        *self.driver.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    /// The current snapshot, rebuilt first if health changed or an ejection ended.
    #[inline]
    pub(crate) fn current(&self) -> Guard<Arc<Snapshot<K, S>>> {
        let snap = self.snap.load();
        if !self.is_current(&snap) {
            drop(snap);
            self.refresh();
            return self.snap.load();
        }
        snap
    }

    /// Whether a snapshot cached by a caller is still the one to use: nothing was
    /// published since, health did not change, and no ejection ended.
    #[inline]
    pub(crate) fn is_fresh(&self, published: u64, snap: &Snapshot<K, S>) -> bool {
        published == self.published.load(Acquire) && self.is_current(snap)
    }

    /// Whether `snap`'s candidate list still holds: no health change since it was built,
    /// and no ejection it knows of has ended (the clock is read only while one is pending).
    #[inline]
    fn is_current(&self, snap: &Snapshot<K, S>) -> bool {
        snap.epoch == self.pool.changed.load(Acquire)
            && snap.deadline.is_none_or(|d| Instant::now() < d)
    }

    /// The current snapshot and its publication number, for callers that cache it.
    pub(crate) fn current_full(&self) -> (u64, Arc<Snapshot<K, S>>) {
        // Read the number first: a publish in between only makes the cache look stale.
        let published = self.published.load(Acquire);
        let snap = Guard::into_inner(self.current());
        let published = if snap.epoch == self.pool.changed.load(Acquire) {
            published
        } else {
            u64::MAX
        };
        (published, snap)
    }

    /// The snapshot as it is, without a health check (stats, tests).
    pub(crate) fn peek(&self) -> Arc<Snapshot<K, S>> {
        self.snap.load_full()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub(crate) fn discover_error(&self) -> Option<DiscoverError> {
        self.discover_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_discover_error(&self, err: Option<DiscoverError>) {
        *self
            .discover_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = err;
        self.version.send_modify(|v| *v += 1);
    }

    /// Rebuilds the candidate list now if the writer lock is free (a health writer calls
    /// this; under contention, or with the lock already held by this thread, the next
    /// request rebuilds it instead).
    fn refresh_now(&self) {
        let Ok(mut writer) = self.write.try_lock() else {
            return;
        };
        let cur = self.snap.load_full();
        if self.is_current(&cur) {
            return;
        }
        let epoch = self.pool.changed.load(Acquire);
        let next = self.build(cur.entries.clone(), cur.index.clone(), epoch);
        drop(cur);
        self.publish(&mut writer, next, false);
    }

    /// Rebuilds the candidate list from the same entries (health changed).
    pub(crate) fn refresh(&self) {
        let mut writer = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snap.load_full();
        let epoch = self.pool.changed.load(Acquire);
        if self.is_current(&cur) {
            return; // another thread already did it
        }
        let next = self.build(cur.entries.clone(), cur.index.clone(), epoch);
        drop(cur);
        self.publish(&mut writer, next, false);
    }

    /// Applies an edit to the entry list under the writer lock and publishes the result.
    ///
    /// The entries and index are copied on write (a page and a shard per change), and
    /// when few endpoints changed and health did not, the candidate list is updated from
    /// the previous one instead of rebuilt from every endpoint.
    pub(crate) fn edit<R>(&self, f: impl FnOnce(&mut Edit<K, S>) -> R) -> R {
        let mut writer = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snap.load_full();
        let mut edit = Edit {
            entries: cur.entries.clone(),
            index: cur.index.clone(),
            touched: Vec::new(),
            full: false,
        };
        let out = f(&mut edit);
        if !edit.full && edit.touched.is_empty() {
            return out; // nothing changed (a failed insert, an unknown key)
        }
        let epoch = self.pool.changed.load(Acquire);
        let next = match self.update(&mut writer, &cur, &mut edit, epoch) {
            Some((candidates, (tier, level), counts, delta)) => {
                self.pool.members.store(edit.entries.len(), Relaxed);
                Snapshot {
                    core: self.me.clone(),
                    strategy: self.strategy.clone(),
                    entries: edit.entries,
                    index: edit.index,
                    candidates,
                    epoch,
                    deadline: None,
                    tier,
                    level,
                    counts,
                    delta: Some(delta),
                }
            }
            None => self.build(edit.entries, edit.index, epoch),
        };
        drop(cur);
        self.publish(&mut writer, next, true);
        out
    }

    fn publish(&self, writer: &mut Writer<K, S>, next: Snapshot<K, S>, set_changed: bool) {
        let (tier, level) = (next.tier, next.level);
        let available = next.candidates.view().len();
        let total = next.entries.len();
        self.pool
            .publish_counts(&next.counts.live, &next.counts.available);
        let next = Arc::new(next);
        let prev = self.snap.swap(next.clone());
        self.published.fetch_add(1, Release);
        if (prev.tier, prev.level) != (tier, level) {
            match tier {
                Tier::Panic => tracing::warn!(
                    available,
                    total,
                    "tower_lb: panic mode: too few endpoints available, ignoring health"
                ),
                Tier::Backup => tracing::warn!(
                    total,
                    level = next.level,
                    "tower_lb: no primary available, using backups"
                ),
                Tier::None if total > 0 => {
                    tracing::warn!(total, "tower_lb: no endpoint available")
                }
                _ => tracing::info!(?tier, available, total, "tower_lb: candidate tier changed"),
            }
        }
        // Readers still holding the previous snapshot release it later: keep it, so that
        // the last release, which frees every candidate, happens in the writer.
        writer.retired.push(prev);
        writer.reap(next.delta.as_ref().map(|d| d.base));
        if set_changed && self.strategy.wants_rebuild() {
            let everything = CandidateList::new(
                next.entries
                    .iter()
                    .enumerate()
                    .map(|(pos, e)| candidate(e, pos))
                    .collect(),
            );
            self.strategy.rebuild(&everything.view());
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// Updates the candidate list of `cur` for the few endpoints `edit` touched, or
    /// `None` when it must be rebuilt: health changed since, an ejection is pending, slow
    /// start is on, the tier changes, or too many endpoints changed.
    fn update(
        &self,
        writer: &mut Writer<K, S>,
        cur: &Snapshot<K, S>,
        edit: &mut Edit<K, S>,
        epoch: u64,
    ) -> Option<(CandidateList, (Tier, u8), Counts, Delta)> {
        if edit.full
            || self.cfg.slow_start.is_some()
            || cur.epoch != epoch
            || cur.deadline.is_some()
            || !matches!(cur.tier, Tier::Primary | Tier::Backup)
        {
            return None;
        }
        let now = Instant::now();
        let status = |e: &Entry<K, S>| match e.state.status_at(now) {
            Status::Ejected { .. } => None,
            s => Some(s),
        };
        let mut counts = cur.counts.clone();
        for (key, before) in &edit.touched {
            if let Some(old) = before {
                counts.apply(level_of(old), status(old)?, false);
            }
            if let Some(new) = edit.get(key) {
                counts.apply(level_of(new), status(new)?, true);
            }
        }
        let tier = counts.tier(self.cfg.panic_threshold);
        if tier != (cur.tier, cur.level) {
            return None;
        }
        let level = cur.level;
        let ops: Vec<_> = std::mem::take(&mut edit.touched)
            .into_iter()
            .map(|(key, _)| {
                let wanted = edit.position(&key).and_then(|pos| {
                    let e = &edit.entries[pos];
                    (level_of(e) == level
                        && matches!(status(e), Some(Status::Healthy | Status::Probation)))
                    .then(|| candidate(e, pos))
                });
                (stable_hash(&key), wanted)
            })
            .collect();
        let mut list = Self::reuse(writer, cur).unwrap_or_else(|| cur.candidates.clone());
        apply(&mut list, &ops);
        list.finish(self.next_generation());
        let delta = Delta {
            base: cur.candidates.view().generation(),
            ops,
        };
        Some((list, tier, counts, delta))
    }

    /// The candidate list of the snapshot before `cur`, brought up to `cur`'s, if readers
    /// released that snapshot and `cur`'s list was derived from it.
    fn reuse(writer: &mut Writer<K, S>, cur: &Snapshot<K, S>) -> Option<CandidateList> {
        let delta = cur.delta.as_ref()?;
        writer.reap(Some(delta.base));
        let mut list = writer.spare.take()?;
        apply(&mut list, &delta.ops);
        Some(list)
    }

    /// A new candidate-list generation: the publication count, unique per list.
    fn next_generation(&self) -> u64 {
        self.published.load(Relaxed).wrapping_add(1)
    }

    /// Every endpoint's key and live state.
    pub(crate) fn members(&self) -> Vec<(K, Arc<EndpointState>)> {
        self.peek()
            .entries
            .iter()
            .map(|e| (e.backend.key().clone(), e.state.clone()))
            .collect()
    }

    fn build(&self, entries: Entries<K, S>, index: Index<K>, epoch: u64) -> Snapshot<K, S> {
        let now = Instant::now();
        let mut deadline: Option<Instant> = None;
        // Slow start: weights in hundredths, ramping after join or recovery; the snapshot
        // is rebuilt as the ramp goes on.
        let ramp = self.cfg.slow_start.map(|window| Ramp {
            window,
            now,
            next: std::cell::Cell::new(None),
        });
        let candidate = |e: &Arc<Entry<K, S>>, pos: usize| {
            let mut c = candidate(e, pos);
            if let Some(ramp) = &ramp {
                c.weight = ramp.weight(c.weight, &e.state);
            }
            c
        };
        // Available candidates by priority level.
        let mut by_level: Vec<Vec<Candidate>> = vec![Vec::new()];
        let mut counts = Counts::default();
        for (pos, e) in entries.iter().enumerate() {
            let status = e.state.status_at(now);
            if let Status::Ejected { remaining } = status {
                let end = now + remaining;
                deadline = Some(deadline.map_or(end, |d| d.min(end)));
            }
            counts.apply(level_of(e), status, true);
            if matches!(status, Status::Healthy | Status::Probation) {
                let level = usize::from(level_of(e));
                if by_level.len() <= level {
                    by_level.resize_with(level + 1, Vec::new);
                }
                by_level[level].push(candidate(e, pos));
            }
        }
        self.pool.members.store(entries.len(), Relaxed);
        let (tier, level) = counts.tier(self.cfg.panic_threshold);
        let list = match tier {
            Tier::Primary | Tier::Backup => std::mem::take(&mut by_level[usize::from(level)]),
            // Panic mode: every live endpoint of the level (the primaries if any is live,
            // else the lowest live backup level), whatever its health.
            Tier::Panic => entries
                .iter()
                .enumerate()
                .filter(|(_, e)| level_of(e) == level && !e.state.is_draining())
                .map(|(pos, e)| candidate(e, pos))
                .collect(),
            Tier::None => Vec::new(),
        };
        if let Some(next) = ramp.and_then(|r| r.next.get()) {
            deadline = Some(deadline.map_or(next, |d| d.min(next)));
        }
        Snapshot {
            core: self.me.clone(),
            strategy: self.strategy.clone(),
            entries,
            index,
            candidates: CandidateList::with_generation(list, self.next_generation()),
            epoch,
            deadline,
            tier,
            level,
            counts,
            delta: None,
        }
    }

    // === discovery updates ===

    /// Inserts or updates a backend, making its service with `make` under the writer
    /// lock (the state is reused when the key is known).
    pub(crate) fn insert_with(
        &self,
        backend: Backend<K>,
        make: impl FnOnce(&Target<'_, K>) -> Result<S, BoxError>,
    ) -> Result<(), ConfigError> {
        check_weight(&backend)?;
        self.edit(|edit| {
            let state = self.state_for(edit, &backend);
            let service = make(&Target {
                backend: &backend,
                state: &state,
            })
            .map_err(|e| make_error(&backend, &*e))?;
            upsert(edit, backend, service, state);
            Ok(())
        })
    }

    fn state_for(&self, edit: &Edit<K, S>, backend: &Backend<K>) -> Arc<EndpointState> {
        match edit.get(backend.key()) {
            Some(e) => e.state.clone(),
            None => Arc::new(EndpointState::new(
                self.pool.clone(),
                backend.max_conns(),
                backend.priority(),
            )),
        }
    }

    pub(crate) fn remove(&self, key: &K) -> bool {
        self.edit(|edit| edit.remove(key))
    }

    /// Replaces the whole set: keys not in `backends` are removed, the others inserted or
    /// updated (keeping their state).
    pub(crate) fn replace_with(
        &self,
        backends: Vec<Backend<K>>,
        mut make: impl FnMut(&Target<'_, K>) -> Result<S, BoxError>,
    ) -> Result<(), ConfigError> {
        for b in &backends {
            check_weight(b)?;
        }
        if backends.is_empty() && self.cfg.keep_last_on_empty && !self.peek().entries.is_empty() {
            tracing::warn!("tower_lb: discovery sent an empty set; keeping the last one");
            return Ok(());
        }
        self.edit(|edit| {
            // Make every service first, so a failure leaves the set untouched.
            let mut made = Vec::with_capacity(backends.len());
            for b in backends {
                let state = self.state_for(edit, &b);
                let service = make(&Target {
                    backend: &b,
                    state: &state,
                })
                .map_err(|e| make_error(&b, &*e))?;
                made.push((b, service, state));
            }
            let keep: std::collections::HashSet<&K> =
                made.iter().map(|(b, _, _)| b.key()).collect();
            let gone: Vec<K> = edit
                .index
                .keys()
                .filter(|k| !keep.contains(k))
                .cloned()
                .collect();
            for k in &gone {
                edit.remove(k);
            }
            for (b, s, st) in made {
                upsert(edit, b, s, st);
            }
            Ok(())
        })
    }

    pub(crate) fn with_entry<R>(&self, key: &K, f: impl FnOnce(&Entry<K, S>) -> R) -> Option<R> {
        let snap = self.peek();
        snap.index
            .get(stable_hash(key), key)
            .map(|&i| f(&snap.entries[i]))
    }

    pub(crate) fn set_weight(&self, key: &K, weight: u32) -> Result<(), ConfigError> {
        if weight == 0 {
            return Err(ConfigError::ZeroWeight {
                backend: key.to_string(),
            });
        }
        self.edit(|edit| match edit.position(key) {
            Some(i) => {
                let old = &edit.entries[i];
                let entry = Entry {
                    backend: old.backend.clone().with_weight(weight),
                    service: old.service.clone(),
                    state: old.state.clone(),
                    id: old.id,
                };
                edit.set(i, entry);
                Ok(())
            }
            None => Err(ConfigError::UnknownBackend {
                backend: key.to_string(),
            }),
        })
    }
}

/// Slow start (nginx Plus `slow_start`, Envoy with aggression 1): an endpoint's effective
/// weight is `weight × max(10 %, elapsed ÷ window)` after it joins or recovers.
struct Ramp {
    window: Duration,
    now: Instant,
    /// When the list should next be rebuilt to follow the ramp.
    next: std::cell::Cell<Option<Instant>>,
}

/// Slow-start weights are in hundredths of the configured weight.
pub(crate) const RAMP_SCALE: u32 = 100;
/// The smallest share of its weight an endpoint gets while ramping.
const RAMP_FLOOR: f64 = 0.1;
/// Rebuilds per window while an endpoint ramps.
const RAMP_STEPS: u32 = 20;

/// The share of its weight an endpoint that started ramping at `start` gets at `now`, or
/// `None` once the ramp is over.
pub(crate) fn ramp_share(window: Duration, start: Instant, now: Instant) -> Option<f64> {
    let elapsed = now.saturating_duration_since(start);
    if elapsed >= window || window.is_zero() {
        return None;
    }
    Some((elapsed.as_secs_f64() / window.as_secs_f64()).max(RAMP_FLOOR))
}

impl Ramp {
    fn weight(&self, weight: u32, state: &EndpointState) -> u32 {
        let full = weight.saturating_mul(RAMP_SCALE);
        let start = state.ramp_start();
        let Some(share) = ramp_share(self.window, start, self.now) else {
            return full;
        };
        // Rebuild at the next step of the ramp, or when it ends.
        let step = (self.window / RAMP_STEPS).max(Duration::from_millis(1));
        let next = later(self.now, step).min(later(start, self.window));
        self.next
            .set(Some(self.next.get().map_or(next, |n| n.min(next))));
        ((f64::from(full) * share).round() as u32).max(1)
    }
}

pub(crate) fn candidate<K, S>(e: &Arc<Entry<K, S>>, pos: usize) -> Candidate {
    Candidate {
        state: e.state.clone(),
        weight: e.backend.weight().max(1),
        id: e.id,
        pos,
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

fn make_error<K: Key>(
    backend: &Backend<K>,
    e: &(dyn std::error::Error + Send + Sync),
) -> ConfigError {
    ConfigError::Make {
        backend: backend.key().to_string(),
        reason: e.to_string(),
    }
}

fn upsert<K: Key, S>(
    edit: &mut Edit<K, S>,
    backend: Backend<K>,
    service: S,
    state: Arc<EndpointState>,
) {
    match edit.position(backend.key()) {
        Some(i) => {
            // Same key: new service and settings, same state.
            state.set_max_conns(backend.max_conns());
            state.set_level(backend.priority());
            let id = edit.entries[i].id;
            edit.set(
                i,
                Entry {
                    backend,
                    service,
                    state,
                    id,
                },
            );
        }
        None => {
            let id = stable_hash(backend.key());
            tracing::debug!(backend = %backend.key(), "tower_lb: endpoint added");
            edit.push(Entry {
                backend,
                service,
                state,
                id,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::strategy::RoundRobin;

    type TestCore = Core<&'static str, u32>;

    fn core(cfg: Config) -> Arc<TestCore> {
        Core::new(Arc::new(RoundRobin::new()), cfg, None)
    }

    fn insert(core: &TestCore, backend: Backend<&'static str>) {
        core.insert_with(backend, |_| Ok(0)).unwrap();
    }

    fn keys(core: &TestCore) -> Vec<&'static str> {
        core.peek()
            .entries
            .iter()
            .map(|e| *e.backend.key())
            .collect()
    }

    fn state(core: &TestCore, key: &'static str) -> Arc<EndpointState> {
        core.with_entry(&key, |e| e.state.clone()).unwrap()
    }

    /// The snapshot is self-consistent, and its candidate list (updated in place or
    /// not) holds what a full rebuild would.
    fn check(core: &TestCore) {
        let snap = core.peek();
        assert_eq!(snap.index.len(), snap.entries.len());
        for (pos, e) in snap.entries.iter().enumerate() {
            assert_eq!(snap.index.get(e.id, e.backend.key()), Some(&pos), "index");
        }
        let view = snap.candidates.view();
        let mut total = 0;
        for (i, c) in view.iter().enumerate() {
            let e = &snap.entries[c.pos];
            assert_eq!(e.id, c.id, "candidate position");
            assert_eq!(view.position(c.id), Some(i), "candidate id index");
            assert_eq!(c.weight, e.backend.weight());
            total += u64::from(c.weight);
            assert_eq!(view.cumulative()[i], total, "weight sums");
        }
        assert_eq!(view.cumulative().len(), view.len());
        assert_eq!(view.total_weight(), total);
        assert_eq!(
            view.uniform(),
            view.windows(2).all(|w| w[0].weight == w[1].weight)
        );
        let full = core.build(snap.entries.clone(), snap.index.clone(), snap.epoch);
        let sorted = |l: &CandidateList| {
            let mut v: Vec<_> = l.view().iter().map(|c| (c.id, c.pos, c.weight)).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(sorted(&full.candidates), sorted(&snap.candidates));
        assert_eq!(full.tier, snap.tier);
        assert_eq!(full.level, snap.level);
        assert_eq!(full.counts, snap.counts);
    }

    #[test]
    fn remove_in_the_middle_moves_the_last_into_place() {
        let core = core(Config::default());
        for k in ["a", "b", "c", "d", "e"] {
            insert(&core, Backend::new(k));
        }
        assert_eq!(keys(&core), ["a", "b", "c", "d", "e"]);
        let d = state(&core, "d");
        assert!(core.remove(&"b"));
        assert_eq!(keys(&core), ["a", "e", "c", "d"]);
        check(&core);
        assert!(!core.remove(&"b"));
        // Removing the last one moves nothing.
        assert!(core.remove(&"d"));
        assert_eq!(keys(&core), ["a", "e", "c"]);
        check(&core);
        // Re-inserted keys go to the end, with a fresh state.
        insert(&core, Backend::new("d"));
        assert_eq!(keys(&core), ["a", "e", "c", "d"]);
        assert!(!Arc::ptr_eq(&d, &state(&core, "d")));
        check(&core);
        // Removing the first.
        assert!(core.remove(&"a"));
        assert_eq!(keys(&core), ["d", "e", "c"]);
        check(&core);
    }

    #[test]
    fn updates_keep_position_and_state() {
        let core = core(Config::default());
        for k in ["a", "b", "c"] {
            insert(&core, Backend::new(k));
        }
        let b = state(&core, "b");
        insert(&core, Backend::new("b").with_weight(3));
        core.set_weight(&"a", 2).unwrap();
        assert_eq!(keys(&core), ["a", "b", "c"]);
        assert!(Arc::ptr_eq(&b, &state(&core, "b")));
        check(&core);
        assert!(!core.peek().candidates.view().uniform());
        core.set_weight(&"a", 1).unwrap();
        core.set_weight(&"b", 1).unwrap();
        check(&core);
        assert!(core.peek().candidates.view().uniform());
    }

    #[test]
    fn replace_keeps_states_of_kept_keys() {
        let core = core(Config::default());
        for k in ["a", "b", "c", "d"] {
            insert(&core, Backend::new(k));
        }
        let (a, c) = (state(&core, "a"), state(&core, "c"));
        core.replace_with(
            vec![Backend::new("c"), Backend::new("e"), Backend::new("a")],
            |_| Ok(1),
        )
        .unwrap();
        let mut now = keys(&core);
        now.sort_unstable();
        assert_eq!(now, ["a", "c", "e"]);
        assert!(Arc::ptr_eq(&a, &state(&core, "a")));
        assert!(Arc::ptr_eq(&c, &state(&core, "c")));
        check(&core);
        // A failing maker leaves the set as it was.
        let err = core.replace_with(vec![Backend::new("x")], |_| Err("no".into()));
        assert!(err.is_err());
        assert_eq!(core.peek().entries.len(), 3);
    }

    #[test]
    fn an_edit_that_changes_nothing_publishes_nothing() {
        let core = core(Config::default());
        insert(&core, Backend::new("a"));
        let before = core.published.load(Acquire);
        assert!(!core.remove(&"zz"));
        assert!(core.set_weight(&"zz", 2).is_err());
        assert_eq!(core.published.load(Acquire), before);
    }

    /// Many random single changes, with readers holding some snapshots (so the list is
    /// sometimes copied, sometimes replayed in place), two backup levels, drains and tier
    /// changes:
    /// every snapshot matches a full rebuild.
    #[test]
    fn random_changes_match_a_full_rebuild() {
        const KEYS: [&str; 12] = [
            "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "k8", "k9", "k10", "k11",
        ];
        for threshold in [0.0, 0.5] {
            let core = core(Config {
                panic_threshold: threshold,
                ..Config::default()
            });
            let mut rng = 0x2545_f491_4f6c_dd1d_u64;
            let mut next = move |n: u64| {
                rng = crate::backend::mix64(rng);
                rng % n
            };
            let mut held = Vec::new();
            for step in 0..3000 {
                let key = KEYS[next(KEYS.len() as u64) as usize];
                match next(10) {
                    0..=3 => {
                        let b = Backend::new(key).with_weight(1 + next(2) as u32);
                        let b = b.with_priority(match next(8) {
                            0 => 1,
                            1 => 2,
                            _ => 0,
                        });
                        insert(&core, b);
                    }
                    4..=6 => {
                        core.remove(&key);
                    }
                    7 => {
                        let _ = core.set_weight(&key, 1 + next(3) as u32);
                    }
                    8 => {
                        if let Some(st) = core.with_entry(&key, |e| e.state.clone()) {
                            st.set_draining(!st.is_draining());
                        }
                    }
                    _ => {
                        if next(2) == 0 {
                            held.push(core.peek());
                        } else {
                            held.clear();
                        }
                    }
                }
                // Health changes are picked up the way requests pick them up.
                drop(core.current());
                check(&core);
                if step % 500 == 0 {
                    core.replace_with(vec![Backend::new("k1"), Backend::new("k2")], |_| Ok(2))
                        .unwrap();
                    check(&core);
                }
            }
        }
    }

    #[test]
    fn released_snapshots_are_freed_by_the_writer() {
        let core = core(Config::default());
        for k in ["a", "b", "c"] {
            insert(&core, Backend::new(k));
        }
        let held = core.peek();
        insert(&core, Backend::new("d"));
        // The reader's snapshot is retired, not dropped.
        assert_eq!(Arc::strong_count(&held), 2);
        drop(held);
        // The next change frees it (or reuses its candidate list).
        core.remove(&"d");
        let writer = core.write.lock().unwrap();
        assert!(writer.retired.iter().all(|s| Arc::strong_count(s) > 1));
    }
}
