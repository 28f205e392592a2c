//! Unit-test balancing with in-memory and `tower-test` mock endpoints (feature
//! `test-util`).
//!
//! - [`echo`] builds a [`Balance`] over in-memory backends that answer with their own key.
//! - [`mock`] builds one over [`tower_test::mock`] services, with a handle per backend to
//!   script readiness, answers and failures.
//! - [`drive`] sends N requests and returns the per-backend [`Distribution`].
//! - [`sim`] runs a whole fleet of model backends behind a real [`Balance`] on Tokio's paused
//!   clock: latency distributions, error rates, scripted slow windows, open- or closed-loop
//!   load, and a report with per-backend shares and tail latencies.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use tower_lb::{balance::strategy::WeightedRoundRobin, test_util, Backend, Balance};
//!
//! let balance = test_util::echo(
//!     Balance::builder()
//!         .strategy(WeightedRoundRobin::new())
//!         .backends([Backend::new("a").with_weight(3), Backend::new("b")]),
//! );
//! let dist = test_util::drive(&balance, 400, |_| ()).await;
//! assert_eq!(dist.count(&"a"), 300);
//! assert_eq!(dist.count(&"b"), 100);
//! assert!((dist.share(&"a") - 0.75).abs() < 1e-9);
//! # }
//! ```

use std::{
    collections::HashMap,
    convert::Infallible,
    fmt,
    future::{ready, Ready},
    task::{Context, Poll},
};

use tower::ServiceExt;
use tower_service::Service;

pub mod sim;

use crate::{
    balance::{Builder, Key, RequestPolicy, Target},
    error::BoxError,
    Balance,
};

/// An in-memory endpoint that answers every request with its backend key, at once.
#[derive(Debug, Clone)]
pub struct Echo<K> {
    key: K,
}

impl<K: Clone, Req> Service<Req> for Echo<K> {
    type Response = K;
    type Error = Infallible;
    type Future = Ready<Result<K, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Req) -> Self::Future {
        ready(Ok(self.key.clone()))
    }
}

/// An [`Echo`] endpoint for `key`, outside any balancer (for side-by-side comparisons).
pub fn echo_service<K>(key: K) -> Echo<K> {
    Echo { key }
}

/// Builds `builder` over [`Echo`] endpoints.
///
/// # Panics
///
/// If the builder's configuration is invalid (this is a test helper).
pub fn echo<K: Key, P>(builder: Builder<K, P>) -> Balance<K, Echo<K>, P> {
    builder
        .build(|t: &Target<'_, K>| Echo {
            key: t.key().clone(),
        })
        .expect("valid test configuration")
}

/// A `tower-test` mock endpoint.
pub type MockEndpoint<Req, Rsp> = tower_test::mock::Mock<Req, Rsp>;

/// Builds `builder` over one `tower-test` mock per backend and returns the handles that
/// script them, by backend key (backends inserted later get mocks whose handles are
/// dropped, so they fail). Handles start with readiness unlimited; use
/// `allow(n)` or `send_error` on a handle to script it.
///
/// # Panics
///
/// If the builder's configuration is invalid (this is a test helper).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower::{Service, ServiceExt};
/// use tower_lb::{balance::strategy::RoundRobin, test_util, Backend, Balance};
///
/// let (balance, mut handles) = test_util::mock::<_, &str, &str, ()>(
///     Balance::builder().strategy(RoundRobin::new()).backends(["a", "b"].map(Backend::new)),
/// );
/// let mut a = handles.remove("a").unwrap();
/// let call = tokio::spawn(balance.clone().oneshot("ping"));
/// let (req, send) = a.next_request().await.unwrap();
/// assert_eq!(req, "ping");
/// send.send_response("pong");
/// assert_eq!(call.await.unwrap().unwrap(), "pong");
/// # }
/// ```
pub fn mock<K, Req, Rsp, P>(
    builder: Builder<K, P>,
) -> (
    Balance<K, MockEndpoint<Req, Rsp>, P>,
    HashMap<K, tower_test::mock::Handle<Req, Rsp>>,
)
where
    K: Key,
    Req: Send + 'static,
    Rsp: Send + 'static,
{
    let handles = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let made = handles.clone();
    let balance = builder
        .build(move |t: &Target<'_, K>| {
            let (svc, handle) = tower_test::mock::pair::<Req, Rsp>();
            made.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(t.key().clone(), handle);
            svc
        })
        .expect("valid test configuration");
    let handles = std::mem::take(&mut *handles.lock().unwrap_or_else(|e| e.into_inner()));
    (balance, handles)
}

/// How many requests each backend received.
#[derive(Clone)]
pub struct Distribution<K> {
    counts: Vec<(K, u64)>,
    errors: usize,
}

impl<K: Key> fmt::Debug for Distribution<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, n) in &self.counts {
            m.entry(&k.to_string(), n);
        }
        m.entry(&"errors", &self.errors);
        m.finish()
    }
}

impl<K: Key> Distribution<K> {
    /// Requests that reached `key`.
    pub fn count(&self, key: &K) -> u64 {
        self.counts
            .iter()
            .find(|(k, _)| k == key)
            .map_or(0, |(_, n)| *n)
    }

    /// `key`'s share of all requests that reached a backend.
    pub fn share(&self, key: &K) -> f64 {
        let total = self.total();
        if total == 0 {
            0.0
        } else {
            self.count(key) as f64 / total as f64
        }
    }

    /// Requests that reached a backend.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }

    /// Requests that returned an error.
    pub fn errors(&self) -> usize {
        self.errors
    }

    /// Per-backend counts, in the set's order.
    pub fn counts(&self) -> &[(K, u64)] {
        &self.counts
    }
}

/// Sends `n` requests one after another (request `i` is `make(i)`), and returns how many
/// reached each backend, read from the balancer's stats.
pub async fn drive<K, S, P, Req>(
    balance: &Balance<K, S, P>,
    n: usize,
    mut make: impl FnMut(usize) -> Req,
) -> Distribution<K>
where
    K: Key,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    P: RequestPolicy<Req> + Clone,
{
    let before = balance.stats();
    let mut errors = 0;
    for i in 0..n {
        if balance.clone().oneshot(make(i)).await.is_err() {
            errors += 1;
        }
    }
    let after = balance.stats();
    let counts = after
        .backends
        .into_iter()
        .map(|b| {
            let prev = before
                .backends
                .iter()
                .find(|p| p.key == b.key)
                .map_or(0, |p| p.requests);
            (b.key, b.requests - prev)
        })
        .collect();
    Distribution { counts, errors }
}
