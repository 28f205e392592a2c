//! `tower-lb-gateway`: an HTTP load balancer assembled from tower-lb's public layers.
//!
//! ```sh
//! cargo run --release -p tower-lb-gateway
//! ```
//!
//! With no `--backend`, it starts three demo backends in-process and balances over them on
//! 127.0.0.1:8080. See `--help` for every flag; bad input exits with status 2 and one line
//! naming the flag.
//!
//! Reserved paths on the listener: `/health` (the gateway's own liveness), `/metrics`
//! (Prometheus text) and `/status` (JSON).
//!
//! Backends may come from a list, a watched file (`--backends-file`) or DNS (`--dns`);
//! TCP proxies (`--tcp-listen`, `[[tcp]]`) balance layer-4 connections. SIGHUP reloads
//! the whole configuration (see [`state`] for what a reload keeps) and re-reads the
//! listener's certificates; the listener, open connections and requests in flight are
//! not disturbed, and a configuration that cannot be used changes nothing.
//!
//! TLS (see [`tls`]): `--tls-cert`/`--tls-key` (and `--tls-sni`) terminate TLS on the
//! listener; `https://` backends are verified against the system's roots and
//! `--backend-ca`, with `--backend-client-cert`/`--backend-client-key` for mTLS.

mod admin;
mod app;
mod cli;
mod config;
mod pool;
mod reconcile;
mod source;
mod state;
mod tcp;
mod tls;
mod upkeep;

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use axum::{extract::Request, Router};
use clap::Parser;
use tokio::{net::TcpListener, sync::watch};
use tower_lb::{
    health::service::HealthChecks,
    server::{tls::TlsConfig as ListenerTls, Server},
};

use crate::{
    cli::{Args, BackendSpec},
    state::{Fixed, Shared, State},
    tls::ListenerSpec,
};

/// glibc's allocator spends ~5 % of the gateway's time per request (arena locking and
/// consolidation); mimalloc's thread-local free lists cost less for the small, short-lived
/// allocations of a proxied request. Built without transparent huge pages (`no_thp`):
/// with them, mimalloc's arenas are backed by 2 MiB pages as soon as they are touched,
/// which doubled the idle gateway's resident memory (16 MiB against 9 MiB) and, at
/// 10,000 backends, its memory per backend, for no measured gain in speed.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Backends named in a pool's line at start-up; a larger set is counted, not listed
/// (`/status` lists every one).
const LISTED: usize = 10;

/// A pool's backends for its line at start-up: the first [`LISTED`], then how many more.
fn backend_list<'a>(keys: impl ExactSizeIterator<Item = &'a String>) -> String {
    let n = keys.len();
    let mut list: Vec<&str> = keys.take(LISTED).map(String::as_str).collect();
    let more = n - list.len();
    let more = (more > 0).then(|| format!("… and {more} more ({n} in all)"));
    list.extend(more.as_deref());
    list.join(", ")
}

/// Prints a line to stdout, ignoring a closed pipe.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Exits with status 2 and one line: bad input.
fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2);
}

/// The command line, with the configuration file's settings before the flags; `Err`
/// says why it cannot be used. The first reading exits on `--help` and bad flags
/// instead (clap's own output).
fn read_args(first: Args) -> Result<Args, String> {
    let Some(path) = &first.config else {
        return Ok(first);
    };
    let words = config::words(path).map_err(|e| e.to_string())?;
    let mut argv = std::env::args_os();
    let argv: Vec<std::ffi::OsString> = argv
        .next()
        .into_iter()
        .chain(words.into_iter().map(Into::into))
        .chain(argv)
        .collect();
    Args::try_parse_from(argv).map_err(|e| {
        let text = e.to_string();
        text.lines()
            .next()
            .unwrap_or("invalid arguments")
            .trim_start_matches("error: ")
            .to_owned()
    })
}

/// The command line and configuration file as they are now, for a reload.
fn reread_args() -> Result<Args, String> {
    let first = Args::try_parse().map_err(|e| e.to_string())?;
    read_args(first)
}

/// Stops a task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn main() {
    let first = Args::parse();
    let args = match first.config.clone() {
        None => first,
        Some(_) => read_args(first).unwrap_or_else(|e| fail(e)),
    };
    let mut rt = match args.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = rt
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(format!("--workers: cannot start the runtime: {e}")));
    rt.block_on(run(args));
}

