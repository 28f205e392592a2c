use http::Request;

use crate::balance::strategy::RequestKey;
use crate::balance::ExtractKey;

/// The key is a query parameter's value (the first one of that name), as sent: the raw
/// bytes, not percent-decoded, so `a%20b` and `a+b` are different keys. Absent or empty
/// parameters give no key.
///
/// ```
/// use tower_lb::{balance::strategy::RequestKey, sticky::{ExtractKey, QueryKey}};
///
/// let key = QueryKey::new("user");
/// let req = http::Request::get("/feed?page=2&user=ada").body(()).unwrap();
/// assert_eq!(key.extract(&req), Some(RequestKey::from_bytes(b"ada")));
/// ```
#[derive(Debug, Clone)]
pub struct QueryKey {
    name: String,
}

impl QueryKey {
    /// Keys by the query parameter `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

impl<B> ExtractKey<B> for QueryKey {
    fn extract(&self, req: &Request<B>) -> Option<RequestKey> {
        let query = req.uri().query()?;
        let value = query.split('&').find_map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            (n == self.name).then_some(v)
        })?;
        (!value.is_empty()).then(|| RequestKey::from_bytes(value.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_parameter_of_that_name() {
        let k = QueryKey::new("u");
        let key = |uri: &str| k.extract(&Request::get(uri).body(()).unwrap());
        assert_eq!(key("/?u=1&u=2"), Some(RequestKey::from_bytes(b"1")));
        assert_eq!(key("/?uu=1&u=x"), Some(RequestKey::from_bytes(b"x")));
        assert_eq!(key("/?u&v=1"), None);
        assert_eq!(key("/?u="), None);
        assert_eq!(key("/"), None);
    }
}
