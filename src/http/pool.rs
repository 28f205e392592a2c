//! A lean HTTP/1.1 connection pool per endpoint, over hyper's connection-level client.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header, uri, HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use super::{parse_base, TlsRequired};
use crate::{
    balance::{clock::Clock, MakeEndpoint, Target},
    error::{BoxError, ConnectFailed},
};

/// Makes one [`PooledEndpoint`] per backend, each with its own pool of HTTP/1.1 keep-alive
/// connections, driven through hyper's connection-level client.
///
/// Compared with [`HttpEndpoints`](super::HttpEndpoints) (hyper-util's pooled client,
/// shared by all endpoints), it does less per request: the balancer has already chosen the
/// backend, so there is no pool lookup by host, no racing of a new connection against a
/// pooled one, and a connection returns to its pool when its response body ends. It speaks
/// HTTP/1.1 only, over plain TCP, or over TLS to `https://` backends with
/// [`tls`](Self::tls) (feature `tls`; without it such a backend is refused with
/// [`TlsRequired`]). Connections that cannot be established, handshakes included, fail with
/// [`ConnectFailed`], so the balancer retries them on another backend; a request that met a
/// pooled connection the server had just closed, before any byte of it was written, is sent
/// again on another connection of the same pool.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use tower_lb::{http::PooledEndpoints, Backend, Balance};
///
/// let balance = Balance::builder()
///     .backends([Backend::new("127.0.0.1:3001".to_string())])
///     .build(PooledEndpoints::<Empty<Bytes>>::new())
///     .unwrap();
/// # let _ = balance;
/// ```
pub struct PooledEndpoints<B> {
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsConnector>,
    _body: std::marker::PhantomData<fn(B)>,
}

impl<B> Clone for PooledEndpoints<B> {
    fn clone(&self) -> Self {
        Self {
            connect_timeout: self.connect_timeout,
            max_idle: self.max_idle,
            idle_timeout: self.idle_timeout,
            #[cfg(feature = "tls")]
            tls: self.tls.clone(),
            _body: std::marker::PhantomData,
        }
    }
}

impl<B> fmt::Debug for PooledEndpoints<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("PooledEndpoints");
        d.field("connect_timeout", &self.connect_timeout)
            .field("max_idle", &self.max_idle)
            .field("idle_timeout", &self.idle_timeout);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls.is_some());
        d.finish()
    }
}

impl<B> Default for PooledEndpoints<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> PooledEndpoints<B> {
    /// Connect timeout 5 s, up to 64 idle connections per backend, kept for 90 s.
    pub fn new() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            max_idle: 64,
            idle_timeout: Duration::from_secs(90),
            #[cfg(feature = "tls")]
            tls: None,
            _body: std::marker::PhantomData,
        }
    }

    /// Reaches `https://` backends over TLS as `tls` says (see the
    /// [`tls`](crate::http::tls) module), offering ALPN `http/1.1`; `http://` ones stay
    /// plain. The handshake must end within the connect timeout, counted apart from the
    /// TCP connect's.
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(mut self, tls: super::tls::TlsConfig) -> Self {
        self.tls = Some(tls.into_connector(&[b"http/1.1"]));
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how many idle connections each backend keeps (nginx `keepalive`).
    #[must_use]
    pub fn max_idle(mut self, max: usize) -> Self {
        self.max_idle = max;
        self
    }

    /// Sets how long an idle connection is kept (nginx `keepalive_timeout`).
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }
}

impl<K: fmt::Display, B> MakeEndpoint<K> for PooledEndpoints<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// The endpoint, counting each request in flight until its response body ends
    /// ([`TrackBody`](super::TrackBody)).
    type Service = super::TrackBody<PooledEndpoint<B>>;

    fn make_endpoint(
        &self,
        target: &Target<'_, K>,
    ) -> Result<super::TrackBody<PooledEndpoint<B>>, BoxError> {
        let (scheme, authority) = parse_base(&target.key().to_string())?;
        let https = scheme == uri::Scheme::HTTPS;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        #[cfg(feature = "tls")]
        let tls = match (&self.tls, https) {
            (Some(tls), true) => Some((tls.clone(), super::tls::server_name(host)?)),
            (None, true) => return Err(TlsRequired::new().into()),
            (_, false) => None,
        };
        #[cfg(not(feature = "tls"))]
        if https {
            return Err(TlsRequired::new().into());
        }
        let endpoint = PooledEndpoint {
            pool: Arc::new(Pool {
                host: host.to_string(),
                port,
                host_header: HeaderValue::from_str(authority.as_str())?,
                idle: Mutex::new(Vec::new()),
                clock: target.state().clock(),
                connect_timeout: self.connect_timeout,
                max_idle: self.max_idle,
                idle_timeout_ns: u64::try_from(self.idle_timeout.as_nanos()).unwrap_or(u64::MAX),
                #[cfg(feature = "tls")]
                tls,
            }),
        };
        Ok(super::TrackBody::new(endpoint, target))
    }
}

