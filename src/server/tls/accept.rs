//! One TLS connection: the handshake, bounded, in the connection's own task; then HTTP over
//! the decrypted stream exactly as over a plain one, in the protocol ALPN chose.

use std::{
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::{rt::TokioExecutor, server::conn::auto};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{watch, OwnedSemaphorePermit},
};
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use super::TlsInfo;
use crate::{
    error::BoxError,
    server::conn::{Io, Limits, Serving},
};

/// What every TLS connection of a server needs.
#[derive(Clone)]
pub(in crate::server) struct Accept {
    pub(in crate::server) acceptor: TlsAcceptor,
    pub(in crate::server) timeout: Duration,
    pub(in crate::server) builder: Arc<auto::Builder<TokioExecutor>>,
    pub(in crate::server) limits: Arc<Limits>,
}

impl Accept {
    /// Shakes hands with the client (at most the handshake timeout, given up at once on
    /// shutdown), then serves it. The permit is held throughout, so a handshake counts
    /// against the connection cap; the header timeout starts when the handshake ends.
    pub(in crate::server) async fn serve<I, S, B>(
        self,
        io: I,
        permit: Option<OwnedSemaphorePermit>,
        svc: S,
        stopped: watch::Receiver<bool>,
        peer: SocketAddr,
    ) where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError> + Send,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let mut stop = stopped.clone();
        let handshake = tokio::time::timeout(self.timeout, self.acceptor.accept(io));
        let stream = tokio::select! {
            r = handshake => match r {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "tower_lb: tls handshake failed");
                    return;
                }
                Err(_) => {
                    // Dropping the socket closes it; nothing of the client is kept.
                    tracing::debug!(%peer, timeout = ?self.timeout, "tower_lb: tls handshake timeout");
                    return;
                }
            },
            // A shutdown (or the server gone) abandons handshakes: no request was begun.
            _ = stop.wait_for(|s| *s) => return,
        };
        let (_, conn) = stream.get_ref();
        let info = TlsInfo::new(conn.server_name(), conn.alpn_protocol());
        // The protocol ALPN chose is the one the client must speak; without ALPN, the
        // first bytes tell (the HTTP/2 preface or not), as on a plain connection.
        let h2 = info.alpn().map(|p| p == b"h2");
        let io = Io::new(stream, permit, self.limits.clone()).expect_h2(h2);
        let svc = WithTls { inner: svc, info };
        Serving::new(&self.builder, io, svc, self.limits, stopped, peer).await;
    }
}

/// Puts the connection's [`TlsInfo`] on each request.
#[derive(Clone)]
struct WithTls<S> {
    inner: S,
    info: TlsInfo,
}

impl<S, B> Service<Request<B>> for WithTls<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        req.extensions_mut().insert(self.info.clone());
        self.inner.call(req)
    }
}
