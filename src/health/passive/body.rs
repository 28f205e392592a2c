use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_http::classify::ClassifyEos;

use super::service::{Shared, Trial};

pin_project! {
    /// The response body of [`PassiveHealth`](super::PassiveHealth): passes frames through
    /// and, when the classifier waits for the end of the stream (gRPC), judges the outcome
    /// from the trailers, or from the error that cut the stream short.
    ///
    /// A body dropped before its end yields no verdict.
    pub struct ResponseBody<B, E> {
        #[pin]
        inner: B,
        eos: Option<Eos<E>>,
    }
}

struct Eos<E> {
    classify: E,
    shared: Arc<Shared>,
    // Held until the verdict, so no other request goes to an endpoint on probation.
    _trial: Option<Trial>,
}

impl<E: ClassifyEos> Eos<E>
where
    E::FailureClass: fmt::Display,
{
    fn finish(self, trailers: Option<&HeaderMap>) {
        match self.classify.classify_eos(trailers) {
            Ok(()) => self.shared.success(),
            Err(class) => self.shared.failure(&class, true),
        }
    }

    fn fail(self, error: &dyn fmt::Display) {
        self.shared
            .failure(&format_args!("response body: {error}"), true);
    }
}

impl<B, E> ResponseBody<B, E> {
    /// A body whose response was already judged at its headers.
    pub(crate) fn judged(inner: B) -> Self {
        Self { inner, eos: None }
    }

    /// The inner body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Unwraps the inner body (its outcome will not be judged).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body, E: ClassifyEos> ResponseBody<B, E>
where
    E::FailureClass: fmt::Display,
{
    pub(crate) fn watch(inner: B, classify: E, shared: Arc<Shared>, trial: Option<Trial>) -> Self {
        let eos = Eos {
            classify,
            shared,
            _trial: trial,
        };
        if inner.is_end_stream() {
            // Nothing will be polled: judge now, without trailers.
            eos.finish(None);
            return Self::judged(inner);
        }
        Self {
            inner,
            eos: Some(eos),
        }
    }
}

impl<B, E> fmt::Debug for ResponseBody<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("judged", &self.eos.is_none())
            .finish_non_exhaustive()
    }
}

impl<B, E> Body for ResponseBody<B, E>
where
    B: Body,
    B::Error: fmt::Display,
    E: ClassifyEos,
    E::FailureClass: fmt::Display,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref() {
                    if let Some(eos) = this.eos.take() {
                        eos.finish(Some(trailers));
                    }
                } else if this.inner.is_end_stream()
                    && let Some(eos) = this.eos.take()
                {
                    eos.finish(None);
                }
            }
            Some(Err(e)) => {
                if let Some(eos) = this.eos.take() {
                    eos.fail(e);
                }
            }
            None => {
                if let Some(eos) = this.eos.take() {
                    eos.finish(None);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
