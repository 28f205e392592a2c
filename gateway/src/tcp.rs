//! Layer 4: TCP proxies (`--tcp-listen`, `--tcp-backend`, `[[tcp]]`), each the
//! library's `tcp::Proxy` accept loop over a `Balance` of `tcp::TcpEndpoints`: least
//! connections over open connections by default, every failed connect retried on
//! another backend (`TcpPolicy`) and counted by passive health (`--max-fails`,
//! `--fail-timeout`), TCP connect probes when `--health-interval` is given.
//!
//! A reload keeps the listening socket. With the same settings it keeps the balancer
//! too and applies the backends' differences (leaving backends drain: they take no new
//! connections and are removed once their open ones have closed). With other settings a
//! new accept loop and balancer take over on the same socket; connections the old one
//! opened go on until they close (at most a day; idle ones close after 10 minutes).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{oneshot, watch};
use tower_lb::{
    health::{
        active::{Prober, TcpProbe},
        passive::Window,
    },
    metrics::PoolMetrics,
    tcp::{Proxy, TcpEndpoint, TcpEndpoints, TcpPolicy},
    Backend, Balance,
};

use crate::{
    cli::{Args, StrategyName, TcpSpec},
    reconcile::{Want, Wanted},
    source::Feed,
    upkeep::{SpawnProbe, Upkeep},
};

pub(crate) type TcpBalance = Balance<String, TcpEndpoint, TcpPolicy>;

/// How long the connections of a replaced accept loop may go on.
const REPLACED_DRAIN: Duration = Duration::from_secs(24 * 3600);

/// What a TCP proxy's balancer is built from; see [`crate::pool`]'s equivalent.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    strategy: StrategyName,
    connect_timeout: Duration,
    retries: usize,
    max_fails: u32,
    fail_timeout: Duration,
    fail_fast: Duration,
    slow_start: Option<Duration>,
}

/// A running accept loop; dropping it stops the loop (open connections go on).
struct Serving {
    _stop: oneshot::Sender<()>,
}