/// Refuses a backend whose host name does not resolve (nginx: "host not found in
/// upstream"; HAProxy too): the name is looked up once, here; connections resolve it
/// again as they are made.
pub(crate) async fn check_resolves(flag: &str, specs: &[BackendSpec]) -> Result<(), String> {
    for spec in specs {
        let Ok((scheme, authority)) = tower_lb::http::parse_base(&spec.url) else {
            continue; // validated when parsed
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.parse::<std::net::IpAddr>().is_ok() {
            continue;
        }
        let default_port = if scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        let port = authority.port_u16().unwrap_or(default_port);
        let found = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::lookup_host((host, port)),
        )
        .await;
        match found {
            Ok(Ok(mut addrs)) => {
                if addrs.next().is_none() {
                    return Err(format!("{flag}: host not found: {host}"));
                }
            }
            Ok(Err(e)) => return Err(format!("{flag}: host not found: {host}: {e}")),
            Err(_) => return Err(format!("{flag}: host not found: {host}: lookup timed out")),
        }
    }
    Ok(())
}

async fn run(args: Args) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let demo = args.backends.is_empty()
        && args.backends_env.is_empty()
        && args.backends_file.is_none()
        && args.dns.is_none()
        && args.pools.is_empty()
        && args.tcp_listen.is_none()
        && args.tcp_proxies.is_empty();
    let demo = if demo {
        demo_backends().await
    } else {
        Vec::new()
    };
    let (down_tx, down_rx) = watch::channel(false);
    let shared = Arc::new(Shared::new(demo, down_rx.clone()));
    let check = args.check;
    let fixed = Fixed::of(&args);
    let (listen, header_timeout, keepalive) = (
        args.listen,
        args.client_header_timeout,
        args.keepalive_timeout,
    );
    let max_connections = args.max_connections;
    // Every certificate loads, or the gateway does not start (`--check` says why too).
    let tls = ListenerSpec::of(&args).map(|spec| spec.load().unwrap_or_else(|e| fail(e)));
    let tls_watch = args.tls_watch;
    let state = State::build(args, &shared, None, !check)
        .await
        .unwrap_or_else(|e| fail(e));
    if check {
        say!("configuration OK");
        return;
    }
    let listener = TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| fail(format!("--listen {listen}: {e}")));
    // Before the first line: a SIGHUP sent once the address is printed is a reload.
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .unwrap_or_else(|e| fail(format!("cannot handle SIGHUP: {e}")));
    state.start();
    shared.record_reload(Ok(()));
    let state = Arc::new(state);
    let current = Arc::new(ArcSwap::from_pointee(app::App::new(&state)));

    let addr = listener.local_addr().unwrap_or(listen);
    let scheme = if tls.is_some() { "https" } else { "http" };
    say!("gateway listening on {scheme}://{addr}");
    for (name, pool) in &state.pools {
        let stats = pool.balance.stats();
        let list = backend_list(stats.backends.iter().map(|b| &b.key));
        say!("  pool {name} ({}): {list}", stats.strategy);
    }
    for (listen, proxy) in &state.tcp {
        let stats = proxy.balance.stats();
        let list = backend_list(stats.backends.iter().map(|b| &b.key));
        let at = proxy.local_addr().unwrap_or(*listen);
        say!("  tcp {at} ({}): {list}", stats.strategy);
    }
    if !shared.demo.is_empty() {
        say!("\nno --backend given: started three demo backends. Try:");
        say!(
            "  curl {scheme}://{addr}/hello        # repeat: answers come from different backends"
        );
        say!("  curl {scheme}://{addr}/status       # per-backend counters and health (JSON)");
        say!("  curl {scheme}://{addr}/metrics      # Prometheus text");
        say!("press Ctrl-C to stop");
    }
    // Held for the life of the process: dropping it stops the watch.
    let _watch = match (&tls, tls_watch) {
        (Some(tls), Some(every)) => Some(
            tls.watch(every)
                .unwrap_or_else(|e| fail(format!("--tls-watch: {e}"))),
        ),
        _ => None,
    };
    #[cfg(unix)]
    tokio::spawn(reloads(hangups, state, fixed, current.clone(), tls.clone()));
    #[cfg(not(unix))]
    let _ = (state, fixed);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = down_tx.send(true);
    });

    let mut server = Server::new()
        .header_timeout(header_timeout)
        .keepalive_timeout(keepalive);
    if let Some(tls) = tls {
        server = server.tls(tls);
    }
    if let Some(max) = max_connections {
        server = server.max_connections(max as usize);
    }
    let mut down = down_rx;
    let stopping = async move {
        let _ = down.wait_for(|d| *d).await;
    };
    if let Err(e) = server
        .serve(
            listener,
            move |_peer| app::Current(current.clone()),
            stopping,
        )
        .await
    {
        fail(format!("server: {e}"));
    }
    // TCP proxies stopped accepting at the same signal; their connections get as long
    // as tower-lb's TCP proxy gives them on shutdown.
    shared.tcp_drained(Duration::from_secs(30)).await;
}

