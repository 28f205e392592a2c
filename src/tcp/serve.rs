//! The accept loop: one balanced backend connection per client, spliced.

use std::{future::Future, io, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    task::JoinSet,
};
use tower::ServiceExt;
use tower_service::Service;

use super::{splice_with_idle_timeout, TcpRequest};
use crate::{
    balance::{Key, RequestPolicy},
    error::BoxError,
    Balance,
};

/// Proxies TCP clients to a [`Balance`]: for each client, one backend connection picked
/// by the balancer, then [`splice`](super::splice) with half-close. See the
/// [module docs](super) for an example.
///
/// | setting | behaviour | default | nginx stream / HAProxy |
/// |---|---|---|---|
/// | [`idle_timeout`](Self::idle_timeout) | a client and backend between which no byte moved either way for this long are both closed | 10 min | `proxy_timeout` / `timeout tunnel` |
/// | [`drain_timeout`](Self::drain_timeout) | on shutdown, stop accepting, let open connections go on, close them after this long | 30 s | `worker_shutdown_timeout` / `hard-stop-after` |
///
/// A client for which no backend could be connected (every try failed, or no endpoint)
/// is closed without a byte: TCP has no error message to send, and the reason (with the
/// backend address) goes to a `tracing` warning and the balancer's stats only.
#[derive(Debug, Clone)]
#[must_use]
pub struct Proxy {
    idle_timeout: Duration,
    drain_timeout: Duration,
}

impl Default for Proxy {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(600),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl Proxy {
    /// Idle timeout 10 min (nginx's `proxy_timeout`), 30 s to drain on shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Closes a client and its backend once no byte moved either way for this long
    /// (default 10 min); zero means never.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long open connections may go on after shutdown begins (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Proxies one client accepted elsewhere (a TLS stream, a Unix socket, a test pipe):
    /// asks `balance` for a backend connection for `req`, then splices until both
    /// directions end or the idle timeout fires. Returns the bytes sent each way
    /// (client → backend, backend → client).
    ///
    /// Fails with the balancer's error (say [`NoEndpoints`](crate::error::NoEndpoints),
    /// or the last backend's [`EndpointError`](crate::error::EndpointError)) when no
    /// backend could be connected, and with an `io::Error` when the splice broke; the
    /// client is closed in both cases, when `client` is dropped.
    pub async fn serve_connection<I, K, S, P>(
        &self,
        mut client: I,
        req: TcpRequest,
        balance: Balance<K, S, P>,
    ) -> Result<(u64, u64), BoxError>
    where
        I: AsyncRead + AsyncWrite + Unpin,
        K: Key,
        S: Service<TcpRequest> + Clone + Send + Sync + 'static,
        S::Response: AsyncRead + AsyncWrite + Unpin,
        S::Error: Into<BoxError>,
        P: RequestPolicy<TcpRequest> + Clone,
    {
        let mut backend = balance.oneshot(req).await?;
        let moved = splice_with_idle_timeout(&mut client, &mut backend, self.idle_timeout).await?;
        Ok(moved)
    }

    /// Accepts clients on `listener` until `shutdown` completes, proxying each through
    /// `balance` (see [`serve_connection`](Self::serve_connection)); then drains (see
    /// [`drain_timeout`](Self::drain_timeout)) and returns.
    ///
    /// Fails only if the listener itself fails; accept errors such as running out of file
    /// descriptors are logged and retried after a short pause. Client connections have
    /// `TCP_NODELAY` set.
    pub async fn serve<K, S, P>(
        self,
        listener: TcpListener,
        balance: Balance<K, S, P>,
        shutdown: impl Future + Send,
    ) -> io::Result<()>
    where
        K: Key,
        S: Service<TcpRequest> + Clone + Send + Sync + 'static,
        S::Response: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        P: RequestPolicy<TcpRequest> + Clone,
    {
        let mut conns = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        while let Some((client, peer)) =
            crate::accept::next_client(&listener, shutdown.as_mut()).await
        {
            let req = match client.local_addr() {
                Ok(local) => TcpRequest::new(peer, local),
                Err(_) => TcpRequest::unknown(),
            };
            let proxy = self.clone();
            let balance = balance.clone();
            conns.spawn(async move {
                match proxy.serve_connection(client, req, balance).await {
                    Ok((up, down)) => {
                        tracing::debug!(%peer, up, down, "tower_lb: tcp connection closed");
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %crate::error::chain(&*e),
                            "tower_lb: tcp connection closed on error");
                    }
                }
            });
            while conns.try_join_next().is_some() {}
        }
        drop(listener);
        crate::accept::drain(&mut conns, self.drain_timeout, "tcp connections").await;
        Ok(())
    }
}

/// Proxies every client `listener` accepts through `balance` until `shutdown`
/// completes, with [`Proxy`]'s defaults (idle timeout 10 min, drain 30 s). See the
/// [module docs](super) for an example.
pub async fn serve<K, S, P>(
    listener: TcpListener,
    balance: Balance<K, S, P>,
    shutdown: impl Future + Send,
) -> io::Result<()>
where
    K: Key,
    S: Service<TcpRequest> + Clone + Send + Sync + 'static,
    S::Response: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    P: RequestPolicy<TcpRequest> + Clone,
{
    Proxy::new().serve(listener, balance, shutdown).await
}
