use std::fmt;

use http::Request;

use crate::balance::strategy::RequestKey;

/// Reads a request's affinity key. See the [module docs](super) for the stock extractors.
///
/// Implemented for closures `Fn(&http::Request<B>) -> Option<RequestKey>`, and for `()`,
/// which never finds a key. Chain extractors with [`or`](Self::or): the first key found
/// wins.
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
/// let extract = HeaderKey::from_static("x-tenant").or(by_path);
///
/// let req = Request::get("/acme/orders").body(()).unwrap();
/// assert_eq!(extract.extract(&req), Some(RequestKey::from_bytes(b"acme")));
/// ```
pub trait ExtractKey<B>: Send + Sync + 'static {
    /// The key, if the request carries one.
    fn extract(&self, req: &Request<B>) -> Option<RequestKey>;

    /// Tries `self`, then `other`.
    fn or<E>(self, other: E) -> Or<Self, E>
    where
        Self: Sized,
        E: ExtractKey<B>,
    {
        Or {
            first: self,
            second: other,
        }
    }
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

/// Two extractors tried in turn; made by [`ExtractKey::or`].
#[derive(Clone, Copy)]
pub struct Or<A, C> {
    first: A,
    second: C,
}

impl<A, C> fmt::Debug for Or<A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Or")
            .field("first", &std::any::type_name::<A>())
            .field("second", &std::any::type_name::<C>())
            .finish()
    }
}

impl<B, A, C> ExtractKey<B> for Or<A, C>
where
    A: ExtractKey<B>,
    C: ExtractKey<B>,
{
    fn extract(&self, req: &Request<B>) -> Option<RequestKey> {
        self.first.extract(req).or_else(|| self.second.extract(req))
    }
}
