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
//! - [`proxy`] has the reverse-proxy header rules (hop-by-hop, `X-Forwarded-*`).
//! - [`ErrorResponseLayer`] turns the balancer's errors into `502`/`503`/`504` responses
//!   with `Infallible` errors, as axum routes require, over any body type: a status text
//!   and an RFC 9209 `Proxy-Status` header, never a backend address or an error chain.
//!
//! Backend keys are anything that prints as an authority (`127.0.0.1:3000`, a
//! `SocketAddr`) or as a base URL (`http://api.internal:8080`).
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
mod policy;
mod pool;
pub mod proxy;
mod replay;
mod track;

pub use error_response::{
    error_response, proxy_status_for, status_for, ErrorResponse, ErrorResponseBody,
    ErrorResponseFuture, ErrorResponseLayer,
};
pub use policy::{CloneBody, HttpPolicy, NoReplay, ReplayBodies};
pub use pool::{PooledBody, PooledEndpoint, PooledEndpoints};
pub use replay::{NotReplayable, ReplayBody};
pub use track::{TrackBody, TrackBodyLayer, TrackFuture, TrackedBody};

use crate::{
    balance::{MakeEndpoint, Target},
    error::{find, BoxError},
};

/// Makes one [`HttpEndpoint`] per backend, all sharing one hyper-util client and so one
/// connection pool. See the [module docs](self).
pub struct HttpEndpoints<B> {
    client: Client<HttpConnector, B>,
}

impl<B> Clone for HttpEndpoints<B> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
        }
    }
}

impl<B> fmt::Debug for HttpEndpoints<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpoints").finish_non_exhaustive()
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

    /// Speaks HTTP/2 without TLS (prior knowledge), with the default 5 s connect timeout.
    #[must_use]
    pub fn http2_only(self) -> Self {
        Self::build(Duration::from_secs(5), true)
    }

    fn build(timeout: Duration, http2: bool) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        connector.enforce_http(false);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .http2_only(http2)
            .build(connector);
        Self { client }
    }

    /// Uses a client you configured.
    pub fn with_client(client: Client<HttpConnector, B>) -> Self {
        Self { client }
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
        let endpoint = HttpEndpoint {
            client: self.client.clone(),
            scheme,
            authority,
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

/// One backend's HTTP service: rewrites the request URI to the backend and sends it
/// through the shared client. Made by [`HttpEndpoints`].
pub struct HttpEndpoint<B> {
    client: Client<HttpConnector, B>,
    scheme: uri::Scheme,
    authority: uri::Authority,
}

impl<B> Clone for HttpEndpoint<B> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            scheme: self.scheme.clone(),
            authority: self.authority.clone(),
        }
    }
}

impl<B> fmt::Debug for HttpEndpoint<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpEndpoint")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<Request<B>>::poll_ready(&mut self.client, cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| uri::PathAndQuery::from_static("/"));
        let mut parts = uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path);
        // Scheme, authority and path are all set: this cannot fail.
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        self.client.request(req)
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
