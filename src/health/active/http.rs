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
}

impl fmt::Debug for HttpProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProbe")
            .field("path", &self.path)
            .field("host", &self.host)
            .field("expect", &self.expect)
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
        })
    }

    /// The statuses that pass (default `200..=399`).
    #[must_use]
    pub fn expect(mut self, statuses: RangeInclusive<u16>) -> Self {
        self.expect = statuses;
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
        Box::pin(async move {
            let rsp = client.request(req?).await?;
            let status = rsp.status();
            if expect.contains(&status.as_u16()) {
                Ok(status)
            } else {
                Err(UnexpectedStatus { status }.into())
            }
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
