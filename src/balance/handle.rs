use std::{fmt, sync::Arc};

use crate::{
    backend::Backend,
    balance::{EndpointState, Key, Stats},
    error::{BoxError, ConfigError, DiscoverError},
};

use super::set::Core;

/// Changes applied to a balancer's endpoint set, type-erased over the service type.
pub(crate) trait Apply<K>: Send + Sync {
    fn insert(&self, backend: Backend<K>) -> Result<(), ConfigError>;
    fn remove(&self, key: &K) -> bool;
    fn set_weight(&self, key: &K, weight: u32) -> Result<(), ConfigError>;
    fn set_draining(&self, key: &K, draining: bool) -> Result<(), ConfigError>;
    fn replace(&self, backends: Vec<Backend<K>>) -> Result<(), ConfigError>;
    fn keys(&self) -> Vec<K>;
    fn len(&self) -> usize;
    fn listing(&self) -> Vec<Listed<K>>;
    fn stats(&self) -> Stats<K>;
    fn set_error(&self, error: Option<DiscoverError>);
    fn members(&self) -> Vec<(K, Arc<EndpointState>)>;
    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64>;
}

impl<K: Key, S: Clone + Send + Sync + 'static> Apply<K> for Core<K, S> {
    fn insert(&self, backend: Backend<K>) -> Result<(), ConfigError> {
        let maker = self.maker.clone().ok_or(ConfigError::NoMaker)?;
        self.insert_with(backend, |t| maker(t))
    }

    fn remove(&self, key: &K) -> bool {
        Self::remove(self, key)
    }

    fn set_weight(&self, key: &K, weight: u32) -> Result<(), ConfigError> {
        Self::set_weight(self, key, weight)
    }

    fn set_draining(&self, key: &K, draining: bool) -> Result<(), ConfigError> {
        self.with_entry(key, |e| e.state.set_draining(draining))
            .ok_or_else(|| ConfigError::UnknownBackend {
                backend: key.to_string(),
            })
    }

    fn replace(&self, backends: Vec<Backend<K>>) -> Result<(), ConfigError> {
        let maker = self.maker.clone().ok_or(ConfigError::NoMaker)?;
        self.replace_with(backends, |t| maker(t))
    }

    fn keys(&self) -> Vec<K> {
        self.peek()
            .entries
            .iter()
            .map(|e| e.backend.key().clone())
            .collect()
    }

    fn len(&self) -> usize {
        self.peek().entries.len()
    }

    fn listing(&self) -> Vec<Listed<K>> {
        self.peek()
            .entries
            .iter()
            .map(|e| Listed {
                key: e.backend.key().clone(),
                weight: e.backend.weight(),
                priority: e.backend.priority(),
                draining: e.state.is_draining(),
                in_flight: e.state.in_flight(),
            })
            .collect()
    }

    fn stats(&self) -> Stats<K> {
        Self::stats(self)
    }

    fn set_error(&self, error: Option<DiscoverError>) {
        self.set_discover_error(error);
    }

    fn members(&self) -> Vec<(K, Arc<EndpointState>)> {
        Self::members(self)
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        Self::subscribe(self)
    }
}

/// What [`Handle::reconcile`] reads of one backend: a lighter read than
/// [`Handle::stats`] (no health refresh, no failure text), done once per call.
pub(crate) struct Listed<K> {
    key: K,
    weight: u32,
    priority: u8,
    draining: bool,
    in_flight: usize,
}

/// A live handle on a balancer's endpoint set: insert, remove, re-weight, drain and
/// replace backends at runtime. `Clone + Send + Sync`; every change is visible to the next
/// request at once, with no request traffic needed.
///
/// Per-endpoint state (in-flight, latency, health) is keyed by backend key: it survives
/// changes to other backends, re-weights, and a duplicate insert (which replaces the
/// service but keeps the state).
///
/// ```
/// use tower::service_fn;
/// use tower_lb::{balance::Target, Backend, Balance};
/// use std::convert::Infallible;
///
/// let balance = Balance::builder()
///     .backend(Backend::new("a"))
///     .build(|t: &Target<'_, &'static str>| {
///         let k = *t.key();
///         service_fn(move |_: ()| async move { Ok::<_, Infallible>(k) })
///     })
///     .unwrap();
/// let handle = balance.handle();
/// handle.insert(Backend::new("b").with_weight(3)).unwrap();
/// handle.set_weight(&"a", 2).unwrap();
/// handle.drain(&"a").unwrap();
/// assert!(handle.set_weight(&"b", 0).is_err()); // zero weight: a typed error
/// assert!(handle.remove(&"a"));
/// assert_eq!(handle.keys(), ["b"]);
/// ```
pub struct Handle<K> {
    apply: Arc<dyn Apply<K>>,
}

