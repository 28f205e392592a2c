//! Counting a request in flight until its response body ends.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::balance::{EndpointState, Target};

/// Keeps a request in its endpoint's in-flight count until the response body ends (or is
/// dropped), instead of only until the response headers, so least connections and P2C
/// see long downloads and streams as the load they are (nginx and HAProxy count active
/// connections). For a `101 Switching Protocols` answer the count lasts while the
/// [`InFlight`](crate::balance::InFlight) guard put in the response's extensions lives:
/// move it into the task that copies the upgraded connection
/// ([`ProxyLayer`](super::proxy::ProxyLayer) does).
///
/// [`HttpEndpoints`](super::HttpEndpoints) and [`PooledEndpoints`](super::PooledEndpoints)
/// include it; add it to an endpoint stack of your own (a tonic `Channel`, say) in the
/// maker:
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_lb::{balance::Target, http::TrackBodyLayer, Backend, Balance};
///
/// let balance = Balance::builder()
///     .backends([Backend::new("a")])
///     .build(|t: &Target<'_, &'static str>| {
///         ServiceBuilder::new().layer(TrackBodyLayer::new(t)).service(service_fn(
///             |_req: http::Request<()>| async {
///                 Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("hi"))))
///             },
///         ))
///     })
///     .unwrap();
/// let rsp = balance.clone().oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(balance.stats().backends[0].in_flight, 1); // the body is still open
/// rsp.into_body().collect().await.unwrap();
/// assert_eq!(balance.stats().backends[0].in_flight, 0);
/// # }
/// ```
#[derive(Clone)]
pub struct TrackBodyLayer {
    state: Arc<EndpointState>,
}

impl fmt::Debug for TrackBodyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackBodyLayer").finish_non_exhaustive()
    }
}

impl TrackBodyLayer {
    /// Counts responses of `target`'s endpoint.
    pub fn new<K>(target: &Target<'_, K>) -> Self {
        Self {
            state: target.state_arc(),
        }
    }
}

impl<S> Layer<S> for TrackBodyLayer {
    type Service = TrackBody<S>;

    fn layer(&self, inner: S) -> TrackBody<S> {
        TrackBody {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service made by [`TrackBodyLayer`].
#[derive(Clone)]
pub struct TrackBody<S> {
    inner: S,
    state: Arc<EndpointState>,
}

impl<S: fmt::Debug> fmt::Debug for TrackBody<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> TrackBody<S> {
    /// Wraps `inner`, counting into `target`'s endpoint state.
    pub fn new<K>(inner: S, target: &Target<'_, K>) -> Self {
        TrackBodyLayer::new(target).layer(inner)
    }

    define_inner_service_accessors!();
}

impl<S, Req, B> Service<Req> for TrackBody<S>
where
    S: Service<Req, Response = Response<B>>,
    B: Body,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        TrackFuture {
            fut: self.inner.call(req),
            state: Some(self.state.clone()),
        }
    }
}

pin_project! {
    /// The response future of [`TrackBody`].
    pub struct TrackFuture<F> {
        #[pin]
        fut: F,
        state: Option<Arc<EndpointState>>,
    }
}

impl<F> fmt::Debug for TrackFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut rsp = ready!(this.fut.poll(cx))?;
        // The balancer's own count ends when this future returns: take over from here.
        let guard = match this.state.take() {
            Some(state) if rsp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                // The upgraded connection outlives the body: a shared guard, for whoever
                // copies the connection.
                rsp.extensions_mut().insert(state.track());
                None
            }
            Some(state) if !rsp.body().is_end_stream() => {
                // No allocation: the body holds the endpoint's state itself.
                state.add_load();
                Some(Held(state))
            }
            _ => None,
        };
        Poll::Ready(Ok(rsp.map(|body| TrackedBody { body, guard })))
    }
}

pin_project! {
    /// A response body that keeps its request in flight until it ends or is dropped; see
    /// [`TrackBodyLayer`].
    pub struct TrackedBody<B> {
        #[pin]
        body: B,
        guard: Option<Held>,
    }
}

/// One unit of load of a response body, removed when dropped.
struct Held(Arc<EndpointState>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.remove_load();
    }
}

impl<B> TrackedBody<B> {
    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.body
    }
}

impl<B> fmt::Debug for TrackedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedBody")
            .field("open", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) || this.body.is_end_stream() {
            // The end, or an error: the exchange is over.
            *this.guard = None;
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
