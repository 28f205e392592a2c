use http::{header::COOKIE, HeaderMap, Request};

use crate::balance::strategy::RequestKey;
use crate::balance::ExtractKey;

/// The key is a cookie's value (the first cookie of that name), for affinity by an
/// application's own session cookie. Empty values give no key.
///
/// For a cookie the balancer sets itself, naming the backend, see
/// [`SessionCookie`](super::SessionCookie).
///
/// ```
/// use tower_lb::{balance::strategy::RequestKey, sticky::{CookieKey, ExtractKey}};
///
/// let key = CookieKey::new("sid");
/// let req = http::Request::get("/")
///     .header("cookie", "theme=dark; sid=abc123")
///     .body(())
///     .unwrap();
/// assert_eq!(key.extract(&req), Some(RequestKey::from_bytes(b"abc123")));
/// ```
#[derive(Debug, Clone)]
pub struct CookieKey {
    name: String,
}

impl CookieKey {
    /// Keys by the cookie `name` (compared exactly, as browsers do).
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

impl<B> ExtractKey<B> for CookieKey {
    fn extract(&self, req: &Request<B>) -> Option<RequestKey> {
        let value = cookies(req.headers(), &self.name).next()?;
        (!value.is_empty()).then(|| RequestKey::from_bytes(value.as_bytes()))
    }
}

/// Every value of the cookie `name` in the request's `Cookie` headers, in order. Values
/// lose surrounding white space and one pair of double quotes; headers that are not
/// visible ASCII are skipped.
pub(super) fn cookies<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (n, v) = pair.split_once('=')?;
            if n.trim() != name {
                return None;
            }
            let v = v.trim();
            Some(
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cookies: &[&str]) -> Request<()> {
        let mut b = Request::get("/");
        for c in cookies {
            b = b.header(COOKIE, *c);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn finds_cookie_across_headers_and_quotes() {
        let r = req(&["a=1", "b=\"two\"; c=3"]);
        assert_eq!(cookies(r.headers(), "b").collect::<Vec<_>>(), ["two"]);
        assert_eq!(cookies(r.headers(), "c").collect::<Vec<_>>(), ["3"]);
        assert_eq!(cookies(r.headers(), "d").count(), 0);
    }

    #[test]
    fn malformed_cookie_headers_give_no_key() {
        let k = CookieKey::new("sid");
        for bad in ["", ";;;", "sid", "sid=", "=x", "xsid=1", "sid =  "] {
            assert_eq!(k.extract(&req(&[bad])), None, "{bad:?}");
        }
        assert!(k.extract(&req(&["sid = v "])).is_some());
    }
}
