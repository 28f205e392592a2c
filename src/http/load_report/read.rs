//! The balancer side: reading each response's report into its endpoint's record.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::Report;
use crate::balance::{strategy::ReportedLoad, Target};

/// Reads the ORCA load report of every response of one endpoint, from its headers or
/// else its trailers, into the endpoint's [`ReportedLoad`], where
/// [`LoadReport`](crate::balance::strategy::LoadReport) weighs it. Made per endpoint in
/// the maker, like passive health. See the [module docs](super) for an example.
///
/// A malformed report is counted ([`ReportedLoad::malformed`]), logged at `debug` with the
/// backend's name, and otherwise ignored. Responses and their bodies pass unchanged.
#[derive(Clone)]
pub struct ReadReportsLayer {
    shared: Arc<Shared>,
}

struct Shared {
    backend: Box<str>,
    load: Arc<ReportedLoad>,
}

impl Shared {
    fn read(&self, headers: &HeaderMap) -> bool {
        let Some(report) = Report::from_headers(headers) else {
            return false;
        };
        match report {
            Ok(r) => self.load.record(
                Instant::now(),
                r.cpu_utilization,
                r.application_utilization,
                r.rps_fractional,
                r.eps,
            ),
            Err(e) => {
                self.load.record_malformed();
                tracing::debug!(backend = %self.backend, error = %e, "load report ignored");
            }
        }
        true
    }
}

impl fmt::Debug for ReadReportsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadReportsLayer")
            .field("backend", &self.shared.backend)
            .finish_non_exhaustive()
    }
}

impl ReadReportsLayer {
    /// Reads reports into the record of `target`'s endpoint.
    pub fn new<K: fmt::Display>(target: &Target<'_, K>) -> Self {
        Self::from_load(target.key().to_string(), target.state().slot())
    }

    /// Reads reports into `load`, naming the backend `backend` in logs: for endpoints made
    /// outside a balancer's maker, and tests.
    pub fn from_load(backend: impl Into<String>, load: Arc<ReportedLoad>) -> Self {
        Self {
            shared: Arc::new(Shared {
                backend: backend.into().into_boxed_str(),
                load,
            }),
        }
    }
}

impl<S> Layer<S> for ReadReportsLayer {
    type Service = ReadReports<S>;

    fn layer(&self, inner: S) -> ReadReports<S> {
        ReadReports {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`ReadReportsLayer`].
#[derive(Clone)]
pub struct ReadReports<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for ReadReports<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadReports")
            .field("inner", &self.inner)
            .field("backend", &self.shared.backend)
            .finish()
    }
}

impl<S> ReadReports<S> {
    /// Wraps `inner`, reading into `target`'s endpoint record.
    pub fn new<K: fmt::Display>(inner: S, target: &Target<'_, K>) -> Self {
        ReadReportsLayer::new(target).layer(inner)
    }

    define_inner_service_accessors!();
}

impl<S, Req, B> Service<Req> for ReadReports<S>
where
    S: Service<Req, Response = Response<B>>,
    B: Body,
{
    type Response = Response<ReadBody<B>>;
    type Error = S::Error;
    type Future = ReadFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ReadFuture {
            fut: self.inner.call(req),
            shared: Some(self.shared.clone()),
        }
    }
}

pin_project! {
    /// The response future of [`ReadReports`].
    pub struct ReadFuture<F> {
        #[pin]
        fut: F,
        shared: Option<Arc<Shared>>,
    }
}

impl<F> fmt::Debug for ReadFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ReadFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ReadBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rsp = ready!(this.fut.poll(cx))?;
        // A report in the headers is the report; without one, watch for trailers.
        let watch = this
            .shared
            .take()
            .filter(|s| !s.read(rsp.headers()) && !rsp.body().is_end_stream());
        Poll::Ready(Ok(rsp.map(|body| ReadBody { body, watch })))
    }
}

pin_project! {
    /// A response body whose trailers are read for a load report; see
    /// [`ReadReportsLayer`].
    pub struct ReadBody<B> {
        #[pin]
        body: B,
        watch: Option<Arc<Shared>>,
    }
}

impl<B> ReadBody<B> {
    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.body
    }
}

impl<B> fmt::Debug for ReadBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadBody")
            .field("watching", &self.watch.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for ReadBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref()
                    && let Some(shared) = this.watch.take()
                {
                    shared.read(trailers);
                }
            }
            // The end, or an error: no trailers to come.
            _ => *this.watch = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
