//! Errors as HTTP answers that reveal nothing of the backends.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, header::HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::proxy::HostError;
use crate::error::{find, is_connect_error, AllUnavailable, BoxError, DiscoverError, NoEndpoints};

/// The status a gateway should answer for a balancer error: `400` for a request that
/// breaks the `Host` rules ([`HostError`]), `503` when no endpoint can
/// take the request, `504` when a timeout expired (a `tower::timeout` in the endpoint
/// stack, or a connect timeout), `502` when the backend failed.
///
/// ```
/// use tower_lb::http::status_for;
/// use tower_lb::BoxError;
///
/// let err: BoxError = "connection reset".into();
/// assert_eq!(status_for(&err), http::StatusCode::BAD_GATEWAY);
/// ```
pub fn status_for(err: &BoxError) -> StatusCode {
    let e: &(dyn std::error::Error + 'static) = &**err;
    if find::<HostError>(e).is_some() {
        StatusCode::BAD_REQUEST
    } else if find::<NoEndpoints>(e).is_some()
        || find::<AllUnavailable>(e).is_some()
        || find::<DiscoverError>(e).is_some()
    {
        StatusCode::SERVICE_UNAVAILABLE
    } else if is_timeout(e) {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    find::<tower::timeout::error::Elapsed>(e).is_some()
        || find::<tokio::time::error::Elapsed>(e).is_some()
        || find::<std::io::Error>(e).is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
}

/// The RFC 9209 `Proxy-Status` error type of a balancer error: what went wrong, in the
/// registry's words, without saying where.
///
/// | error | type |
/// |---|---|
/// | a request that breaks the `Host` rules ([`HostError`], `400`) | `http_request_error` |
/// | no endpoint, all unavailable, discovery failed | `destination_unavailable` |
/// | connection refused | `connection_refused` |
/// | connect timeout | `connection_timeout` |
/// | name resolution failed | `dns_error` |
/// | the backend's certificate was refused (feature `tls`: unknown CA, wrong name, expired) | `tls_certificate_error` |
/// | the backend sent a TLS alert (it refused the client certificate…) | `tls_alert_received` |
/// | another TLS failure (no shared version or cipher suite, a broken handshake) | `tls_protocol_error` |
/// | other connect failures | `destination_unavailable` |
/// | a timeout after the request left | `http_response_timeout` |
/// | the response ended early | `http_response_incomplete` |
/// | the backend broke HTTP (a response that does not parse) | `http_protocol_error` |
/// | the connection closed or reset mid-exchange, an HTTP/2 stream reset | `connection_terminated` |
/// | anything else | `proxy_internal_error` |
///
/// ```
/// use tower_lb::{http::proxy_status_for, BoxError};
///
/// let refused: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
/// assert_eq!(proxy_status_for(&refused), "connection_refused");
/// ```
pub fn proxy_status_for(err: &BoxError) -> &'static str {
    use std::io::ErrorKind::*;
    let e: &(dyn std::error::Error + 'static) = &**err;
    if find::<HostError>(e).is_some() {
        return "http_request_error";
    }
    if find::<NoEndpoints>(e).is_some()
        || find::<AllUnavailable>(e).is_some()
        || find::<DiscoverError>(e).is_some()
    {
        return "destination_unavailable";
    }
    let io = find::<std::io::Error>(e).map(std::io::Error::kind);
    let connect = is_connect_error(e);
    if io == Some(ConnectionRefused) {
        return "connection_refused";
    }
    if is_timeout(e) {
        return if connect {
            "connection_timeout"
        } else {
            "http_response_timeout"
        };
    }
    #[cfg(feature = "tls")]
    if let Some(kind) = super::tls::proxy_status(e) {
        return kind;
    }
    if connect {
        // hyper-util's connector names a failed lookup "dns error".
        let mut cur = Some(e);
        while let Some(c) = cur {
            if c.to_string().starts_with("dns error") {
                return "dns_error";
            }
            cur = c.source();
        }
        return "destination_unavailable";
    }
    if let Some(h) = find::<hyper::Error>(e) {
        if h.is_incomplete_message() {
            return "http_response_incomplete";
        }
        if h.is_parse() || h.is_parse_status() {
            return "http_protocol_error";
        }
        return "connection_terminated";
    }
    if matches!(
        io,
        Some(ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected)
    ) {
        return "connection_terminated";
    }
    if find::<hyper_util::client::legacy::Error>(e).is_some() {
        return "connection_terminated";
    }
    "proxy_internal_error"
}

/// Maps a service's errors to `502`/`503`/`504` responses (see [`status_for`]), so the
/// stack's error type is `Infallible`, as axum routes require.
///
/// An error answer is the status line's text as `text/plain` (`502 Bad Gateway`) and an
/// RFC 9209 `Proxy-Status` header naming the error type ([`proxy_status_for`]), such as
/// `Proxy-Status: tower-lb; error=connection_refused`. It never carries a backend address
/// or the error chain: those go to a `tracing` warning (and the balancer's
/// [stats](crate::balance::BackendStats::last_failure)). Successful responses pass
/// unchanged, whatever their body type: the response body is an [`ErrorResponseBody`]
/// over the inner one, which axum accepts as is.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_lb::{http::ErrorResponseLayer, BoxError};
///
/// let failing = service_fn(|_: http::Request<()>| async {
///     let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
///     Err::<http::Response<Full<Bytes>>, BoxError>(Box::new(refused))
/// });
/// let svc = ServiceBuilder::new().layer(ErrorResponseLayer::new()).service(failing);
/// let rsp = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(rsp.status(), 502);
/// assert_eq!(rsp.headers()["proxy-status"], "tower-lb; error=connection_refused");
/// let body = rsp.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(body, "502 Bad Gateway\n");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ErrorResponseLayer {
    name: HeaderValue,
}

impl Default for ErrorResponseLayer {
    fn default() -> Self {
        Self {
            name: HeaderValue::from_static("tower-lb"),
        }
    }
}

impl ErrorResponseLayer {
    /// A new layer; the proxy names itself `tower-lb` in `Proxy-Status`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The name this proxy gives itself in `Proxy-Status` (an RFC 8941 token such as
    /// `edge-1`; anything else is sent as a quoted string).
    #[must_use]
    pub fn proxy_name(mut self, name: &str) -> Self {
        let token = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'*')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b));
        let value = if token {
            name.to_owned()
        } else {
            let escaped: String = name
                .chars()
                .filter(|c| (' '..='~').contains(c))
                .flat_map(|c| match c {
                    '"' | '\\' => vec!['\\', c],
                    c => vec![c],
                })
                .collect();
            format!("\"{escaped}\"")
        };
        if let Ok(v) = HeaderValue::try_from(value) {
            self.name = v;
        }
        self
    }
}

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;

    fn layer(&self, inner: S) -> ErrorResponse<S> {
        ErrorResponse {
            inner,
            name: self.name.clone(),
            error: None,
        }
    }
}

