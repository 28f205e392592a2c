//! The request policy for `http::Request`s: keys, replay, retries within a budget.

use http::Request;

use super::{is_idempotent, is_transport_error, ReplayBody};
use crate::{
    balance::{strategy::RequestKey, RequestPolicy, RetryBudget},
    error::{is_connect_error, BoxError},
};

/// Does not replay requests; see [`HttpPolicy`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReplay;

/// Replays requests by cloning them (bodies must be `Clone`); see [`HttpPolicy`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneBody;

/// Replays requests whose body is a [`ReplayBody`] while it still holds every byte read;
/// see [`HttpPolicy::replay_body`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayBodies;

/// The [`RequestPolicy`] for `http::Request`s: the affinity key is the [`RequestKey`] in
/// the request's extensions (put there by a `sticky::StickyLayer` or by hand); with a
/// replay mode, requests are copied before each attempt, so that
///
/// - a request that never reached its backend (connection refused, connect timeout) is
///   sent to another one, whatever its method: nothing is lost, and no backend saw it;
/// - an idempotent request (RFC 9110 §9.2.2) whose connection broke after it was sent is
///   sent again within a [`RetryBudget`] (default: 20 % of requests, at least 3 per
///   second over 10 s, Envoy's and Finagle's), as nginx `proxy_next_upstream error` does.
///   A `POST` that may have reached its backend is never sent twice.
///
/// Replay modes: [`replay_clone`](Self::replay_clone) for `Clone` bodies (`Full<Bytes>`,
/// `Empty`, `String`), [`replay_body`](Self::replay_body) for streaming bodies wrapped in
/// a [`ReplayBody`], which is replayed only while it kept every byte it sent.
///
/// ```
/// use tower_lb::{balance::{strategy::RequestKey, RequestPolicy}, http::HttpPolicy};
///
/// let mut req = http::Request::new(String::from("body"));
/// req.extensions_mut().insert(RequestKey::from_bytes(b"session-1"));
/// let policy = HttpPolicy::new().replay_clone();
/// assert_eq!(policy.key(&req), Some(RequestKey::from_bytes(b"session-1")));
/// assert_eq!(policy.replay(&req).unwrap().body(), "body");
/// ```
#[derive(Debug, Clone, Default)]
pub struct HttpPolicy<R = NoReplay> {
    /// The replay mode, a marker: which impl of `RequestPolicy` applies.
    _replay: R,
    budget: Option<RetryBudget>,
}

impl HttpPolicy {
    /// Keys from extensions, no replay.
    pub fn new() -> Self {
        Self {
            _replay: NoReplay,
            budget: None,
        }
    }

    /// Also replays requests whose body is `Clone` (`Full<Bytes>`, `Empty`, `String`…),
    /// with the default [`RetryBudget`] for retries after bytes went out.
    pub fn replay_clone(self) -> HttpPolicy<CloneBody> {
        HttpPolicy {
            _replay: CloneBody,
            budget: Some(RetryBudget::new()),
        }
    }

    /// Also replays requests whose body is a [`ReplayBody`] (a streaming body that keeps
    /// its first bytes), while it still holds all it sent, with the default
    /// [`RetryBudget`]. This is how a proxy retries without buffering bodies first;
    /// [`ReplayBodyLayer`](super::ReplayBodyLayer) wraps the bodies.
    pub fn replay_body(self) -> HttpPolicy<ReplayBodies> {
        HttpPolicy {
            _replay: ReplayBodies,
            budget: Some(RetryBudget::new()),
        }
    }
}

impl<R> HttpPolicy<R> {
    /// Sets the budget for retries after bytes went upstream; connect-phase retries add
    /// no load to backends and do not draw on it. Share one budget between policies by
    /// cloning it.
    #[must_use]
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No budget: every idempotent request whose connection broke may be retried (up to
    /// the balancer's retry count).
    #[must_use]
    pub fn without_retry_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// The retry budget, if any.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.budget.as_ref()
    }

    fn deposit(&self) {
        if let Some(b) = &self.budget {
            b.deposit();
        }
    }

