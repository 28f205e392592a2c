use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::Response;
use pin_project_lite::pin_project;
use tower_http::classify::{ClassifiedResponse, ClassifyResponse};

use super::{
    service::{Shared, Trial},
    ResponseBody,
};

pin_project! {
    /// The response future of [`PassiveHealth`](super::PassiveHealth): judges the response
    /// at its headers, or hands the judgement to its [`ResponseBody`] when the classifier
    /// needs the end of the stream (gRPC trailers).
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
        classifier: Option<C>,
        shared: Arc<Shared>,
        trial: Option<Trial>,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(inner: F, classifier: C, shared: Arc<Shared>, trial: Option<Trial>) -> Self {
        Self {
            inner,
            classifier: Some(classifier),
            shared,
            trial,
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("backend", &self.shared.backend)
            .field("trial", &self.trial.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, C, B, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
    E: fmt::Display,
    C: ClassifyResponse,
    C::FailureClass: fmt::Display,
{
    type Output = Result<Response<ResponseBody<B, C::ClassifyEos>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        let trial = this.trial.take();
        let Some(classifier) = this.classifier.take() else {
            panic!("ResponseFuture polled after completion");
        };
        match res {
            Ok(rsp) => match classifier.classify_response(&rsp) {
                ClassifiedResponse::Ready(Ok(())) => {
                    this.shared.success();
                    Poll::Ready(Ok(rsp.map(ResponseBody::judged)))
                }
                ClassifiedResponse::Ready(Err(class)) => {
                    this.shared.failure(&class, true);
                    Poll::Ready(Ok(rsp.map(ResponseBody::judged)))
                }
                ClassifiedResponse::RequiresEos(eos) => {
                    let shared = this.shared.clone();
                    Poll::Ready(Ok(rsp.map(|b| ResponseBody::watch(b, eos, shared, trial))))
                }
            },
            Err(e) => {
                // The balancer counts errors in the stats; here they feed the policy.
                this.shared.failure(&e, false);
                Poll::Ready(Err(e))
            }
        }
    }
}
