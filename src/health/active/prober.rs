use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

use crate::{
    balance::{strategy::Rng, EndpointState, Key, WeakHandle},
    error::{BoxError, ConfigError},
    Balance, Guard,
};

/// How endpoints start before their first probe; see [`Prober::initial`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Initial {
    /// New endpoints take traffic at once; `fall` failed probes mark them down (HAProxy's
    /// default).
    #[default]
    Healthy,
    /// New endpoints are down until `rise` probes pass (nginx Plus `mandatory`, Envoy).
    Unhealthy,
}

/// Configures and spawns an active health checker over every endpoint of a balancer. See
/// the [module docs](super) for the semantics and an example.
///
/// Defaults (HAProxy's names): `inter` 2 s with ±10 % jitter, `fastinter` 1 s, `timeout
/// check` 1 s, `rise` 2, `fall` 3, new endpoints start healthy.
#[must_use]
pub struct Prober<P> {
    probe: P,
    interval: Duration,
    fast_interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
    jitter: f64,
    initial: Initial,
    seed: Option<u64>,
}

impl<P: fmt::Debug> fmt::Debug for Prober<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prober")
            .field("probe", &self.probe)
            .field("interval", &self.interval)
            .field("fast_interval", &self.fast_interval)
            .field("timeout", &self.timeout)
            .field("rise", &self.rise)
            .field("fall", &self.fall)
            .field("jitter", &self.jitter)
            .field("initial", &self.initial)
            .finish()
    }
}

impl<P> Prober<P> {
    /// A prober sending `probe`, with the defaults above. `probe` is any `Service` that
    /// takes a backend key and fails when the backend is unhealthy: [`HttpProbe`](super::HttpProbe),
    /// [`TcpProbe`](super::TcpProbe), the gRPC probe, or `tower::service_fn`.
    pub fn new(probe: P) -> Self {
        Self {
            probe,
            interval: Duration::from_secs(2),
            fast_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            jitter: 0.1,
            initial: Initial::Healthy,
            seed: None,
        }
    }

    /// Time between probes of a healthy endpoint (HAProxy `inter`, default 2 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Time between probes of an endpoint that is down, or whose state is changing (some
    /// probes failed while up) (HAProxy `fastinter`, default 1 s).
    pub fn fast_interval(mut self, interval: Duration) -> Self {
        self.fast_interval = interval;
        self
    }

    /// Each interval is drawn from `interval × (1 ± jitter)` so probes of many endpoints
    /// and many clients spread out (HAProxy `spread-checks`). In `0.0..=0.5`, default 0.1.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// How long a probe may take before it counts as failed (HAProxy `timeout check`,
    /// default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Passed probes in a row that mark a down endpoint up (HAProxy `rise`, default 2).
    pub fn rise(mut self, rise: u32) -> Self {
        self.rise = rise;
        self
    }

    /// Failed probes in a row that mark an up endpoint down (HAProxy `fall`, default 3).
    pub fn fall(mut self, fall: u32) -> Self {
        self.fall = fall;
        self
    }

    /// How endpoints start, at spawn time and when discovery adds them later (default
    /// [`Initial::Healthy`]).
    pub fn initial(mut self, initial: Initial) -> Self {
        self.initial = initial;
        self
    }

    /// Seeds the jitter, so tests are repeatable.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.into(),
            })
        };
        if self.interval.is_zero() {
            return invalid("interval", "must be positive");
        }
        if self.fast_interval.is_zero() {
            return invalid("fast_interval", "must be positive");
        }
        if self.timeout.is_zero() {
            return invalid("timeout", "must be positive");
        }
        if self.rise == 0 {
            return invalid("rise", "must be at least 1");
        }
        if self.fall == 0 {
            return invalid("fall", "must be at least 1");
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return invalid("jitter", "must be within 0.0..=0.5");
        }
        Ok(())
    }

    /// Starts probing every endpoint of `balance`, including endpoints added later, in a
    /// task on the current Tokio runtime. The task stops when the returned [`Guard`] is
    /// dropped (endpoints it had marked down are marked up again: nothing would ever mark
    /// them up otherwise), or when the balancer is.
    ///
    /// Fails with a [`ConfigError`] on an invalid setting or outside a Tokio runtime.
    pub fn spawn<K, S, Pol>(self, balance: &Balance<K, S, Pol>) -> Result<Guard, ConfigError>
    where
        K: Key,
        S: Clone + Send + Sync + 'static,
        P: Service<K> + Clone + Send + 'static,
        P::Future: Send,
        P::Error: Into<BoxError>,
    {
        self.check()?;
        let members = balance.handle().downgrade();
        let cfg = Settings {
            interval: self.interval,
            fast_interval: self.fast_interval,
            timeout: self.timeout,
            rise: self.rise,
            fall: self.fall,
            jitter: self.jitter,
            initial: self.initial,
        };
        let rng = self.seed.map_or_else(Rng::new, Rng::with_seed);
        Guard::spawn("prober", run(members, cfg, rng, self.probe))
    }
}

// === the task ===

#[derive(Debug, Clone, Copy)]
struct Settings {
    interval: Duration,
    fast_interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
    jitter: f64,
    initial: Initial,
}

/// One endpoint as the prober tracks it.
struct Track {
    state: Arc<EndpointState>,
    /// The prober's verdict; `false` means it called `set_down(true)`.
    up: bool,
    /// Passed probes in a row while down.
    passes: u32,
    /// Failed probes in a row while up.
    fails: u32,
    next: Instant,
    probing: bool,
}

/// The prober's book of endpoints. Dropping it (the task stopped) marks up every endpoint
/// the prober marked down.
struct Book<K> {
    tracks: HashMap<K, Track>,
}

