//! The [`Balance`] service: picks an endpoint for every request.
//!
//! # How a request flows
//!
//! 1. `call` reads the request's affinity key through the [`RequestPolicy`] (none by
//!    default) and returns a future; nothing is chosen yet in `poll_ready`.
//! 2. The future loads the current endpoint snapshot (lock-free) and its candidate list,
//!    from one [priority level](crate::Backend::with_priority): the lowest level whose share of
//!    available endpoints (healthy or on probation) is at least the
//!    [panic threshold](Builder::panic_threshold) (default 50 %) serves with its available
//!    endpoints. If no level is that healthy, panic mode: every non-draining endpoint of
//!    the lowest level that still has an available one, whatever its health (Envoy's
//!    panic threshold, decided per level as Envoy does).
//! 3. The [`strategy`] picks one. An endpoint at its concurrency cap is skipped.
//! 4. The endpoint's own `poll_ready` is driven inside the future. If it fails, the request
//!    never left, so it goes to another endpoint; if the call fails before reaching the
//!    backend (connection refused) and the policy can replay it, it is re-sent elsewhere,
//!    up to [`retries`](Builder::retries) times. Nothing is lost. When every endpoint of
//!    the serving level has failed this request (or is at its cap), the next level with
//!    an available endpoint takes it, within the same retries: backups serve a request
//!    no primary can take (nginx `backup`).
//! 5. With no endpoint at all (empty set, everything draining), the future waits for
//!    discovery for at most the [fail-fast](Builder::fail_fast) bound (default 1 s), then
//!    fails with [`NoEndpoints`](crate::error::NoEndpoints) or
//!    [`AllUnavailable`](crate::error::AllUnavailable). It never pends forever.
//!
//! # Who does the work
//!
//! Discovery changes and health changes (an ejection, a readmission, the prober's
//! verdict, a drain) rebuild the candidate list on the thread that makes them, and
//! publish it copy-on-write: a request only loads the published snapshot, without a lock.
//! The one exception is time: when an ejection ends or a slow-start step passes, nobody
//! writes, so the first request after that moment rebuilds the list under the writer lock
//! (once; the others find it rebuilt).
//!
//! # Readiness contract
//!
//! `Balance` is `Clone + Send + Sync`; clones share one endpoint set behind an `Arc`. Its
//! `poll_ready` is **always ready**: readiness does not travel with clones, and axum clones
//! a route's service per request and may call a clone that was never polled. So the
//! endpoint is chosen when the request is known, and the chosen endpoint's readiness is
//! driven inside the response future. No `tower::buffer::Buffer` is needed.
//!
//! The flip side: a `Balance` exerts no backpressure through `poll_ready`. To bound
//! concurrency, put a `ConcurrencyLimit` in front or cap each backend with
//! [`Backend::with_max_conns`](crate::Backend::with_max_conns).
//!
//! In-flight counts rise when an endpoint is picked and fall when its response (the
//! `Response` value, e.g. HTTP headers) arrives or the request is dropped. Work that goes
//! on after that is counted by the endpoint stack with [`EndpointState::track`]: the
//! HTTP makers of [`http`](crate::http) (and [`http::TrackBodyLayer`](crate::http::TrackBodyLayer)
//! in a stack of your own) keep a request in flight until its response body ends or its
//! upgraded connection closes, as nginx and HAProxy count active connections.
//!
//! # Awaiting the balancer in `Send` async blocks
//!
//! When the endpoint's error type is itself a `BoxError` (a `BoxCloneSyncService<_, _,
//! BoxError>` stack, say), or the backend key borrows (`&'static str`), rustc cannot prove
//! the balancer's bounds for `balance.clone().oneshot(req)` held inside a `Send` async
//! block (`tokio::spawn`, an axum handler) and reports "implementation of `From` is not
//! general enough". [`Balance::send`] returns the same call as a boxed `Send + 'static`
//! future, which such blocks can await:
//!
//! ```
//! # use tower::util::BoxCloneSyncService;
//! # use tower_lb::{Balance, BoxError};
//! type Endpoint = BoxCloneSyncService<String, String, BoxError>;
//!
//! async fn handler(balance: Balance<String, Endpoint>, req: String) -> Result<String, BoxError> {
//!     balance.send(req).await
//! }
//! fn spawn_it(balance: Balance<String, Endpoint>) {
//!     tokio::spawn(handler(balance, "hi".to_string()));
//! }
//! # let _ = spawn_it;
//! ```
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tower::{service_fn, Service, ServiceExt};
//! use tower_lb::{balance::{strategy::WeightedRoundRobin, Target}, Backend, Balance};
//! use std::convert::Infallible;
//!
//! let balance = Balance::builder()
//!     .strategy(WeightedRoundRobin::new())
//!     .backends([Backend::new("a").with_weight(5), Backend::new("b"), Backend::new("c")])
//!     .build(|t: &Target<'_, &'static str>| {
//!         let name = *t.key();
//!         service_fn(move |_req: ()| async move { Ok::<_, Infallible>(name) })
//!     })
//!     .unwrap();
//!
//! let mut order = String::new();
//! for _ in 0..7 {
//!     // A fresh clone per request, as axum does: no Buffer, no poll_ready needed first.
//!     order += balance.clone().call(()).await.unwrap();
//! }
//! assert_eq!(order, "aabacaa");
//! # }
//! ```

mod budget;
pub(crate) mod clock;
mod cow;
mod endpoint;
mod future;
mod handle;
pub mod hedge;
mod key;
mod service;
pub(crate) mod set;
mod stack;
pub mod strategy;

