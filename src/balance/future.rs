use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::{
    set::{Core, Entry, Key},
    strategy::{CandidateList, RequestKey},
    RequestPolicy,
};
use crate::error::{AllUnavailable, BoxError, EndpointError, NoEndpoints};

/// Decrements the endpoint's in-flight count when the request ends, however it ends.
struct InFlight<K, S>(Arc<Entry<K, S>>);

impl<K, S> Drop for InFlight<K, S> {
    fn drop(&mut self) {
        self.0.state.finish_request();
    }
}

pin_project! {
    /// The response future of [`Balance`](super::Balance).
    pub struct ResponseFuture<K, S, P, Req>
    where
        S: Service<Req>,
    {
        core: Arc<Core<K, S>>,
        policy: P,
        key: Option<RequestKey>,
        // Ids of endpoints this request already failed on.
        tried: Vec<u64>,
        retries: usize,
        deadline: Option<Instant>,
        #[pin]
        state: State<K, S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<K, S, Req>
    where
        S: Service<Req>,
    {
        // Choose an endpoint.
        Pick { req: Option<Req> },
        // Drive the chosen endpoint's readiness.
        Ready { guard: Option<InFlight<K, S>>, svc: S, req: Option<Req> },
        // Wait on the endpoint's response.
        Call {
            guard: InFlight<K, S>,
            #[pin]
            fut: S::Future,
            replay: Option<Req>,
            started: Option<Instant>,
        },
        // No endpoint: wait for discovery or health to change, up to the fail-fast bound.
        Wait { wait: Pin<Box<dyn Future<Output = ()> + Send>>, req: Option<Req> },
        Done,
    }
}

impl<K, S, P, Req> fmt::Debug for ResponseFuture<K, S, P, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("tried", &self.tried.len())
            .finish_non_exhaustive()
    }
}

impl<K, S, P, Req> ResponseFuture<K, S, P, Req>
where
    K: Key,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    P: RequestPolicy<Req>,
{
    pub(crate) fn new(core: Arc<Core<K, S>>, policy: P, req: Req) -> Self {
        let key = policy.key(&req);
        Self {
            retries: core.cfg.retries,
            core,
            policy,
            key,
            tried: Vec::new(),
            deadline: None,
            state: State::Pick { req: Some(req) },
        }
    }
}

enum Picked<K, S> {
    Endpoint(Arc<Entry<K, S>>),
    Wait(Pin<Box<dyn Future<Output = ()> + Send>>),
}

fn pick<K: Key, S: Clone + Send + Sync + 'static>(
    core: &Core<K, S>,
    key: Option<&RequestKey>,
    tried: &[u64],
    deadline: &mut Option<Instant>,
) -> Result<Picked<K, S>, BoxError> {
    // Fast path: one snapshot load, one pick, two relaxed atomic loads.
    {
        let snap = core.current();
        let view = snap.candidates.view();
        if !view.is_empty() {
            if tried.is_empty() {
                if let Some(i) = core.strategy.pick(&view, key) {
                    let c = &view[i];
                    if !c.state.at_capacity() {
                        return Ok(Picked::Endpoint(snap.entries[c.pos].clone()));
                    }
                }
            }
            // Slow path: leave out endpoints already tried or at their cap.
            let rest: Vec<_> = view
                .iter()
                .filter(|c| !tried.contains(&c.id) && !c.state.at_capacity())
                .cloned()
                .collect();
            if rest.is_empty() {
                return Err(AllUnavailable::new(snap.entries.len()).into());
            }
            let rest = CandidateList::new(rest);
            let view = rest.view();
            return match core.strategy.pick(&view, key).filter(|&i| i < view.len()) {
                Some(i) => Ok(Picked::Endpoint(snap.entries[view[i].pos].clone())),
                None => Err(AllUnavailable::new(snap.entries.len()).into()),
            };
        }
    }
    // Nothing available: wait for a change, bounded by the fail-fast deadline.
    let now = Instant::now();
    let until = *deadline.get_or_insert(now + core.cfg.fail_fast);
    // Subscribe before the last look, so a change in between is not missed.
    let mut changed = core.subscribe();
    let snap = core.current();
    if !snap.candidates.is_empty() {
        drop(snap);
        return pick(core, key, tried, deadline);
    }
    if now >= until {
        if let Some(e) = core.discover_error() {
            return Err(e.into());
        }
        return Err(if snap.entries.is_empty() {
            NoEndpoints::new().into()
        } else {
            AllUnavailable::new(snap.entries.len()).into()
        });
    }
    // Also wake when an ejection ends by itself.
    let wake = snap.deadline.map_or(until, |d| d.min(until));
    Ok(Picked::Wait(Box::pin(async move {
        let _ = tokio::time::timeout_at(wake, changed.changed()).await;
    })))
}

