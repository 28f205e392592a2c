//! HTTP endpoints over one shared hyper-util client, and HTTP glue for the balancer.
//!
//! - [`HttpEndpoints`] is an endpoint maker: every backend's endpoint sends requests through
//!   the same pooled `hyper_util` client (one connection pool, keep-alive, HTTP/1.1 and
//!   HTTP/2), rewriting each request's URI to its backend's scheme and authority. A `Host`
//!   header already on the request is kept.
//! - [`PooledEndpoints`] is a leaner HTTP/1.1 maker: one small keep-alive pool per
//!   backend over hyper's connection-level client, for proxies where every request counts.
//! - [`HttpPolicy`] reads a request's affinity key from its extensions and, with
//!   [`HttpPolicy::replay_clone`], copies requests whose body is `Clone` so that a
//!   connection refused by one backend is retried on another.
//! - [`ReplayBody`] streams a request body while keeping its first bytes, so a request that
//!   failed before reaching its backend can be replayed elsewhere without buffering it first.
//! - [`load_report`] reads ORCA load reports (`endpoint-load-metrics`, gRPC's
//!   `endpoint-load-metrics-bin`) from responses for the
//!   [`LoadReport`](crate::balance::strategy::LoadReport) strategy, and attaches them on
//!   the backend side.
//! - [`proxy`] has the reverse-proxy header rules (hop-by-hop, `X-Forwarded-*`).
//! - `tls` (feature `tls`) reaches `https://` backends over rustls: system or private
//!   roots, SNI, ALPN, client certificates. Without it an `https://` backend is refused
//!   ([`TlsRequired`]) rather than connected in plain text.
//! - [`ErrorResponseLayer`] turns the balancer's errors into `502`/`503`/`504` responses
//!   with `Infallible` errors, as axum routes require, over any body type: a status text
//!   and an RFC 9209 `Proxy-Status` header, never a backend address or an error chain.
//!
//! Backend keys are anything that prints as an authority (`127.0.0.1:3000`, a
//! `SocketAddr`, spoken to over plain HTTP) or as a base URL (`http://api.internal:8080`,
//! `https://api.internal:8443`).
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), tower_lb::BoxError> {
//! use http_body_util::Empty;
//! use bytes::Bytes;
//! use tower::{Service, ServiceExt};
//! use tower_lb::{http::{HttpEndpoints, HttpPolicy}, Backend, Balance};
//!
//! let mut balance = Balance::builder()
//!     .backends(["127.0.0.1:3001", "127.0.0.1:3002"].map(Backend::new))
//!     .policy(HttpPolicy::new().replay_clone())
//!     .build(HttpEndpoints::<Empty<Bytes>>::new())?;
//!
//! let req = http::Request::get("/users/42").body(Empty::new())?;
//! let rsp = balance.ready().await?.call(req).await?;
//! println!("{}", rsp.status());
//! # Ok(())
//! # }
//! ```

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{uri, Request, Response, Uri};
use hyper::body::{Body, Incoming};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use tower_service::Service;

mod error_response;
pub mod load_report;
mod policy;
mod pool;
pub mod proxy;
mod replay;
#[cfg(feature = "tls")]
pub mod tls;
mod track;

pub use error_response::{
    error_response, proxy_status_for, status_for, ErrorResponse, ErrorResponseBody,
    ErrorResponseFuture, ErrorResponseLayer,
};
pub use policy::{CloneBody, HttpPolicy, NoReplay, ReplayBodies};
pub use pool::{PooledBody, PooledEndpoint, PooledEndpoints};
pub use replay::{NotReplayable, ReplayBody, ReplayBodyLayer, ReplayBodyService};
pub use track::{TrackBody, TrackBodyLayer, TrackFuture, TrackedBody};

use crate::{
    balance::{MakeEndpoint, Target},
    error::{find, BoxError},
};

/// Makes one [`HttpEndpoint`] per backend, all sharing one hyper-util client and so one
/// connection pool. See the [module docs](self).
///
/// `https://` backends need [`tls`](Self::tls) (feature `tls`); without it, making their
/// endpoint fails with [`TlsRequired`].
pub struct HttpEndpoints<B> {
    client: Clients<B>,
    connect_timeout: Duration,
    http2: bool,
    #[cfg(feature = "tls")]
    tls: Option<tls::TlsConfig>,
}

/// The shared client: plain, or with a connector that speaks TLS to `https` URIs.
enum Clients<B> {
    Plain(Client<HttpConnector, B>),
    #[cfg(feature = "tls")]
    Tls(Client<tls::HttpsConnector, B>),
}

impl<B> Clients<B> {
    fn is_tls(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            #[cfg(feature = "tls")]
            Self::Tls(_) => true,
        }
    }
}

impl<B> Clone for Clients<B> {
    fn clone(&self) -> Self {
        match self {
            Self::Plain(c) => Self::Plain(c.clone()),
            #[cfg(feature = "tls")]
            Self::Tls(c) => Self::Tls(c.clone()),
        }
    }
}

impl<B> Clone for HttpEndpoints<B> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            connect_timeout: self.connect_timeout,
            http2: self.http2,
            #[cfg(feature = "tls")]
            tls: self.tls.clone(),
        }
    }
}

