//! The endpoint maker: one connector per backend.

use std::{
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tower_service::Service;

use super::{ProxyProtocol, TcpRequest};
use crate::{
    balance::{EndpointState, InFlight, MakeEndpoint, Target},
    error::{BoxError, ConnectFailed},
};

#[cfg(feature = "health-passive")]
use crate::health::passive::{PassiveHealthLayer, Policy, Shared};

/// Makes one [`TcpEndpoint`] per backend: a connector to the backend's `host:port`. See
/// the [module docs](super) for an example.
///
/// A backend key is anything that prints as `host:port`: `10.0.0.7:6379`,
/// `[2001:db8::7]:6379`, `redis.internal:6379`, a `SocketAddr`. A key that does not
/// parse (no port, port 0, an IPv6 address without brackets) is refused when the backend
/// is added ([`ConfigError::Make`](crate::error::ConfigError::Make)); a host name is
/// resolved at every connect, and each address it resolves to is tried in turn.
///
/// Defaults: connect timeout 5 s (resolving, connecting and writing the PROXY header
/// together), no PROXY header, no passive health. Backend connections have
/// `TCP_NODELAY` set.
#[derive(Clone)]
#[must_use]
pub struct TcpEndpoints {
    connect_timeout: Duration,
    proxy_protocol: Option<ProxyProtocol>,
    #[cfg(feature = "health-passive")]
    passive: Option<Arc<dyn Fn(PassiveHealthLayer) -> PassiveHealthLayer + Send + Sync>>,
}

impl fmt::Debug for TcpEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("TcpEndpoints");
        d.field("connect_timeout", &self.connect_timeout)
            .field("proxy_protocol", &self.proxy_protocol);
        #[cfg(feature = "health-passive")]
        d.field("passive_health", &self.passive.is_some());
        d.finish()
    }
}

impl Default for TcpEndpoints {
    fn default() -> Self {
        Self::new()
    }
}

impl TcpEndpoints {
    /// Connect timeout 5 s, no PROXY header, no passive health.
    pub fn new() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            proxy_protocol: None,
            #[cfg(feature = "health-passive")]
            passive: None,
        }
    }

    /// Bounds each connect: resolving the host, connecting and writing the PROXY header
    /// (nginx stream `proxy_connect_timeout`, HAProxy `timeout connect`). An expired
    /// connect is a [`ConnectFailed`], retried on another backend.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Writes a PROXY protocol header to each backend connection right after it opens,
    /// with the addresses of the [`TcpRequest`] (HAProxy `send-proxy`, `send-proxy-v2`).
    pub fn proxy_protocol(mut self, version: ProxyProtocol) -> Self {
        self.proxy_protocol = Some(version);
        self
    }

    /// Passive health on every endpoint (feature `health-passive`), judging connects:
    /// a failed connect is a failure for `policy` ([`Window`](crate::health::passive::Window),
    /// nginx, or [`Consecutive`](crate::health::passive::Consecutive), Envoy), an
    /// opened connection a success. Probation and the max ejection share are
    /// [`PassiveHealthLayer`]'s defaults (on, 50 %). An ejected backend gets no new
    /// connects; its open connections stay.
    #[cfg(feature = "health-passive")]
    pub fn passive_health<Po: Policy + Clone>(mut self, policy: Po) -> Self {
        self.passive = Some(Arc::new(move |layer: PassiveHealthLayer| {
            layer.policy(policy.clone())
        }));
        self
    }
}

impl<K: fmt::Display> MakeEndpoint<K> for TcpEndpoints {
    type Service = TcpEndpoint;

    fn make_endpoint(&self, target: &Target<'_, K>) -> Result<TcpEndpoint, BoxError> {
        let (host, port) = parse_host_port(&target.key().to_string())?;
        #[cfg(feature = "health-passive")]
        let health = self
            .passive
            .as_ref()
            .map(|configure| configure(PassiveHealthLayer::new(target)).shared());
        Ok(TcpEndpoint {
            inner: Arc::new(Inner {
                host,
                port,
                connect_timeout: self.connect_timeout,
                proxy_protocol: self.proxy_protocol,
                state: target.state_arc(),
                #[cfg(feature = "health-passive")]
                health,
            }),
        })
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals).
fn parse_host_port(key: &str) -> Result<(String, u16), BoxError> {
    let (host, port) = key
        .rsplit_once(':')
        .ok_or_else(|| format!("backend {key:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("backend {key:?}: bad port {port:?}"))?;
    if port == 0 {
        return Err(format!("backend {key:?}: port 0").into());
    }
    let host = match host.strip_prefix('[') {
        Some(rest) => rest
            .strip_suffix(']')
            .ok_or_else(|| format!("backend {key:?}: unclosed '['"))?,
        None if host.contains(':') => {
            return Err(format!("backend {key:?}: an IPv6 address needs brackets").into())
        }
        None => host,
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!("backend {key:?}: bad host").into());
    }
    Ok((host.to_string(), port))
}

struct Inner {
    host: String,
    port: u16,
    connect_timeout: Duration,
    proxy_protocol: Option<ProxyProtocol>,
    state: Arc<EndpointState>,
    #[cfg(feature = "health-passive")]
    health: Option<Arc<Shared>>,
}

/// One backend's connector: answers each [`TcpRequest`] with a [`TcpConnection`] to the
/// backend, or a [`ConnectFailed`]. Made by [`TcpEndpoints`].
#[derive(Clone)]
pub struct TcpEndpoint {
    inner: Arc<Inner>,
}

impl fmt::Debug for TcpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpEndpoint")
            .field("host", &self.inner.host)
            .field("port", &self.inner.port)
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("proxy_protocol", &self.inner.proxy_protocol)
            .finish()
    }
}

