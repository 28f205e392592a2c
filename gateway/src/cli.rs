//! The command line: flags and their parsers.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, ValueEnum};
use tower_lb::{http::parse_base, sticky::Cidr};

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

    /// Backends as a comma-separated list of URLs (used when no --backend is given).
    #[arg(long = "backends-env", env = "BACKENDS", hide = true, value_delimiter = ',', value_parser = parse_backend)]
    pub(crate) backends_env: Vec<BackendSpec>,

    /// Pick strategy. `round-robin` honours weights smoothly, as nginx does.
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

    /// A named pool for path routing: `NAME=URL[,weight=N][,backup],URL,…` (repeatable).
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

    /// Active health: probe interval (jittered ±10 %; 1 s while a backend is down).
    #[arg(long, value_name = "DUR", default_value = "2s", value_parser = parse_duration)]
    pub(crate) health_interval: Duration,

    /// Slow start (nginx Plus `slow_start`): a backend that joins or recovers gets a
    /// share of its weight rising from 10 % to 100 % over this time. Off unless given.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) slow_start: Option<Duration>,

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
}

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
}

/// Where a request's affinity key comes from (`--hash-key`).
#[derive(Debug, Clone)]
pub(crate) enum HashKey {
    Header(String),
    Cookie(String),
    Query(String),
    ClientIp,
}

pub(crate) fn parse_hash_key(s: &str) -> Result<HashKey, String> {
    match s.split_once(':') {
        Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
            .map(|_| HashKey::Header(name.to_ascii_lowercase()))
            .map_err(|_| format!("invalid header name {name:?}")),
        Some(("cookie", name)) if !name.is_empty() => Ok(HashKey::Cookie(name.to_string())),
        Some(("query", name)) if !name.is_empty() => Ok(HashKey::Query(name.to_string())),
        None if s == "client-ip" => Ok(HashKey::ClientIp),
        _ => Err(format!(
            "expected header:NAME, cookie:NAME, query:NAME or client-ip, got {s:?}"
        )),
    }
}

pub(crate) fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse::<Cidr>().map_err(|e| format!("{s:?}: {e}"))
}

#[derive(Debug, Clone)]
pub(crate) struct BackendSpec {
    pub(crate) url: String,
    pub(crate) weight: u32,
    /// Priority level: 0 primary, 1 for `backup`, or `priority=N`.
    pub(crate) priority: u8,
}

#[derive(Debug, Clone)]
pub(crate) struct PoolSpec {
    pub(crate) name: String,
    pub(crate) backends: Vec<BackendSpec>,
}

pub(crate) fn parse_backend(s: &str) -> Result<BackendSpec, String> {
    let mut parts = s.split(',');
    let url = parts.next().unwrap_or_default().trim();
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let (scheme, authority) = parse_base(&url).map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let mut spec = BackendSpec {
        url: format!("{scheme}://{authority}"),
        weight: 1,
        priority: 0,
    };
    for opt in parts {
        match opt.trim().split_once('=') {
            Some(("weight", w)) => {
                spec.weight = w
                    .parse::<u32>()
                    .ok()
                    .filter(|&w| w > 0)
                    .ok_or_else(|| format!("weight must be a whole number ≥ 1, got {w:?}"))?;
            }
            Some(("priority", p)) => {
                spec.priority = p
                    .parse::<u8>()
                    .map_err(|_| format!("priority must be a whole number 0-255, got {p:?}"))?;
            }
            None if opt.trim() == "backup" => spec.priority = spec.priority.max(1),
            _ => return Err(format!("unknown backend option {opt:?}")),
        }
    }
    Ok(spec)
}

pub(crate) fn parse_pool(s: &str) -> Result<PoolSpec, String> {
    let (name, urls) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=URL,URL…, got {s:?}"))?;
    if name.is_empty() {
        return Err("pool name is empty".into());
    }
    // `URL,weight=2,backup,URL2`: options attach to the URL before them.
    let mut specs: Vec<String> = Vec::new();
    for part in urls.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let option =
            part == "backup" || part.starts_with("weight=") || part.starts_with("priority=");
        match specs.last_mut() {
            Some(last) if option => {
                last.push(',');
                last.push_str(part);
            }
            _ => specs.push(part.to_string()),
        }
    }
    let backends = specs
        .iter()
        .map(|s| parse_backend(s))
        .collect::<Result<Vec<_>, _>>()?;
    if backends.is_empty() {
        return Err(format!("pool {name:?} has no backend"));
    }
    Ok(PoolSpec {
        name: name.to_string(),
        backends,
    })
}

pub(crate) fn parse_route(s: &str) -> Result<(String, String), String> {
    let (prefix, pool) = s
        .split_once('=')
        .ok_or_else(|| format!("expected PREFIX=POOL, got {s:?}"))?;
    if !prefix.starts_with('/') {
        return Err(format!("prefix must start with '/', got {prefix:?}"));
    }
    Ok((prefix.to_string(), pool.to_string()))
}

/// Parses `250ms`, `2s`, `1m`, `1h` (a bare number is seconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 500ms, 2s or 1m, got {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown duration unit {unit:?} in {s:?}")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `POINTER=VALUE` for `--health-expect-json`.
pub(crate) fn parse_json_expect(s: &str) -> Result<(String, String), String> {
    let (pointer, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected POINTER=VALUE such as /status=healthy, got {s:?}"))?;
    tower_lb::health::active::BodyMatch::json(pointer, value).map_err(|e| e.to_string())?;
    Ok((pointer.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        for bad in ["", "s", "-1s", "1d", "1e400", "NaN", "inf"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Every flag parser over arbitrary text: a value, or an error saying why; what
        /// parses holds what the flag promises.
        #[test]
        fn flag_values_parse_or_say_why(text in "\\PC{0,60}|[0-9a-z.:/=,\\[\\]-]{0,40}") {
            match parse_backend(&text) {
                Ok(b) => {
                    prop_assert!(b.weight >= 1);
                    prop_assert!(parse_base(&b.url).is_ok(), "{}", b.url);
                }
                Err(e) => prop_assert!(!e.is_empty()),
            }
            match parse_pool(&text) {
                Ok(p) => prop_assert!(!p.name.is_empty() && !p.backends.is_empty()),
                Err(e) => prop_assert!(!e.is_empty()),
            }
            if let Ok((prefix, _)) = parse_route(&text) {
                prop_assert!(prefix.starts_with('/'));
            }
            if let Ok(d) = parse_duration(&text) {
                prop_assert!(d <= Duration::from_secs(1_000_000_000));
            }
            let _ = parse_hash_key(&text);
            let _ = parse_cidr(&text);
            let _ = parse_json_expect(&text);
        }

        /// Whole command lines built from the flags' words: parsed or refused, never a
        /// panic.
        #[test]
        fn command_lines_parse_or_are_refused(words in prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec![
                    "--backend", "--pool", "--route", "--strategy", "--retries", "--timeout",
                    "--max-fails", "--fail-timeout", "--hash-key", "--sticky-cookie",
                    "--trusted-proxy", "--workers", "--max-connections", "--health-path",
                    "--health-expect-json", "--client-header-timeout", "--slow-start",
                ]).prop_map(str::to_owned),
                "[ -~]{0,16}",
            ],
            0..10,
        )) {
            let argv = std::iter::once("tower-lb-gateway".to_owned()).chain(words);
            let _ = Args::try_parse_from(argv);
        }
    }
}
