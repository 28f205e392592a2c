//! The command line: flags and their parsers.

mod parse;
#[cfg(test)]
mod tests;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use tower_lb::{discover::subset::Subsetting, sticky::Cidr};

pub(crate) use parse::{
    backend_url, parse_backend, parse_cidr, parse_client_id, parse_dns, parse_duration,
    parse_hash_key, parse_hedge_after, parse_interval, parse_json_expect, parse_percent,
    parse_pool, parse_route, parse_sni, parse_tcp_backend, parse_tcp_proxy,
};

/// The command line. Every value is checked when parsed; a bad one exits with status 2
/// and one line naming the flag (clap's own error format).
#[derive(Debug, Parser)]
#[command(
    name = "tower-lb-gateway",
    version,
    about = "A load-balancing HTTP reverse proxy built from tower-lb's layers."
)]
pub(crate) struct Args {
    /// Read the settings from this TOML file too (flags given here win over it); see the
    /// README for its format.
    #[arg(long, value_name = "PATH")]
    pub(crate) config: Option<std::path::PathBuf>,

    /// Check the configuration (flags and file), print `configuration OK`, and exit
    /// (nginx `-t`).
    #[arg(long)]
    pub(crate) check: bool,

    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,

    /// A backend of the default pool: `URL[,weight=N][,backup][,priority=N]`. `backup` is
    /// priority 1; a priority level serves only while no lower level can. Repeatable; with
    /// none (and no --pool), three demo backends are started in-process.
    #[arg(long = "backend", value_name = "URL[,weight=N][,backup]", value_parser = parse_backend)]
    pub(crate) backends: Vec<BackendSpec>,

    /// The default pool's backends come from this watched TOML or JSON file
    /// (`[[backend]]` tables: `address` as `HOST:PORT` or an `http://` URL, `weight`,
    /// `backup`, `priority`). Backends that leave are drained, then removed once their
    /// requests in flight have finished; new ones take traffic at once.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["backends", "dns"])]
    pub(crate) backends_file: Option<PathBuf>,

    /// The default pool's backends come from DNS: `HOST:PORT` (every A and AAAA
    /// address), or an SRV name such as `_http._tcp.api.example` (priorities become
    /// levels, weights weights), re-resolved at the records' TTL.
    #[arg(long, value_name = "NAME", conflicts_with = "backends", value_parser = parse_dns)]
    pub(crate) dns: Option<String>,

    /// The DNS server `--dns` (and pools with `dns:`) ask, `IP:PORT` (repeatable).
    /// Default: the system's resolver configuration.
    #[arg(long = "dns-server", value_name = "IP:PORT")]
    pub(crate) dns_servers: Vec<SocketAddr>,

    /// Backends as a comma-separated list of URLs (used when no --backend is given).
    #[arg(long = "backends-env", env = "BACKENDS", hide = true, value_delimiter = ',', value_parser = parse_backend)]
    pub(crate) backends_env: Vec<BackendSpec>,

    /// Pick strategy. `round-robin` honours weights smoothly, as nginx does;
    /// `load-report` weighs each backend by the load it reports in its responses
    /// (ORCA `endpoint-load-metrics`, gRPC A58: qps ÷ utilization, after 10 s of reports).
    #[arg(long, value_enum, default_value_t = StrategyName::P2cEwma)]
    pub(crate) strategy: StrategyName,

    /// Connect timeout to a backend.
    #[arg(long, value_name = "DUR", default_value = "5s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,

    /// Time limit for a whole request, retries included (504 when it expires).
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,

    /// How many times a failed request may be sent to another backend: always when the
    /// connection failed, after bytes went upstream only for idempotent methods.
    #[arg(long, default_value_t = 2)]
    pub(crate) retries: usize,

    /// Bytes of each request body kept so the request can be replayed on another backend.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub(crate) replay_buffer: usize,

    /// Speak HTTP/2 to backends (prior knowledge, h2c) instead of HTTP/1.1.
    #[arg(long)]
    pub(crate) http2: bool,

    /// Send the backend's address as Host instead of the client's Host header.
    #[arg(long)]
    pub(crate) rewrite_host: bool,

    /// A named pool for path routing: `NAME=URL[,weight=N][,backup],URL,…`, or
    /// `NAME=file:PATH` (a watched backend file), or `NAME=dns:NAME` (repeatable).
    #[arg(long = "pool", value_name = "NAME=URL,URL…", value_parser = parse_pool)]
    pub(crate) pools: Vec<PoolSpec>,

