use http::Request;

use crate::balance::strategy::RequestKey;
use crate::balance::ExtractKey;

/// The key is the request path, whole or one segment of it (the query is never part of
/// it). Segments are counted from 0 after the leading `/`, skipping empty ones, so
/// `/a//b` has segments `a` and `b`. A missing segment gives no key.
///
/// ```
/// use tower_lb::{balance::strategy::RequestKey, sticky::{ExtractKey, PathKey}};
///
/// let req = http::Request::get("/tenants/acme/orders?x=1").body(()).unwrap();
/// assert_eq!(PathKey::new().extract(&req), Some(RequestKey::from_bytes(b"/tenants/acme/orders")));
/// assert_eq!(PathKey::segment(1).extract(&req), Some(RequestKey::from_bytes(b"acme")));
/// assert_eq!(PathKey::segment(5).extract(&req), None);
/// ```
#[derive(Debug, Clone, Default)]
pub struct PathKey {
    segment: Option<usize>,
}

impl PathKey {
    /// Keys by the whole path.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys by the path segment at `index` (0-based).
    pub fn segment(index: usize) -> Self {
        Self {
            segment: Some(index),
        }
    }
}

impl<B> ExtractKey<B> for PathKey {
    fn extract(&self, req: &Request<B>) -> Option<RequestKey> {
        let path = req.uri().path();
        let part = match self.segment {
            None => path,
            Some(i) => path.split('/').filter(|s| !s.is_empty()).nth(i)?,
        };
        Some(RequestKey::from_bytes(part.as_bytes()))
    }
}
