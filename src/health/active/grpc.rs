use std::{
    error::Error,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tower_service::Service;

use crate::{error::BoxError, http::parse_base};

/// The gRPC probe: calls `grpc.health.v1.Health/Check` and passes when the answer is
/// `SERVING` (Envoy `grpc_health_check`, nginx Plus `health_check type=grpc`). Feature
/// `grpc`. See the [module docs](super).
///
/// Each probe opens a new HTTP/2 connection. The service name defaults to `""`, the whole
/// server, as the gRPC health protocol defines.
///
/// ```
/// use tower_lb::health::active::{GrpcProbe, Prober};
///
/// let prober = Prober::new(GrpcProbe::new().service("echo.Echo"));
/// # let _ = prober;
/// ```
#[derive(Debug, Clone, Default)]
pub struct GrpcProbe {
    service: String,
}

impl GrpcProbe {
    /// Checks the whole server (service name `""`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks this service name instead.
    #[must_use]
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = name.into();
        self
    }
}

impl<K: fmt::Display> Service<K> for GrpcProbe {
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: K) -> Self::Future {
        let key = key.to_string();
        let service = self.service.clone();
        Box::pin(async move {
            let (scheme, authority) = parse_base(&key)?;
            let channel =
                tonic::transport::Endpoint::from_shared(format!("{scheme}://{authority}"))?
                    .connect_timeout(Duration::from_secs(1))
                    .connect()
                    .await?;
            let rsp = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.clone(),
                })
                .await?
                .into_inner();
            if rsp.status == ServingStatus::Serving as i32 {
                Ok(())
            } else {
                Err(NotServing {
                    service,
                    status: rsp.status,
                }
                .into())
            }
        })
    }
}

/// A [`GrpcProbe`] got an answer other than `SERVING`.
#[derive(Debug, Clone)]
pub struct NotServing {
    service: String,
    status: i32,
}

impl NotServing {
    /// The `grpc.health.v1` serving status the backend answered (`2` is `NOT_SERVING`).
    pub fn status(&self) -> i32 {
        self.status
    }
}

impl fmt::Display for NotServing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = ServingStatus::try_from(self.status).map_or("unknown", |s| s.as_str_name());
        write!(f, "gRPC health of {:?} is {name}", self.service)
    }
}

impl Error for NotServing {}
