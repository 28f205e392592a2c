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

mod admin;
mod cli;
mod config;
mod pool;

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderValue, Response, StatusCode},
    routing::get,
    Router,
};
use clap::Parser;
use tokio::{net::TcpListener, time::Instant};
use tower_lb::server::Server;

use crate::{
    admin::Gateway,
    cli::{Args, BackendSpec},
};

/// glibc's allocator spends ~5 % of the gateway's time per request (arena locking and
/// consolidation); mimalloc's thread-local free lists cost less for the small, short-lived
/// allocations of a proxied request.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// The command line, with the configuration file's settings before the flags.
fn args() -> Args {
    let first = Args::parse();
    let Some(path) = &first.config else {
        return first;
    };
    let words = config::words(path).unwrap_or_else(|e| fail(e));
    let mut argv = std::env::args_os();
    let argv: Vec<std::ffi::OsString> = argv
        .next()
        .into_iter()
        .chain(words.into_iter().map(Into::into))
        .chain(argv)
        .collect();
    Args::try_parse_from(argv).unwrap_or_else(|e| e.exit())
}

fn main() {
    let args = args();
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

/// Refuses to start over a backend whose host name does not resolve (nginx: "host not
/// found in upstream"; HAProxy too): the name is looked up once, here; connections
/// resolve it again as they are made.
async fn check_resolves(flag: &str, specs: &[BackendSpec]) {
    for spec in specs {
        let Ok((_, authority)) = tower_lb::http::parse_base(&spec.url) else {
            continue; // validated when parsed
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.parse::<std::net::IpAddr>().is_ok() {
            continue;
        }
        let port = authority.port_u16().unwrap_or(80);
        let found = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::lookup_host((host, port)),
        )
        .await;
        match found {
            Ok(Ok(addrs)) => {
                if addrs.count() == 0 {
                    fail(format!("{flag}: host not found: {host}"));
                }
            }
            Ok(Err(e)) => fail(format!("{flag}: host not found: {host}: {e}")),
            Err(_) => fail(format!("{flag}: host not found: {host}: lookup timed out")),
        }
    }
}

async fn run(mut args: Args) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if args.backends.is_empty() {
        args.backends = std::mem::take(&mut args.backends_env);
    }
    let demo = args.backends.is_empty() && args.pools.is_empty();
    if demo {
        args.backends = demo_backends().await;
    }
    check_resolves("--backend", &args.backends).await;
    for spec in &args.pools {
        check_resolves("--pool", &spec.backends).await;
    }

    let metrics = tower_lb::metrics::BalanceMetrics::new();
    let mut registry = tower_lb::metrics::prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut pools = HashMap::new();
    if !args.backends.is_empty() {
        let pool = pool::build("default", &args.backends, &args, &metrics)
            .unwrap_or_else(|e| fail(format!("--backend: {e}")));
        pools.insert("default".to_string(), Arc::new(pool));
    }
    for spec in &args.pools {
        let pool = pool::build(&spec.name, &spec.backends, &args, &metrics)
            .unwrap_or_else(|e| fail(format!("--pool: {e}")));
        if pools.insert(spec.name.clone(), Arc::new(pool)).is_some() {
            fail(format!("--pool: pool {:?} is defined twice", spec.name));
        }
    }
    for (prefix, pool) in &args.routes {
        if !pools.contains_key(pool) {
            fail(format!("--route: {prefix}={pool} names an unknown pool"));
        }
    }
    if args.check {
        say!("configuration OK");
        return;
    }
    let gw = Arc::new(Gateway {
        pools,
        registry,
        started: Instant::now(),
    });
    let app = router(&gw, &args.routes);

    let listener = TcpListener::bind(args.listen)
        .await
        .unwrap_or_else(|e| fail(format!("--listen {}: {e}", args.listen)));
    let addr = listener.local_addr().unwrap_or(args.listen);
    say!("gateway listening on http://{addr}");
    let mut names: Vec<_> = gw.pools.keys().collect();
    names.sort();
    for name in names {
        let stats = gw.pools[name].balance.stats();
        let list: Vec<String> = stats.backends.iter().map(|b| b.key.clone()).collect();
        say!("  pool {name} ({}): {}", stats.strategy, list.join(", "));
    }
    if demo {
        say!("\nno --backend given: started three demo backends. Try:");
        say!("  curl http://{addr}/hello        # repeat: answers come from different backends");
        say!("  curl http://{addr}/status       # per-backend counters and health (JSON)");
        say!("  curl http://{addr}/metrics      # Prometheus text");
        say!("press Ctrl-C to stop");
    }
    let mut server = Server::new()
        .header_timeout(args.client_header_timeout)
        .keepalive_timeout(args.keepalive_timeout);
    if let Some(max) = args.max_connections {
        server = server.max_connections(max as usize);
    }
    if let Err(e) = server
        .serve(listener, move |_peer| app.clone(), shutdown_signal())
        .await
    {
        fail(format!("server: {e}"));
    }
}

/// Admin endpoints, then one route per prefix (the URI is passed on unchanged, as nginx
/// `proxy_pass` without a URI does), then the default pool.
fn router(gw: &Arc<Gateway>, routes: &[(String, String)]) -> Router {
    let mut app: Router = Router::new()
        .route("/health", get(|| async { "OK\n" }))
        .route(
            "/metrics",
            get({
                let gw = gw.clone();
                move || async move {
                    let mut rsp = Response::new(Body::from(admin::metrics(&gw)));
                    rsp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(tower_lb::metrics::prometheus_text::CONTENT_TYPE),
                    );
                    rsp
                }
            }),
        )
        .route(
            "/status",
            get({
                let gw = gw.clone();
                move || async move { axum::Json(admin::status_json(&gw)) }
            }),
        );
    for (prefix, pool_name) in routes {
        let svc = gw.pools[pool_name].service.clone();
        let base = prefix.trim_end_matches('/');
        app = app
            .route_service(&format!("{base}/{{*rest}}"), svc.clone())
            .route_service(if base.is_empty() { "/" } else { base }, svc.clone());
        if !base.is_empty() {
            app = app.route_service(&format!("{base}/"), svc);
        }
    }
    match gw.pools.get("default") {
        Some(default) => app.fallback_service(default.service.clone()),
        None => app.fallback(|| async {
            let mut rsp = Response::new(Body::from("404 Not Found: no route\n"));
            *rsp.status_mut() = StatusCode::NOT_FOUND;
            rsp
        }),
    }
}

async fn demo_backends() -> Vec<BackendSpec> {
    let mut specs = Vec::new();
    for i in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| fail(format!("demo backends: bind a loopback port: {e}")));
        let port = listener.local_addr().map_or(0, |a| a.port());
        let app = Router::new()
            .route("/health", get(|| async { "OK" }))
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