pub use budget::RetryBudget;
#[cfg(any(feature = "health-passive", feature = "health-active", feature = "tcp"))]
pub(crate) use endpoint::later;
#[cfg(feature = "health-passive")]
pub(crate) use endpoint::Refusal;
pub use endpoint::{EndpointState, InFlight, Status};
pub use future::ResponseFuture;
pub(crate) use handle::{Apply, Listed};
pub use handle::{Handle, Reconciled, WeakHandle};
pub use hedge::Hedge;
pub(crate) use key::take_key;
#[cfg(feature = "sticky")]
pub(crate) use key::with_key;
pub use key::ExtractKey;
pub use service::{
    Around, BackendStats, Balance, Builder, EndpointLayer, MakeEndpoint, PerEndpoint, Stats, Target,
};
pub use set::{Key, Tier};

use crate::error::{is_connect_error, BoxError};
use strategy::RequestKey;

/// How the balancer treats requests of type `Req`: where their affinity key is, whether a
/// failed one can be sent again, and which failures allow it.
///
/// `()` is the default: no key, no replay (an endpoint whose `poll_ready` fails is still
/// skipped, since the request has not left). For `http::Request`s, use
/// [`http::HttpPolicy`](crate::http::HttpPolicy), which reads a
/// [`RequestKey`] from the request's extensions and can replay requests whose body is
/// `Clone`. Closures and custom types fit too:
///
/// ```
/// use tower_lb::balance::{strategy::RequestKey, RequestPolicy};
///
/// #[derive(Clone)]
/// struct ByUser;
///
/// struct Query { user: String }
///
/// impl RequestPolicy<Query> for ByUser {
///     fn key(&self, req: &Query) -> Option<RequestKey> {
///         Some(RequestKey::from_bytes(req.user.as_bytes()))
///     }
///     fn replay(&self, req: &Query) -> Option<Query> {
///         Some(Query { user: req.user.clone() })
///     }
/// }
/// ```
pub trait RequestPolicy<Req>: Send + Sync + 'static {
    /// Called once for every request the balancer takes, before its first attempt: where
    /// a policy with a [`RetryBudget`] deposits.
    fn on_request(&self, req: &Req) {
        let _ = req;
    }

    /// The request's affinity key, for hash strategies.
    fn key(&self, req: &Req) -> Option<RequestKey> {
        let _ = req;
        None
    }

    /// A copy of the request to send again if the first attempt fails before reaching its
    /// backend; `None` if the request cannot be copied. Called before each attempt while
    /// retries remain.
    fn replay(&self, req: &Req) -> Option<Req> {
        let _ = req;
        None
    }

    /// Whether `error` allows sending `replay` (the copy made before the failed attempt)
    /// to another endpoint. By default, only connect-phase failures
    /// ([`is_connect_error`]): the request never reached the backend, so any request is
    /// safe to send again.
    fn retry_on(&self, replay: &Req, error: &BoxError) -> bool {
        let _ = replay;
        is_connect_error(&**error)
    }

    /// A copy of the request to send to a second backend if the first has not answered
    /// within the [hedge](Builder::hedge) delay; `None` (the default) if the request must
    /// not be sent twice. Called once per request, before the first attempt, only when
    /// the balancer hedges. Give a copy only for idempotent requests that can be
    /// replayed ([`http::HttpPolicy`](crate::http::HttpPolicy) does: RFC 9110 §9.2.2).
    fn hedge(&self, req: &Req) -> Option<Req> {
        let _ = req;
        None
    }

    /// Called when the delay passed and another endpoint can take `copy`: whether it
    /// may go now. This is where a policy with a [`RetryBudget`] withdraws, so hedges and
    /// retries share one budget. By default, `true`.
    fn send_hedge(&self, copy: &Req) -> bool {
        let _ = copy;
        true
    }
}

impl<Req> RequestPolicy<Req> for () {}

/// A request policy that also keys `http::Request`s with an extractor; made by
/// [`Builder::sticky_key`]. A key found by the inner policy wins.
#[derive(Debug)]
pub struct Keyed<P, E> {
    inner: P,
    extractor: std::sync::Arc<E>,
}

impl<P: Clone, E> Clone for Keyed<P, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            extractor: self.extractor.clone(),
        }
    }
}

impl<P, E> Keyed<P, E> {
    pub(crate) fn new(inner: P, extractor: E) -> Self {
        Self {
            inner,
            extractor: std::sync::Arc::new(extractor),
        }
    }

    /// The inner policy.
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

impl<B, P, E> RequestPolicy<http::Request<B>> for Keyed<P, E>
where
    P: RequestPolicy<http::Request<B>>,
    E: ExtractKey<B>,
{
    fn on_request(&self, req: &http::Request<B>) {
        self.inner.on_request(req);
    }

    fn key(&self, req: &http::Request<B>) -> Option<RequestKey> {
        self.inner.key(req).or_else(|| self.extractor.extract(req))
    }

    fn replay(&self, req: &http::Request<B>) -> Option<http::Request<B>> {
        self.inner.replay(req)
    }

    fn retry_on(&self, replay: &http::Request<B>, error: &BoxError) -> bool {
        self.inner.retry_on(replay, error)
    }

    fn hedge(&self, req: &http::Request<B>) -> Option<http::Request<B>> {
        self.inner.hedge(req)
    }

    fn send_hedge(&self, copy: &http::Request<B>) -> bool {
        self.inner.send_hedge(copy)
    }
}
