//! What a balancer needs beside itself while it serves: the reconciler that keeps its
//! set at what its [`Feed`] wants, and its active prober. Both are started when a
//! configuration takes effect and stopped when the next one replaces it; a prober whose
//! settings did not change is handed over, so its up/down verdicts are kept.

use std::sync::{Arc, Mutex};

use tower_lb::{balance::Handle, Guard};

use crate::{reconcile, source::Feed, AbortOnDrop};

/// Spawns a prober on the balancer it was made for.
pub(crate) type SpawnProbe = Box<dyn FnOnce() -> Result<Guard, String> + Send>;

/// A running prober and the settings it was started with.
struct Probing {
    settings: String,
    _guard: Guard,
}

pub(crate) struct Upkeep {
    name: String,
    handle: Handle<String>,
    pub(crate) feed: Arc<Feed>,
    /// The wanted prober's settings (`None`: no prober), and how to start it.
    probe_settings: Option<String>,
    spawn_probe: Mutex<Option<SpawnProbe>>,
    probe: Mutex<Option<Arc<Probing>>>,
    reconciler: Mutex<Option<AbortOnDrop>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Upkeep {
    /// The upkeep of the balancer behind `handle`. `previous` is the upkeep of the same
    /// balancer in the configuration being replaced, if it is kept: its prober is taken
    /// over when `probe` has the same settings.
    pub(crate) fn new(
        name: &str,
        handle: Handle<String>,
        feed: Arc<Feed>,
        probe: Option<(String, SpawnProbe)>,
        previous: Option<&Self>,
    ) -> Self {
        let (probe_settings, spawn) = match probe {
            Some((s, f)) => (Some(s), Some(f)),
            None => (None, None),
        };
        let kept = previous
            .and_then(|p| lock(&p.probe).clone())
            .filter(|p| Some(&p.settings) == probe_settings.as_ref());
        Self {
            name: name.to_owned(),
            handle,
            feed,
            probe_settings,
            spawn_probe: Mutex::new(spawn),
            probe: Mutex::new(kept),
            reconciler: Mutex::new(None),
        }
    }

    /// Applies the wanted set now, then keeps it applied; starts the prober unless one
    /// was taken over.
    pub(crate) fn start(&self) {
        reconcile::apply(&self.name, &self.handle, &self.feed.wanted());
        let task = tokio::spawn(reconcile::run(
            self.name.clone(),
            self.handle.clone(),
            self.feed.subscribe(),
        ));
        *lock(&self.reconciler) = Some(AbortOnDrop(task));
        let mut probe = lock(&self.probe);
        if probe.is_none() {
            if let (Some(settings), Some(spawn)) =
                (self.probe_settings.clone(), lock(&self.spawn_probe).take())
            {
                match spawn() {
                    Ok(guard) => {
                        *probe = Some(Arc::new(Probing {
                            settings,
                            _guard: guard,
                        }));
                    }
                    Err(e) => {
                        tracing::error!(pool = %self.name, error = %e, "cannot start the prober")
                    }
                }
            }
        }
    }

    /// Stops the reconciler, and the prober unless the next configuration took it over.
    pub(crate) fn stop(&self) {
        lock(&self.reconciler).take();
        lock(&self.probe).take();
    }
}
