//! Discovery from DNS: a `host:port` name (A/AAAA records) or an SRV name, re-resolved at
//! the records' TTL. Feature `dns`.
//!
//! # Semantics
//!
//! - **`host:port`** ([`DnsSource::host`]): every A and AAAA address becomes a primary
//!   backend `SocketAddr(ip, port)` of weight 1.
//! - **SRV** ([`DnsSource::srv`]): each record's target is resolved to its addresses and
//!   paired with the record's port. SRV priorities become [priority
//!   levels](crate::Backend::with_priority) in order (RFC 2782): the lowest priority present
//!   is the primary level 0, the next level 1, and so on, so with priorities 10, 20 and
//!   30, priority 20 serves only while no priority-10 backend is available and 30 only
//!   while neither is. SRV weights become weights, with `0` mapped to `1`. An address
//!   listed twice keeps its lowest priority.
//! - **Refresh at TTL**: the next resolution happens when the answer expires: the lowest
//!   TTL among the records used (SRV and target addresses), clamped to
//!   [`min_ttl`](DnsSource::min_ttl), default 1 s, and [`max_ttl`](DnsSource::max_ttl),
//!   default 300 s. It runs in a background task, with no request traffic needed.
//! - **Errors keep the last good set**: a resolver error, or an answer with no address,
//!   changes nothing (ginepro empties the set, and then requests hang). The source
//!   retries after an exponential backoff with jitter: the `n`th consecutive failure
//!   waits a random duration in `[d/2, d]` where `d = base × 2^(n-1)` capped at `max`
//!   ([`backoff`](DnsSource::backoff), default 1 s and 60 s). While no set was ever
//!   resolved, the error is reported through [`Handle::report_error`], so requests fail
//!   fast with [`DiscoverError`](crate::error::DiscoverError) (and it shows in the
//!   stats); the first good set clears it.
//! - **Only differences are applied**: unchanged backends keep their service and state
//!   (in-flight, latency, health); a re-weight keeps the service too. Large changes are
//!   applied as one atomic [`Handle::replace`], which also keeps the state of unchanged
//!   keys.
//! - Each change is logged as a `tracing` `info` event, each error as a `warn` event.
//! - The source owns the balancer's set: backends it did not resolve are removed on the
//!   first resolution.
//!
//! The task lives as long as the [`Guard`] returned by [`DnsSource::spawn`].
//!
//! The resolver is pluggable through [`Resolve`]: [`HickoryResolver`] (the system
//! configuration, or explicit name servers) is the stock one; tests can script answers.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::{net::SocketAddr, time::Duration};
//! use tower::service_fn;
//! use tower_lb::{balance::Target, discover::dns::DnsSource, Balance};
//!
//! let balance = Balance::builder()
//!     .build(|t: &Target<'_, SocketAddr>| {
//!         let addr = *t.key();
//!         service_fn(move |_: ()| async move { Ok::<_, std::io::Error>(addr) })
//!     })
//!     .unwrap();
//!
//! // `localhost` is answered from the hosts file: no DNS server needed.
//! let _guard = DnsSource::host("localhost", 8080)
//!     .min_ttl(Duration::from_secs(5))
//!     .spawn(balance.handle())
//!     .unwrap();
//!
//! // The first answer arrives in the background.
//! # for _ in 0..200 {
//! #     if !balance.handle().keys().is_empty() { break; }
//! #     tokio::time::sleep(Duration::from_millis(10)).await;
//! # }
//! assert!(balance.handle().keys().iter().all(|a| a.port() == 8080));
//! # }
//! ```
//!
//! With a scripted resolver (what the tests do):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use futures_util::future::BoxFuture;
//! use std::{net::IpAddr, time::Duration};
//! use tower_lb::{discover::dns::{Answer, DnsSource, Resolve, SrvRecord}, BoxError};
//!
//! struct Fixed;
//!
//! impl Resolve for Fixed {
//!     fn lookup_ip<'a>(&'a self, _host: &'a str) -> BoxFuture<'a, Result<Answer<IpAddr>, BoxError>> {
//!         Box::pin(async { Ok(Answer::new(vec!["127.0.0.1".parse()?], Duration::from_secs(30))) })
//!     }
//!     fn lookup_srv<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<Answer<SrvRecord>, BoxError>> {
//!         Box::pin(async { Ok(Answer::new(vec![], Duration::ZERO)) })
//!     }
//! }
//!
//! let source = DnsSource::host("api.internal", 443).resolver(Fixed);
//! # let _ = source;
//! # }
//! ```

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use futures_util::future::{join_all, BoxFuture};
use hickory_resolver::{
    config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
    proto::rr::RData,
    TokioResolver,
};

