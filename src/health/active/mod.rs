//! Active health: a spawned prober marks endpoints down and up (feature `health-active`).
//!
//! A [`Prober`] probes every endpoint of a [`Balance`](crate::Balance) on an interval,
//! through a probe `Service` that takes the backend key and fails when the backend is
//! unhealthy. Its verdicts go to the endpoint's shared
//! [`EndpointState`](crate::balance::EndpointState) (the one passive health writes to),
//! so a backend marked down gets no new requests until it is marked up again.
//!
//! Stock probes:
//!
//! - [`HttpProbe`]: `GET` a path, expect a status range (default 200–399) and, with
//!   [`HttpProbe::expect_body`], a body that contains a text or whose JSON field has a
//!   value ([`BodyMatch`]; HAProxy `http-check expect string`, nginx Plus `match`), so an
//!   application `/health` that answers `200 {"status": "unhealthy"}` counts as down;
//!   optional `Host` header, over hyper-util; a new connection per probe.
//! - [`TcpProbe`]: a TCP connect.
//! - `GrpcProbe` (feature `grpc`): `grpc.health.v1.Health/Check`, passing on `SERVING`.
//!
//! # Semantics (HAProxy's names)
//!
//! - Every endpoint is probed every `interval` (`inter`, default 2 s), each wait drawn from
//!   `interval × (1 ± jitter)` (default 10 %) so probes spread out.
//! - A probe that fails or takes longer than `timeout` (`timeout check`, default 1 s)
//!   fails.
//! - An endpoint that is up is marked down after `fall` failed probes in a row (default
//!   3); one that is down is marked up after `rise` passed probes in a row (default 2).
//! - While an endpoint is down, or while its verdict may change (a failed probe while up,
//!   a passed one while down), it is probed every `fast_interval` (`fastinter`, default
//!   1 s). With the defaults, a backend that comes back is readmitted within about two
//!   fast intervals; one that dies is marked down after about `interval + 2 × fast_interval`.
//! - Endpoints present when the prober starts, and those discovery adds later, are probed
//!   at once. They start [`Initial::Healthy`] (the default: traffic flows until `fall`
//!   probes fail) or [`Initial::Unhealthy`] (no traffic until `rise` probes pass).
//! - The prober is owned by its [`Guard`](crate::Guard): dropping the guard stops it and marks
//!   up the endpoints it had marked down. It also stops when the balancer is dropped.
//! - Every transition is a `tracing` event: `marked down` (warn, with the last error),
//!   `marked up` (info), `marked down until probed` (info, for new endpoints).
//!
//! When too many endpoints are down, the balancer's panic mode still sends traffic to all
//! of them; see [`Builder::panic_threshold`](crate::balance::Builder::panic_threshold).
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::{convert::Infallible, time::Duration};
//! use tower::service_fn;
//! use tower_lb::{balance::{Status, Target}, health::active::Prober, Backend, Balance, BoxError};
//!
//! let balance = Balance::builder()
//!     .backends(["a", "b", "c"].map(Backend::new))
//!     .build(|t: &Target<'_, &'static str>| {
//!         let name = *t.key();
//!         service_fn(move |_req: ()| async move { Ok::<_, Infallible>(name) })
//!     })
//!     .unwrap();
//!
//! // Any service taking a backend key is a probe. Here "b" always fails.
//! let probe = service_fn(|key: &'static str| async move {
//!     if key == "b" { Err::<(), BoxError>("not ready".into()) } else { Ok(()) }
//! });
//! let _prober = Prober::new(probe)
//!     .interval(Duration::from_secs(1))
//!     .spawn(&balance)
//!     .unwrap();
//!
//! tokio::time::sleep(Duration::from_secs(5)).await;
//! let stats = balance.stats();
//! assert_eq!(stats.available, 2);
//! assert_eq!(stats.backends[1].status, Status::Down);
//! # }
//! ```
//!
//! Over HTTP, with the stock probe:
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), tower_lb::BoxError> {
//! use std::time::Duration;
//! use http_body_util::Empty;
//! use bytes::Bytes;
//! use tower_lb::{health::active::{HttpProbe, Initial, Prober}, http::HttpEndpoints, Backend, Balance};
//!
//! let balance = Balance::builder()
//!     .backends(["127.0.0.1:3001", "127.0.0.1:3002"].map(Backend::new))
//!     .build(HttpEndpoints::<Empty<Bytes>>::new())?;
//! let prober = Prober::new(HttpProbe::new("/healthz")?.expect(200..=299))
//!     .interval(Duration::from_secs(2))
//!     .rise(2)
//!     .fall(3)
//!     .initial(Initial::Unhealthy)
//!     .spawn(&balance)?;
//! // … serve traffic; dropping `prober` stops the probes.
//! # drop(prober);
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "grpc")]
mod grpc;
mod http;
mod prober;
mod tcp;

#[cfg(feature = "grpc")]
pub use grpc::{GrpcProbe, NotServing};
pub use http::{BodyMatch, HttpProbe, UnexpectedBody, UnexpectedStatus, MAX_BODY};
pub use prober::{Initial, Prober};
pub use tcp::TcpProbe;

#[cfg(test)]
mod tests;
