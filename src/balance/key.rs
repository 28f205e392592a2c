use http::Request;

use super::strategy::RequestKey;

/// Reads a request's affinity key, for hash strategies: give it to
/// [`Builder::sticky_key`](super::Builder::sticky_key), or to a `sticky::StickyLayer`
/// (feature `sticky`, which also has the stock extractors: header, cookie, query, path,
/// trusted client IP).
///
/// Implemented for closures `Fn(&http::Request<B>) -> Option<RequestKey>`, for `()`,
/// which never finds a key, for `Option<E>` and `Arc<E>` (so `Arc<dyn ExtractKey<B>>`
/// chosen at run time works), and for tuples of up to four extractors, tried in order:
/// the first key found wins.
///
/// ```
/// use http::Request;
/// use tower_lb::balance::{strategy::RequestKey, ExtractKey};
///
/// // The tenant from a header, else the first path segment.
/// let by_header = |req: &Request<()>| {
///     req.headers().get("x-tenant").map(|v| RequestKey::from_bytes(v.as_bytes()))
/// };
/// let by_path = |req: &Request<()>| {
///     let seg = req.uri().path().trim_start_matches('/').split('/').next()?;
///     (!seg.is_empty()).then(|| RequestKey::from_bytes(seg.as_bytes()))
/// };
/// let extract = (by_header, by_path);
///
/// let req = Request::get("/acme/orders").body(()).unwrap();
/// assert_eq!(extract.extract(&req), Some(RequestKey::from_bytes(b"acme")));
/// let req = Request::get("/acme/orders").header("x-tenant", "initech").body(()).unwrap();
/// assert_eq!(extract.extract(&req), Some(RequestKey::from_bytes(b"initech")));
/// ```
pub trait ExtractKey<B>: Send + Sync + 'static {
    /// The key, if the request carries one.
    fn extract(&self, req: &Request<B>) -> Option<RequestKey>;
}

impl<B, F> ExtractKey<B> for F
where
    F: Fn(&Request<B>) -> Option<RequestKey> + Send + Sync + 'static,
{
    fn extract(&self, req: &Request<B>) -> Option<RequestKey> {
        self(req)
    }
}

impl<B> ExtractKey<B> for () {
    fn extract(&self, _req: &Request<B>) -> Option<RequestKey> {
        None
    }
}

/// A shared extractor, for one chosen at run time (`Arc<dyn ExtractKey<B>>`).
impl<B, E: ExtractKey<B> + ?Sized> ExtractKey<B> for std::sync::Arc<E> {
    fn extract(&self, req: &Request<B>) -> Option<RequestKey> {
        (**self).extract(req)
    }
}

/// An optional extractor: `None` finds no key.
impl<B, E: ExtractKey<B>> ExtractKey<B> for Option<E> {
    fn extract(&self, req: &Request<B>) -> Option<RequestKey> {
        self.as_ref().and_then(|e| e.extract(req))
    }
}

macro_rules! first_of {
    ($($e:ident),+) => {
        impl<B, $($e: ExtractKey<B>),+> ExtractKey<B> for ($($e,)+) {
            fn extract(&self, req: &Request<B>) -> Option<RequestKey> {
                #[allow(non_snake_case)]
                let ($($e,)+) = self;
                $(if let Some(key) = $e.extract(req) {
                    return Some(key);
                })+
                None
            }
        }
    };
}

first_of!(E1, E2);
first_of!(E1, E2, E3);
first_of!(E1, E2, E3, E4);

// === handing a key to the balancer ===

thread_local! {
    /// A key handed to the next balancer called on this thread, for the duration of one
    /// synchronous `call` (see [`with_key`]).
    static HANDOFF: std::cell::Cell<Option<RequestKey>> = const { std::cell::Cell::new(None) };
}

/// Runs `call` with `key` handed to the first [`Balance`](crate::Balance) that `call`
/// calls synchronously on this thread, so a key layer in front of a balancer works with
/// any request policy (the policy's own key wins). The previous hand-off is restored.
#[cfg(feature = "sticky")]
pub(crate) fn with_key<R>(key: Option<RequestKey>, call: impl FnOnce() -> R) -> R {
    let Some(key) = key else { return call() };
    let before = HANDOFF.with(|h| h.replace(Some(key)));
    let out = call();
    HANDOFF.with(|h| h.set(before));
    out
}

/// Takes the key handed to this balancer call, if any.
#[inline]
pub(crate) fn take_key() -> Option<RequestKey> {
    HANDOFF.with(std::cell::Cell::take)
}
