//! A hardened HTTP server loop for the front of a gateway (feature `server`): client
//! header and keep-alive timeouts, a connection cap, graceful drain.
//!
//! `axum::serve` and a bare hyper accept loop hold a client forever: one that sends half
//! a request head and stops, or opens connections and sends nothing, keeps a task, a
//! socket and its buffers until it goes away. [`Server`] serves any tower service over
//! HTTP/1.1 and HTTP/2 (prior knowledge, h2c) with upgrades (WebSocket), with nginx's
//! limits:
//!
//! | setting | behaviour | default | nginx |
//! |---|---|---|---|
//! | [`header_timeout`](Server::header_timeout) | a client that has not sent a whole request head this long after connecting, or after it began the next request on a kept-alive connection, is answered `408 Request Timeout` (when it sent part of a head) and closed | 60 s | `client_header_timeout` |
//! | [`keepalive_timeout`](Server::keepalive_timeout) | a connection with no request in progress (the last response body ended) for this long is closed gracefully (HTTP/2: `GOAWAY`) | 75 s | `keepalive_timeout` |
//! | [`max_connections`](Server::max_connections) | beyond this many open connections (upgraded ones included) new ones wait in the kernel's accept queue until one closes; never a crash or file-descriptor exhaustion | unlimited | `worker_connections` |
//! | [`drain_timeout`](Server::drain_timeout) | on shutdown, stop accepting, let open connections finish their requests, close them after this long | 30 s | `worker_shutdown_timeout` |
//!
//! With the `server-tls` feature, `Server::tls` terminates TLS on every connection:
//! certificates chosen by SNI, ALPN `h2` and `http/1.1`, a handshake timeout, reload
//! without a restart (module `server::tls`).
//!
//! Every request carries the peer's [`ClientAddr`](crate::ClientAddr) in its extensions.
//! Timing is on Tokio's clock. A request whose head has arrived is not bounded here
//! (bound it with a timeout layer in the service); for HTTP/2 the header timeout bounds
//! the time to the first request.
//!
//! ```no_run
//! use std::{net::SocketAddr, time::Duration};
//! use axum::{routing::get, Router};
//! use tower_lb::server::Server;
//!
//! # #[tokio::main]
//! # async fn main() -> std::io::Result<()> {
//! let app = Router::new().route("/", get(|| async { "hi" }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! Server::new()
//!     .header_timeout(Duration::from_secs(10))
//!     .max_connections(10_000)
//!     // Each connection gets a clone of the service; the peer address is yours to use.
//!     .serve(listener, move |_peer: SocketAddr| app.clone(), tokio::signal::ctrl_c())
//!     .await
//! # }
//! ```

mod conn;
#[cfg(feature = "server-tls")]
pub mod tls;

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::{rt::TokioExecutor, server::conn::auto};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tower_service::Service;

use crate::error::BoxError;

/// Serves HTTP with client limits; see the [module docs](self).
#[derive(Debug, Clone)]
#[must_use]
pub struct Server {
    header_timeout: Duration,
    keepalive_timeout: Duration,
    max_connections: Option<usize>,
    drain_timeout: Duration,
    #[cfg(feature = "server-tls")]
    tls: Option<tls::TlsConfig>,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            max_connections: None,
            drain_timeout: Duration::from_secs(30),
            #[cfg(feature = "server-tls")]
            tls: None,
        }
    }
}

impl Server {
    /// nginx's defaults: header timeout 60 s, keep-alive timeout 75 s, no connection cap,
    /// 30 s to drain on shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a client may take to send a whole request head (nginx
    /// `client_header_timeout`, default 60 s); then it gets `408` (if it sent part of one)
    /// and is closed.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// How long a connection may stay open with no request in progress (nginx
    /// `keepalive_timeout`, default 75 s).
    pub fn keepalive_timeout(mut self, timeout: Duration) -> Self {
        self.keepalive_timeout = timeout;
        self
    }