use super::{
    diff::{Desired, SetSync},
    Guard, Handle,
};
use crate::{backend::Backend, balance::strategy::Rng, error::BoxError};

/// A DNS resolver the source asks: addresses of a host, and the SRV records of a name.
///
/// An empty answer is `Ok` with no records; the source treats it like an error (it keeps
/// the last set and retries). Implemented by [`HickoryResolver`]; implement it to script
/// answers in tests. See the module docs for an example.
pub trait Resolve: Send + Sync + 'static {
    /// The A and AAAA addresses of `host`, and their TTL.
    fn lookup_ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Answer<IpAddr>, BoxError>>;

    /// The SRV records of `name`, and their TTL.
    fn lookup_srv<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Answer<SrvRecord>, BoxError>>;
}

/// What a resolver answered: the records, and how long they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    records: Vec<T>,
    ttl: Duration,
}

impl<T> Answer<T> {
    /// An answer valid for `ttl`.
    pub fn new(records: Vec<T>, ttl: Duration) -> Self {
        Self { records, ttl }
    }

    /// The records.
    pub fn records(&self) -> &[T] {
        &self.records
    }

    /// How long the answer may be used.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// One SRV record (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SrvRecord {
    priority: u16,
    weight: u16,
    port: u16,
    target: String,
}

impl SrvRecord {
    /// A record: lower `priority` is preferred; `weight` shares load within a priority;
    /// `target` is a host name or an IP address.
    pub fn new(priority: u16, weight: u16, port: u16, target: impl Into<String>) -> Self {
        Self {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    /// The priority (lower is preferred).
    pub fn priority(&self) -> u16 {
        self.priority
    }

    /// The weight within the priority.
    pub fn weight(&self) -> u16 {
        self.weight
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The target host.
    pub fn target(&self) -> &str {
        &self.target
    }
}

// === impl HickoryResolver ===

/// The stock [`Resolve`]: a hickory-resolver `TokioResolver`.
///
/// "No records" and "no such domain" answers are empty [`Answer`]s; every other failure
/// (timeout, `SERVFAIL`, refused) is an error.
#[derive(Clone)]
pub struct HickoryResolver {
    inner: TokioResolver,
}

impl HickoryResolver {
    /// A resolver with the system configuration (`/etc/resolv.conf` and the hosts file on
    /// Unix).
    pub fn from_system_conf() -> Result<Self, BoxError> {
        Ok(Self {
            inner: TokioResolver::builder_tokio()?.build()?,
        })
    }

    /// A resolver asking the given name servers over UDP (falling back to TCP for
    /// truncated answers), with hickory's default options and no hosts file.
    pub fn with_name_servers(servers: &[SocketAddr]) -> Result<Self, BoxError> {
        let mut opts = ResolverOpts::default();
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        Self::with_name_servers_and_options(servers, opts)
    }

    /// Like [`with_name_servers`](Self::with_name_servers), with explicit options
    /// (timeouts, attempts, cache size…).
    pub fn with_name_servers_and_options(
        servers: &[SocketAddr],
        opts: ResolverOpts,
    ) -> Result<Self, BoxError> {
        let name_servers = servers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = ResolverConfig::from_name_servers(name_servers);
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()?;
        Ok(Self { inner })
    }
}

impl From<TokioResolver> for HickoryResolver {
    fn from(inner: TokioResolver) -> Self {
        Self { inner }
    }
}

impl fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HickoryResolver").finish_non_exhaustive()
    }
}

// hickory reports expiry as a `std` instant; only its distance from now is used.
#[allow(clippy::disallowed_types)]
fn remaining(valid_until: std::time::Instant) -> Duration {
    valid_until.saturating_duration_since(std::time::Instant::now())
}

impl Resolve for HickoryResolver {
    fn lookup_ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Answer<IpAddr>, BoxError>> {
        Box::pin(async move {
            match self.inner.lookup_ip(host).await {
                Ok(lookup) => Ok(Answer::new(
                    lookup.iter().collect(),
                    remaining(lookup.valid_until()),
                )),
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                    Ok(Answer::new(Vec::new(), Duration::ZERO))
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn lookup_srv<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Answer<SrvRecord>, BoxError>> {
        Box::pin(async move {
            match self.inner.srv_lookup(name).await {
                Ok(lookup) => {
                    let records = lookup
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::SRV(srv) => Some(SrvRecord::new(
                                srv.priority,
                                srv.weight,
                                srv.port,
                                srv.target.to_string(),
                            )),
                            _ => None,
                        })
                        .collect();
                    Ok(Answer::new(records, remaining(lookup.valid_until())))
                }
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                    Ok(Answer::new(Vec::new(), Duration::ZERO))
                }
                Err(e) => Err(e.into()),
            }
        })
    }
}

// === impl DnsSource ===

#[derive(Debug, Clone, PartialEq, Eq)]
enum Query {
    Host { host: String, port: u16 },
    Srv { name: String },
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
            Self::Srv { name } => write!(f, "SRV {name}"),
        }
    }
}