/// The service made by [`ErrorResponseLayer`].
#[derive(Debug)]
pub struct ErrorResponse<S> {
    inner: S,
    name: HeaderValue,
    error: Option<BoxError>,
}

impl<S: Clone> Clone for ErrorResponse<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            name: self.name.clone(),
            error: None,
        }
    }
}

impl<S> ErrorResponse<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        ErrorResponseLayer::new().layer(inner)
    }

    define_inner_service_accessors!();
}

/// The answer [`ErrorResponseLayer`] gives for `err`, for code that calls a balancer
/// itself (an axum handler): the status ([`status_for`]), its text, and `Proxy-Status:
/// tower-lb; error=…` ([`proxy_status_for`]); the details go to a `tracing` warning.
///
/// ```
/// use tower_lb::{http::error_response, BoxError};
///
/// let err: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
/// let rsp = error_response(&err);
/// assert_eq!(rsp.status(), 502);
/// assert_eq!(rsp.headers()["proxy-status"], "tower-lb; error=connection_refused");
/// ```
pub fn error_response(err: &BoxError) -> Response<http_body_util::Full<Bytes>> {
    answer::<Infallible>(err, &HeaderValue::from_static("tower-lb")).map(
        |body: ErrorResponseBody<Infallible>| match body.kind {
            Kind::Text { text } => http_body_util::Full::new(text.unwrap_or_default()),
            Kind::Inner { body } => match body {},
        },
    )
}

/// The answer for `err`: its status, its text, and `Proxy-Status`; the details go to a
/// `tracing` warning.
fn answer<B>(err: &BoxError, name: &HeaderValue) -> Response<ErrorResponseBody<B>> {
    let status = status_for(err);
    let kind = proxy_status_for(err);
    let chain = crate::error::chain(&**err);
    if status.is_client_error() {
        tracing::debug!(%status, proxy_status = kind, error = %chain, "tower_lb: answering an error");
    } else {
        tracing::warn!(%status, proxy_status = kind, error = %chain, "tower_lb: answering an error");
    }
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let mut rsp = Response::new(ErrorResponseBody::text(Bytes::from(text)));
    *rsp.status_mut() = status;
    let headers = rsp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let mut value = name.as_bytes().to_vec();
    value.extend_from_slice(b"; error=");
    value.extend_from_slice(kind.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        headers.insert(HeaderName::from_static("proxy-status"), v);
    }
    rsp
}

