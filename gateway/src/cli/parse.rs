//! The flags' value parsers: each returns the value, or one line saying why not.

use std::{net::SocketAddr, time::Duration};

use tower_lb::{discover::dns::DnsSource, http::parse_base, sticky::Cidr};

use super::{
    BackendSpec, HashKey, PoolSpec, SniSpec, Source, StrategyName, TcpBackendSpec, TcpSpec,
};

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

/// `HOST:PORT` or an `http://` / `https://` URL without a path, as the backend key
/// `scheme://host:port` (the same backend always gets the same key, however written).
pub(crate) fn backend_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    let url = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let (scheme, authority) = parse_base(&url).map_err(|e| format!("bad URL {url:?}: {e}"))?;
    Ok(format!("{scheme}://{authority}"))
}

/// The options after a backend's address: `weight=N`, `backup`, `priority=N`.
fn apply_options<'a>(
    weight: &mut u32,
    priority: &mut u8,
    options: impl Iterator<Item = &'a str>,
) -> Result<(), String> {
    for opt in options {
        match opt.trim().split_once('=') {
            Some(("weight", w)) => {
                *weight = w
                    .parse::<u32>()
                    .ok()
                    .filter(|&w| w > 0)
                    .ok_or_else(|| format!("weight must be a whole number ≥ 1, got {w:?}"))?;
            }
            Some(("priority", p)) => {
                *priority = p
                    .parse::<u8>()
                    .map_err(|_| format!("priority must be a whole number 0-255, got {p:?}"))?;
            }
            None if opt.trim() == "backup" => *priority = (*priority).max(1),
            _ => return Err(format!("unknown backend option {opt:?}")),
        }
    }
    Ok(())
}

pub(crate) fn parse_backend(s: &str) -> Result<BackendSpec, String> {
    let mut parts = s.split(',');
    let url = backend_url(parts.next().unwrap_or_default())?;
    let mut spec = BackendSpec {
        url,
        weight: 1,
        priority: 0,
    };
    apply_options(&mut spec.weight, &mut spec.priority, parts)?;
    Ok(spec)
}

/// Splits `A,weight=2,backup,B` into `["A,weight=2,backup", "B"]`: options attach to the
/// address before them.
fn group(list: &str) -> Vec<String> {
    let mut specs: Vec<String> = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
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
    specs
}

pub(crate) fn parse_pool(s: &str) -> Result<PoolSpec, String> {
    let (name, rest) = s.split_once('=').ok_or_else(|| {
        format!("expected NAME=URL,URL…, NAME=file:PATH or NAME=dns:NAME, got {s:?}")
    })?;
    if name.is_empty() {
        return Err("pool name is empty".into());
    }
    let source = if let Some(path) = rest.strip_prefix("file:") {
        if path.is_empty() {
            return Err(format!("pool {name:?}: file: needs a path"));
        }
        Source::File(path.into())
    } else if let Some(dns) = rest.strip_prefix("dns:") {
        Source::Dns(parse_dns(dns).map_err(|e| format!("pool {name:?}: {e}"))?)
    } else {
        let backends = group(rest)
            .iter()
            .map(|s| parse_backend(s))
            .collect::<Result<Vec<_>, _>>()?;
        if backends.is_empty() {
            return Err(format!("pool {name:?} has no backend"));
        }
        Source::List(backends)
    };
    Ok(PoolSpec {
        name: name.to_string(),
        source,
    })
}

/// `HOST:PORT` (A and AAAA records) or an SRV name (`_service._proto.name`, no port).
pub(crate) fn parse_dns(s: &str) -> Result<String, String> {
    let _ = DnsSource::parse(s).map_err(|e| {
        format!("{e}: expected HOST:PORT or an SRV name such as _http._tcp.api.example")
    })?;
    Ok(s.to_string())
}

/// `host:port`, `[v6]:port`: a TCP backend address (host names are resolved at each
/// connect).
fn tcp_addr(s: &str) -> Result<String, String> {
    let s = s.trim();
    let bad = || format!("expected HOST:PORT, got {s:?}");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let v6 = host.starts_with('[') && host.ends_with(']');
    let valid_host = if v6 {
        host[1..host.len() - 1]
            .parse::<std::net::Ipv6Addr>()
            .is_ok()
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    };
    if port == 0 || !valid_host {
        return Err(bad());
    }
    Ok(s.to_string())
}

