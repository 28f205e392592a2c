use http::Request;

use crate::balance::strategy::RequestKey;

/// Reads a request's affinity key. See the [module docs](super) for the stock extractors.
///
/// Implemented for closures `Fn(&http::Request<B>) -> Option<RequestKey>`, for `()`,
/// which never finds a key, for `Option<E>` and `Arc<E>` (so `Arc<dyn ExtractKey<B>>`
/// chosen at run time works), and for tuples of up to four extractors, tried in order:
/// the first key found wins.
///
/// ```
/// use http::Request;
/// use tower_lb::{balance::strategy::RequestKey, sticky::{ExtractKey, HeaderKey}};
///
/// // The tenant from a header, else the first path segment.
/// let by_path = |req: &Request<()>| {
///     let seg = req.uri().path().trim_start_matches('/').split('/').next()?;
///     (!seg.is_empty()).then(|| RequestKey::from_bytes(seg.as_bytes()))
/// };
/// let extract = (HeaderKey::from_static("x-tenant"), by_path);
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
