//! Keeps a balancer's set at what its source wants, through the library's
//! [`Handle::reconcile`]: new backends are inserted (they take traffic at once, ramped by
//! slow start when it is on), changed ones re-weighted or moved to their new level, and
//! backends that left are drained (no new requests) and removed once their requests in
//! flight have finished (nginx: a server taken out of an upstream finishes what it has).
//!
//! Why not let the library's discovery sources own the set: they remove a backend at
//! once (its requests in flight still finish, on the service they hold), so `/status`
//! would stop showing it while it still works, and an operator could not tell when it
//! is safe to stop. Here a leaving backend stays in `/status` as `draining`, with its
//! `in_flight` count, until it reaches 0.
//!
//! Neither this task nor `reconcile` keeps state of its own: each call compares the
//! wanted set with the balancer's set as it is, so a new task (after a reload) continues where
//! the old one left.

use std::{collections::HashMap, time::Duration};

use tokio::sync::watch;
use tower_lb::{balance::Handle, Backend};

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

/// Applies `wanted` to `handle` once, through [`Handle::reconcile`] (drain, then remove
/// once idle), and logs what changed. Returns whether a backend is still draining (and
/// needs another look).
pub(crate) fn apply(pool: &str, handle: &Handle<String>, wanted: &Wanted) -> bool {
    match &wanted.error {
        Some(e) if handle.is_empty() => handle.report_error(e.clone()),
        // A no-op unless an error was reported.
        _ => handle.clear_error(),
    }
    let done = handle.reconcile(wanted.backends.iter().map(|want| {
        Backend::new(want.key.clone())
            .with_weight(want.weight)
            .with_priority(want.priority)
    }));
    for backend in &done.added {
        tracing::info!(pool, %backend, "backend added");
    }
    for backend in &done.undrained {
        tracing::info!(pool, %backend, "backend back: draining ends");
    }
    if !done.drained.is_empty() {
        let in_flight: HashMap<&str, usize> = done
            .draining
            .iter()
            .map(|(key, n)| (key.as_str(), *n))
            .collect();
        for backend in &done.drained {
            // Not still draining: it had nothing in flight, and was removed at once.
            let in_flight = in_flight.get(backend.as_str()).copied().unwrap_or(0);
            tracing::info!(pool, %backend, in_flight, "backend left: draining");
        }
    }
    for backend in &done.removed {
        tracing::info!(pool, %backend, "backend drained and removed");
    }
    for (backend, error) in &done.failed {
        tracing::error!(pool, %backend, %error, "cannot apply backend");
    }
    !done.draining.is_empty()
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
