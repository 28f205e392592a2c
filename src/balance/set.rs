//! The shared endpoint set: copy-on-write snapshots behind an `ArcSwap`, so readers never
//! block, and one writer lock for discovery updates and health-driven rebuilds.

use std::{
    collections::HashMap,
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
    endpoint::{EndpointState, Pool, Status},
    strategy::{Candidate, CandidateList, Strategy},
};
use crate::{
    backend::{stable_hash, Backend},
    error::{BoxError, ConfigError, DiscoverError},
};

/// What a backend key must be: hashable (state is keyed by it), cloneable, printable (it
/// names the backend in logs, errors and stats), and shareable across threads.
///
/// Implemented for every type with those traits: `SocketAddr`, `String`, `&'static str`,
/// `http::Uri`, `http::uri::Authority`, integers…
pub trait Key: std::hash::Hash + Eq + Clone + fmt::Display + Send + Sync + 'static {}

impl<T> Key for T where T: std::hash::Hash + Eq + Clone + fmt::Display + Send + Sync + 'static {}

/// Which group of endpoints the candidate list was drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Tier {
    /// Available primaries.
    Primary,
    /// No primary is available: backups serve.
    Backup,
    /// Panic mode: too few endpoints are available, so health is ignored and every
    /// non-draining endpoint is used (Envoy's panic threshold).
    Panic,
    /// Nothing can serve.
    None,
}

pub(crate) struct Entry<K, S> {
    pub(crate) backend: Backend<K>,
    pub(crate) service: S,
    pub(crate) state: Arc<EndpointState>,
    pub(crate) id: u64,
}