struct Pool<B> {
    host: String,
    port: u16,
    host_header: HeaderValue,
    /// Idle connections, each with the time it became idle (nanoseconds on `clock`).
    idle: Mutex<Vec<(http1::SendRequest<B>, u64)>>,
    /// The balancer's latency clock: the time-stamp counter where it tracks latency,
    /// cheaper than the system clock for the two readings each request makes here.
    clock: Clock,
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout_ns: u64,
    /// For `https://` backends: the connector and the name the certificate must carry.
    #[cfg(feature = "tls")]
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl<B> Pool<B> {
    fn take(&self) -> Option<http1::SendRequest<B>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.is_empty() {
            return None;
        }
        let now = self.clock.now_ns();
        // Most recently used first: its connection is the least likely to have timed out.
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && now.saturating_sub(since) < self.idle_timeout_ns {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, sender: http1::SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push((sender, self.clock.now_ns()));
        }
    }
}

impl<B> Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    async fn connect(&self) -> Result<http1::SendRequest<B>, BoxError> {
        let addr = (self.host.as_str(), self.port);
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                ConnectFailed::new(format!(
                    "connect timed out after {:?}",
                    self.connect_timeout
                ))
            })?
            .map_err(ConnectFailed::new)?;
        let _ = stream.set_nodelay(true);
        #[cfg(feature = "tls")]
        if let Some((tls, name)) = &self.tls {
            let stream = super::tls::handshake(tls, name.clone(), stream, self.connect_timeout)
                .await
                .map_err(ConnectFailed::new)?;
            return Self::handshake(TokioIo::new(stream)).await;
        }
        Self::handshake(TokioIo::new(stream)).await
    }

    /// The HTTP/1.1 handshake, and the connection's task.
    async fn handshake<T>(io: T) -> Result<http1::SendRequest<B>, BoxError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(ConnectFailed::new)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "tower_lb: upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// One backend's HTTP/1.1 service over its own connection pool. Made by
/// [`PooledEndpoints`].
pub struct PooledEndpoint<B> {
    pool: Arc<Pool<B>>,
}

impl<B> Clone for PooledEndpoint<B> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
        }
    }
}

impl<B> fmt::Debug for PooledEndpoint<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledEndpoint")
            .field("host", &self.pool.host)
            .field("port", &self.pool.port)
            .finish()
    }
}

impl<B> Service<Request<B>> for PooledEndpoint<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<PooledBody<B>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let pool = self.pool.clone();
        Box::pin(async move {
            // Origin-form request target, and a Host header if the caller set none.
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| uri::PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(path);
            if !req.headers().contains_key(header::HOST) {
                req.headers_mut()
                    .insert(header::HOST, pool.host_header.clone());
            }
            let mut req = Some(req);
            loop {
                let (mut sender, reused) = match pool.take() {
                    Some(s) => (s, true),
                    // Boxed: the connect's state (TCP, TLS and HTTP handshakes) would
                    // otherwise make every request's future kilobytes larger, copied
                    // whole as each layer above wraps it.
                    None => (Box::pin(pool.connect()).await?, false),
                };
                if sender.ready().await.is_err() {
                    continue; // closed meanwhile: take another
                }
                let request = req.take().expect("request is kept until sent");
                match sender.try_send_request(request).await {
                    Ok(rsp) => {
                        let (parts, body) = rsp.into_parts();
                        let body = PooledBody {
                            inner: body,
                            slot: Some((sender, pool)),
                        };
                        return Ok(Response::from_parts(parts, body));
                    }
                    Err(mut e) => match e.take_message() {
                        // Not a byte was written on a reused connection (the server had
                        // closed it): safe to send again on another connection.
                        Some(back) if reused => req = Some(back),
                        _ => return Err(e.into_error().into()),
                    },
                }
            }
        })
    }
}

/// A response body that returns its connection to the pool when it ends.
pub struct PooledBody<B> {
    inner: Incoming,
    slot: Option<(http1::SendRequest<B>, Arc<Pool<B>>)>,
}

impl<B> fmt::Debug for PooledBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

impl<B> PooledBody<B> {
    fn release(&mut self) {
        if let Some((sender, pool)) = self.slot.take() {
            pool.put(sender);
        }
    }
}

impl<B> Body for PooledBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            // The response is complete: the connection can carry the next request.
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || self.inner.is_end_stream() => {
                self.release();
            }
            Poll::Ready(Some(Err(_))) => drop(self.slot.take()),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for PooledBody<B> {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-response: it is not
        // reused (dropping the sender lets hyper close it). An empty body ends at once.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
