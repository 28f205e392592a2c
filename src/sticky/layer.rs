use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::balance::ExtractKey;

/// Puts each request's affinity key into its extensions, and hands it to the balancer
/// it calls. See the [module docs](super).
///
/// The balancer takes the key when this layer's `call` reaches it synchronously, as it
/// does through every layer that calls its inner service in `call` (tower's and
/// tower-http's, `ErrorResponseLayer`, `ProxyLayer`), whatever the balancer's request
/// policy; through a `Buffer`, or from a handler that calls the balancer later, the key
/// is read from the extensions by [`HttpPolicy`](crate::http::HttpPolicy). Or give the
/// extractor to the balancer itself with
/// [`Builder::sticky_key`](crate::balance::Builder::sticky_key).
///
/// Requests where the extractor finds no key pass unchanged (a key already in the
/// extensions stays); otherwise the found key replaces any earlier one.
pub struct StickyLayer<E> {
    extractor: Arc<E>,
}

impl<E> StickyLayer<E> {
    /// A layer that keys requests with `extractor`.
    pub fn new(extractor: E) -> Self {
        Self {
            extractor: Arc::new(extractor),
        }
    }
}

impl<E> Clone for StickyLayer<E> {
    fn clone(&self) -> Self {
        Self {
            extractor: self.extractor.clone(),
        }
    }
}

impl<E> fmt::Debug for StickyLayer<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickyLayer")
            .field("extractor", &std::any::type_name::<E>())
            .finish()
    }
}

impl<S, E> Layer<S> for StickyLayer<E> {
    type Service = Sticky<S, E>;

    fn layer(&self, inner: S) -> Sticky<S, E> {
        Sticky {
            inner,
            extractor: self.extractor.clone(),
        }
    }
}

/// The service made by [`StickyLayer`]: keys each request, then calls the inner service.
pub struct Sticky<S, E> {
    inner: S,
    extractor: Arc<E>,
}

impl<S, E> Sticky<S, E> {
    /// Wraps `inner`, keying requests with `extractor`.
    pub fn new(inner: S, extractor: E) -> Self {
        Self {
            inner,
            extractor: Arc::new(extractor),
        }
    }

    /// A [`StickyLayer`] with `extractor`.
    pub fn layer(extractor: E) -> StickyLayer<E> {
        StickyLayer::new(extractor)
    }

    define_inner_service_accessors!();
}

impl<S: Clone, E> Clone for Sticky<S, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            extractor: self.extractor.clone(),
        }
    }
}

impl<S: fmt::Debug, E> fmt::Debug for Sticky<S, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sticky")
            .field("inner", &self.inner)
            .field("extractor", &std::any::type_name::<E>())
            .finish()
    }
}

impl<S, E, B> Service<Request<B>> for Sticky<S, E>
where
    S: Service<Request<B>>,
    E: ExtractKey<B>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let key = self.extractor.extract(&req);
        if let Some(key) = key {
            req.extensions_mut().insert(key);
        }
        // Also handed to the balancer this call reaches, whatever its request policy.
        let inner = &mut self.inner;
        crate::balance::with_key(key, move || inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{balance::strategy::RequestKey, sticky::HeaderKey};
    use tower::ServiceExt;

    /// The balancer behind takes the key with its default policy: no `HttpPolicy` needed.
    #[tokio::test]
    async fn a_balancer_with_the_default_policy_takes_the_key() {
        use crate::{balance::strategy::RingHash, Backend, Balance};
        let balance = Balance::builder()
            .strategy(RingHash::new())
            .backends(["a", "b", "c", "d"].map(Backend::new))
            .build(|t: &crate::balance::Target<'_, &'static str>| {
                let name = *t.key();
                tower::service_fn(move |_req: Request<()>| async move {
                    Ok::<_, std::convert::Infallible>(name)
                })
            })
            .unwrap();
        let svc = StickyLayer::new(HeaderKey::from_static("x-user")).layer(balance);
        for user in ["1", "2", "3", "4", "5"] {
            let req = || Request::get("/").header("x-user", user).body(()).unwrap();
            let first = svc.clone().oneshot(req()).await.unwrap();
            for _ in 0..8 {
                assert_eq!(
                    svc.clone().oneshot(req()).await.unwrap(),
                    first,
                    "user {user}"
                );
            }
        }
        // Without a key, round robin spreads requests.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..8 {
            seen.insert(svc.clone().oneshot(Request::new(())).await.unwrap());
        }
        assert_eq!(seen.len(), 4);
    }

    #[tokio::test]
    async fn inserts_the_key() {
        let svc = StickyLayer::new(HeaderKey::from_static("x-user")).layer(tower::service_fn(
            |req: Request<()>| async move {
                Ok::<_, std::convert::Infallible>(req.extensions().get::<RequestKey>().copied())
            },
        ));
        let req = Request::get("/").header("x-user", "7").body(()).unwrap();
        assert_eq!(
            svc.clone().oneshot(req).await.unwrap(),
            Some(RequestKey::from_bytes(b"7"))
        );
        let mut req = Request::new(());
        req.extensions_mut().insert(RequestKey::from_hash(1));
        assert_eq!(
            svc.oneshot(req).await.unwrap(),
            Some(RequestKey::from_hash(1))
        );
    }
}
