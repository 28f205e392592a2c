//! The backend's side of health: an application `/health` endpoint (feature
//! `health-service`).
//!
//! Balancers probe backends ([`active::HttpProbe`](crate::health::active::HttpProbe) with
//! a [`BodyMatch`](crate::health::active::BodyMatch), Kubernetes, nginx, HAProxy); this
//! module is what answers them in a Rust service, the endpoint FastAPI applications write
//! by hand: named async checks (database, cache, disk), all of which must pass, and a
//! JSON verdict. [`HealthChecks`] holds the checks; it serves them as HTTP
//! ([`HealthService`], a `tower::Service`, so an axum route), as gRPC `grpc.health.v1`
//! (`GrpcReporter`, with feature `grpc`), and takes the process out of rotation before
//! shutdown ([`Drain`]).
//!
//! # Semantics
//!
//! - A [`Check`] is an async closure returning `Result<(), E: Display>`. All checks run
//!   concurrently in one *run*; the report is healthy when every check passed.
//! - Each check has its own [timeout](Check::timeout) (default 1 s); one that takes longer
//!   fails with `timed out after 1s`, and a check that panics fails with `panicked: …`.
//!   Neither reaches the caller: a run never panics and lasts at most the longest timeout.
//! - A run's results are cached for [`cache_for`](Builder::cache_for) (default 1 s), so a
//!   fleet of balancers probing every second runs the checks about once a second, not
//!   once per probe. Requests that arrive while a run is under way wait for that run
//!   (single flight); the run is a task of its own, so a probe that gives up does not
//!   cancel it.
//! - HTTP: `GET` (or `HEAD`) answers `200` when healthy and `503` otherwise, so probes
//!   that only read the status work, with the body
//!   `{"status": "healthy"|"unhealthy"|"draining", "checks": {"<name>": {"status":
//!   "healthy"|"unhealthy", "error": "…", "duration_ms": 1.5}}}` (`error` only on
//!   failure; names in alphabetical order).
//! - Liveness and readiness (Kubernetes `livenessProbe`, `readinessProbe`): one registry,
//!   two services from the same run. [`readiness`](HealthChecks::readiness) counts every
//!   check; [`liveness`](HealthChecks::liveness) only those not marked
//!   [`liveness(false)`](Check::liveness) (with none, it is healthy: the process answers).
//!   Mark checks of shared dependencies readiness-only: a database outage should take
//!   replicas out of rotation, not restart all of them.
//! - Draining: after [`Drain::drain`], readiness answers `503 {"status": "draining",
//!   "checks": {}}` at once (no checks run) and gRPC `NOT_SERVING`; liveness is
//!   unchanged, so the orchestrator does not restart a process that is shutting down.
//! - Check failures are `tracing` warnings (`health check failed`, with the check's name
//!   and error).
//!
//! # Names beside Kubernetes, FastAPI, Spring Boot and gRPC
//!
//! | tower-lb | default | Kubernetes | FastAPI (by hand) | Spring Boot actuator | gRPC |
//! |---|---|---|---|---|---|
//! | [`HealthChecks::readiness`] | — | `readinessProbe`, `/readyz` | `/health` | `/actuator/health/readiness` | service `""` |
//! | [`HealthChecks::liveness`] | — | `livenessProbe`, `/livez` | `/health/live` | `/actuator/health/liveness` | a named service, e.g. `liveness` |
//! | [`Check`] | — | — | an `async def` check | `HealthIndicator` / `ReactiveHealthIndicator` | — |
//! | [`Check::liveness`]`(false)` | counts | — | — | indicator left out of the `liveness` group | — |
//! | [`Status`] `Healthy` / `Unhealthy` / `Draining` | — | probe success / failure | `"healthy"` / `"unhealthy"` | `UP` / `DOWN` / `OUT_OF_SERVICE` | `SERVING` / `NOT_SERVING` |
//! | HTTP status 200 / 503 | — | success is 200–399 | often 200 either way | 200 / 503 | — |
//! | [`Check::timeout`] | 1 s | `timeoutSeconds` (1) | — | — | — |
//! | [`Builder::cache_for`] | 1 s | — | — | `management.endpoint.health.cache.time-to-live` (0) | — |
//! | [`Drain::drain`] | — | pod `Terminating`, `preStop` | — | `ReadinessState.REFUSING_TRAFFIC` | `enter_graceful_shutdown()` |
//!
//! # Example: axum, with a zero-downtime shutdown
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower_lb::BoxError> {
//! use std::time::Duration;
//! use axum::{body::Body, routing::get, Router};
//! use tower::ServiceExt;
//! use tower_lb::health::service::{Check, HealthChecks};
//!
//! async fn ping_database() -> Result<(), std::io::Error> {
//!     Ok(()) // e.g. `sqlx::query("SELECT 1").execute(&pool).await.map(drop)`
//! }
//!
//! let health = HealthChecks::builder()
//!     // The database's outage is not this process's: readiness only.
//!     .check(Check::new("database", ping_database).timeout(Duration::from_millis(500)).liveness(false))
//!     .check(Check::new("disk", || async {
//!         let free_gib = 12; // e.g. from statvfs
//!         if free_gib > 1 { Ok(()) } else { Err(format!("{free_gib} GiB free")) }
//!     }))
//!     .build()?;
//!
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .route_service("/health", health.readiness())
//!     .route_service("/readyz", health.readiness())
//!     .route_service("/livez", health.liveness());
//!
//! let rsp = app.clone().oneshot(http::Request::get("/readyz").body(Body::empty())?).await?;
//! assert_eq!(rsp.status(), 200); // {"status":"healthy","checks":{"database":…,"disk":…}}
//!
//! // Shutdown: 1. drain (readiness 503 "draining", liveness still 200); 2. wait until
//! // every balancer's prober has seen it; 3. let axum stop accepting and finish the
//! // requests in flight.
//! let drain = health.drain_handle();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(async move {
//!         shutdown_signal().await;
//!         drain.drain();
//!         // tower-lb's Prober defaults (interval 2 s, fast interval 1 s, fall 3) mark a
//!         // failing backend down within about 4 s.
//!         tokio::time::sleep(Duration::from_secs(5)).await;
//!     })
//!     .await?;
//!
//! /// SIGTERM (what Kubernetes sends) or Ctrl-C.
//! async fn shutdown_signal() {
//! #   if true { return; } // the doc-test shuts down at once
//!     let _ = tokio::signal::ctrl_c().await;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The wait must cover the probers that route to this process: `interval + (fall − 1) ×
//! fast_interval` for tower-lb's [`Prober`](crate::health::active::Prober) (HAProxy:
//! `inter` + (`fall` − 1) × `fastinter`), `periodSeconds × failureThreshold` for a
//! Kubernetes readiness probe (though Kubernetes also removes a terminating pod from its
//! endpoints). Keep the wait plus the longest request under the orchestrator's grace
//! period (Kubernetes `terminationGracePeriodSeconds`, 30 s by default).
//!
//! A balancer probes it with [`BodyMatch::json("/status",
//! "healthy")`](crate::health::active::BodyMatch::json), or by status alone.

mod checks;
mod endpoint;
#[cfg(feature = "grpc")]
mod grpc;

pub use checks::{
    Builder, Check, CheckResult, Drain, HealthChecks, Probe, Report, Status, DEFAULT_CACHE_FOR,
    DEFAULT_TIMEOUT,
};
pub use endpoint::{HealthService, ResponseFuture};
#[cfg(feature = "grpc")]
pub use grpc::GrpcReporter;

#[cfg(test)]
mod tests;