pub(crate) fn parse_tcp_backend(s: &str) -> Result<TcpBackendSpec, String> {
    let mut parts = s.split(',');
    let mut spec = TcpBackendSpec {
        addr: tcp_addr(parts.next().unwrap_or_default())?,
        weight: 1,
        priority: 0,
    };
    apply_options(&mut spec.weight, &mut spec.priority, parts)?;
    Ok(spec)
}

/// `LISTEN=[strategy=NAME,]HOST:PORT[,weight=N][,backup],…`.
pub(crate) fn parse_tcp_proxy(s: &str) -> Result<TcpSpec, String> {
    let (listen, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("expected LISTEN=HOST:PORT,…, got {s:?}"))?;
    let listen: SocketAddr = listen
        .trim()
        .parse()
        .map_err(|_| format!("listen address must be IP:PORT, got {listen:?}"))?;
    let mut strategy = None;
    let mut backends = Vec::new();
    for part in group(rest) {
        if let Some(name) = part.strip_prefix("strategy=") {
            let parsed = <StrategyName as clap::ValueEnum>::from_str(name, false)
                .map_err(|_| format!("unknown strategy {name:?}"))?;
            strategy = Some(parsed);
        } else {
            backends.push(parse_tcp_backend(&part)?);
        }
    }
    if backends.is_empty() {
        return Err(format!("tcp proxy on {listen} has no backend"));
    }
    Ok(TcpSpec {
        listen,
        strategy,
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

/// `NAME=CERT,KEY`: an SNI name (a DNS name or `*.example.com`) and its PEM files.
pub(crate) fn parse_sni(s: &str) -> Result<SniSpec, String> {
    let usage = || format!("expected NAME=CERT,KEY, got {s:?}");
    let (name, files) = s.split_once('=').ok_or_else(usage)?;
    let (cert, key) = files.split_once(',').ok_or_else(usage)?;
    let (name, cert, key) = (name.trim(), cert.trim(), key.trim());
    if name.is_empty() || cert.is_empty() || key.is_empty() {
        return Err(usage());
    }
    Ok(SniSpec {
        name: name.to_owned(),
        cert: cert.into(),
        key: key.into(),
    })
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

/// Parses a duration that must not be zero (`--outlier-interval`).
pub(crate) fn parse_interval(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("must be longer than zero, got {s:?}")),
        d => Ok(d),
    }
}

/// Parses `POINTER=VALUE` for `--health-expect-json`.
pub(crate) fn parse_json_expect(s: &str) -> Result<(String, String), String> {
    let (pointer, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected POINTER=VALUE such as /status=healthy, got {s:?}"))?;
    tower_lb::health::active::BodyMatch::json(pointer, value).map_err(|e| e.to_string())?;
    Ok((pointer.to_string(), value.to_string()))
}

/// Parses `--hedge-after`: a duration (`50ms`) or a percentile (`p95`, `p99.9`).
pub(crate) fn parse_hedge_after(s: &str) -> Result<super::HedgeAfter, String> {
    let s = s.trim();
    if let Some(p) = s.strip_prefix(['p', 'P']) {
        let q: f64 = p
            .parse()
            .map_err(|_| format!("expected a percentile like p95 or p99.9, got {s:?}"))?;
        if !(q > 0.0 && q < 100.0) {
            return Err(format!(
                "a percentile must be within p0..p100 (exclusive), got {s:?}"
            ));
        }
        return Ok(super::HedgeAfter::Percentile(q / 100.0));
    }
    parse_duration(s).map(super::HedgeAfter::Delay)
}

/// Parses a percentage within `0..=100` (`--hedge-budget`).
pub(crate) fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim().trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("expected a percentage within 0..=100, got {s:?}")),
    }
}

/// Parses `I/N` for `--client-id`: client I of N, checked as the library checks it.
pub(crate) fn parse_client_id(s: &str) -> Result<(u64, u64), String> {
    let (id, count) = s
        .split_once('/')
        .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)))
        .ok_or_else(|| format!("expected I/N such as 0/3, got {s:?}"))?;
    tower_lb::discover::subset::Subsetting::deterministic(1, id, count)
        .map_err(|e| e.to_string())?;
    Ok((id, count))
}