    /// Route a path prefix to a pool: PREFIX=POOL (repeatable; longest prefix wins; other
    /// paths go to the default pool).
    #[arg(long = "route", value_name = "PREFIX=POOL", value_parser = parse_route)]
    pub(crate) routes: Vec<(String, String)>,

    /// How long a request waits for a backend when none is available before a 503.
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
    pub(crate) fail_fast: Duration,

    /// Passive health (nginx `max_fails`): failures within --fail-timeout that eject a
    /// backend for --fail-timeout. 0 turns passive health off.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) max_fails: u32,

    /// Passive health (nginx `fail_timeout`): the failure window and the ejection time.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub(crate) fail_timeout: Duration,

    /// Outlier detection (Envoy, gRPC A50): every --outlier-interval, eject a backend
    /// whose success rate is far below the others' (`success-rate`: under mean − 1.9 ×
    /// stdev, 100 requests, 5 hosts) or that failed at least 85 % of its requests
    /// (`failure-percentage`: 50 requests, 5 hosts); 30 s × times ejected, at most 300 s.
    /// Failures are those passive health counts (--max-fails 0 keeps counting). Off
    /// unless given.
    #[arg(long, value_enum, value_name = "TEST")]
    pub(crate) outlier_detection: Option<OutlierTest>,

    /// Outlier detection: how often backends are compared, over the requests of that
    /// span (Envoy `interval`).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_interval, requires = "outlier_detection")]
    pub(crate) outlier_interval: Duration,

    /// Outlier detection: requests a backend needs within an interval to be judged
    /// (Envoy `*_request_volume`; default 100 for success-rate, 50 for
    /// failure-percentage).
    #[arg(long, value_name = "N", requires = "outlier_detection")]
    pub(crate) outlier_min_requests: Option<u64>,

    /// Outlier detection: backends with enough requests needed for any to be judged
    /// (Envoy `*_minimum_hosts`, default 5).
    #[arg(long, value_name = "N", requires = "outlier_detection")]
    pub(crate) outlier_min_hosts: Option<usize>,

    /// Hedged requests (Envoy hedging, Finagle backup requests): an idempotent request
    /// with no answer after DUR (`50ms`) or the pNN of recent latencies (`p95`, at least
    /// 1 ms) is also sent to another backend; the first answer wins. Off unless given.
    #[arg(long, value_name = "DUR|pNN", value_parser = parse_hedge_after)]
    pub(crate) hedge_after: Option<HedgeAfter>,

    /// Hedged requests: at most this share of requests, in percent, is hedged (plus 3 per
    /// second), and hedges also draw on the retry budget (20 %).
    #[arg(long, value_name = "PERCENT", default_value_t = 10.0, value_parser = parse_percent)]
    pub(crate) hedge_budget: f64,

    /// Active health: GET this path on every backend (2xx/3xx is up). Off unless given.
    #[arg(long, value_name = "PATH")]
    pub(crate) health_path: Option<String>,

    /// Where hash strategies read a request's key: header:NAME, cookie:NAME, query:NAME
    /// or client-ip (the default for hash strategies).
    #[arg(long, value_name = "SOURCE", value_parser = parse_hash_key)]
    pub(crate) hash_key: Option<HashKey>,

    /// Sticky sessions: the gateway sets this cookie to an opaque token of the backend
    /// that served the client, and sends the client back there while it is available.
    #[arg(long, value_name = "NAME")]
    pub(crate) sticky_cookie: Option<String>,

    /// A proxy whose X-Forwarded-For is trusted for --hash-key client-ip (repeatable).
    #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = parse_cidr)]
    pub(crate) trusted_proxies: Vec<Cidr>,

    /// Worker threads; 1 runs everything on one thread (like an nginx worker), which is
    /// fastest when the gateway shares a small machine with its load. Default: one per
    /// core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) workers: Option<u16>,

    /// Active health: probe interval (jittered ±10 %; 1 s while a backend is down);
    /// 2 s for --health-path when not given. For TCP proxies, giving it turns TCP connect
    /// probes on.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) health_interval: Option<Duration>,

    /// Slow start (nginx Plus `slow_start`): a backend that joins or recovers gets a
    /// share of its weight rising from 10 % to 100 % over this time. Off unless given.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) slow_start: Option<Duration>,

