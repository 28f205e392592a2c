//! Brings a balancer's set to what its source wants, through the library's
//! [`Handle`]: new backends are inserted (they take traffic at once, ramped by slow
//! start when it is on), changed ones re-weighted or moved to their new level, and
//! backends that left are drained (no new requests) and removed once their requests in
//! flight have finished (nginx: a server taken out of an upstream finishes what it has).
//!
//! Why not let the library's discovery sources own the set: they remove a backend at
//! once (its requests in flight still finish, on the service they hold), so `/status`
//! would stop showing it while it still works, and an operator could not tell when it
//! is safe to stop. Here a leaving backend stays in `/status` as `draining`, with its
//! `in_flight` count, until it reaches 0.
//!
//! The reconciler keeps no state of its own: it compares the wanted set with the
//! balancer's stats, so a new one (after a reload) continues where the old one left.

use std::{collections::HashMap, time::Duration};

use tokio::sync::watch;
use tower_lb::{
    balance::{Handle, Status},
    Backend,
};

/// How often draining backends are checked for requests still in flight.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// One backend as a source wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Want {
    pub(crate) key: String,
    pub(crate) weight: u32,
    pub(crate) priority: u8,
}

/// What a source wants: its backends, or why it has none yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub(crate) backends: Vec<Want>,
    /// The source's error while it never produced a set (a DNS name that does not
    /// resolve yet): requests fail with it rather than with "no endpoints".
    pub(crate) error: Option<String>,
}

/// Applies `wanted` to `handle` once. Returns whether a backend is still draining (and
/// needs another look).
pub(crate) fn apply(pool: &str, handle: &Handle<String>, wanted: &Wanted) -> bool {
    let stats = handle.stats();
    match &wanted.error {
        Some(e) if stats.backends.is_empty() => handle.report_error(e.clone()),
        _ if stats.discover_error.is_some() => handle.clear_error(),
        _ => {}
    }
    let now: HashMap<&str, _> = stats.backends.iter().map(|b| (b.key.as_str(), b)).collect();
    for want in &wanted.backends {
        let backend = Backend::new(want.key.clone())
            .with_weight(want.weight)
            .with_priority(want.priority);
        let result = match now.get(want.key.as_str()) {
            None => handle.insert(backend).map(|()| {
                tracing::info!(pool, backend = %want.key, "backend added");
            }),
            Some(b) => {
                let moved = if b.priority != want.priority {
                    // Same key: the state (health, counters) is kept.
                    handle.insert(backend)
                } else if b.weight != want.weight {
                    handle.set_weight(&want.key, want.weight)
                } else {
                    Ok(())
                };
                moved.and_then(|()| {
                    if b.status == Status::Draining {
                        tracing::info!(pool, backend = %want.key, "backend back: draining ends");
                        handle.undrain(&want.key)
                    } else {
                        Ok(())
                    }
                })
            }
        };
        if let Err(e) = result {
            tracing::error!(pool, backend = %want.key, error = %e, "cannot apply backend");
        }
    }
    let keep: std::collections::HashSet<&str> =
        wanted.backends.iter().map(|w| w.key.as_str()).collect();
    let mut draining = false;
    for b in stats
        .backends
        .iter()
        .filter(|b| !keep.contains(b.key.as_str()))
    {
        if b.status != Status::Draining {
            if let Err(e) = handle.drain(&b.key) {
                tracing::error!(pool, backend = %b.key, error = %e, "cannot drain backend");
                continue;
            }
            tracing::info!(pool, backend = %b.key, in_flight = b.in_flight, "backend left: draining");
        }
        // A request that picked it just before the drain holds its service and
        // finishes even after the removal.
        if b.in_flight == 0 {
            handle.remove(&b.key);
            tracing::info!(pool, backend = %b.key, "backend drained and removed");
        } else {
            draining = true;
        }
    }
    draining
}

/// Keeps `handle` at what `wanted` says, for as long as the task runs: applies every
/// change at once, and looks at draining backends every 100 ms.
pub(crate) async fn run(pool: String, handle: Handle<String>, mut wanted: watch::Receiver<Wanted>) {
    let mut open = true;
    loop {
        let now = wanted.borrow_and_update().clone();
        let draining = apply(&pool, &handle, &now);
        tokio::select! {
            changed = wanted.changed(), if open => open = changed.is_ok(),
            () = tokio::time::sleep(DRAIN_POLL), if draining => {}
            () = std::future::pending::<()>(), if !open && !draining => {}
        }
    }
}