pub(crate) struct TcpProxy {
    pub(crate) listen: SocketAddr,
    pub(crate) balance: TcpBalance,
    pub(crate) upkeep: Upkeep,
    settings: Settings,
    /// The listening socket, shared by every configuration that serves on it; `None`
    /// for `--check`, which binds nothing.
    socket: Option<Arc<std::net::TcpListener>>,
    serving: Mutex<Option<Arc<Serving>>>,
    metrics: PoolMetrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The metrics and status name of the proxy on `listen`.
pub(crate) fn pool_name(listen: SocketAddr) -> String {
    format!("tcp {listen}")
}

/// Builds the proxy `spec` describes; `previous` is the proxy on the same address in the
/// configuration being replaced. Nothing runs until [`TcpProxy::start`].
pub(crate) fn build(
    spec: &TcpSpec,
    args: &Args,
    metrics: PoolMetrics,
    previous: Option<&TcpProxy>,
    bind: bool,
) -> Result<TcpProxy, String> {
    let listen = spec.listen;
    let settings = Settings {
        strategy: spec.strategy.unwrap_or(StrategyName::LeastConn),
        connect_timeout: args.connect_timeout,
        retries: args.retries,
        max_fails: args.max_fails,
        fail_timeout: args.fail_timeout,
        fail_fast: args.fail_fast,
        slow_start: args.slow_start,
    };
    let wanted = Wanted {
        backends: spec
            .backends
            .iter()
            .map(|b| Want {
                key: b.addr.clone(),
                weight: b.weight,
                priority: b.priority,
            })
            .collect(),
        error: None,
    };
    let feed = Arc::new(Feed::fixed(wanted.clone()));
    let endpoints = TcpEndpoints::new()
        .connect_timeout(settings.connect_timeout)
        .passive_health(
            Window::new()
                .max_fails(settings.max_fails)
                .fail_timeout(settings.fail_timeout),
        );
    // Always built, so every backend is checked; dropped if the previous one is kept.
    let fresh: TcpBalance = Balance::builder()
        .strategy(crate::pool::strategy(settings.strategy))
        .policy(TcpPolicy::new())
        .retries(settings.retries)
        .fail_fast(settings.fail_fast)
        .slow_start(settings.slow_start.unwrap_or(Duration::ZERO))
        .backends(wanted.backends.iter().map(|w| {
            Backend::new(w.key.clone())
                .with_weight(w.weight)
                .with_priority(w.priority)
        }))
        .build(endpoints)
        .map_err(|e| format!("tcp proxy on {listen}: {e}"))?;
    let kept = previous.filter(|p| p.settings == settings);
    let balance = kept.map_or(fresh, |p| p.balance.clone());
    let socket = match previous.and_then(|p| p.socket.clone()) {
        Some(s) => Some(s),
        None if bind => Some(Arc::new(bind_socket(listen)?)),
        None => None,
    };
    let probe = args.health_interval.map(|interval| {
        let balance = balance.clone();
        let spawn: SpawnProbe = Box::new(move || {
            Prober::new(TcpProbe::new())
                .interval(interval)
                .spawn(&balance)
                .map_err(|e| format!("--health-interval: {e}"))
        });
        (format!("{interval:?}"), spawn)
    });
    let name = pool_name(listen);
    let upkeep = Upkeep::new(
        &name,
        balance.handle(),
        feed,
        probe,
        kept.map(|p| &p.upkeep),
    );
    Ok(TcpProxy {
        listen,
        balance,
        upkeep,
        settings,
        socket,
        serving: Mutex::new(kept.and_then(|p| lock(&p.serving).clone())),
        metrics,
    })
}

fn bind_socket(listen: SocketAddr) -> Result<std::net::TcpListener, String> {
    let socket =
        std::net::TcpListener::bind(listen).map_err(|e| format!("--tcp-listen {listen}: {e}"))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("--tcp-listen {listen}: {e}"))?;
    Ok(socket)
}

impl TcpProxy {
    /// The address the socket is bound to (the port, when `listen` asked for port 0).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// Takes effect: the metrics read this balancer, the set follows the configuration,
    /// the prober runs, and an accept loop serves the socket unless the previous one
    /// (over this same balancer) was kept. `down` ends every loop at shutdown; the loops'
    /// tasks go to `tasks`, to wait for them.
    pub(crate) fn start(
        &self,
        down: &watch::Receiver<bool>,
        tasks: &Mutex<Vec<tokio::task::JoinHandle<()>>>,
    ) {
        self.metrics.watch(&self.balance);
        self.upkeep.start();
        let mut serving = lock(&self.serving);
        let Some(socket) = self.socket.as_ref().filter(|_| serving.is_none()) else {
            return;
        };
        let listener = match socket
            .try_clone()
            .and_then(tokio::net::TcpListener::from_std)
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(listen = %self.listen, error = %e, "cannot serve the tcp listener");
                return;
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let mut down = down.clone();
        let shutdown = async move {
            tokio::select! {
                _ = stopped => {}
                _ = down.wait_for(|d| *d) => {}
            }
        };
        let (balance, listen) = (self.balance.clone(), self.listen);
        let task = tokio::spawn(async move {
            let proxy = Proxy::new().drain_timeout(REPLACED_DRAIN);
            if let Err(e) = proxy.serve(listener, balance, shutdown).await {
                tracing::error!(%listen, error = %e, "tcp listener failed");
            }
        });
        let mut tasks = lock(tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        *serving = Some(Arc::new(Serving { _stop: stop }));
    }

    /// Stops the accept loop (unless the next configuration kept it), the prober and
    /// the reconciler.
    pub(crate) fn stop(&self) {
        lock(&self.serving).take();
        self.upkeep.stop();
    }
}