    /// Subsetting: each pool uses only K of its backends, chosen by --client-id
    /// (deterministic, SRE book ch. 20) or --subset-seed (random, gRPC A68).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..), requires = "subset_mode")]
    pub(crate) subset_size: Option<u32>,

    /// Deterministic subsetting: this gateway is client I of N (0 ≤ I < N).
    #[arg(long, value_name = "I/N", group = "subset_mode", requires = "subset_size", value_parser = parse_client_id)]
    pub(crate) client_id: Option<(u64, u64)>,

    /// Random subsetting (gRPC A68): this gateway's seed, different on every client.
    #[arg(
        long,
        value_name = "S",
        group = "subset_mode",
        requires = "subset_size"
    )]
    pub(crate) subset_seed: Option<u64>,

    /// Active health: the probe also needs a response body containing this text
    /// (HAProxy `http-check expect string`).
    #[arg(long, value_name = "TEXT", requires = "health_path")]
    pub(crate) health_expect_body: Option<String>,

    /// Active health: the probe also needs a JSON body whose field (an RFC 6901 pointer)
    /// has this value, e.g. `/status=healthy`.
    #[arg(long, value_name = "POINTER=VALUE", requires = "health_path", value_parser = parse_json_expect)]
    pub(crate) health_expect_json: Option<(String, String)>,

    /// A client that has not sent a whole request head within this time is answered
    /// 408 and closed (nginx `client_header_timeout`).
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub(crate) client_header_timeout: Duration,

    /// A client connection with no request in progress for this long is closed (nginx
    /// `keepalive_timeout`).
    #[arg(long, value_name = "DUR", default_value = "75s", value_parser = parse_duration)]
    pub(crate) keepalive_timeout: Duration,

    /// At most this many client connections at once; more wait in the accept queue
    /// (nginx `worker_connections`). Default: no cap.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections: Option<u32>,

    /// Terminate TLS on the listener with this PEM certificate chain (leaf first), with
    /// --tls-key; ALPN offers `h2` and `http/1.1`, TLS 1.2 and 1.3 only, and backends get
    /// `X-Forwarded-Proto: https`. SIGHUP re-reads the files (a bad one keeps the
    /// certificate in use).
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,

    /// A certificate for clients that ask for NAME through SNI: `NAME=CERT,KEY` (PEM
    /// paths; NAME may be `*.example.com`). Others get --tls-cert. Repeatable; in the
    /// configuration file, `[[tls-sni]]` tables with `name`, `cert` and `key`.
    #[arg(long = "tls-sni", value_name = "NAME=CERT,KEY", requires = "tls_cert", value_parser = parse_sni)]
    pub(crate) tls_sni: Vec<SniSpec>,

    /// A client that has not finished its TLS handshake this long after connecting is
    /// closed (nginx `ssl_handshake_timeout`).
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = parse_duration)]
    pub(crate) tls_handshake_timeout: Duration,

    /// Also re-read the certificate files when they change, checked this often (SIGHUP
    /// always re-reads them). Off unless given.
    #[arg(long, value_name = "DUR", requires = "tls_cert", value_parser = parse_duration)]
    pub(crate) tls_watch: Option<Duration>,

    /// `https://` backends: also trust the CAs of this PEM bundle, beside the system's
    /// roots (repeatable). Certificates are always verified (chain, dates, the backend's
    /// host name); a backend whose certificate fails gets no request.
    #[arg(long = "backend-ca", value_name = "PATH")]
    pub(crate) backend_ca: Vec<PathBuf>,

    /// `https://` backends: present this PEM client certificate chain (mTLS), with
    /// --backend-client-key.
    #[arg(long, value_name = "PATH", requires = "backend_client_key")]
    pub(crate) backend_client_cert: Option<PathBuf>,

    /// The private key of --backend-client-cert (PEM).
    #[arg(long, value_name = "PATH", requires = "backend_client_cert")]
    pub(crate) backend_client_key: Option<PathBuf>,

    /// Layer 4: accept TCP connections here and balance them over --tcp-backend
    /// (least connections by default).
    #[arg(long, value_name = "ADDR", requires = "tcp_backends")]
    pub(crate) tcp_listen: Option<SocketAddr>,

    /// A backend of the --tcp-listen proxy: `HOST:PORT[,weight=N][,backup][,priority=N]`
    /// (repeatable).
    #[arg(long = "tcp-backend", value_name = "HOST:PORT[,weight=N][,backup]", requires = "tcp_listen", value_parser = parse_tcp_backend)]
    pub(crate) tcp_backends: Vec<TcpBackendSpec>,

    /// The strategy of the --tcp-listen proxy (default: least-conn, over open
    /// connections).
    #[arg(long, value_enum, requires = "tcp_listen")]
    pub(crate) tcp_strategy: Option<StrategyName>,

    /// A TCP proxy: `LISTEN=[strategy=NAME,]HOST:PORT[,weight=N][,backup],…`
    /// (repeatable; what a `[[tcp]]` section of the configuration file becomes).
    #[arg(long = "tcp-proxy", value_name = "LISTEN=HOST:PORT,…", value_parser = parse_tcp_proxy)]
    pub(crate) tcp_proxies: Vec<TcpSpec>,
}

