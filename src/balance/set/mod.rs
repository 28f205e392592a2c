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

mod delta;
mod edit;
mod ramp;
#[cfg(test)]
mod tests;
mod tier;

use delta::*;
pub(crate) use edit::Edit;

pub(crate) use ramp::ramp_share;

use ramp::*;
pub use tier::Tier;
use tier::*;

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
    /// The balancer's latency clock (a copy of its config's), so a request reads it from
    /// the snapshot it holds rather than carrying its own copy.
    pub(crate) clock: crate::balance::clock::Clock,
    /// How many endpoints of each priority level are live and available, so one change
    /// can update the candidate list without looking at every endpoint.
    counts: Counts,
    /// How the candidate list was derived from the previous snapshot's, when it was
    /// updated rather than rebuilt.
    delta: Option<Delta>,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) panic_threshold: f64,
    pub(crate) keep_last_on_empty: bool,
    pub(crate) fail_fast: Duration,
    pub(crate) retries: usize,
    pub(crate) track_latency: bool,
    /// The clock latency is measured with, chosen when the balancer is built.
    pub(crate) clock: crate::balance::clock::Clock,
    /// Slow-start window (off when `None`).
    pub(crate) slow_start: Option<Duration>,
    /// Hedging (off when `None`): its delay, histogram and budget, shared by the clones.
    pub(crate) hedge: Option<std::sync::Arc<crate::balance::hedge::Shared>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            panic_threshold: 0.5,
            keep_last_on_empty: false,
            fail_fast: Duration::from_secs(1),
            retries: 2,
            track_latency: false,
            clock: crate::balance::clock::Clock::default(),
            slow_start: None,
            hedge: None,
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
    /// With subsetting, the whole set the sources wrote; handles write through it.
    pub(crate) subset: std::sync::OnceLock<Arc<crate::discover::subset::SubsetState<K>>>,
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
        let pool = Arc::new(Pool {
            clock: cfg.clock,
            ..Pool::default()
        });
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
                clock: cfg.clock,
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
                subset: std::sync::OnceLock::new(),
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
        let mut slot = self
            .discover_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if slot.is_none() && err.is_none() {
            // Nothing to clear: no change to announce.
            return;
        }
        *slot = err;
        drop(slot);
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
                    clock: self.cfg.clock,
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
            clock: self.cfg.clock,
            counts,
            delta: None,
        }
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