pub(crate) struct Snapshot<K, S> {
    /// The balancer, for requests that must wait or re-pick; weak, to avoid a cycle.
    pub(crate) core: Weak<Core<K, S>>,
    /// The strategy, so a request can re-pick from its snapshot even if the balancer is
    /// gone (the last clone was consumed by `oneshot`).
    pub(crate) strategy: Arc<dyn Strategy>,
    pub(crate) entries: Vec<Arc<Entry<K, S>>>,
    pub(crate) index: HashMap<K, usize>,
    pub(crate) candidates: CandidateList,
    pub(crate) epoch: u64,
    /// The earliest time the candidate list may change by itself (an ejection ends).
    pub(crate) deadline: Option<Instant>,
    pub(crate) tier: Tier,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) panic_threshold: f64,
    pub(crate) keep_last_on_empty: bool,
    pub(crate) fail_fast: Duration,
    pub(crate) retries: usize,
    pub(crate) track_latency: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            panic_threshold: 0.5,
            keep_last_on_empty: false,
            fail_fast: Duration::from_secs(1),
            retries: 2,
            track_latency: false,
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
    write: Mutex<()>,
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
                entries: Vec::new(),
                index: HashMap::new(),
                candidates: CandidateList::default(),
                epoch: 0,
                deadline: None,
                tier: Tier::None,
            };
            Self {
                me: me.clone(),
                published: AtomicU64::new(0),
                maker,
                snap: ArcSwap::from_pointee(empty),
                write: Mutex::new(()),
                pool,
                version: watch::channel(0).0,
                strategy,
                cfg,
                discover_error: Mutex::new(None),
                driver: Mutex::new(None),
            }
        })
    }

    pub(crate) fn set_driver(&self, task: tokio::task::AbortHandle) {
        *self.driver.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }

    /// The current snapshot, rebuilt first if health changed or an ejection ended.
    #[inline]
    pub(crate) fn current(&self) -> Guard<Arc<Snapshot<K, S>>> {
        let snap = self.snap.load();
        let stale = snap.epoch != self.pool.changed.load(Acquire)
            || snap.deadline.is_some_and(|d| Instant::now() >= d);
        if stale {
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
        published == self.published.load(Acquire)
            && snap.epoch == self.pool.changed.load(Acquire)
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

    /// Rebuilds the candidate list from the same entries (health changed).
    pub(crate) fn refresh(&self) {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snap.load_full();
        let epoch = self.pool.changed.load(Acquire);
        if cur.epoch == epoch && cur.deadline.is_none_or(|d| Instant::now() < d) {
            return; // another thread already did it
        }
        let next = self.build(cur.entries.clone(), cur.index.clone(), epoch);
        self.publish(next, false);
    }

    /// Applies an edit to the entry list under the writer lock and publishes the result.
    pub(crate) fn edit<R>(
        &self,
        f: impl FnOnce(&mut Vec<Arc<Entry<K, S>>>, &mut HashMap<K, usize>) -> R,
    ) -> R {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.snap.load_full();
        let mut entries = cur.entries.clone();
        let mut index = cur.index.clone();
        let out = f(&mut entries, &mut index);
        let epoch = self.pool.changed.load(Acquire);
        let next = self.build(entries, index, epoch);
        self.publish(next, true);
        out
    }

    fn publish(&self, next: Snapshot<K, S>, set_changed: bool) {
        let tier = next.tier;
        let available = next.candidates.view().len();
        let total = next.entries.len();
        let prev = self.snap.swap(Arc::new(next));
        self.published.fetch_add(1, Release);
        if prev.tier != tier {
            match tier {
                Tier::Panic => tracing::warn!(
                    available,
                    total,
                    "tower_lb: panic mode: too few endpoints available, ignoring health"
                ),
                Tier::Backup => {
                    tracing::warn!(total, "tower_lb: no primary available, using backups")
                }
                Tier::None if total > 0 => {
                    tracing::warn!(total, "tower_lb: no endpoint available")
                }
                _ => tracing::info!(?tier, available, total, "tower_lb: candidate tier changed"),
            }
        }
        if set_changed {
            let all = self.snap.load();
            let everything = CandidateList::new(
                all.entries
                    .iter()
                    .enumerate()
                    .map(|(pos, e)| candidate(e, pos))
                    .collect(),
            );
            self.strategy.rebuild(&everything.view());
        }
        self.version.send_modify(|v| *v += 1);
    }

    fn build(
        &self,
        entries: Vec<Arc<Entry<K, S>>>,
        index: HashMap<K, usize>,
        epoch: u64,
    ) -> Snapshot<K, S> {
        let now = Instant::now();
        let mut deadline: Option<Instant> = None;
        let mut primaries = Vec::new();
        let mut backups = Vec::new();
        let mut live_primaries = 0usize;
        let mut live_backups = 0usize;
        for (pos, e) in entries.iter().enumerate() {
            let status = e.state.status_at(now);
            if let Status::Ejected { remaining } = status {
                let end = now + remaining;
                deadline = Some(deadline.map_or(end, |d| d.min(end)));
            }
            if status == Status::Draining {
                continue;
            }
            let available = matches!(status, Status::Healthy | Status::Probation);
            if e.backend.is_backup() {
                live_backups += 1;
                if available {
                    backups.push(candidate(e, pos));
                }
            } else {
                live_primaries += 1;
                if available {
                    primaries.push(candidate(e, pos));
                }
            }
        }
        self.pool.members.store(entries.len(), Relaxed);
        let threshold = self.cfg.panic_threshold;
        let share = if live_primaries == 0 {
            0.0
        } else {
            primaries.len() as f64 / live_primaries as f64
        };
        let all_live = |backup: bool| -> Vec<Candidate> {
            entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.backend.is_backup() == backup && !e.state.is_draining())
                .map(|(pos, e)| candidate(e, pos))
                .collect()
        };
        let (tier, list) = if !primaries.is_empty() && share >= threshold {
            (Tier::Primary, primaries)
        } else if primaries.is_empty() && !backups.is_empty() {
            (Tier::Backup, backups)
        } else if threshold > 0.0 && live_primaries > 0 {
            (Tier::Panic, all_live(false))
        } else if !primaries.is_empty() {
            (Tier::Primary, primaries)
        } else if threshold > 0.0 && live_backups > 0 {
            (Tier::Panic, all_live(true))
        } else {
            (Tier::None, Vec::new())
        };
        Snapshot {
            core: self.me.clone(),
            strategy: self.strategy.clone(),
            entries,
            index,
            candidates: CandidateList::with_generation(list, epoch.wrapping_add(1)),
            epoch,
            deadline,
            tier,
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
        self.edit(|entries, index| {
            let state = self.state_for(entries, index, &backend);
            let service = make(&Target {
                backend: &backend,
                state: &state,
            })
            .map_err(|e| make_error(&backend, &*e))?;
            upsert(entries, index, backend, service, state);
            Ok(())
        })
    }

    fn state_for(
        &self,
        entries: &[Arc<Entry<K, S>>],
        index: &HashMap<K, usize>,
        backend: &Backend<K>,
    ) -> Arc<EndpointState> {
        match index.get(backend.key()) {
            Some(&i) => entries[i].state.clone(),
            None => Arc::new(EndpointState::new(
                self.pool.clone(),
                backend.get_max_conns(),
            )),
        }
    }

    pub(crate) fn remove(&self, key: &K) -> bool {
        self.edit(|entries, index| remove(&self.pool, entries, index, key))
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
        self.edit(|entries, index| {
            // Make every service first, so a failure leaves the set untouched.
            let mut made = Vec::with_capacity(backends.len());
            for b in backends {
                let state = self.state_for(entries, index, &b);
                let service = make(&Target {
                    backend: &b,
                    state: &state,
                })
                .map_err(|e| make_error(&b, &*e))?;
                made.push((b, service, state));
            }
            let keep: std::collections::HashSet<&K> =
                made.iter().map(|(b, _, _)| b.key()).collect();
            let gone: Vec<K> = index
                .keys()
                .filter(|k| !keep.contains(k))
                .cloned()
                .collect();
            for k in &gone {
                remove(&self.pool, entries, index, k);
            }
            for (b, s, st) in made {
                upsert(entries, index, b, s, st);
            }
            Ok(())
        })
    }

    pub(crate) fn with_entry<R>(&self, key: &K, f: impl FnOnce(&Entry<K, S>) -> R) -> Option<R> {
        let snap = self.peek();
        snap.index.get(key).map(|&i| f(&snap.entries[i]))
    }

    pub(crate) fn set_weight(&self, key: &K, weight: u32) -> Result<(), ConfigError> {
        if weight == 0 {
            return Err(ConfigError::ZeroWeight {
                backend: key.to_string(),
            });
        }
        self.edit(|entries, index| match index.get(key) {
            Some(&i) => {
                let old = &entries[i];
                entries[i] = Arc::new(Entry {
                    backend: old.backend.clone().weight(weight),
                    service: old.service.clone(),
                    state: old.state.clone(),
                    id: old.id,
                });
                Ok(())
            }
            None => Err(ConfigError::UnknownBackend {
                backend: key.to_string(),
            }),
        })
    }
}

pub(crate) fn candidate<K, S>(e: &Arc<Entry<K, S>>, pos: usize) -> Candidate {
    Candidate {
        state: e.state.clone(),
        weight: e.backend.get_weight().max(1),
        id: e.id,
        pos,
    }
}

fn check_weight<K: Key>(backend: &Backend<K>) -> Result<(), ConfigError> {
    if backend.get_weight() == 0 {
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
    entries: &mut Vec<Arc<Entry<K, S>>>,
    index: &mut HashMap<K, usize>,
    backend: Backend<K>,
    service: S,
    state: Arc<EndpointState>,
) {
    match index.get(backend.key()) {
        Some(&i) => {
            // Same key: new service and settings, same state.
            state.set_max_conns(backend.get_max_conns());
            let id = entries[i].id;
            entries[i] = Arc::new(Entry {
                backend,
                service,
                state,
                id,
            });
        }
        None => {
            let id = stable_hash(backend.key());
            index.insert(backend.key().clone(), entries.len());
            tracing::debug!(backend = %backend.key(), "tower_lb: endpoint added");
            entries.push(Arc::new(Entry {
                backend,
                service,
                state,
                id,
            }));
        }
    }
}

fn remove<K: Key, S>(
    pool: &Arc<Pool>,
    entries: &mut Vec<Arc<Entry<K, S>>>,
    index: &mut HashMap<K, usize>,
    key: &K,
) -> bool {
    let Some(i) = index.remove(key) else {
        return false;
    };
    let gone = entries.remove(i);
    if gone.state.on_probation_or_ejected() {
        pool.ejected.fetch_sub(1, Relaxed);
    }
    for v in index.values_mut() {
        if *v > i {
            *v -= 1;
        }
    }
    tracing::debug!(backend = %key, "tower_lb: endpoint removed");
    true
}
