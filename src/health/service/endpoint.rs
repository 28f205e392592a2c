//! The HTTP face: a `tower::Service` answering 200 or 503 with the JSON report.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower_service::Service;

use super::{HealthChecks, Probe};

/// The HTTP health endpoint: a `tower::Service` for any request body that answers `GET`
/// (and `HEAD`) with `200` when the report is healthy and `503` otherwise, and the JSON
/// report as the body (`content-type: application/json`, `cache-control: no-store`).
/// Other methods get `405` with `Allow: GET, HEAD`. It never fails (`Error =
/// Infallible`), so it mounts as an axum route with `route_service`.
///
/// Made by [`HealthChecks::readiness`] or [`HealthChecks::liveness`]; cheap to clone.
/// See the [module docs](super) for an example.
#[derive(Clone, Debug)]
pub struct HealthService {
    checks: HealthChecks,
    probe: Probe,
}

impl HealthService {
    pub(super) fn new(checks: HealthChecks, probe: Probe) -> Self {
        Self { checks, probe }
    }

    /// Which probe this service answers.
    pub fn probe(&self) -> Probe {
        self.probe
    }
}

impl<B> Service<Request<B>> for HealthService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        let method = req.method().clone();
        let checks = self.checks.clone();
        let probe = self.probe;
        ResponseFuture {
            inner: Box::pin(async move {
                if method != Method::GET && method != Method::HEAD {
                    let mut rsp = Response::new(Full::new(Bytes::new()));
                    *rsp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                    rsp.headers_mut()
                        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                    return Ok(rsp);
                }
                let report = checks.report(probe).await;
                let status = if report.is_healthy() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let body = report.to_json().to_string();
                let len = body.len();
                let body = if method == Method::HEAD {
                    Bytes::new()
                } else {
                    Bytes::from(body)
                };
                let mut rsp = Response::new(Full::new(body));
                *rsp.status_mut() = status;
                let headers = rsp.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                Ok(rsp)
            }),
        }
    }
}

/// The response future of [`HealthService`].
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>,
}

impl Future for ResponseFuture {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
