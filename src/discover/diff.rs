//! Applies a source's desired endpoint set to a [`Handle`] as differences, so unchanged
//! backends keep their service and state, and logs each change.

use std::collections::{HashMap, HashSet};

use super::Handle;
use crate::{
    backend::Backend,
    balance::Key,
    error::{BoxError, ConfigError},
};

/// Above this many inserts, updates and removals, one atomic [`Handle::replace`] (one
/// snapshot, one rebuild of the candidate list) is cheaper than one snapshot per change
/// (each copies a page of the set and updates the candidate list in place).
const REPLACE_ABOVE: usize = 32;

/// What a source wants in the set: a backend, and whether it should get no new requests
/// (a Kubernetes endpoint that is terminating).
#[derive(Debug, Clone)]
pub(crate) struct Desired<K> {
    pub(crate) backend: Backend<K>,
    pub(crate) draining: bool,
}

impl<K> Desired<K> {
    // Used by the DNS and file sources; the Kubernetes source builds its own.
    #[cfg_attr(not(any(feature = "dns", feature = "file")), allow(dead_code))]
    pub(crate) fn new(backend: Backend<K>) -> Self {
        Self {
            backend,
            draining: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Applied {
    weight: u32,
    priority: u8,
    max_conns: usize,
    draining: bool,
}

impl Applied {
    fn of<K>(d: &Desired<K>) -> Self {
        Self {
            weight: d.backend.weight().max(1),
            priority: d.backend.priority(),
            max_conns: d.backend.max_conns(),
            draining: d.draining,
        }
    }
}

/// Counts of what one [`SetSync::apply`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) added: usize,
    pub(crate) removed: usize,
    pub(crate) updated: usize,
    pub(crate) drained: usize,
    pub(crate) undrained: usize,
    pub(crate) total: usize,
}

impl Changes {
    pub(crate) fn is_empty(&self) -> bool {
        self.added + self.removed + self.updated + self.drained + self.undrained == 0
    }
}

/// Remembers what was last applied and turns the next desired set into the fewest handle
/// calls.
///
/// The source owns the balancer's set: the first application, and any after a failed
/// one, is a whole [`Handle::replace`].
pub(crate) struct SetSync<K> {
    handle: Handle<K>,
    last: HashMap<K, Applied>,
    /// The last application failed half-way: the next one replaces the whole set.
    dirty: bool,
    first: bool,
    /// An error was reported to the handle and not cleared yet.
    reported: bool,
}

impl<K: Key> SetSync<K> {
    pub(crate) fn new(handle: Handle<K>) -> Self {
        Self {
            handle,
            last: HashMap::new(),
            dirty: false,
            first: true,
            reported: false,
        }
    }

    /// Reports a source error to the balancer while no set was ever applied, so requests
    /// fail with it rather than with `NoEndpoints`; once a set was applied, the last set
    /// is kept and serves, and the error is only logged by the source.
    pub(crate) fn report_error(&mut self, error: impl Into<BoxError>) {
        if self.first {
            self.handle.report_error(error);
            self.reported = true;
        }
    }

    /// How many backends were last applied.
    pub(crate) fn len(&self) -> usize {
        self.last.len()
    }

    /// Applies `next`. Duplicated keys keep their first occurrence. A draining backend the
    /// set does not hold yet is left out: it would get no request anyway.
    pub(crate) fn apply(&mut self, next: Vec<Desired<K>>) -> Result<Changes, ConfigError> {
        let mut seen = HashSet::with_capacity(next.len());
        let next: Vec<Desired<K>> = next
            .into_iter()
            .filter(|d| seen.insert(d.backend.key().clone()))
            .filter(|d| !d.draining || self.last.contains_key(d.backend.key()))
            .collect();
        let result = if self.first || self.dirty || next.is_empty() {
            self.replace_all(next)
        } else {
            self.apply_diff(next)
        };
        self.dirty = result.is_err();
        self.first &= result.is_err();
        if !self.first && self.reported {
            self.handle.clear_error();
            self.reported = false;
        }
        result
    }

    fn replace_all(&mut self, next: Vec<Desired<K>>) -> Result<Changes, ConfigError> {
        let mut changes = Changes::default();
        let now: HashMap<K, Applied> = next
            .iter()
            .map(|d| (d.backend.key().clone(), Applied::of(d)))
            .collect();
        for (k, a) in &now {
            match self.last.get(k) {
                None => changes.added += 1,
                Some(old) if old != a => changes.updated += 1,
                Some(_) => {}
            }
        }
        changes.removed = self.last.keys().filter(|k| !now.contains_key(k)).count();
        let draining: Vec<K> = next
            .iter()
            .filter(|d| d.draining)
            .map(|d| d.backend.key().clone())
            .collect();
        // Drain before the swap, so a backend that starts terminating gets nothing new.
        for k in &draining {
            let _ = self.handle.drain(k);
        }
        self.handle.replace(next.into_iter().map(|d| d.backend))?;
        for (k, a) in &now {
            if !a.draining && self.last.get(k).is_some_and(|o| o.draining) {
                // The state of a known key survives `replace`, draining flag included.
                self.handle.undrain(k)?;
            }
        }
        changes.drained = draining.len();
        changes.total = now.len();
        if now.is_empty() && !self.handle.keys().is_empty() {
            // The balancer keeps its last non-empty set (`keep_last_on_empty`).
            return Ok(Changes {
                total: self.last.len(),
                ..Changes::default()
            });
        }
        self.last = now;
        Ok(changes)
    }

    fn apply_diff(&mut self, next: Vec<Desired<K>>) -> Result<Changes, ConfigError> {
        let keys: HashSet<&K> = next.iter().map(|d| d.backend.key()).collect();
        let gone: Vec<K> = self
            .last
            .keys()
            .filter(|k| !keys.contains(k))
            .cloned()
            .collect();
        drop(keys);
        let mut upserts = Vec::new();
        let mut reweights = Vec::new();
        let mut drains = Vec::new();
        let mut undrains = Vec::new();
        for d in next.iter() {
            let a = Applied::of(d);
            let key = d.backend.key();
            match self.last.get(key) {
                None => upserts.push(d.clone()),
                Some(old) => {
                    if (old.priority, old.max_conns) != (a.priority, a.max_conns) {
                        upserts.push(d.clone());
                    } else if old.weight != a.weight {
                        reweights.push((key.clone(), a.weight));
                    }
                    match (old.draining, a.draining) {
                        (false, true) => drains.push(key.clone()),
                        (true, false) => undrains.push(key.clone()),
                        _ => {}
                    }
                }
            }
        }
        let ops = upserts.len() + reweights.len() + gone.len();
        if ops > REPLACE_ABOVE {
            return self.replace_all(next);
        }
        let mut changes = Changes {
            total: next.len(),
            removed: gone.len(),
            drained: drains.len(),
            undrained: undrains.len(),
            ..Changes::default()
        };
        // Order matters: drain first and remove last, so the set never shrinks below what
        // both the old and the new set agree on.
        for k in &drains {
            self.handle.drain(k)?;
        }
        for d in upserts {
            let k = d.backend.key().clone();
            if self.last.contains_key(&k) {
                changes.updated += 1;
            } else {
                changes.added += 1;
            }
            self.handle.insert(d.backend)?;
        }
        for (k, w) in &reweights {
            changes.updated += 1;
            self.handle.set_weight(k, *w)?;
        }
        for k in &undrains {
            self.handle.undrain(k)?;
        }
        for k in &gone {
            self.handle.remove(k);
        }
        self.last = next
            .iter()
            .map(|d| (d.backend.key().clone(), Applied::of(d)))
            .collect();
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{Status, Target};
    use std::convert::Infallible;
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    use tower::service_fn;

    type Svc<K> = tower::util::BoxCloneSyncService<(), K, Infallible>;

    fn balance(made: Arc<AtomicUsize>) -> crate::Balance<u32, Svc<u32>> {
        crate::Balance::builder()
            .build(move |t: &Target<'_, u32>| {
                made.fetch_add(1, Ordering::SeqCst);
                let k = *t.key();
                Svc::new(service_fn(
                    move |_: ()| async move { Ok::<_, Infallible>(k) },
                ))
            })
            .unwrap()
    }

    fn set(keys: &[(u32, u32)]) -> Vec<Desired<u32>> {
        keys.iter()
            .map(|&(k, w)| Desired::new(Backend::new(k).with_weight(w)))
            .collect()
    }

    #[test]
    fn first_apply_replaces_then_only_differences_are_made() {
        let made = Arc::new(AtomicUsize::new(0));
        let b = balance(made.clone());
        let mut sync = SetSync::new(b.handle());
        let c = sync.apply(set(&[(1, 1), (2, 1), (3, 1)])).unwrap();
        assert_eq!((c.added, c.total), (3, 3));
        assert_eq!(made.load(Ordering::SeqCst), 3);
        let c = sync.apply(set(&[(1, 1), (2, 5), (4, 1)])).unwrap();
        assert_eq!((c.added, c.removed, c.updated), (1, 1, 1));
        // Only the new backend was made; the re-weight kept 2's service.
        assert_eq!(made.load(Ordering::SeqCst), 4);
        assert_eq!(b.handle().keys(), [1, 2, 4]);
        let c = sync.apply(set(&[(1, 1), (2, 5), (4, 1)])).unwrap();
        assert!(c.is_empty());
        assert_eq!(made.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn draining_is_toggled_and_new_draining_backends_are_left_out() {
        let b = balance(Arc::default());
        let mut sync = SetSync::new(b.handle());
        sync.apply(set(&[(1, 1), (2, 1)])).unwrap();
        let mut next = set(&[(1, 1), (2, 1), (3, 1)]);
        next[1].draining = true;
        next[2].draining = true;
        let c = sync.apply(next).unwrap();
        assert_eq!((c.drained, c.added), (1, 0));
        assert_eq!(b.handle().keys(), [1, 2]);
        let status = |k: u32| {
            b.stats()
                .backends
                .into_iter()
                .find(|s| s.key == k)
                .unwrap()
                .status
        };
        assert_eq!(status(2), Status::Draining);
        let c = sync.apply(set(&[(1, 1), (2, 1)])).unwrap();
        assert_eq!(c.undrained, 1);
        assert_eq!(status(2), Status::Healthy);
    }

    #[test]
    fn large_changes_use_one_replace() {
        let b = balance(Arc::default());
        let mut sync = SetSync::new(b.handle());
        sync.apply(set(&[(0, 1)])).unwrap();
        let big: Vec<(u32, u32)> = (1..=100).map(|k| (k, 1)).collect();
        let c = sync.apply(set(&big)).unwrap();
        assert_eq!((c.added, c.removed, c.total), (100, 1, 100));
        assert_eq!(b.handle().keys().len(), 100);
    }

    #[tokio::test]
    async fn errors_before_the_first_set_fail_requests_then_clear() {
        use tower::{Service, ServiceExt};
        let mut b = crate::Balance::builder()
            .fail_fast(std::time::Duration::ZERO)
            .build(|t: &Target<'_, u32>| {
                let k = *t.key();
                Svc::new(service_fn(
                    move |_: ()| async move { Ok::<_, Infallible>(k) },
                ))
            })
            .unwrap();
        let mut sync = SetSync::new(b.handle());
        // No set yet: a plain `NoEndpoints`.
        let err = b.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.is::<crate::error::NoEndpoints>(), "{err}");
        // The source fails before its first set: requests say why.
        sync.report_error("resolver unreachable");
        let err = b.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(err.is::<crate::error::DiscoverError>(), "{err}");
        assert!(err.to_string().contains("resolver unreachable"), "{err}");
        assert!(b.stats().discover_error.is_some());
        // The first good set clears it.
        sync.apply(set(&[(1, 1)])).unwrap();
        assert!(b.stats().discover_error.is_none());
        assert_eq!(b.ready().await.unwrap().call(()).await.unwrap(), 1);
        // Later errors keep the set and are not reported.
        sync.report_error("flap");
        assert!(b.stats().discover_error.is_none());
        // An explicit report through the handle, and its clearing.
        b.handle().report_error("down");
        assert!(b.stats().discover_error.is_some());
        b.handle().clear_error();
        assert!(b.stats().discover_error.is_none());
    }
}