impl<S, Req, B> Service<Req> for ErrorResponse<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ErrorResponseBody<B>>;
    type Error = Infallible;
    type Future = ErrorResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.error.is_none()
            && let Err(e) = std::task::ready!(self.inner.poll_ready(cx))
        {
            // Answered on the next call.
            self.error = Some(e.into());
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let name = self.name.clone();
        match self.error.take() {
            Some(e) => ErrorResponseFuture {
                name,
                inner: Inner::Failed { error: Some(e) },
            },
            None => ErrorResponseFuture {
                name,
                inner: Inner::Call {
                    fut: self.inner.call(req),
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`ErrorResponse`].
    pub struct ErrorResponseFuture<F> {
        name: HeaderValue,
        #[pin]
        inner: Inner<F>,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<F> {
        Call { #[pin] fut: F },
        Failed { error: Option<BoxError> },
    }
}

impl<F> fmt::Debug for ErrorResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorResponseFuture")
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ErrorResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ErrorResponseBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.project() {
            InnerProj::Call { fut } => Poll::Ready(Ok(match std::task::ready!(fut.poll(cx)) {
                Ok(rsp) => rsp.map(ErrorResponseBody::inner),
                Err(e) => answer(&e.into(), this.name),
            })),
            InnerProj::Failed { error } => {
                let e = error
                    .take()
                    .unwrap_or_else(|| "polled after completion".into());
                Poll::Ready(Ok(answer(&e, this.name)))
            }
        }
    }
}

pin_project! {
    /// The body of an [`ErrorResponse`]'s answers: the inner service's body, or the short
    /// text of an error answer. Its data is `Bytes` and its error a [`BoxError`], so axum
    /// takes it as a response body as it is.
    pub struct ErrorResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Text { text: Option<Bytes> },
    }
}

impl<B> ErrorResponseBody<B> {
    /// The inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A body of fixed text.
    pub fn text(text: Bytes) -> Self {
        Self {
            kind: Kind::Text { text: Some(text) },
        }
    }
}

impl<B> fmt::Debug for ErrorResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Inner { .. } => "inner",
            Kind::Text { .. } => "text",
        };
        f.debug_struct("ErrorResponseBody")
            .field("kind", &kind)
            .finish()
    }
}

impl<B> Body for ErrorResponseBody<B>
where
    B: Body,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => match std::task::ready!(body.poll_frame(cx)) {
                Some(Ok(frame)) => Poll::Ready(Some(Ok(frame.map_data(Into::into)))),
                Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
                None => Poll::Ready(None),
            },
            KindProj::Text { text } => Poll::Ready(text.take().map(|t| Ok(Frame::data(t)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Text { text } => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Text { text } => {
                SizeHint::with_exact(text.as_ref().map_or(0, |t| t.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> BoxError {
        Box::new(std::io::Error::from(kind))
    }

    #[test]
    fn error_types_say_what_not_where() {
        use std::io::ErrorKind::*;
        let cases: Vec<(BoxError, StatusCode, &str)> = vec![
            (
                NoEndpoints::new().into(),
                StatusCode::SERVICE_UNAVAILABLE,
                "destination_unavailable",
            ),
            (
                AllUnavailable::new(3).into(),
                StatusCode::SERVICE_UNAVAILABLE,
                "destination_unavailable",
            ),
            (
                io(ConnectionRefused),
                StatusCode::BAD_GATEWAY,
                "connection_refused",
            ),
            (
                io(ConnectionReset),
                StatusCode::BAD_GATEWAY,
                "connection_terminated",
            ),
            (
                Box::new(tower::timeout::error::Elapsed::new()),
                StatusCode::GATEWAY_TIMEOUT,
                "http_response_timeout",
            ),
            (
                Box::new(crate::error::ConnectFailed::new(std::io::Error::from(
                    TimedOut,
                ))),
                StatusCode::GATEWAY_TIMEOUT,
                "connection_timeout",
            ),
            (
                Box::new(crate::error::ConnectFailed::new("no route")),
                StatusCode::BAD_GATEWAY,
                "destination_unavailable",
            ),
            (
                "something odd".into(),
                StatusCode::BAD_GATEWAY,
                "proxy_internal_error",
            ),
        ];
        for (err, status, kind) in cases {
            assert_eq!(
                (status_for(&err), proxy_status_for(&err)),
                (status, kind),
                "{err}"
            );
        }
    }

    #[test]
    fn proxy_names_are_tokens_or_quoted_strings() {
        let name = |n: &str| ErrorResponseLayer::new().proxy_name(n).name;
        assert_eq!(name("edge-1"), "edge-1");
        assert_eq!(name("my proxy \"x\""), "\"my proxy \\\"x\\\"\"");
        assert_eq!(name("1abc"), "\"1abc\"");
    }
}