impl<B> fmt::Debug for HttpEndpoints<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpoints")
            .field("tls", &self.client.is_tls())
            .finish_non_exhaustive()
    }
}

impl<B> Default for HttpEndpoints<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<B> HttpEndpoints<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A client with a 5 s connect timeout, `TCP_NODELAY`, up to 64 idle connections per
    /// backend kept for 90 s, HTTP/1.1 (HTTP/2 for `h2c` with [`http2_only`](Self::http2_only)).
    pub fn new() -> Self {
        Self::with_connect_timeout(Duration::from_secs(5))
    }

    /// Like [`new`](Self::new), with another connect timeout.
    pub fn with_connect_timeout(timeout: Duration) -> Self {
        Self::build(timeout, false)
    }

    /// Like [`with_connect_timeout`](Self::with_connect_timeout), speaking HTTP/2 without
    /// TLS (prior knowledge, as gRPC backends expect): one multiplexed connection per
    /// backend.
    pub fn http2_with_connect_timeout(timeout: Duration) -> Self {
        Self::build(timeout, true)
    }

    /// Speaks HTTP/2 only, with the default 5 s connect timeout: prior knowledge to
    /// `http://` backends, and over TLS (with [`tls`](Self::tls)) offering ALPN `h2` alone.
    #[must_use]
    pub fn http2_only(mut self) -> Self {
        self.connect_timeout = Duration::from_secs(5);
        self.http2 = true;
        self.rebuild()
    }

    /// Reaches `https://` backends over TLS as `tls` says (see the
    /// [`tls`] module), `http://` ones in plain text as before. ALPN
    /// offers `h2` and `http/1.1` (`h2` alone after [`http2_only`](Self::http2_only)), and
    /// a backend that picks `h2` is spoken to over HTTP/2. The handshake must end within
    /// the connect timeout.
    ///
    /// The client is built anew from the constructor's connect timeout and HTTP version:
    /// it replaces a client given to [`with_client`](Self::with_client).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(mut self, tls: tls::TlsConfig) -> Self {
        self.tls = Some(tls);
        self.rebuild()
    }

    fn build(timeout: Duration, http2: bool) -> Self {
        Self {
            client: Self::client(
                timeout,
                http2,
                #[cfg(feature = "tls")]
                None,
            ),
            connect_timeout: timeout,
            http2,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Builds the client again from the settings.
    fn rebuild(mut self) -> Self {
        self.client = Self::client(
            self.connect_timeout,
            self.http2,
            #[cfg(feature = "tls")]
            self.tls.as_ref(),
        );
        self
    }

    fn client(
        timeout: Duration,
        http2: bool,
        #[cfg(feature = "tls")] tls: Option<&tls::TlsConfig>,
    ) -> Clients<B> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        connector.enforce_http(false);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .http2_only(http2);
        #[cfg(feature = "tls")]
        if let Some(tls) = tls {
            let alpn: &[&[u8]] = if http2 {
                &[b"h2"]
            } else {
                &[b"h2", b"http/1.1"]
            };
            let connector = tls::HttpsConnector::new(connector, tls.connector(alpn), timeout);
            return Clients::Tls(builder.build(connector));
        }
        Clients::Plain(builder.build(connector))
    }

    /// Uses a client you configured (plain TCP: `https://` backends are refused).
    pub fn with_client(client: Client<HttpConnector, B>) -> Self {
        Self {
            client: Clients::Plain(client),
            connect_timeout: Duration::from_secs(5),
            http2: false,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl<K: fmt::Display, B> MakeEndpoint<K> for HttpEndpoints<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// The endpoint, counting each request in flight until its response body ends
    /// ([`TrackBody`]).
    type Service = TrackBody<HttpEndpoint<B>>;

    fn make_endpoint(
        &self,
        target: &Target<'_, K>,
    ) -> Result<TrackBody<HttpEndpoint<B>>, BoxError> {
        let (scheme, authority) = parse_base(&target.key().to_string())?;
        if scheme == uri::Scheme::HTTPS && !self.client.is_tls() {
            return Err(TlsRequired::new().into());
        }
        // A host that cannot be a certificate name fails now, not at each connect.
        #[cfg(feature = "tls")]
        if scheme == uri::Scheme::HTTPS {
            tls::server_name(authority.host())?;
        }
        let endpoint = HttpEndpoint {
            shared: Arc::new(EndpointShared {
                client: self.client.clone(),
                scheme,
                authority,
            }),
        };
        Ok(TrackBody::new(endpoint, target))
    }
}

/// Parses `host:port` or `scheme://host:port[/]` into a scheme and an authority.
pub fn parse_base(s: &str) -> Result<(uri::Scheme, uri::Authority), BoxError> {
    if s.contains("://") {
        let uri: Uri = s.parse()?;
        let scheme = uri.scheme().cloned().ok_or("backend URL has no scheme")?;
        if scheme != uri::Scheme::HTTP && scheme != uri::Scheme::HTTPS {
            return Err(format!("unsupported scheme {scheme}").into());
        }
        let authority = uri.authority().cloned().ok_or("backend URL has no host")?;
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err("backend URL must not have a path".into());
        }
        Ok((scheme, authority))
    } else {
        let authority: uri::Authority = s.parse()?;
        Ok((uri::Scheme::HTTP, authority))
    }
}

/// An `https://` backend was given to an endpoint maker without TLS (feature `tls` and
/// [`HttpEndpoints::tls`] or [`PooledEndpoints::tls`]): its endpoint is refused rather
/// than spoken to in plain text. `Balance::build` reports it as
/// [`ConfigError::Make`](crate::error::ConfigError::Make).
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use tower_lb::{error::ConfigError, http::HttpEndpoints, Backend, Balance};
///
/// let err = Balance::builder()
///     .backends([Backend::new("https://api.internal")])
///     .build(HttpEndpoints::<Empty<Bytes>>::new())
///     .unwrap_err();
/// assert!(matches!(err, ConfigError::Make { .. }));
/// ```
#[derive(Debug, Clone)]
pub struct TlsRequired {
    _p: (),
}

impl TlsRequired {
    pub(crate) fn new() -> Self {
        Self { _p: () }
    }
}

impl fmt::Display for TlsRequired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("https backend, but the endpoint maker has no TLS configuration (feature `tls`, `.tls(..)`)")
    }
}

