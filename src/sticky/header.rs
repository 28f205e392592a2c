use http::{HeaderName, Request};

use crate::balance::strategy::RequestKey;
use crate::balance::ExtractKey;

/// The key is a request header's value (the first one if repeated); absent or empty
/// headers give no key.
///
/// ```
/// use tower_lb::{balance::strategy::RequestKey, sticky::{ExtractKey, HeaderKey}};
///
/// let key = HeaderKey::from_static("x-user-id");
/// let req = http::Request::get("/").header("x-user-id", "42").body(()).unwrap();
/// assert_eq!(key.extract(&req), Some(RequestKey::from_bytes(b"42")));
/// ```
#[derive(Debug, Clone)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys by the header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self { name }
    }

    /// Keys by a header named by a static string. Panics if the name is not a valid
    /// lower-case header name, as [`HeaderName::from_static`] does; use [`new`](Self::new)
    /// for names known only at run time.
    pub fn from_static(name: &'static str) -> Self {
        Self::new(HeaderName::from_static(name))
    }
}

impl<B> ExtractKey<B> for HeaderKey {
    fn extract(&self, req: &Request<B>) -> Option<RequestKey> {
        let value = req.headers().get(&self.name)?.as_bytes();
        (!value.is_empty()).then(|| RequestKey::from_bytes(value))
    }
}