/// A DNS discovery source: what to resolve, how often, and with which resolver.
///
/// Consuming setters; [`spawn`](Self::spawn) starts the task. See the module docs for the
/// semantics and an example.
#[must_use = "a source does nothing until spawned"]
pub struct DnsSource {
    query: Query,
    resolver: Option<Arc<dyn Resolve>>,
    min_ttl: Duration,
    max_ttl: Duration,
    backoff_base: Duration,
    backoff_max: Duration,
    seed: Option<u64>,
}

impl fmt::Debug for DnsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsSource")
            .field("query", &self.query.to_string())
            .field("min_ttl", &self.min_ttl)
            .field("max_ttl", &self.max_ttl)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .finish_non_exhaustive()
    }
}

/// A name [`DnsSource::parse`] cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName {
    name: String,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid DNS discovery name {:?}: expected `host:port` or an SRV name starting with `_`",
            self.name
        )
    }
}

impl std::error::Error for InvalidName {}

impl DnsSource {
    fn with_query(query: Query) -> Self {
        Self {
            query,
            resolver: None,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            seed: None,
        }
    }

    /// Resolves `host`'s A and AAAA records; every address is a backend on `port`.
    /// `host` may be an IP address (a fixed set).
    pub fn host(host: impl Into<String>, port: u16) -> Self {
        let host: String = host.into();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .map(str::to_owned)
            .unwrap_or(host);
        Self::with_query(Query::Host { host, port })
    }

    /// Resolves `name`'s SRV records, e.g. `_http._tcp.api.example.com`.
    pub fn srv(name: impl Into<String>) -> Self {
        Self::with_query(Query::Srv { name: name.into() })
    }

    /// Reads `host:port` (`[v6]:port` for an IPv6 literal) or an SRV name (starting with
    /// `_`, no port).
    pub fn parse(name: &str) -> Result<Self, InvalidName> {
        let invalid = || InvalidName {
            name: name.to_owned(),
        };
        if name.starts_with('_') && !name.contains(':') {
            return Ok(Self::srv(name));
        }
        let (host, port) = name.rsplit_once(':').ok_or_else(invalid)?;
        let port: u16 = port.parse().map_err(|_| invalid())?;
        if host.is_empty() || (host.contains(':') && !host.starts_with('[')) {
            return Err(invalid());
        }
        Ok(Self::host(host, port))
    }