impl std::error::Error for TlsRequired {}

/// One backend's HTTP service: rewrites the request URI to the backend and sends it
/// through the shared client. Made by [`HttpEndpoints`]. A clone (the balancer makes one
/// per request) is one reference count: the client and the backend's address are shared.
pub struct HttpEndpoint<B> {
    shared: Arc<EndpointShared<B>>,
}

struct EndpointShared<B> {
    client: Clients<B>,
    scheme: uri::Scheme,
    authority: uri::Authority,
}

impl<B> Clone for HttpEndpoint<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<B> fmt::Debug for HttpEndpoint<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("scheme", &self.shared.scheme)
            .field("authority", &self.shared.authority)
            .finish()
    }
}

impl<B> Service<Request<B>> for HttpEndpoint<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    /// Always ready, as hyper-util's client is: it waits for a connection inside the
    /// response future.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| uri::PathAndQuery::from_static("/"));
        let mut parts = uri::Parts::default();
        let shared = &*self.shared;
        parts.scheme = Some(shared.scheme.clone());
        parts.authority = Some(shared.authority.clone());
        parts.path_and_query = Some(path);
        // Scheme, authority and path are all set: this cannot fail.
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        match &shared.client {
            Clients::Plain(c) => c.request(req),
            #[cfg(feature = "tls")]
            Clients::Tls(c) => c.request(req),
        }
    }
}

/// Whether an error came from the connection to the backend (a hyper, hyper-util client
/// or I/O error anywhere in its chain): the exchange broke, possibly after the request
/// went out, as opposed to an answer or an error of a middleware such as a timeout.
/// Such a request may be sent again only if its method is idempotent.
///
/// ```
/// use tower_lb::http::is_transport_error;
///
/// let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
/// assert!(is_transport_error(&reset));
/// let elapsed = tower::timeout::error::Elapsed::new();
/// assert!(!is_transport_error(&elapsed));
/// ```
pub fn is_transport_error(err: &(dyn std::error::Error + 'static)) -> bool {
    find::<hyper::Error>(err).is_some()
        || find::<hyper_util::client::legacy::Error>(err).is_some()
        || find::<std::io::Error>(err).is_some()
}

/// Whether a method is idempotent (RFC 9110 §9.2.2), so a request may be sent twice.
pub fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backend, Balance};
    use bytes::Bytes;
    use http_body_util::Empty;

    #[test]
    fn https_backend_without_tls_is_refused() {
        let make = |key: &'static str, maker: HttpEndpoints<Empty<Bytes>>| {
            Balance::builder()
                .backends([Backend::new(key)])
                .build(maker)
                .map(drop)
        };
        let err = make("https://127.0.0.1:8443", HttpEndpoints::new()).unwrap_err();
        assert!(err.to_string().contains("no TLS configuration"), "{err}");
        let client = Client::builder(TokioExecutor::new()).build_http();
        assert!(make("https://a.internal", HttpEndpoints::with_client(client)).is_err());
        assert!(make("http://127.0.0.1:8080", HttpEndpoints::new().http2_only()).is_ok());
        assert!(make("127.0.0.1:8080", HttpEndpoints::new()).is_ok());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn https_backend_with_tls_is_made() {
        let tls = || tls::TlsConfig::empty();
        let make = |key: &'static str, maker: HttpEndpoints<Empty<Bytes>>| {
            Balance::builder()
                .backends([Backend::new(key)])
                .build(maker)
                .map(drop)
        };
        assert!(make("https://127.0.0.1:8443", HttpEndpoints::new().tls(tls())).is_ok());
        assert!(make(
            "https://[::1]:8443",
            HttpEndpoints::new().http2_only().tls(tls())
        )
        .is_ok());
        assert!(make("http://127.0.0.1:8080", HttpEndpoints::new().tls(tls())).is_ok());
    }
}
