//! Health: which endpoints take requests.
//!
//! Health is data. Every endpoint has one [`EndpointState`](crate::balance::EndpointState),
//! keyed by backend key and kept across discovery updates; two kinds of checks write to
//! it, and the balancer reads it whenever it builds its candidate list:
//!
//! - [`passive`] (feature `health-passive`): a layer on each endpoint judges real responses
//!   and ejects endpoints that fail (nginx `max_fails`, Envoy `consecutive_5xx`), with
//!   probation and a max ejection share; its [`OutlierDetection`](passive::OutlierDetection)
//!   compares endpoints with each other every interval (Envoy outlier detection's
//!   success rate and failure percentage, gRPC A50).
//! - [`active`] (feature `health-active`): a spawned prober sends HTTP, TCP or gRPC probes
//!   on an interval and marks endpoints down and up (HAProxy `check`, `rise`, `fall`).
//! - [`service`] (feature `health-service`) is the other side: the `/health`, `/livez`
//!   and `/readyz` endpoints (and gRPC `grpc.health.v1`) a Rust backend serves to the
//!   probers, from named async checks, with draining before shutdown.
//!
//! The balancer itself adds the rest: backups and priority levels (a level is used only
//! while no lower level is available),
//! draining, per-backend concurrency caps, panic mode and slow start (see
//! [`Builder`](crate::balance::Builder)).
//!
//! # Settings beside nginx, Envoy and HAProxy
//!
//! | tower-lb | default | nginx | Envoy | HAProxy |
//! |---|---|---|---|---|
//! | [`passive::Window::max_fails`] | 1 | `max_fails` | — | — |
//! | [`passive::Window::fail_timeout`] | 10 s | `fail_timeout` | — | — |
//! | [`passive::Consecutive::consecutive`] | 5 | — | `consecutive_5xx` | — |
//! | [`passive::Consecutive::base_ejection_time`] | 30 s | — | `base_ejection_time` | — |
//! | [`passive::Consecutive::max_ejection_time`] | 300 s | — | `max_ejection_time` | — |
//! | [`passive::OutlierDetection`] (success rate) | 10 s, 100 requests, 5 hosts, 1.9 × stdev | — | `success_rate_*` | — |
//! | [`passive::FailurePercentage`] | off; 85 %, 50 requests, 5 hosts | — | `failure_percentage_*` | — |
//! | [`passive::PassiveHealthLayer::probation`] | on | — | — (linkerd failure accrual probation) | — |
//! | [`passive::PassiveHealthLayer::max_ejection_share`] | 50 % | — | `max_ejection_percent` | — |
//! | [`passive::FailureStatuses`] | errors, 502–504 | `proxy_next_upstream` classes | `consecutive_gateway_failure` / `consecutive_5xx` | `observe layer7` |
//! | [`Builder::panic_threshold`](crate::balance::Builder::panic_threshold) | 50 % | — | `healthy_panic_threshold` | — |
//! | [`Backend::backup`](crate::Backend::backup) / [`with_priority`](crate::Backend::with_priority) | off / 0 | `backup` | priority levels | `backup` |
//! | [`Handle::drain`](crate::balance::Handle::drain) | — | `down` | `DRAINING` health status | `drain` state |
//! | [`Builder::slow_start`](crate::balance::Builder::slow_start) | off | `slow_start` (Plus) | `slow_start_window` | `slowstart` |
//! | [`Backend::with_max_conns`](crate::Backend::with_max_conns) | off | `max_conns` | `per_host_thresholds` (circuit breaker) | `maxconn` |
//! | [`active::Prober::interval`] | 2 s | `interval` (Plus) | `interval` | `inter` |
//! | [`active::Prober::fast_interval`] | 1 s | — | `unhealthy_interval` | `fastinter` (`downinter` while down) |
//! | [`active::Prober::jitter`] | 10 % | — | `interval_jitter_percent` | `spread-checks` |
//! | [`active::Prober::timeout`] | 1 s | — | `timeout` | `timeout check` |
//! | [`active::Prober::rise`] | 2 | `passes` (Plus) | `healthy_threshold` | `rise` |
//! | [`active::Prober::fall`] | 3 | `fails` (Plus) | `unhealthy_threshold` | `fall` |
//! | [`active::Prober::initial`] | healthy | `mandatory` (Plus) | `ignore_new_hosts_until_first_hc` | `init-state` |
//! | [`active::HttpProbe`] | `GET`, 2xx–3xx | `match` | `http_health_check` | `option httpchk`, `http-check expect` |
//! | [`active::TcpProbe`] | connect | `health_check type=tcp` | `tcp_health_check` | `check` (layer 4) |
//! | `active::GrpcProbe` (feature `grpc`) | `SERVING` | `health_check type=grpc` | `grpc_health_check` | — |
//!
//! # Reading health from the stats
//!
//! [`Balance::stats`](crate::Balance::stats) (or [`Handle::stats`](crate::balance::Handle::stats))
//! returns a [`Stats`](crate::balance::Stats) snapshot, with health refreshed first:
//!
//! - `stats.tier`: [`Primary`](crate::balance::Tier::Primary) in normal operation,
//!   [`Backup`](crate::balance::Tier::Backup) while no primary is available,
//!   [`Panic`](crate::balance::Tier::Panic) when health is ignored (also
//!   `stats.panic()`), [`None`](crate::balance::Tier::None) when nothing can serve.
//! - `stats.available`: how many endpoints take new requests.
//! - per backend, `status`: [`Healthy`](crate::balance::Status::Healthy),
//!   [`Ejected { remaining }`](crate::balance::Status::Ejected) (passive),
//!   [`Probation`](crate::balance::Status::Probation) (ejection over, waiting for a trial's
//!   verdict), [`Down`](crate::balance::Status::Down) (active probing),
//!   [`Draining`](crate::balance::Status::Draining); `ejections` counts ejections,
//!   `failures` failed requests.
//!
//! ```
//! use tower_lb::balance::{Stats, Status};
//!
//! fn report(stats: &Stats<&'static str>) {
//!     if stats.panic() {
//!         eprintln!("panic mode: {} of {} available", stats.available, stats.backends.len());
//!     }
//!     for b in &stats.backends {
//!         match b.status {
//!             Status::Ejected { remaining } => eprintln!("{} ejected for {remaining:?}", b.key),
//!             Status::Down => eprintln!("{} failed its probes", b.key),
//!             _ => {}
//!         }
//!     }
//! }
//! # let _ = report;
//! ```

#[cfg(feature = "health-active")]
pub mod active;
#[cfg(feature = "health-passive")]
pub mod passive;
#[cfg(feature = "health-service")]
pub mod service;

#[cfg(all(test, feature = "health-passive"))]
mod testing;
#[cfg(all(test, feature = "health-passive"))]
mod tests;
