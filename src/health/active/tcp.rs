use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tower_service::Service;

use crate::{error::BoxError, http::parse_base};

/// The TCP probe: passes when a connection to the backend opens (HAProxy's layer-4
/// `check`, Envoy `tcp_health_check` without payload). See the [module docs](super).
///
/// A backend key is `host:port` or a base URL (`http://host:port`); host names are
/// resolved on every probe.
///
/// ```
/// use tower_lb::health::active::{Prober, TcpProbe};
///
/// let prober = Prober::new(TcpProbe::new());
/// # let _ = prober;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpProbe {
    _p: (),
}

impl TcpProbe {
    /// A TCP connect probe.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<K: fmt::Display> Service<K> for TcpProbe {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: K) -> Self::Future {
        let key = key.to_string();
        Box::pin(async move {
            let addr = if key.contains("://") {
                parse_base(&key)?.1.to_string()
            } else {
                key
            };
            tokio::net::TcpStream::connect(addr.as_str()).await?;
            Ok(())
        })
    }
}
