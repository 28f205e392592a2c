//! Changes to the endpoint set: the mutation API discovery and the handle use.

use super::*;

/// An edit of the endpoint set in progress, under the writer lock: the entries and index
/// being changed (copy-on-write), and which endpoints changed, so the candidate list can
/// be updated instead of rebuilt.
pub(crate) struct Edit<K, S> {
    pub(super) entries: Entries<K, S>,
    pub(super) index: Index<K>,
    /// Every endpoint touched, with its entry before the edit (`None`: new).
    pub(super) touched: Vec<(K, Option<Arc<Entry<K, S>>>)>,
    /// Too many changes to track: rebuild the candidate list.
    pub(super) full: bool,
}

/// Above this many changed endpoints in one edit, the candidate list is rebuilt.
pub(super) const MAX_TRACKED: usize = 32;

impl<K: Key, S> Edit<K, S> {
    pub(super) fn position(&self, key: &K) -> Option<usize> {
        self.index.get(stable_hash(key), key).copied()
    }

    pub(super) fn get(&self, key: &K) -> Option<&Arc<Entry<K, S>>> {
        self.position(key).map(|i| &self.entries[i])
    }

    pub(super) fn touch(&mut self, key: &K, before: Option<&Arc<Entry<K, S>>>) {
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
    pub(super) fn set(&mut self, i: usize, entry: Entry<K, S>) {
        let old = self.entries[i].clone();
        self.touch(old.backend.key(), Some(&old));
        self.entries.set(i, Arc::new(entry));
    }

    /// Appends a new endpoint.
    pub(super) fn push(&mut self, entry: Entry<K, S>) {
        self.touch(entry.backend.key(), None);
        self.index
            .insert(entry.id, entry.backend.key().clone(), self.entries.len());
        self.entries.push(Arc::new(entry));
    }

    /// Removes an endpoint: the last one takes its place, so one index entry changes.
    pub(super) fn remove(&mut self, key: &K) -> bool {
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

impl<K: Key, S: Clone> Core<K, S> {
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

pub(super) fn check_weight<K: Key>(backend: &Backend<K>) -> Result<(), ConfigError> {
    if backend.weight() == 0 {
        return Err(ConfigError::ZeroWeight {
            backend: backend.key().to_string(),
        });
    }
    Ok(())
}

pub(super) fn make_error<K: Key>(
    backend: &Backend<K>,
    e: &(dyn std::error::Error + Send + Sync),
) -> ConfigError {
    ConfigError::Make {
        backend: backend.key().to_string(),
        reason: e.to_string(),
    }
}

pub(super) fn upsert<K: Key, S>(
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
