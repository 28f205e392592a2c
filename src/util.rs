//! Calling a service at once: [`call_now`].
//!
//! A server (or a router) that clones a service per request usually hands the clone and
//! the request to [`ServiceExt::oneshot`], whose future asks for readiness and calls the
//! service at its first poll, then holds the service's response future inside its own.
//! The response future is then built where the runtime polls it, and moved there whole.
//! Most services are ready as soon as they are asked (a [`Balance`](crate::Balance)
//! always is), so [`call_now`] asks once, with a waker that does nothing, and calls the
//! service right away when it is ready; only a service that is not falls back to
//! `oneshot`, whose first poll asks again with the task's waker.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use pin_project_lite::pin_project;
use tower::util::{Oneshot, ServiceExt};
use tower_service::Service;

/// Calls `svc` with `req` at once if it is ready at once, else when it is (as
/// [`ServiceExt::oneshot`]): see [the module](self). A readiness error is the future's
/// error, as with `oneshot`.
///
/// ```
/// use std::convert::Infallible;
/// use tower_lb::util::call_now;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = tower::service_fn(|n: u32| async move { Ok::<_, Infallible>(n + 1) });
/// // The service is ready: the request is already in its future.
/// let answer = call_now(svc, 41);
/// assert!(answer.was_called());
/// assert_eq!(answer.await, Ok(42));
/// # }
/// ```
pub fn call_now<S, Req>(mut svc: S, req: Req) -> CallNow<S, Req>
where
    S: Service<Req>,
{
    let state = match svc.poll_ready(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => State::Called { fut: svc.call(req) },
        Poll::Ready(Err(error)) => State::Failed { error: Some(error) },
        Poll::Pending => State::Waiting {
            call: svc.oneshot(req),
        },
    };
    CallNow { state }
}

pin_project! {
    /// The response future of [`call_now`]. Like most futures, it must not be polled
    /// again once it answered: after a readiness error, that panics.
    pub struct CallNow<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        // Ready when asked: the service's own future.
        Called { #[pin] fut: S::Future },
        // Its readiness failed; taken when polled.
        Failed { error: Option<S::Error> },
        // Not ready when asked: readiness and the call are left to `oneshot`.
        Waiting { #[pin] call: Oneshot<S, Req> },
    }
}

impl<S, Req> CallNow<S, Req>
where
    S: Service<Req>,
{
    /// Whether the service was ready when asked, so the request is already in its future.
    pub fn was_called(&self) -> bool {
        matches!(self.state, State::Called { .. })
    }
}

impl<S, Req> Future for CallNow<S, Req>
where
    S: Service<Req>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut } => fut.poll(cx),
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .expect("`CallNow` polled after it answered"))),
            StateProj::Waiting { call } => call.poll(cx),
        }
    }
}

impl<S, Req> fmt::Debug for CallNow<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Failed { .. } => "failed",
            State::Waiting { .. } => "waiting",
        };
        f.debug_struct("CallNow")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tokio_test::{assert_pending, assert_ready_eq, task};
    use tower_test::mock;

    use super::*;

    #[tokio::test]
    async fn a_service_not_ready_at_once_is_called_when_it_is() {
        let (svc, mut handle) = mock::pair::<u32, u32>();
        handle.allow(0);
        let mut answer = task::spawn(call_now(svc, 7));
        assert!(!answer.was_called());
        assert_pending!(answer.poll());
        handle.allow(1);
        assert!(answer.is_woken(), "readiness wakes the task that polled");
        assert_pending!(answer.poll());
        let (req, respond) = handle.next_request().await.unwrap();
        assert_eq!(req, 7);
        respond.send_response(8);
        assert_ready_eq!(answer.poll().map_err(|e| e.to_string()), Ok(8));
    }

    #[tokio::test]
    async fn a_readiness_error_is_the_answer() {
        let (svc, mut handle) = mock::pair::<u32, u32>();
        handle.send_error("closed");
        let answer = call_now(svc, 7);
        assert!(!answer.was_called());
        assert_eq!(answer.await.unwrap_err().to_string(), "closed");
    }

    #[tokio::test]
    async fn a_ready_service_has_the_request_before_the_first_poll() {
        let (svc, mut handle) = mock::pair::<u32, u32>();
        handle.allow(1);
        let answer = call_now(svc, 7);
        assert!(answer.was_called());
        // The mock saw the request already, though nothing polled the answer yet.
        let (req, respond) = handle.next_request().await.unwrap();
        assert_eq!(req, 7);
        respond.send_response(8);
        assert_eq!(answer.await.map_err(|e| e.to_string()), Ok(8));
        let ok = call_now(
            tower::service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }),
            1,
        );
        assert_eq!(format!("{ok:?}"), "CallNow { state: \"called\", .. }");
    }
}