impl<K> Clone for Handle<K> {
    fn clone(&self) -> Self {
        Self {
            apply: self.apply.clone(),
        }
    }
}

impl<K: Key> fmt::Debug for Handle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("backends", &self.apply.keys().len())
            .finish()
    }
}

impl<K: Key> Handle<K> {
    pub(crate) fn new<S: Clone + Send + Sync + 'static>(core: Arc<Core<K, S>>) -> Self {
        // With subsetting, every write goes through the core's one subset owner.
        if let Some(state) = core.subset.get().cloned() {
            return Self {
                apply: Arc::new(crate::discover::subset::SubsetApply::new(state, core)),
            };
        }
        Self { apply: core }
    }

    /// Every endpoint of the set now: its key and its live state, to watch the set from
    /// a task of your own (a custom prober: it marks endpoints down with
    /// [`EndpointState::set_down`], as the stock prober does).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tower_lb::{test_util, Backend, Balance};
    ///
    /// let balance = test_util::echo(Balance::builder().backends(["a", "b"].map(Backend::new)));
    /// let handle = balance.handle();
    /// let mut changes = handle.watch();
    /// handle.insert(Backend::new("c")).unwrap();
    /// changes.changed().await.unwrap(); // wakes on every change of the set or its health
    /// let keys: Vec<_> = handle.endpoints().into_iter().map(|(k, _)| k).collect();
    /// assert_eq!(keys.len(), 3);
    /// for (_key, state) in handle.endpoints() {
    ///     state.set_down(false); // a probe's verdict
    /// }
    /// # }
    /// ```
    pub fn endpoints(&self) -> Vec<(K, Arc<EndpointState>)> {
        self.apply.members()
    }

    /// A receiver that changes whenever the set or an endpoint's health changes; read
    /// [`endpoints`](Self::endpoints) again then.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.apply.subscribe()
    }

    /// A handle that does not keep the balancer alive: for observers (metrics, a status
    /// page) that should let a dropped balancer go.
    pub fn downgrade(&self) -> WeakHandle<K> {
        WeakHandle {
            apply: Arc::downgrade(&self.apply),
        }
    }

    /// Inserts a backend, or updates it (weight, priority level, service) if its key is
    /// known.
    ///
    /// Fails on a zero weight, a maker error, or a balancer built from a `Discover` source
    /// (which has no maker).
    pub fn insert(&self, backend: Backend<K>) -> Result<(), ConfigError> {
        self.apply.insert(backend)
    }

    /// Removes a backend at once; requests already sent to it finish. Returns whether it
    /// was there. For a graceful removal, [`drain`](Self::drain) first.
    pub fn remove(&self, key: &K) -> bool {
        self.apply.remove(key)
    }

    /// Changes a backend's weight; its state is kept.
    pub fn set_weight(&self, key: &K, weight: u32) -> Result<(), ConfigError> {
        self.apply.set_weight(key, weight)
    }

    /// Drains a backend (nginx `down`): no new requests, in-flight ones finish.
    pub fn drain(&self, key: &K) -> Result<(), ConfigError> {
        self.apply.set_draining(key, true)
    }

    /// Ends draining: the backend takes new requests again.
    pub fn undrain(&self, key: &K) -> Result<(), ConfigError> {
        self.apply.set_draining(key, false)
    }

    /// Replaces the whole set in one step: backends not listed are removed, the others
    /// inserted or updated. Nothing changes if any backend is invalid. An empty list is
    /// ignored when the balancer keeps the last non-empty set.
    pub fn replace(
        &self,
        backends: impl IntoIterator<Item = Backend<K>>,
    ) -> Result<(), ConfigError> {
        self.apply.replace(backends.into_iter().collect())
    }

    /// The keys in the set: in insertion order until a backend is removed, which moves
    /// the last backend into the removed one's place (removal is O(1)).
    pub fn keys(&self) -> Vec<K> {
        self.apply.keys()
    }

    /// How many backends the set holds (draining ones too), without copying them.
    ///
    /// ```
    /// use tower_lb::{test_util, Backend, Balance};
    ///
    /// let balance = test_util::echo(Balance::builder().backends(["a", "b"].map(Backend::new)));
    /// let handle = balance.handle();
    /// assert_eq!(handle.len(), 2);
    /// handle.remove(&"a");
    /// handle.remove(&"b");
    /// assert!(handle.is_empty());
    /// ```
    pub fn len(&self) -> usize {
        self.apply.len()
    }

    /// Whether the set holds no backend.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reports that the discovery source feeding this handle is failing (a resolver or
    /// API error, an unreadable file).
    ///
    /// The error shows in [`Stats::discover_error`], and a request that finds no endpoint
    /// to use after the fail-fast wait fails with this
    /// [`DiscoverError`] instead of [`NoEndpoints`](crate::error::NoEndpoints) or
    /// [`AllUnavailable`](crate::error::AllUnavailable), so callers see why. Waiting
    /// requests are woken. The set itself does not change: a source that already produced
    /// a set should keep it (and need not report transient errors at all). The error
    /// stays until [`clear_error`](Self::clear_error) or the next report.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tower::{service_fn, Service, ServiceExt};
    /// use tower_lb::{balance::Target, error::DiscoverError, Balance};
    /// use std::{convert::Infallible, time::Duration};
    ///
    /// let mut balance = Balance::builder()
    ///     .fail_fast(Duration::ZERO)
    ///     .build(|_: &Target<'_, &'static str>| {
    ///         service_fn(|_: ()| async { Ok::<_, Infallible>(()) })
    ///     })
    ///     .unwrap();
    /// let handle = balance.handle();
    /// handle.report_error("name server unreachable");
    /// let err = balance.ready().await.unwrap().call(()).await.unwrap_err();
    /// assert!(err.is::<DiscoverError>());
    /// assert!(handle.stats().discover_error.is_some());
    /// handle.clear_error();
    /// assert!(handle.stats().discover_error.is_none());
    /// # }
    /// ```
    pub fn report_error(&self, error: impl Into<BoxError>) {
        self.apply.set_error(Some(DiscoverError::new(error.into())));
    }

    /// Clears an error set by [`report_error`](Self::report_error): the source recovered.
    /// Without an error set it changes nothing (and wakes no [`watch`](Self::watch)er), so
    /// a source may call it after every good read.
    pub fn clear_error(&self) {
        self.apply.set_error(None);
    }

    /// Every backend's counters and health.
    pub fn stats(&self) -> Stats<K> {
        self.apply.stats()
    }

    /// Brings the set to `wanted` without cutting a request short: new backends are
    /// inserted, listed ones get their new weight or priority level (their state is
    /// kept), a draining one that is listed again takes requests again, and a backend
    /// that is no longer listed is drained, then removed once it has no request in flight
    /// (nginx: a server taken out of an upstream finishes what it has; until then it shows
    /// in [`stats`](Self::stats) as [`Status::Draining`](super::Status::Draining) with its
    /// `in_flight` count).
    ///
    /// Call it again while [`Reconciled::draining`] is not empty (every 100 ms or so, or
    /// at the next change) to remove what has drained: it keeps no state of its own, so any
    /// caller, or a new one after a restart of the caller, continues where the last left.
    /// Compare [`replace`](Self::replace), which removes at once.
    ///
    /// A backend that cannot be applied (a zero weight, a maker error) is reported in
    /// [`Reconciled::failed`] and the others are applied.
    ///
    /// ```
    /// use tower_lb::{balance::Status, test_util, Backend, Balance};
    ///
    /// let balance = test_util::echo(Balance::builder().backends(["a", "b"].map(Backend::new)));
    /// let handle = balance.handle();
    ///
    /// // "b" leaves while a request it took is in flight: it drains.
    /// let b_busy = handle.endpoints().into_iter().find(|(k, _)| *k == "b").unwrap().1;
    /// let request = b_busy.track(); // one unit of load in flight until dropped
    /// let done = handle.reconcile([Backend::new("a").with_weight(2), Backend::new("c")]);
    /// assert_eq!(done.added, ["c"]);
    /// assert_eq!(done.updated, ["a"]);
    /// assert_eq!(done.drained, ["b"]);
    /// assert_eq!(done.draining, [("b", 1)]); // with its one request in flight
    /// let status = |k: &str| handle.stats().backends.into_iter().find(|b| b.key == k).map(|b| b.status);
    /// assert_eq!(status("b"), Some(Status::Draining));
    ///
    /// // Its request ends: the next call removes it.
    /// drop(request);
    /// let done = handle.reconcile([Backend::new("a").with_weight(2), Backend::new("c")]);
    /// assert_eq!(done.removed, ["b"]);
    /// assert!(done.draining.is_empty());
    /// assert_eq!(status("b"), None);
    /// ```
    pub fn reconcile(&self, wanted: impl IntoIterator<Item = Backend<K>>) -> Reconciled<K> {
        // One read of the set, lighter than `stats`: reconcile runs every 100 ms or so
        // while backends drain, over sets of thousands.
        let listing = self.apply.listing();
        let now: std::collections::HashMap<&K, usize> = listing
            .iter()
            .enumerate()
            .map(|(i, b)| (&b.key, i))
            .collect();
        let mut listed = vec![false; listing.len()];
        let mut done = Reconciled::default();
        for backend in wanted {
            let Some(&i) = now.get(backend.key()) else {
                let key = backend.key().clone();
                match self.insert(backend) {
                    Ok(()) => done.added.push(key),
                    Err(e) => done.failed.push((key, e)),
                }
                continue;
            };
            listed[i] = true;
            let b = &listing[i];
            let key = &b.key;
            let updated = if b.priority != backend.priority() {
                // Same key: the state (health, counters) is kept.
                self.insert(backend).map(|()| true)
            } else if b.weight != backend.weight() {
                self.set_weight(key, backend.weight()).map(|()| true)
            } else {
                Ok(false)
            };
            let result = updated.and_then(|updated| {
                if updated {
                    done.updated.push(key.clone());
                }
                if b.draining {
                    self.undrain(key).map(|()| done.undrained.push(key.clone()))
                } else {
                    Ok(())
                }
            });
            if let Err(e) = result {
                done.failed.push((key.clone(), e));
            }
        }
        for (b, _) in listing.iter().zip(&listed).filter(|(_, seen)| !**seen) {
            if !b.draining {
                if let Err(e) = self.drain(&b.key) {
                    done.failed.push((b.key.clone(), e));
                    continue;
                }
                done.drained.push(b.key.clone());
            }
            // A request that picked it just before the drain holds its service and
            // finishes even after the removal.
            if b.in_flight == 0 {
                self.remove(&b.key);
                done.removed.push(b.key.clone());
            } else {
                done.draining.push((b.key.clone(), b.in_flight));
            }
        }
        done
    }
}

