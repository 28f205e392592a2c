use std::{
    error::Error,
    fmt,
    future::Future,
    ops::RangeInclusive,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header, uri, HeaderValue, Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tower_service::Service;

use crate::{
    error::{BoxError, ConfigError},
    http::parse_base,
};

/// The HTTP probe: `GET` a path on the backend and expect a status in a range (HAProxy
/// `option httpchk` with `http-check expect status`). See the [module docs](super).
///
/// Defaults: statuses 200–399 pass (HAProxy's 2xx and 3xx), no `Host` override (the
/// backend's authority is sent). Each probe opens a new connection, as HAProxy's checks
/// do, so a backend that stopped accepting connections fails its next probe even if an
/// old pooled connection would still answer. The [`Prober`](super::Prober)'s timeout
/// bounds each probe; [`connect_timeout`](Self::connect_timeout) bounds the connect alone.
///
/// A backend key is an authority (`127.0.0.1:3000`) or a base URL
/// (`http://api.internal:8080`), as for [`HttpEndpoints`](crate::http::HttpEndpoints).
///
/// ```
/// use tower_lb::health::active::HttpProbe;
///
/// let probe = HttpProbe::new("/healthz")
///     .unwrap()
///     .expect(200..=200)
///     .host(http::HeaderValue::from_static("api.internal"));
/// # let _ = probe;
/// ```
#[derive(Clone)]
pub struct HttpProbe {
    client: Client<HttpConnector, Empty<Bytes>>,
    path: uri::PathAndQuery,
    host: Option<HeaderValue>,
    expect: RangeInclusive<u16>,
    body: Option<BodyMatch>,
}

/// What a probe's response body must hold for the backend to pass, beside its status
/// (HAProxy `http-check expect string` / `rstring`, nginx Plus `match { body ~ … }`).
///
/// Application health endpoints often answer `200` with a verdict in the body, such as
/// `{"status": "unhealthy", "checks": {…}}`; a status-only probe would count them up.
/// At most [`MAX_BODY`] bytes of the body are read; a longer body fails the probe.
///
/// ```
/// use tower_lb::health::active::{BodyMatch, HttpProbe};
///
/// // The body must contain "OK" ...
/// let text = HttpProbe::new("/health").unwrap().expect_body(BodyMatch::contains("OK"));
/// // ... or be JSON whose "status" is the string "healthy" (an RFC 6901 pointer).
/// let json = HttpProbe::new("/health")
///     .unwrap()
///     .expect_body(BodyMatch::json("/status", "healthy").unwrap());
/// # let _ = (text, json);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct BodyMatch {
    kind: MatchKind,
}

#[derive(Clone, Debug, PartialEq)]
enum MatchKind {
    Contains(String),
    Json {
        pointer: String,
        expected: serde_json::Value,
    },
}

/// The most bytes of a response body an [`HttpProbe`] reads to match it (64 KiB).
pub const MAX_BODY: usize = 64 * 1024;

impl BodyMatch {
    /// The body must contain `text` (byte for byte).
    pub fn contains(text: impl Into<String>) -> Self {
        Self {
            kind: MatchKind::Contains(text.into()),
        }
    }

    /// The body must be JSON whose value at `pointer` (RFC 6901: `/status`,
    /// `/checks/db/ok`) equals `expected`: a JSON text (`true`, `200`, `"up"`) or, when
    /// it is not valid JSON, a string (`healthy`).
    ///
    /// Fails with [`ConfigError::Invalid`] when `pointer` is neither empty nor starts
    /// with `/`.
    pub fn json(pointer: &str, expected: &str) -> Result<Self, ConfigError> {
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(ConfigError::Invalid {
                setting: "probe body JSON pointer",
                reason: format!("{pointer:?} does not start with '/'"),
            });
        }
        let expected = serde_json::from_str(expected)
            .unwrap_or_else(|_| serde_json::Value::String(expected.to_owned()));
        Ok(Self {
            kind: MatchKind::Json {
                pointer: pointer.to_owned(),
                expected,
            },
        })
    }

    /// Whether `body` matches.
    pub fn matches(&self, body: &[u8]) -> bool {
        match &self.kind {
            MatchKind::Contains(text) => {
                let needle = text.as_bytes();
                needle.is_empty() || body.windows(needle.len()).any(|w| w == needle)
            }
            MatchKind::Json { pointer, expected } => {
                serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .is_some_and(|v| v.pointer(pointer) == Some(expected))
            }
        }
    }
}

impl fmt::Display for BodyMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            MatchKind::Contains(text) => write!(f, "a body containing {text:?}"),
            MatchKind::Json { pointer, expected } => {
                write!(f, "a JSON body with {expected} at {pointer:?}")
            }
        }
    }
}

impl fmt::Debug for HttpProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProbe")
            .field("path", &self.path)
            .field("host", &self.host)
            .field("expect", &self.expect)
            .field("body", &self.body)
            .finish()
    }
}