/// The default probe interval (HAProxy `inter`).
pub(crate) const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StrategyName {
    RoundRobin,
    LeastConn,
    Random,
    P2c,
    P2cEwma,
    IpHash,
    RingHash,
    Maglev,
    BoundedLoad,
    Rendezvous,

    LoadReport,
}

impl Args {
    /// The subsetting the `--subset-*` flags ask for (their parsers checked the values).
    pub(crate) fn subsetting(&self) -> Option<Subsetting> {
        let k = self.subset_size? as usize;
        match (self.client_id, self.subset_seed) {
            (Some((id, count)), _) => Subsetting::deterministic(k, id, count).ok(),
            (None, seed) => Subsetting::random(k, seed?).ok(),
        }
    }
}

impl StrategyName {
    /// Whether the strategy hashes a request key.
    pub(crate) fn is_hash(self) -> bool {
        matches!(
            self,
            Self::IpHash | Self::RingHash | Self::Maglev | Self::BoundedLoad | Self::Rendezvous
        )
    }
}

/// When `--hedge-after` hedges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum HedgeAfter {
    /// A fixed delay.
    Delay(Duration),
    /// A quantile of recent latencies, in `0.0..1.0`.
    Percentile(f64),
}

impl HedgeAfter {
    /// The library's [`Hedge`](tower_lb::balance::Hedge) with `--hedge-budget`: that share
    /// of requests, plus 3 per second over 10 s.
    pub(crate) fn hedge(self, budget_percent: f64) -> tower_lb::balance::Hedge {
        use tower_lb::balance::{Hedge, RetryBudget};
        let hedge = match self {
            Self::Delay(d) => Hedge::after(d),
            Self::Percentile(q) => Hedge::percentile(q),
        };
        hedge.budget(RetryBudget::new().ratio(budget_percent / 100.0))
    }
}

/// The test of `--outlier-detection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutlierTest {
    SuccessRate,
    FailurePercentage,
}

/// Where a request's affinity key comes from (`--hash-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HashKey {
    Header(String),
    Cookie(String),
    Query(String),
    ClientIp,
}

/// An HTTP backend: a normalized `scheme://host:port` URL and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackendSpec {
    pub(crate) url: String,
    pub(crate) weight: u32,
    /// Priority level: 0 primary, 1 for `backup`, or `priority=N`.
    pub(crate) priority: u8,
}

/// Where a pool's backends come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A fixed list (changed only by a reload).
    List(Vec<BackendSpec>),
    /// A watched backend file.
    File(PathBuf),
    /// A DNS name: `HOST:PORT` or an SRV name.
    Dns(String),
}

#[derive(Debug, Clone)]
pub(crate) struct PoolSpec {
    pub(crate) name: String,
    pub(crate) source: Source,
}

/// A TCP backend: `host:port` and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TcpBackendSpec {
    pub(crate) addr: String,
    pub(crate) weight: u32,
    pub(crate) priority: u8,
}

/// A certificate served to clients asking for `name` through SNI (`--tls-sni`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SniSpec {
    pub(crate) name: String,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// One TCP proxy: where it listens, how it picks, and its backends.
#[derive(Debug, Clone)]
pub(crate) struct TcpSpec {
    pub(crate) listen: SocketAddr,
    pub(crate) strategy: Option<StrategyName>,
    pub(crate) backends: Vec<TcpBackendSpec>,
}
