//! Passive health: eject endpoints whose real traffic fails (feature `health-passive`).
//!
//! [`PassiveHealthLayer`] wraps one endpoint's service inside the endpoint maker. It gets
//! the endpoint's shared [`EndpointState`](crate::balance::EndpointState) from the
//! [`Target`](crate::balance::Target), judges every outcome with a tower-http
//! [`ClassifyResponse`](tower_http::classify::ClassifyResponse) classifier, and ejects the
//! endpoint when its [`Policy`] says so. The balancer reads the same state when it builds
//! its candidate list, so an ejected endpoint gets no new requests.
//!
//! # What counts as a failure
//!
//! With the stock [`FailureStatuses`]: any error from the endpoint service (connection
//! refused or reset, a `tower::timeout` in the stack), HTTP 502, 503, 504, and the gRPC
//! codes `UNAVAILABLE` and `DEADLINE_EXCEEDED`. [`FailureStatuses::server_errors`] widens
//! it to every 5xx, [`FailureStatuses::too_many_requests`] adds 429. A gRPC response is
//! judged by the `grpc-status` in its trailers, so the verdict waits for the end of the
//! [`ResponseBody`]; a body dropped before its end gives no verdict.
//!
//! # Policies
//!
//! - [`Window`] (nginx, the default): `max_fails` failures within `fail_timeout` eject the
//!   endpoint for `fail_timeout`. Defaults 1 and 10 s.
//! - [`Consecutive`] (Envoy `consecutive_5xx`): `consecutive` failures in a row eject it for
//!   `base_ejection_time × times ejected`, at most `max_ejection_time`; a success resets the
//!   streak. Defaults 5, 30 s, 300 s.
//!
//! Across endpoints, [`OutlierDetection`] (Envoy outlier detection, gRPC A50) runs one
//! task per balancer that compares the endpoints every interval over the same verdicts:
//! the success-rate test (below mean − 1.9 × stdev, with at least 100 requests and 5
//! such endpoints) and the failure-percentage test (85 %, 50 requests, 5 endpoints),
//! ejecting for 30 s × times ejected, at most 300 s. See the [`outlier`] module.
//!
//! Around either policy (and outlier detection's ejections):
//!
//! - **Probation** (linkerd, on by default): when the ejection ends, the endpoint is a
//!   candidate again but takes one trial request at a time. Success readmits it (status
//!   `Healthy`); failure ejects it again at once for the policy's next, longer, ejection
//!   time. With probation off, the endpoint is readmitted when its ejection ends.
//! - **Max ejection share** (Envoy `max_ejection_percent`, default 50 %), counted per
//!   [priority level](crate::Backend::with_priority): an ejection that would put more than this
//!   share of its level out is refused, unless another level has an available endpoint
//!   to take over (so primaries backed by backups can all be ejected, as nginx marks
//!   every failed primary down and serves from `backup`); the first ejection of a level is
//!   always allowed (gRPC); a lone endpoint is never ejected (nginx).
//! - **Panic mode** is the balancer's, also decided per level: a level whose available
//!   share is under [`Builder::panic_threshold`](crate::balance::Builder::panic_threshold)
//!   (default 50 %) hands over to the next level that is healthy enough; when none is,
//!   the balancer ignores health and uses every endpoint of the lowest level with an
//!   available one; the stats say [`Tier::Panic`](crate::balance::Tier::Panic) and a
//!   `tracing` warning fires. Outcomes of ejected endpoints in panic mode do not change
//!   their ejection.
//!
//! Every transition (ejected, ejection refused, trial sent, readmitted, ejected again)
//! is a `tracing` event with the backend, the reason and the ejection time.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::convert::Infallible;
//! use tower::{service_fn, Service, ServiceBuilder};
//! use tower_lb::{
//!     balance::{strategy::RoundRobin, Status, Target},
//!     health::passive::{FailureStatuses, PassiveHealthLayer, Window},
//!     Backend, Balance,
//! };
//!
//! // nginx `max_fails=2 fail_timeout=10s`, every 5xx counts.
//! let passive = |t: &Target<'_, &'static str>| {
//!     PassiveHealthLayer::new(t)
//!         .policy(Window::new().max_fails(2))
//!         .classifier(FailureStatuses::new().server_errors(true))
//! };
//! let balance = Balance::builder()
//!     .strategy(RoundRobin::new())
//!     .backends(["good", "bad", "also-good"].map(Backend::new))
//!     .build(move |t: &Target<'_, &'static str>| {
//!         let name = *t.key();
//!         ServiceBuilder::new().layer(passive(t)).service(service_fn(
//!             move |_req: http::Request<()>| async move {
//!                 let mut rsp = http::Response::new(String::new());
//!                 if name == "bad" {
//!                     *rsp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
//!                 }
//!                 Ok::<_, Infallible>(rsp)
//!             },
//!         ))
//!     })
//!     .unwrap();
//!
//! for _ in 0..6 {
//!     balance.clone().call(http::Request::new(())).await.unwrap();
//! }
//! let stats = balance.stats();
//! let bad = stats.backends.iter().find(|b| b.key == "bad").unwrap();
//! assert!(matches!(bad.status, Status::Ejected { .. }));
//! assert_eq!((bad.failures, bad.ejections), (2, 1));
//! assert_eq!(stats.available, 2);
//! # }
//! ```

mod body;
mod classify;
mod future;
mod layer;
pub mod outlier;
mod policy;
mod service;

pub use body::ResponseBody;
pub use classify::{Failure, FailureStatuses, GrpcEos};
pub use future::ResponseFuture;
pub use layer::PassiveHealthLayer;
pub use outlier::{FailurePercentage, OutlierDetection, SuccessRate};
pub use policy::{Consecutive, Memory, Policy, Window};
pub use service::PassiveHealth;

/// The max ejection share every policy takes: clamped to `0.0..=1.0`, the default (0.5)
/// for NaN.
pub(crate) fn ejection_share(share: f64) -> f64 {
    if share.is_nan() {
        0.5
    } else {
        share.clamp(0.0, 1.0)
    }
}
#[cfg(feature = "tcp")]
pub(crate) use service::Shared;

#[cfg(test)]
mod tests;
