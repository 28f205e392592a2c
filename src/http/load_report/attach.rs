//! The backend side: attaching a report to every response.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::Report;

/// How [`AttachReportLayer`] sends a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Encoding {
    /// `endpoint-load-metrics: TEXT cpu_utilization=0.3,…` (Envoy; the default). A report
    /// whose map keys `TEXT` cannot carry is sent as [`Json`](Self::Json) instead.
    #[default]
    Text,
    /// `endpoint-load-metrics: JSON {…}` (Envoy).
    Json,
    /// `endpoint-load-metrics-bin:` base64 of the protobuf, as a response header (gRPC's
    /// form, which Envoy reads too).
    Binary,
    /// `endpoint-load-metrics-bin` in the trailers, after the body, where gRPC servers
    /// send it (C-core, Java, Go; for tonic). The report is made when the body ends; a
    /// body that ends without trailers gets a trailer block holding only the report,
    /// and a response whose body is empty from the start (a gRPC "trailers-only" answer)
    /// gets it as a header.
    GrpcTrailers,
}

/// Adds the load report that a closure returns to every response: for backends (an axum
/// router, a tonic server, any `tower` service of `http` responses). See the
/// [module docs](super) for an example.
///
/// The closure is called once per response, when the headers are sent (or, with
/// [`Encoding::GrpcTrailers`], when the body ends), so it should read counters that are
/// cheap to read (an atomic CPU sample refreshed by a task, a request-rate counter).
/// A report that has no form in the encoding is logged at `debug` and left out.
#[derive(Clone)]
pub struct AttachReportLayer<F> {
    report: F,
    encoding: Encoding,
}

impl<F> fmt::Debug for AttachReportLayer<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachReportLayer")
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

impl<F> AttachReportLayer<F>
where
    F: Fn() -> Report + Clone,
{
    /// Attaches `report()` to every response, in Envoy's `TEXT` form.
    pub fn new(report: F) -> Self {
        Self {
            report,
            encoding: Encoding::Text,
        }
    }

    /// Sets the encoding (default [`Encoding::Text`]).
    #[must_use]
    pub fn encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }
}

impl<S, F: Clone> Layer<S> for AttachReportLayer<F> {
    type Service = AttachReport<S, F>;

    fn layer(&self, inner: S) -> AttachReport<S, F> {
        AttachReport {
            inner,
            report: self.report.clone(),
            encoding: self.encoding,
        }
    }
}

/// The service made by [`AttachReportLayer`].
#[derive(Clone)]
pub struct AttachReport<S, F> {
    inner: S,
    report: F,
    encoding: Encoding,
}

impl<S: fmt::Debug, F> fmt::Debug for AttachReport<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachReport")
            .field("inner", &self.inner)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

impl<S, F> AttachReport<S, F> {
    define_inner_service_accessors!();
}

/// Puts `report()` in `headers`; a `TEXT` report whose keys `TEXT` cannot carry goes as
/// `JSON`.
pub(super) fn attach(headers: &mut HeaderMap, report: &Report, encoding: Encoding) {
    let header = report.to_header(encoding).or_else(|e| match encoding {
        Encoding::Text => report.to_header(Encoding::Json),
        _ => Err(e),
    });
    match header {
        Ok((name, value)) => {
            headers.insert(name, value);
        }
        Err(e) => tracing::debug!(error = %e, "load report left out"),
    }
}

impl<S, F, Req, B> Service<Req> for AttachReport<S, F>
where
    S: Service<Req, Response = Response<B>>,
    F: Fn() -> Report + Clone,
    B: Body,
{
    type Response = Response<AttachBody<B, F>>;
    type Error = S::Error;
    type Future = AttachFuture<S::Future, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        AttachFuture {
            fut: self.inner.call(req),
            report: Some(self.report.clone()),
            encoding: self.encoding,
        }
    }
}

pin_project! {
    /// The response future of [`AttachReport`].
    pub struct AttachFuture<Fut, F> {
        #[pin]
        fut: Fut,
        report: Option<F>,
        encoding: Encoding,
    }
}

impl<Fut, F> fmt::Debug for AttachFuture<Fut, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachFuture").finish_non_exhaustive()
    }
}

impl<Fut, F, B, E> Future for AttachFuture<Fut, F>
where
    Fut: Future<Output = Result<Response<B>, E>>,
    F: Fn() -> Report,
    B: Body,
{
    type Output = Result<Response<AttachBody<B, F>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut rsp = ready!(this.fut.poll(cx))?;
        let mut pending = this.report.take();
        let in_trailers = *this.encoding == Encoding::GrpcTrailers && !rsp.body().is_end_stream();
        if !in_trailers && let Some(report) = pending.take() {
            attach(rsp.headers_mut(), &report(), *this.encoding);
        }
        Poll::Ready(Ok(rsp.map(|body| AttachBody {
            body,
            pending,
            done: false,
        })))
    }
}

pin_project! {
    /// A response body that ends with a trailer holding the load report, with
    /// [`Encoding::GrpcTrailers`]; otherwise the body unchanged.
    pub struct AttachBody<B, F> {
        #[pin]
        body: B,
        pending: Option<F>,
        done: bool,
    }
}

impl<B, F> fmt::Debug for AttachBody<B, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachBody")
            .field("pending", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body, F: Fn() -> Report> Body for AttachBody<B, F> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let frame = ready!(this.body.poll_frame(cx));
        let Some(report) = this.pending.take() else {
            return Poll::Ready(frame);
        };
        match frame {
            Some(Ok(frame)) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    attach(&mut trailers, &report(), Encoding::GrpcTrailers);
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Err(data) => {
                    *this.pending = Some(report);
                    Poll::Ready(Some(Ok(data)))
                }
            },
            None => {
                // The body ended without trailers: a trailer block of our own, then the end.
                *this.done = true;
                let mut trailers = HeaderMap::new();
                attach(&mut trailers, &report(), Encoding::GrpcTrailers);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.pending.is_none() && self.body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.pending.is_some() {
            // Trailers are still to come: no exact length.
            let mut hint = SizeHint::new();
            hint.set_lower(self.body.size_hint().lower());
            hint
        } else {
            self.body.size_hint()
        }
    }
}