    /// At most this many connections open at once (default: no cap); more wait in the
    /// accept queue. `0` is read as 1.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = Some(max.max(1));
        self
    }

    /// How long open connections may take to finish after shutdown begins (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Terminates TLS on every connection [`serve`](Self::serve) accepts (feature
    /// `server-tls`): the handshake, bounded by the config's handshake timeout, runs in
    /// the connection's task within the connection cap, then HTTP is served over it with
    /// the protocol ALPN chose, and each request carries a [`tls::TlsInfo`]. See
    /// [`tls`] for the semantics.
    #[cfg(feature = "server-tls")]
    pub fn tls(mut self, config: tls::TlsConfig) -> Self {
        self.tls = Some(config);
        self
    }

    fn limits(&self) -> Arc<conn::Limits> {
        Arc::new(conn::Limits {
            header: self.header_timeout,
            keepalive: self.keepalive_timeout,
        })
    }

    /// Serves one connection accepted elsewhere (a TLS stream, an in-memory pipe) with
    /// this server's timeouts, until it closes; requests carry `peer` as their
    /// [`ClientAddr`](crate::ClientAddr). The connection cap and the drain do not apply
    /// (they belong to [`serve`](Self::serve)'s accept loop).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tower_lb::server::Server;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// let (mut client, server_io) = tokio::io::duplex(4096);
    /// let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
    /// });
    /// tokio::spawn(Server::new().serve_connection(server_io, "127.0.0.1:9".parse().unwrap(), app));
    /// client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    /// let mut answer = String::new();
    /// client.read_to_string(&mut answer).await.unwrap();
    /// assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("hi"));
    /// # }
    /// ```
    pub fn serve_connection<I, S, B>(
        &self,
        io: I,
        peer: SocketAddr,
        svc: S,
    ) -> impl Future<Output = ()> + Send + 'static + use<I, S, B>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError> + Send,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let limits = self.limits();
        // Never stopped: the caller owns this connection's lifetime.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let builder = auto::Builder::new(TokioExecutor::new());
        let io = conn::Io::new(io, None, limits.clone());
        let serving = conn::Serving::new(&builder, io, svc, limits, stopped, peer);
        async move {
            serving.await;
            drop(stop);
        }
    }

    /// Accepts connections on `listener` until `shutdown` completes, serving each with
    /// the service `make` returns for its peer address; then drains (see
    /// [`drain_timeout`](Self::drain_timeout)) and returns.
    ///
    /// Fails only if the listener itself fails; accept errors such as running out of file
    /// descriptors are logged and retried after a short pause.
    pub async fn serve<M, S, B>(
        self,
        listener: TcpListener,
        mut make: M,
        shutdown: impl Future + Send,
    ) -> io::Result<()>
    where
        M: FnMut(SocketAddr) -> S,
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError> + Send,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let limits = self.limits();
        let permits = self.max_connections.map(|n| Arc::new(Semaphore::new(n)));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        #[cfg(feature = "server-tls")]
        let tls = self
            .tls
            .as_ref()
            .map(|t| t.accept(builder.clone(), limits.clone()));
        let mut conns = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let permit = match &permits {
                None => None,
                Some(sem) => tokio::select! {
                    p = sem.clone().acquire_owned() => p.ok(),
                    _ = shutdown.as_mut() => break,
                },
            };
            let Some((stream, peer)) =
                crate::accept::next_client(&listener, shutdown.as_mut()).await
            else {
                break;
            };
            let svc = make(peer);
            #[cfg(feature = "server-tls")]
            if let Some(tls) = &tls {
                // The handshake runs in the connection's task, never here.
                conns.spawn(
                    tls.clone()
                        .serve(stream, permit, svc, stopped.clone(), peer),
                );
                while conns.try_join_next().is_some() {}
                continue;
            }
            let io = conn::Io::new(stream, permit, limits.clone());
            let serving =
                conn::Serving::new(&builder, io, svc, limits.clone(), stopped.clone(), peer);
            conns.spawn(serving);
            while conns.try_join_next().is_some() {}
        }
        drop(listener);
        let _ = stop.send(true);
        crate::accept::drain(&mut conns, self.drain_timeout, "connections").await;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