impl<K> Drop for Book<K> {
    fn drop(&mut self) {
        for t in self.tracks.values().filter(|t| !t.up) {
            t.state.set_down(false);
        }
    }
}

impl<K: Key> Book<K> {
    /// Follows the balancer's set: new endpoints are probed at once, removed ones
    /// forgotten.
    fn sync(&mut self, members: Vec<(K, Arc<EndpointState>)>, cfg: &Settings, now: Instant) {
        let mut seen = std::collections::HashSet::with_capacity(members.len());
        for (key, state) in members {
            let fresh = match self.tracks.get(&key) {
                Some(t) => !Arc::ptr_eq(&t.state, &state),
                None => true,
            };
            if fresh {
                let up = cfg.initial == Initial::Healthy;
                if !up {
                    tracing::info!(backend = %key,
                        "tower_lb: marked down until probed: new endpoints start unhealthy");
                    state.set_down(true);
                }
                self.tracks.insert(
                    key.clone(),
                    Track {
                        state,
                        up,
                        passes: 0,
                        fails: 0,
                        next: now,
                        probing: false,
                    },
                );
            }
            seen.insert(key);
        }
        self.tracks.retain(|k, _| seen.contains(k));
    }

    /// Records one probe's outcome and schedules the next probe.
    fn apply(
        &mut self,
        key: &K,
        state: &Arc<EndpointState>,
        res: Result<(), BoxError>,
        cfg: &Settings,
        rng: &Rng,
    ) {
        let Some(t) = self.tracks.get_mut(key) else {
            return; // removed while probed
        };
        if !Arc::ptr_eq(&t.state, state) {
            return; // removed and added again while probed
        }
        t.probing = false;
        match res {
            Ok(()) => {
                t.fails = 0;
                // Envoy `successful_active_health_check_uneject_host`: a passing probe
                // ends an outlier detection ejection (only that kind; see its module).
                #[cfg(feature = "health-passive")]
                crate::health::passive::outlier::probe_passed(key, &t.state);
                if !t.up {
                    t.passes += 1;
                    if t.passes >= cfg.rise {
                        t.up = true;
                        t.passes = 0;
                        t.state.set_down(false);
                        tracing::info!(backend = %key, rise = cfg.rise,
                            "tower_lb: marked up: {} probe(s) in a row passed", cfg.rise);
                    } else {
                        tracing::debug!(backend = %key, passes = t.passes, rise = cfg.rise,
                            "tower_lb: probe passed while down");
                    }
                }
            }
            Err(error) => {
                t.passes = 0;
                if t.up {
                    t.fails += 1;
                    if t.fails >= cfg.fall {
                        t.up = false;
                        t.fails = 0;
                        t.state.set_down(true);
                        tracing::warn!(backend = %key, fall = cfg.fall, last_error = %error,
                            "tower_lb: marked down: {} probe(s) in a row failed", cfg.fall);
                    } else {
                        tracing::debug!(backend = %key, fails = t.fails, fall = cfg.fall,
                            %error, "tower_lb: probe failed while up");
                    }
                } else {
                    tracing::debug!(backend = %key, %error, "tower_lb: probe failed while down");
                }
            }
        }
        // HAProxy `fastinter`: probe faster while down or while the verdict may change.
        let base = if !t.up || t.fails > 0 || t.passes > 0 {
            cfg.fast_interval
        } else {
            cfg.interval
        };
        t.next = crate::balance::later(Instant::now(), jittered(base, cfg.jitter, rng));
    }
}

/// `base × (1 ± jitter)`, uniformly.
fn jittered(base: Duration, jitter: f64, rng: &Rng) -> Duration {
    if jitter <= 0.0 {
        return base;
    }
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64; // 0..1
    base.mul_f64(1.0 + jitter * (2.0 * u - 1.0))
}

/// One probe, bounded by the timeout.
async fn probe_once<K, P>(
    probe: P,
    key: K,
    state: Arc<EndpointState>,
    timeout: Duration,
) -> (K, Arc<EndpointState>, Result<(), BoxError>)
where
    K: Key,
    P: Service<K>,
    P::Error: Into<BoxError>,
{
    let res = match tokio::time::timeout(timeout, probe.oneshot(key.clone())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(format!("probe timed out after {timeout:?}").into()),
    };
    (key, state, res)
}

async fn run<K, P>(members: WeakHandle<K>, cfg: Settings, rng: Rng, probe: P)
where
    K: Key,
    P: Service<K> + Clone + Send + 'static,
    P::Future: Send,
    P::Error: Into<BoxError>,
{
    let Some(set) = members.upgrade() else { return };
    let mut changed = set.watch();
    drop(set);
    let mut book = Book {
        tracks: HashMap::new(),
    };
    let mut running = FuturesUnordered::new();
    loop {
        // Re-read the set each turn: endpoints added or removed since are followed.
        let Some(set) = members.upgrade() else { return };
        let list = set.endpoints();
        drop(set);
        let now = Instant::now();
        book.sync(list, &cfg, now);
        for (key, t) in &mut book.tracks {
            if !t.probing && t.next <= now {
                t.probing = true;
                running.push(probe_once(
                    probe.clone(),
                    key.clone(),
                    t.state.clone(),
                    cfg.timeout,
                ));
            }
        }
        let wake = book
            .tracks
            .values()
            .filter(|t| !t.probing)
            .map(|t| t.next)
            .min();
        tokio::select! {
            Some((key, state, res)) = running.next(), if !running.is_empty() => {
                book.apply(&key, &state, res, &cfg, &rng);
            }
            res = changed.changed() => {
                if res.is_err() {
                    return; // the balancer is gone
                }
            }
            () = sleep_until(wake), if wake.is_some() => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}