impl<K, S, P, Req> Future for ResponseFuture<K, S, P, Req>
where
    K: Key,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    P: RequestPolicy<Req>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Pick { req } => {
                    let req = req.take();
                    match pick(this.core, this.key.as_ref(), this.tried, this.deadline) {
                        Ok(Picked::Endpoint(entry)) => {
                            tracing::debug!(backend = %entry.backend.key(), "tower_lb: picked");
                            entry.state.start_request();
                            let svc = entry.service.clone();
                            this.state.set(State::Ready {
                                guard: Some(InFlight(entry)),
                                svc,
                                req,
                            });
                        }
                        Ok(Picked::Wait(wait)) => this.state.set(State::Wait { wait, req }),
                        Err(e) => {
                            this.state.set(State::Done);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                StateProj::Wait { wait, req } => {
                    ready!(wait.as_mut().poll(cx));
                    let req = req.take();
                    this.state.set(State::Pick { req });
                }
                StateProj::Ready { guard, svc, req } => match svc.poll_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => {
                        let req = req.take().expect("request is present until called");
                        let replay = if *this.retries > 0 {
                            this.policy.replay(&req)
                        } else {
                            None
                        };
                        let started = this.core.cfg.track_latency.then(Instant::now);
                        let fut = svc.call(req);
                        let guard = guard.take().expect("guard is present until called");
                        this.state.set(State::Call {
                            guard,
                            fut,
                            replay,
                            started,
                        });
                    }
                    Poll::Ready(Err(e)) => {
                        // Not ready: the request never left. Skip this endpoint.
                        let e: BoxError = e.into();
                        let Some(InFlight(entry)) = guard.as_ref() else {
                            unreachable!("guard is present until called")
                        };
                        entry.state.record_failure();
                        tracing::warn!(backend = %entry.backend.key(), error = %e,
                            "tower_lb: endpoint not ready; trying another");
                        this.tried.push(entry.id);
                        let req = req.take();
                        this.state.set(State::Pick { req });
                    }
                },
                StateProj::Call {
                    guard,
                    fut,
                    replay,
                    started,
                } => {
                    let res = ready!(fut.poll(cx));
                    let entry = &guard.0;
                    match res {
                        Ok(rsp) => {
                            if let Some(t0) = *started {
                                let now = Instant::now();
                                entry.state.observe_rtt(now - t0, now);
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(rsp));
                        }
                        Err(e) => {
                            let e: BoxError = e.into();
                            entry.state.record_failure();
                            if *this.retries > 0
                                && replay.as_ref().is_some_and(|r| this.policy.retry_on(r, &e))
                            {
                                tracing::warn!(backend = %entry.backend.key(), error = %e,
                                    "tower_lb: request failed before reaching the backend; retrying elsewhere");
                                *this.retries -= 1;
                                this.tried.push(entry.id);
                                let req = replay.take();
                                this.state.set(State::Pick { req });
                                continue;
                            }
                            tracing::debug!(backend = %entry.backend.key(), error = %e,
                                "tower_lb: request failed");
                            let err = EndpointError::new(entry.backend.key().to_string(), e);
                            this.state.set(State::Done);
                            return Poll::Ready(Err(err.into()));
                        }
                    }
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}