/// What one [`Handle::reconcile`] did, key by key.
#[derive(Debug)]
#[non_exhaustive]
pub struct Reconciled<K> {
    /// Backends inserted.
    pub added: Vec<K>,
    /// Backends whose weight or priority level changed.
    pub updated: Vec<K>,
    /// Draining backends listed again: they take new requests again.
    pub undrained: Vec<K>,
    /// Backends no longer listed that started draining in this call.
    pub drained: Vec<K>,
    /// Backends no longer listed and with no request in flight: removed.
    pub removed: Vec<K>,
    /// Backends still draining after this call, each with its requests in flight (as read
    /// at the start of the call): call again to remove them once those finish.
    pub draining: Vec<(K, usize)>,
    /// Backends that could not be applied, and why; the others were.
    pub failed: Vec<(K, ConfigError)>,
}

impl<K> Default for Reconciled<K> {
    fn default() -> Self {
        Self {
            added: Vec::new(),
            updated: Vec::new(),
            undrained: Vec::new(),
            drained: Vec::new(),
            removed: Vec::new(),
            draining: Vec::new(),
            failed: Vec::new(),
        }
    }
}

/// A [`Handle`] that does not keep its balancer alive; from [`Handle::downgrade`].
pub struct WeakHandle<K> {
    apply: std::sync::Weak<dyn Apply<K>>,
}

impl<K> Clone for WeakHandle<K> {
    fn clone(&self) -> Self {
        Self {
            apply: self.apply.clone(),
        }
    }
}

impl<K> fmt::Debug for WeakHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakHandle")
            .field("alive", &(self.apply.strong_count() > 0))
            .finish()
    }
}

impl<K> WeakHandle<K> {
    /// The handle, while the balancer lives.
    pub fn upgrade(&self) -> Option<Handle<K>> {
        self.apply.upgrade().map(|apply| Handle { apply })
    }
}
