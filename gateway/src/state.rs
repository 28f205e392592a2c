//! One whole configuration (pools, routes, TCP proxies) built from the flags and the
//! configuration file, and what outlives it: metrics, the sticky cookie's secret,
//! listening sockets, reload counters.
//!
//! A reload ([`State::build`] with the running state as `previous`) builds everything
//! first, so a bad configuration changes nothing. Then the running state stops (its
//! reconcilers, and the probers and accept loops not handed over) and the new one
//! starts. What is kept from `previous`:
//!
//! - a pool's or TCP proxy's **balancer**, when its settings (strategy, sticky cookie,
//!   HTTP/2, connect timeout, passive health, retries, fail-fast, slow start, and the
//!   contents of the backend CA and client certificate files) did not change: the backends that stay keep their state (health, ejections, in-flight
//!   counts, latency, slow-start ramp), and only differences are applied;
//! - its **prober**, when the health settings did not change either (verdicts kept);
//! - a **backend file or DNS source**, when the pool still reads the same one;
//! - **TCP listening sockets** on the same address, and the HTTP listener (always).
//!
//! A pool whose settings changed gets a new balancer (its backends start fresh); the
//! requests in flight on the old one finish there.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tower_lb::metrics::{prometheus_client::registry::Registry, BalanceMetrics, PoolMetrics};

use crate::{
    cli::{Args, BackendSpec, PoolSpec, Source, TcpSpec},
    pool::{self, Pool},
    source::Feed,
    tcp::{self, TcpProxy},
    tls::{BackendTls, ListenerSpec},
};

/// How a reload went, for `/status`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Reloads {
    /// Configurations that took effect, the first one included.
    pub(crate) generation: u64,
    pub(crate) failed: u64,
    pub(crate) last_error: Option<String>,
}

/// What lives as long as the process.
pub(crate) struct Shared {
    /// Holds the library's `BalanceMetrics` collector.
    pub(crate) registry: Registry,
    /// The length of the last `/metrics` text: the next one is written into a buffer of
    /// that size, not grown by doubling (at 10,000 backends the text is 23 MB, and each
    /// doubling held the old and the new buffer at once).
    pub(crate) metrics_len: std::sync::atomic::AtomicUsize,
    metrics: BalanceMetrics,
    /// One set of metrics per pool name, whatever balancer serves it.
    pools: Mutex<HashMap<String, PoolMetrics>>,
    pub(crate) started: Instant,
    cookie_secret: [u8; 16],
    /// The demo backends, when the gateway started with none.
    pub(crate) demo: Vec<BackendSpec>,
    pub(crate) reloads: Mutex<Reloads>,
    /// Becomes `true` at shutdown.
    pub(crate) down: watch::Receiver<bool>,
    pub(crate) tcp_tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A secret no one can guess, without a random-number crate: std's hash keys come from
/// the operating system's random source.
fn random_secret() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for half in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(u64::from(std::process::id()));
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

impl Shared {
    pub(crate) fn new(demo: Vec<BackendSpec>, down: watch::Receiver<bool>) -> Self {
        let metrics = BalanceMetrics::new();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        Self {
            registry,
            metrics_len: std::sync::atomic::AtomicUsize::new(0),
            metrics,
            pools: Mutex::new(HashMap::new()),
            started: Instant::now(),
            cookie_secret: random_secret(),
            demo,
            reloads: Mutex::new(Reloads::default()),
            down,
            tcp_tasks: Mutex::new(Vec::new()),
        }
    }

    fn pool_metrics(&self, name: &str) -> PoolMetrics {
        lock(&self.pools)
            .entry(name.to_owned())
            .or_insert_with(|| self.metrics.pool(name))
            .clone()
    }

    pub(crate) fn reloads(&self) -> Reloads {
        lock(&self.reloads).clone()
    }