    /// Connect-phase failures always; transport errors of idempotent requests within the
    /// budget.
    fn may_retry<B>(&self, replay: &Request<B>, error: &BoxError) -> bool {
        let e: &(dyn std::error::Error + 'static) = &**error;
        if is_connect_error(e) {
            return true;
        }
        is_idempotent(replay.method()) && is_transport_error(e) && self.withdraw()
    }

    /// Takes a retry or a hedge from the budget; `true` without a budget.
    fn withdraw(&self) -> bool {
        self.budget.as_ref().is_none_or(RetryBudget::withdraw)
    }
}

fn key<B>(req: &Request<B>) -> Option<RequestKey> {
    req.extensions().get::<RequestKey>().copied()
}

/// A copy of `req` with `body`: method, URI, version, headers and extensions.
fn copy<B, C>(req: &Request<B>, body: C) -> Request<C> {
    let mut copy = Request::new(body);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

impl<B> RequestPolicy<Request<B>> for HttpPolicy<NoReplay> {
    fn key(&self, req: &Request<B>) -> Option<RequestKey> {
        key(req)
    }
}

impl<B: Clone + Send + Sync + 'static> RequestPolicy<Request<B>> for HttpPolicy<CloneBody> {
    fn on_request(&self, _req: &Request<B>) {
        self.deposit();
    }

    fn key(&self, req: &Request<B>) -> Option<RequestKey> {
        key(req)
    }

    fn replay(&self, req: &Request<B>) -> Option<Request<B>> {
        Some(copy(req, req.body().clone()))
    }

    /// Connect-phase failures always; for idempotent methods (RFC 9110 §9.2.2: GET, HEAD,
    /// OPTIONS, TRACE, PUT, DELETE) also transport errors after the request was sent (the
    /// connection reset or closed mid-exchange), within the budget.
    fn retry_on(&self, replay: &Request<B>, error: &BoxError) -> bool {
        self.may_retry(replay, error)
    }

    /// Idempotent methods only (RFC 9110 §9.2.2).
    fn hedge(&self, req: &Request<B>) -> Option<Request<B>> {
        is_idempotent(req.method()).then(|| copy(req, req.body().clone()))
    }

    /// Within the retry budget, shared with retries.
    fn send_hedge(&self, _copy: &Request<B>) -> bool {
        self.withdraw()
    }
}

impl<B: Send + 'static> RequestPolicy<Request<ReplayBody<B>>> for HttpPolicy<ReplayBodies> {
    fn on_request(&self, _req: &Request<ReplayBody<B>>) {
        self.deposit();
    }

    fn key(&self, req: &Request<ReplayBody<B>>) -> Option<RequestKey> {
        key(req)
    }

    fn replay(&self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        req.body()
            .is_replayable()
            .then(|| copy(req, req.body().clone()))
    }

    /// As for [`CloneBody`], and only while the body still holds every byte the failed
    /// attempt sent.
    fn retry_on(&self, replay: &Request<ReplayBody<B>>, error: &BoxError) -> bool {
        replay.body().is_replayable() && self.may_retry(replay, error)
    }

    /// Idempotent methods only (RFC 9110 §9.2.2), while the body is replayable.
    fn hedge(&self, req: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        (is_idempotent(req.method()) && req.body().is_replayable())
            .then(|| copy(req, req.body().clone()))
    }

    /// While the body still holds every byte the first attempt sent, within the retry
    /// budget shared with retries.
    fn send_hedge(&self, copy: &Request<ReplayBody<B>>) -> bool {
        copy.body().is_replayable() && self.withdraw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset() -> BoxError {
        Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
    }

    fn refused() -> BoxError {
        Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    #[tokio::test(start_paused = true)]
    async fn retries_after_bytes_left_draw_on_the_budget_connect_failures_do_not() {
        let policy = HttpPolicy::new()
            .replay_clone()
            .retry_budget(RetryBudget::new().ratio(0.5).min_per_second(0));
        let get = Request::get("/").body(String::new()).unwrap();
        let post = Request::post("/").body(String::new()).unwrap();
        // Nothing deposited yet: no retry after bytes left, but connect failures go.
        assert!(!policy.retry_on(&get, &reset()));
        assert!(policy.retry_on(&get, &refused()));
        assert!(policy.retry_on(&post, &refused()));
        for _ in 0..4 {
            policy.on_request(&get);
        }
        // Four requests at 50 %: two retries of the GET, never the POST.
        assert!(!policy.retry_on(&post, &reset()));
        assert!(policy.retry_on(&get, &reset()));
        assert!(policy.retry_on(&get, &reset()));
        assert!(!policy.retry_on(&get, &reset()));
    }

    #[tokio::test]
    async fn a_replay_body_is_replayed_only_while_it_kept_every_byte() {
        use http_body_util::{BodyExt, Full};
        let policy = HttpPolicy::new().replay_body();
        let small = Request::put("/")
            .body(ReplayBody::new(Full::new(bytes::Bytes::from("abc")), 8))
            .unwrap();
        let copy = policy.replay(&small).unwrap();
        assert_eq!(copy.method(), http::Method::PUT);
        let big = Request::put("/")
            .body(ReplayBody::new(
                Full::new(bytes::Bytes::from(vec![0u8; 64])),
                8,
            ))
            .unwrap();
        let replay = policy.replay(&big).unwrap();
        // The first attempt streams past the cap: the copy can no longer be sent.
        big.into_body().collect().await.unwrap();
        assert!(!policy.retry_on(&replay, &refused()));
        assert!(policy.retry_on(&copy, &refused()));
    }
}