/// Reloads the whole configuration on each SIGHUP (nginx `-s reload`), the listener's
/// certificate files included: a configuration that cannot be used (a certificate that
/// does not load among them) changes nothing, and is logged and counted in `/status`.
#[cfg(unix)]
async fn reloads(
    mut hangups: tokio::signal::unix::Signal,
    mut state: Arc<State>,
    fixed: Fixed,
    current: Arc<ArcSwap<app::App>>,
    tls: Option<ListenerTls>,
) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        let next = match reread_args() {
            Ok(args) => {
                for flag in fixed.changed(&Fixed::of(&args)) {
                    tracing::warn!(
                        flag,
                        "this setting changes only with a restart; the running value is kept"
                    );
                }
                match read_certificates(tls.as_ref()).await {
                    Ok(certs) => State::build(args, &state.shared, Some(&state), true)
                        .await
                        .map(|next| (next, certs)),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match next {
            Ok((next, certs)) => {
                // Read and checked above: the new certificates serve new handshakes from
                // now on; open connections keep theirs.
                if let Some(certs) = certs {
                    certs.apply();
                }
                state.stop();
                next.start();
                let next = Arc::new(next);
                current.store(Arc::new(app::App::new(&next)));
                state.shared.record_reload(Ok(()));
                state = next;
                tracing::info!("configuration reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload failed; the previous configuration keeps serving");
                state.shared.record_reload(Err(e));
            }
        }
    }
}

/// The listener's certificate files (those it started with), read and checked now, off
/// the runtime's threads; used only once the rest of the configuration is built too.
#[cfg(unix)]
async fn read_certificates(
    tls: Option<&ListenerTls>,
) -> Result<Option<tower_lb::server::tls::ReadCertificates>, String> {
    let Some(tls) = tls.cloned() else {
        return Ok(None);
    };
    match tokio::task::spawn_blocking(move || tls.read_files()).await {
        Ok(read) => read.map(Some).map_err(|e| format!("--tls-cert: {e}")),
        Err(e) => Err(format!("--tls-cert: {e}")),
    }
}

async fn demo_backends() -> Vec<BackendSpec> {
    let mut specs = Vec::new();
    for i in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| fail(format!("demo backends: bind a loopback port: {e}")));
        let port = listener.local_addr().map_or(0, |a| a.port());
        // The backend side of health, as a Rust service would serve it: 200
        // `{"status":"healthy","checks":{}}` (a demo backend has no dependencies to check).
        let health = HealthChecks::builder()
            .build()
            .unwrap_or_else(|e| fail(format!("demo backends: {e}")));
        let app = Router::new()
            .route_service("/health", health.readiness())
            .fallback(move |req: Request| async move {
                format!(
                    "hello from demo backend {i} (port {port}), {} {}\n",
                    req.method(),
                    req.uri()
                )
            });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        specs.push(BackendSpec {
            url: format!("http://127.0.0.1:{port}"),
            weight: 1,
            priority: 0,
        });
    }
    specs
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    eprintln!("shutting down: draining in-flight requests");
}

#[cfg(test)]
mod tests {
    use super::backend_list;

    #[test]
    fn a_large_set_is_counted_not_listed() {
        let keys = |n: usize| -> Vec<String> { (0..n).map(|i| format!("http://b{i}")).collect() };
        assert_eq!(backend_list(keys(0).iter()), "");
        assert_eq!(backend_list(keys(2).iter()), "http://b0, http://b1");
        let ten = backend_list(keys(10).iter());
        assert!(ten.ends_with("http://b9") && !ten.contains("more"), "{ten}");
        let many = backend_list(keys(10_000).iter());
        assert!(many.starts_with("http://b0, "), "{many}");
        assert!(
            many.ends_with("http://b9, … and 9990 more (10000 in all)"),
            "{many}"
        );
    }
}