    /// The resolver to ask; by default a [`HickoryResolver`] with the system configuration,
    /// made by [`spawn`](Self::spawn).
    pub fn resolver(mut self, resolver: impl Resolve) -> Self {
        self.resolver = Some(Arc::new(resolver));
        self
    }

    /// The shortest wait between two resolutions, whatever the TTL (default 1 s; a TTL of
    /// 0 means "do not cache" and would otherwise spin).
    pub fn min_ttl(mut self, min: Duration) -> Self {
        self.min_ttl = min;
        self
    }

    /// The longest wait between two resolutions, whatever the TTL (default 300 s).
    pub fn max_ttl(mut self, max: Duration) -> Self {
        self.max_ttl = max;
        self
    }

    /// The retry backoff after failures: `base × 2^(n-1)` for the `n`th consecutive
    /// failure, capped at `max`, then jittered down by up to half (default 1 s, 60 s).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// Seeds the backoff jitter, for repeatable tests (default: seeded from the clock).
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Starts resolving in a background task on the current tokio runtime, applying every
    /// change to `handle`. The first resolution starts at once. Dropping the returned
    /// [`Guard`] stops the task.
    ///
    /// Fails with a [`ConfigError`](crate::error::ConfigError) if no resolver was given
    /// and the system configuration cannot be read, or outside a Tokio runtime.
    pub fn spawn(self, handle: Handle<SocketAddr>) -> Result<Guard, crate::error::ConfigError> {
        let resolver = match self.resolver {
            Some(r) => r,
            None => Arc::new(HickoryResolver::from_system_conf().map_err(|e| {
                crate::error::ConfigError::Invalid {
                    setting: "dns resolver",
                    reason: e.to_string(),
                }
            })?),
        };
        let max_ttl = self.max_ttl.max(self.min_ttl);
        let driver = Driver {
            query: self.query,
            resolver,
            min_ttl: self.min_ttl,
            max_ttl,
            backoff_base: self.backoff_base,
            backoff_max: self.backoff_max.max(self.backoff_base),
            rng: self.seed.map_or_else(Rng::new, Rng::with_seed),
            sync: SetSync::new(handle),
        };
        Guard::spawn("dns", driver.run())
    }
}

// === impl Driver ===

struct Driver {
    query: Query,
    resolver: Arc<dyn Resolve>,
    min_ttl: Duration,
    max_ttl: Duration,
    backoff_base: Duration,
    backoff_max: Duration,
    rng: Rng,
    sync: SetSync<SocketAddr>,
}