impl Service<TcpRequest> for TcpEndpoint {
    type Response = TcpConnection;
    /// Every failure is a connect-phase one: the endpoint sends nothing of the client's.
    type Error = ConnectFailed;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectFailed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: TcpRequest) -> ConnectFuture {
        let inner = self.inner.clone();
        ConnectFuture {
            inner: Box::pin(async move {
                #[cfg(feature = "health-passive")]
                let _trial = inner.health.as_ref().and_then(|h| h.begin());
                let res = inner.connect(&req).await;
                #[cfg(feature = "health-passive")]
                if let Some(health) = &inner.health {
                    match &res {
                        Ok(_) => health.success(),
                        // The balancer counts the failure; passive health judges it.
                        Err(e) => health.failure(e, false),
                    }
                }
                res
            }),
        }
    }
}

impl Inner {
    async fn connect(&self, req: &TcpRequest) -> Result<TcpConnection, ConnectFailed> {
        let timeout = self.connect_timeout;
        let stream = tokio::time::timeout(timeout, self.open(req))
            .await
            .map_err(|_| {
                ConnectFailed::new(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect timed out after {timeout:?}"),
                ))
            })??;
        Ok(TcpConnection {
            stream,
            _load: self.state.track(),
        })
    }

    /// Resolves, connects to each address in turn, writes the PROXY header.
    async fn open(&self, req: &TcpRequest) -> Result<TcpStream, ConnectFailed> {
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                ConnectFailed::new(io::Error::new(
                    e.kind(),
                    format!("resolve {}: {e}", self.host),
                ))
            })?;
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(ConnectFailed::new(e)),
            (None, None) => {
                return Err(ConnectFailed::new(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} resolved to no address", self.host),
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        if let Some(version) = self.proxy_protocol {
            stream
                .write_all(&version.header(req))
                .await
                .map_err(ConnectFailed::new)?;
        }
        Ok(stream)
    }
}

/// The response future of [`TcpEndpoint`].
pub struct ConnectFuture {
    inner: Pin<Box<dyn Future<Output = Result<TcpConnection, ConnectFailed>> + Send>>,
}

impl fmt::Debug for ConnectFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectFuture").finish_non_exhaustive()
    }
}

impl Future for ConnectFuture {
    type Output = Result<TcpConnection, ConnectFailed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// An open connection to a backend, counted as one unit of the backend's load (in flight)
/// until it is dropped, so [`LeastConn`](crate::balance::strategy::LeastConn) and P2C
/// balance open connections, as nginx's and HAProxy's `leastconn` do. Reads and writes go
/// to the backend's `TcpStream`.
pub struct TcpConnection {
    stream: TcpStream,
    _load: InFlight,
}

impl fmt::Debug for TcpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpConnection")
            .field("backend", &self.stream.peer_addr().ok())
            .finish_non_exhaustive()
    }
}

impl TcpConnection {
    /// The stream to the backend.
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    /// The stream to the backend, mutably.
    pub fn get_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The stream and the guard that counts it as load: the connection counts until the
    /// guard is dropped.
    pub fn into_parts(self) -> (TcpStream, InFlight) {
        (self.stream, self._load)
    }
}

impl AsyncRead for TcpConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TcpConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Shuts the write half down (half-close); reads go on.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_as_host_and_port() {
        let ok = |k: &str| parse_host_port(k).unwrap();
        assert_eq!(ok("127.0.0.1:6379"), ("127.0.0.1".into(), 6379));
        assert_eq!(ok("[::1]:6379"), ("::1".into(), 6379));
        assert_eq!(ok("redis.internal:1"), ("redis.internal".into(), 1));
        for bad in [
            "",
            "redis",
            "redis:",
            ":6379",
            "redis:0",
            "redis:65536",
            "::1:6379",
            "[::1:6379",
            "a b:1",
            "redis:x",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad:?}");
        }
    }
}