    pub(crate) fn record_reload(&self, result: Result<(), String>) {
        let mut r = lock(&self.reloads);
        match result {
            Ok(()) => r.generation += 1,
            Err(e) => {
                r.failed += 1;
                r.last_error = Some(e);
            }
        }
    }

    /// Waits (up to `limit`) for the TCP accept loops to finish draining.
    pub(crate) async fn tcp_drained(&self, limit: Duration) {
        let tasks: Vec<_> = std::mem::take(&mut *lock(&self.tcp_tasks));
        let _ = tokio::time::timeout(limit, futures_join(tasks)).await;
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// One configuration.
pub(crate) struct State {
    pub(crate) shared: Arc<Shared>,
    pub(crate) pools: BTreeMap<String, Pool>,
    pub(crate) routes: Vec<(String, String)>,
    pub(crate) tcp: BTreeMap<SocketAddr, TcpProxy>,
}

/// Where the default pool's backends come from, if it has any.
fn default_source(args: &mut Args, shared: &Shared) -> Option<Source> {
    if let Some(path) = &args.backends_file {
        return Some(Source::File(path.clone()));
    }
    if let Some(name) = &args.dns {
        return Some(Source::Dns(name.clone()));
    }
    if args.backends.is_empty() {
        args.backends = std::mem::take(&mut args.backends_env);
    }
    if !args.backends.is_empty() {
        return Some(Source::List(args.backends.clone()));
    }
    let nothing_else = args.pools.is_empty() && tcp_specs(args).is_empty();
    (nothing_else && !shared.demo.is_empty()).then(|| Source::List(shared.demo.clone()))
}

/// Every TCP proxy: `--tcp-proxy` (and `[[tcp]]`) and the one of `--tcp-listen`.
fn tcp_specs(args: &Args) -> Vec<TcpSpec> {
    let mut specs = args.tcp_proxies.clone();
    if let Some(listen) = args.tcp_listen {
        specs.push(TcpSpec {
            listen,
            strategy: args.tcp_strategy,
            backends: args.tcp_backends.clone(),
        });
    }
    specs
}

/// The pool of `--backend`, `--backends-file` and `--dns`: where a request that no route
/// prefix takes goes.
const DEFAULT_POOL: &str = "default";

impl State {
    /// The pool a request goes to when no route prefix takes it, if there is one.
    pub(crate) fn fallback_pool(&self) -> Option<&Pool> {
        self.pools.get(DEFAULT_POOL)
    }

    /// The pool every proxied request goes to, when there is no route prefix (the
    /// fallback pool is then the only place to go).
    pub(crate) fn only_pool(&self) -> Option<&Pool> {
        if self.routes.is_empty() {
            self.fallback_pool()
        } else {
            None
        }
    }

    /// Builds the configuration `args` describe, reusing what it can of `previous`.
    /// Nothing of `previous` changes, and nothing runs, until [`start`](Self::start).
    /// `bind` is false for `--check`.
    pub(crate) async fn build(
        mut args: Args,
        shared: &Arc<Shared>,
        previous: Option<&Self>,
        bind: bool,
    ) -> Result<Self, String> {
        let mut specs: Vec<(String, &'static str, Source)> = Vec::new();
        if let Some(source) = default_source(&mut args, shared) {
            let flag = match source {
                Source::List(_) => "--backend",
                Source::File(_) => "--backends-file",
                Source::Dns(_) => "--dns",
            };
            specs.push((DEFAULT_POOL.into(), flag, source));
        }
        for PoolSpec { name, source } in &args.pools {
            specs.push((name.clone(), "--pool", source.clone()));
        }
        // Read once for every pool (and again by each reload: a CA or client certificate
        // that changed gives the pools new balancers).
        let backend_tls = BackendTls::of(&args)?;
        let mut pools = BTreeMap::new();
        for (name, flag, source) in specs {
            if pools.contains_key(&name) {
                return Err(format!("--pool: pool {name:?} is defined twice"));
            }
            if let Source::List(list) = &source {
                crate::check_resolves(flag, list).await?;
            }
            let old = previous.and_then(|p| p.pools.get(&name));
            let feed = match old.map(|p| &p.upkeep.feed) {
                Some(f) if f.reads(&source, &args.dns_servers) => f.clone(),
                _ => Arc::new(
                    Feed::start(&source, &args.dns_servers).map_err(|e| format!("{flag}: {e}"))?,
                ),
            };
            let metrics = shared.pool_metrics(&name);
            let pool = pool::build(
                &name,
                feed,
                &args,
                metrics,
                shared.cookie_secret,
                &backend_tls,
                old,
            )
            .map_err(|e| format!("{flag}: {e}"))?;
            pools.insert(name, pool);
        }
        for (prefix, pool) in &args.routes {
            if !pools.contains_key(pool) {
                return Err(format!("--route: {prefix}={pool} names an unknown pool"));
            }
        }
        let mut tcp = BTreeMap::new();
        for spec in tcp_specs(&args) {
            // Port 0 is a fresh port each time it is bound (but names one proxy).
            let http = spec.listen == args.listen && spec.listen.port() != 0;
            if http || tcp.contains_key(&spec.listen) {
                return Err(format!(
                    "--tcp-listen: {} is used twice (each proxy needs its own address)",
                    spec.listen
                ));
            }
            let old = previous.and_then(|p| p.tcp.get(&spec.listen));
            let metrics = shared.pool_metrics(&tcp::pool_name(spec.listen));
            let proxy = tcp::build(&spec, &args, metrics, old, bind)?;
            tcp.insert(spec.listen, proxy);
        }
        let routes = args.routes.clone();
        Ok(Self {
            shared: shared.clone(),
            pools,
            routes,
            tcp,
        })
    }

    /// Takes effect: reconcilers, probers and TCP accept loops start.
    pub(crate) fn start(&self) {
        for pool in self.pools.values() {
            pool.start();
        }
        for proxy in self.tcp.values() {
            proxy.start(&self.shared.down, &self.shared.tcp_tasks);
        }
    }

    /// Stops what [`start`](Self::start) started, except what the next configuration
    /// took over.
    pub(crate) fn stop(&self) {
        for pool in self.pools.values() {
            pool.upkeep.stop();
        }
        for proxy in self.tcp.values() {
            proxy.stop();
        }
    }
}

/// The settings a reload cannot change: the HTTP listener, its server loop, the runtime,
/// and which certificate files the listener serves (a reload re-reads them).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Fixed {
    listen: SocketAddr,
    workers: Option<u16>,
    client_header_timeout: Duration,
    keepalive_timeout: Duration,
    max_connections: Option<u32>,
    /// Which certificate files the listener serves (their contents reload).
    tls: Option<ListenerSpec>,
}

impl Fixed {
    pub(crate) fn of(args: &Args) -> Self {
        Self {
            listen: args.listen,
            workers: args.workers,
            client_header_timeout: args.client_header_timeout,
            keepalive_timeout: args.keepalive_timeout,
            max_connections: args.max_connections,
            tls: ListenerSpec::of(args),
        }
    }

    /// The flags whose values differ in `next`.
    pub(crate) fn changed(&self, next: &Self) -> Vec<&'static str> {
        [
            (self.listen != next.listen, "--listen"),
            (self.workers != next.workers, "--workers"),
            (
                self.client_header_timeout != next.client_header_timeout,
                "--client-header-timeout",
            ),
            (
                self.keepalive_timeout != next.keepalive_timeout,
                "--keepalive-timeout",
            ),
            (
                self.max_connections != next.max_connections,
                "--max-connections",
            ),
            (self.tls != next.tls, "--tls-cert"),
        ]
        .into_iter()
        .filter_map(|(changed, flag)| changed.then_some(flag))
        .collect()
    }
}