impl HttpProbe {
    /// Probes `GET path` (a path with an optional query: `/healthz`, `/status?full=1`).
    ///
    /// Fails with [`ConfigError::Invalid`] when `path` is not a valid path.
    pub fn new(path: &str) -> Result<Self, ConfigError> {
        let path: uri::PathAndQuery = path.parse().map_err(|e| ConfigError::Invalid {
            setting: "probe path",
            reason: format!("{path:?}: {e}"),
        })?;
        if !path.path().starts_with('/') {
            return Err(ConfigError::Invalid {
                setting: "probe path",
                reason: format!("{path:?} does not start with '/'"),
            });
        }
        Ok(Self {
            client: client(Duration::from_secs(1)),
            path,
            host: None,
            expect: 200..=399,
            body: None,
        })
    }

    /// The statuses that pass (default `200..=399`).
    #[must_use]
    pub fn expect(mut self, statuses: RangeInclusive<u16>) -> Self {
        self.expect = statuses;
        self
    }

    /// Also requires the response body to match (default: the body is not read). See
    /// [`BodyMatch`].
    #[must_use]
    pub fn expect_body(mut self, body: BodyMatch) -> Self {
        self.body = Some(body);
        self
    }

    /// Sends this `Host` header instead of the backend's authority (HAProxy
    /// `http-check send hdr Host`), for virtual-hosted backends.
    #[must_use]
    pub fn host(mut self, host: HeaderValue) -> Self {
        self.host = Some(host);
        self
    }

    /// Bounds the TCP connect (default 1 s; the prober's timeout bounds the whole probe).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.client = client(timeout);
        self
    }

    fn request(&self, key: &str) -> Result<Request<Empty<Bytes>>, BoxError> {
        let (scheme, authority) = parse_base(key)?;
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(self.path.clone())
            .build()?;
        let mut req = Request::get(uri)
            .header(header::USER_AGENT, "tower-lb-health")
            .body(Empty::new())?;
        if let Some(host) = &self.host {
            req.headers_mut().insert(header::HOST, host.clone());
        }
        Ok(req)
    }
}

fn client(connect_timeout: Duration) -> Client<HttpConnector, Empty<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.enforce_http(false);
    Client::builder(TokioExecutor::new())
        // A new connection per probe.
        .pool_max_idle_per_host(0)
        .build(connector)
}

impl<K: fmt::Display> Service<K> for HttpProbe {
    type Response = StatusCode;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<StatusCode, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: K) -> Self::Future {
        let req = self.request(&key.to_string());
        let client = self.client.clone();
        let expect = self.expect.clone();
        let body = self.body.clone();
        Box::pin(async move {
            let rsp = client.request(req?).await?;
            let status = rsp.status();
            if !expect.contains(&status.as_u16()) {
                return Err(UnexpectedStatus { status }.into());
            }
            if let Some(want) = body {
                use http_body_util::BodyExt;
                let read = http_body_util::Limited::new(rsp.into_body(), MAX_BODY)
                    .collect()
                    .await;
                let ok = read.is_ok_and(|b| want.matches(&b.to_bytes()));
                if !ok {
                    return Err(UnexpectedBody { want }.into());
                }
            }
            Ok(status)
        })
    }
}

/// An [`HttpProbe`] got a status outside its expected range.
#[derive(Debug, Clone)]
pub struct UnexpectedStatus {
    status: StatusCode,
}

impl UnexpectedStatus {
    /// The status the backend answered.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl fmt::Display for UnexpectedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "health probe got unexpected status {}", self.status)
    }
}

impl Error for UnexpectedStatus {}

/// An [`HttpProbe`] got an expected status but a body that did not match its
/// [`BodyMatch`] (or was longer than [`MAX_BODY`], or broke off).
#[derive(Debug, Clone)]
pub struct UnexpectedBody {
    want: BodyMatch,
}

impl fmt::Display for UnexpectedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "health probe expected {}", self.want)
    }
}

impl Error for UnexpectedBody {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_matches() {
        let healthy = br#"{"status": "healthy", "checks": {"db": {"ok": true}}}"#;
        let unhealthy = br#"{"status": "unhealthy", "checks": {"db": {"ok": false}}}"#;
        let status = BodyMatch::json("/status", "healthy").unwrap();
        assert!(status.matches(healthy) && !status.matches(unhealthy));
        let db = BodyMatch::json("/checks/db/ok", "true").unwrap();
        assert!(db.matches(healthy) && !db.matches(unhealthy));
        // A quoted JSON string is the same as a bare word.
        assert_eq!(
            BodyMatch::json("/s", "\"up\"").unwrap(),
            BodyMatch::json("/s", "up").unwrap()
        );
        assert!(!status.matches(b"not json") && !status.matches(b""));
        assert!(BodyMatch::json("status", "x").is_err());
        let text = BodyMatch::contains("\"status\": \"healthy\"");
        assert!(text.matches(healthy) && !text.matches(unhealthy));
        assert!(BodyMatch::contains("").matches(b""));
    }
}