impl Driver {
    async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            let delay = match self.resolve().await {
                Ok((set, ttl)) if !set.is_empty() => match self.sync.apply(set) {
                    Ok(changes) => {
                        failures = 0;
                        if !changes.is_empty() {
                            tracing::info!(
                                name = %self.query,
                                added = changes.added,
                                removed = changes.removed,
                                updated = changes.updated,
                                total = changes.total,
                                "tower_lb::dns: endpoint set changed"
                            );
                        }
                        ttl.clamp(self.min_ttl, self.max_ttl)
                    }
                    Err(e) => {
                        failures += 1;
                        let retry_in = self.backoff(failures);
                        tracing::warn!(name = %self.query, error = %e, ?retry_in,
                            "tower_lb::dns: could not apply the resolved set; retrying");
                        self.sync.report_error(e);
                        retry_in
                    }
                },
                Ok(_) => {
                    failures += 1;
                    let retry_in = self.backoff(failures);
                    tracing::warn!(name = %self.query, kept = self.sync.len(), ?retry_in,
                        "tower_lb::dns: empty answer; keeping the last set");
                    self.sync
                        .report_error(format!("{}: no address resolved", self.query));
                    retry_in
                }
                Err(e) => {
                    failures += 1;
                    let retry_in = self.backoff(failures);
                    tracing::warn!(name = %self.query, error = %e, kept = self.sync.len(),
                        ?retry_in, "tower_lb::dns: resolution failed; keeping the last set");
                    self.sync.report_error(e);
                    retry_in
                }
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// The wait after the `n`th consecutive failure: in `[d/2, d]`, `d = base × 2^(n-1)`
    /// capped at the maximum ("equal jitter": never hammers, never waits twice as long).
    fn backoff(&self, n: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(20))
            .min(self.backoff_max);
        let half = exp / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.rng.below(nanos.saturating_add(1)))
    }

    async fn resolve(&self) -> Result<(Vec<Desired<SocketAddr>>, Duration), BoxError> {
        match &self.query {
            Query::Host { host, port } => {
                let answer = self.lookup_ip(host).await?;
                let mut addrs: Vec<SocketAddr> = answer
                    .records
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, *port))
                    .collect();
                addrs.sort();
                addrs.dedup();
                let set = addrs
                    .into_iter()
                    .map(|a| Desired::new(Backend::new(a)))
                    .collect();
                Ok((set, answer.ttl))
            }
            Query::Srv { name } => {
                let answer = self.resolver.lookup_srv(name).await?;
                let mut targets: Vec<&str> =
                    answer.records.iter().map(|r| r.target.as_str()).collect();
                targets.sort_unstable();
                targets.dedup();
                let resolved = join_all(targets.iter().map(|t| self.lookup_ip(t))).await;
                let mut ttl = answer.ttl;
                let mut addrs: HashMap<&str, Vec<IpAddr>> = HashMap::new();
                for (target, result) in targets.iter().zip(resolved) {
                    // One failing target fails the round: dropping its backends on a
                    // transient error is what "keep the last good set" forbids.
                    let a = result?;
                    if a.records.is_empty() {
                        tracing::warn!(name = %self.query, target,
                            "tower_lb::dns: SRV target has no address; skipped");
                    }
                    ttl = ttl.min(a.ttl);
                    addrs.insert(target, a.records);
                }
                Ok((srv_backends(&answer.records, &addrs), ttl))
            }
        }
    }

    async fn lookup_ip(&self, host: &str) -> Result<Answer<IpAddr>, BoxError> {
        if let Ok(ip) = host.trim_end_matches('.').parse::<IpAddr>() {
            return Ok(Answer::new(vec![ip], Duration::MAX));
        }
        self.resolver.lookup_ip(host).await
    }
}

/// SRV records and their targets' addresses → backends: the distinct SRV priorities, in
/// order, become priority levels 0, 1, 2… (beyond 255 they share the last); weight 0
/// counts as 1; an address keeps its lowest priority.
fn srv_backends(
    records: &[SrvRecord],
    addrs: &HashMap<&str, Vec<IpAddr>>,
) -> Vec<Desired<SocketAddr>> {
    let mut priorities: Vec<u16> = records.iter().map(|r| r.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let level = |priority: u16| {
        let rank = priorities.binary_search(&priority).unwrap_or(0);
        u8::try_from(rank).unwrap_or(u8::MAX)
    };
    let mut sorted: Vec<&SrvRecord> = records.iter().collect();
    sorted.sort_by_key(|r| (r.priority, std::cmp::Reverse(r.weight)));
    let mut out: Vec<Desired<SocketAddr>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in sorted {
        for ip in addrs.get(r.target.as_str()).into_iter().flatten() {
            let addr = SocketAddr::new(*ip, r.port);
            if seen.insert(addr) {
                out.push(Desired::new(
                    Backend::new(addr)
                        .with_weight(u32::from(r.weight.max(1)))
                        .with_priority(level(r.priority)),
                ));
            }
        }
    }
    out.sort_by_key(|d| *d.backend.key());
    out
}

#[cfg(test)]
mod tests;
