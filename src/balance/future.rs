use std::{
    cell::Cell,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::{clock::Clock, strategy::PickTime};
use super::{
    set::{candidate, Core, Key, Snapshot},
    strategy::{Candidate, CandidateList, RequestKey},
    RequestPolicy,
};
use crate::error::{AllUnavailable, BoxError, EndpointError, NoEndpoints};

/// One endpoint of a snapshot, counted in flight until dropped, however the request ends.
///
/// Holding the snapshot (not the balancer) keeps the endpoint's service and state alive
/// even if it is removed from the set meanwhile, and lets the request re-pick from it.
struct InFlight<K, S> {
    snap: Arc<Snapshot<K, S>>,
    pos: usize,
}

impl<K, S> InFlight<K, S> {
    fn new(snap: Arc<Snapshot<K, S>>, pos: usize) -> Self {
        snap.entries[pos].state.start_request();
        Self { snap, pos }
    }

    fn entry(&self) -> &super::set::Entry<K, S> {
        &self.snap.entries[self.pos]
    }
}

impl<K, S> Drop for InFlight<K, S> {
    fn drop(&mut self) {
        self.snap.entries[self.pos].state.finish_request();
    }
}

pin_project! {
    /// The response future of [`Balance`](super::Balance).
    pub struct ResponseFuture<K, S, P, Req>
    where
        S: Service<Req>,
    {
        policy: P,
        // The request's affinity key, from the policy or handed over by a key layer.
        key: Option<RequestKey>,
        // What only failures and waits need, allocated on first use: the fast path moves
        // a small future.
        slow: Option<Box<Slow>>,
        retries: usize,
        clock: Clock,
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
        // Choose another endpoint (after a failure), from `snap` or a newer snapshot.
        Pick { snap: Arc<Snapshot<K, S>>, req: Option<Req> },
        // Drive the chosen endpoint's readiness.
        // `picked`: when the pick read the clock, the request's start time if the
        // endpoint takes it at once.
        Ready {
            guard: Option<InFlight<K, S>>,
            svc: S,
            req: Option<Req>,
            picked: Option<u64>,
        },
        // Wait on the endpoint's response.
        Call {
            guard: InFlight<K, S>,
            #[pin]
            fut: S::Future,
            replay: Option<Req>,
            started: Option<u64>,
        },
        // No endpoint: wait for discovery or health to change, up to the fail-fast bound.
        Wait {
            core: Arc<Core<K, S>>,
            wait: Pin<Box<dyn Future<Output = ()> + Send>>,
            req: Option<Req>,
        },
        // Fail with this error.
        Failed { error: Option<BoxError> },
        Done,
    }
}

impl<K, S, P, Req> fmt::Debug for ResponseFuture<K, S, P, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("tried", &self.slow.as_ref().map_or(0, |s| s.tried.len()))
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
    pub(crate) fn new(
        core: &Arc<Core<K, S>>,
        snap: &Arc<Snapshot<K, S>>,
        policy: P,
        req: Req,
    ) -> Self {
        policy.on_request(&req);
        let key = policy.key(&req).or_else(super::take_key);
        let mut slow = None;
        // Pick at once from the caller's snapshot: the common case starts in `Ready`.
        let time = Cell::new(PickTime {
            clock: core.cfg.clock,
            at: None,
        });
        let state = match pick(snap, key.as_ref(), &[], &time) {
            Some(Ok(pos)) => ready_state(snap.clone(), pos, req, time.get().at),
            Some(Err(error)) => State::Failed { error: Some(error) },
            None => {
                let s: &mut Slow = slow.get_or_insert_with(Box::default);
                wait_or_fail(core.clone(), &mut s.deadline, req)
            }
        };
        Self {
            policy,
            key,
            slow,
            retries: core.cfg.retries,
            clock: core.cfg.clock,
            state,
        }
    }
}

#[inline]
fn ready_state<K: Key, S, Req>(
    snap: Arc<Snapshot<K, S>>,
    pos: usize,
    req: Req,
    picked: Option<u64>,
) -> State<K, S, Req>
where
    S: Service<Req> + Clone,
{
    let guard = InFlight::new(snap, pos);
    let entry = guard.entry();
    tracing::debug!(backend = %entry.backend.key(), "tower_lb: picked");
    let svc = entry.service.clone();
    State::Ready {
        guard: Some(guard),
        svc,
        req: Some(req),
        picked,
    }
}

/// State of a request that failed or waited.
#[derive(Default)]
struct Slow {
    /// Ids of endpoints this request already failed on.
    tried: Vec<u64>,
    /// The last endpoint's error: answered if no other endpoint is left to try, rather
    /// than "all unavailable" (nginx answers the last upstream's error too).
    last: Option<BoxError>,
    /// The end of the fail-fast wait, once a wait started.
    deadline: Option<Instant>,
}

/// Picks an endpoint position in `snap` that this request has not tried and that is not
/// at its concurrency cap. `None` if the snapshot has no candidate at all.
#[inline]
fn pick<K, S>(
    snap: &Snapshot<K, S>,
    key: Option<&RequestKey>,
    tried: &[u64],
    time: &Cell<PickTime>,
) -> Option<Result<usize, BoxError>> {
    let view = snap.candidates.view_timed(time);
    if view.is_empty() {
        return None;
    }
    // Fast path: one pick, one relaxed load for the cap.
    if tried.is_empty() {
        if let Some(c) = snap.strategy.pick(&view, key).and_then(|i| view.get(i)) {
            if !c.state.at_capacity() {
                return Some(Ok(c.pos));
            }
        }
    }
    // Slow path: leave out endpoints already tried or at their cap, and ask again.
    let rest: Vec<_> = view
        .iter()
        .filter(|c| !tried.contains(&c.id) && !c.state.at_capacity())
        .cloned()
        .collect();
    let rest = if rest.is_empty() {
        next_level(snap, tried)
    } else {
        rest
    };
    let rest = CandidateList::new(rest);
    let view = rest.view_timed(time);
    Some(
        match (!view.is_empty())
            .then(|| snap.strategy.pick(&view, key))
            .flatten()
            .and_then(|i| view.get(i))
        {
            Some(c) => Ok(c.pos),
            None => Err(AllUnavailable::new(snap.entries.len()).into()),
        },
    )
}

/// Every candidate of the serving level already failed this request or is at its cap:
/// the available endpoints of the next priority level that has any, so backups take the
/// request within its own retries (nginx `backup`: used when no primary can take it).
#[cold]
fn next_level<K, S>(snap: &Snapshot<K, S>, tried: &[u64]) -> Vec<Candidate> {
    let now = Instant::now();
    let mut level: Option<u8> = None;
    let mut out = Vec::new();
    for (pos, e) in snap.entries.iter().enumerate() {
        let l = e.backend.priority();
        if l <= snap.level
            || level.is_some_and(|best| l > best)
            || tried.contains(&e.id)
            || !e.state.is_available_at(now)
            || e.state.at_capacity()
        {
            continue;
        }
        if level != Some(l) {
            level = Some(l);
            out.clear();
        }
        out.push(candidate(e, pos));
    }
    out
}

/// Nothing is available: wait for a change, bounded by the fail-fast deadline, or fail.
fn wait_or_fail<K: Key, S, Req>(
    core: Arc<Core<K, S>>,
    deadline: &mut Option<Instant>,
    req: Req,
) -> State<K, S, Req>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
{
    let now = Instant::now();
    let until = *deadline.get_or_insert(super::endpoint::later(now, core.cfg.fail_fast));
    // Subscribe before the last look, so a change in between is not missed.
    let mut changed = core.subscribe();
    let snap = arc_swap::Guard::into_inner(core.current());
    if !snap.candidates.is_empty() {
        return State::Pick {
            snap,
            req: Some(req),
        };
    }
    if now >= until {
        let error: BoxError = if let Some(e) = core.discover_error() {
            e.into()
        } else if snap.entries.is_empty() {
            NoEndpoints::new().into()
        } else {
            AllUnavailable::new(snap.entries.len()).into()
        };
        return State::Failed { error: Some(error) };
    }
    // Also wake when an ejection ends by itself.
    let wake = snap.deadline.map_or(until, |d| d.min(until));
    State::Wait {
        core,
        wait: Box::pin(async move {
            let _ = tokio::time::timeout_at(wake, changed.changed()).await;
        }),
        req: Some(req),
    }
}

/// After a failure: re-pick from the newest snapshot if the balancer is still there, or
/// from the request's own snapshot if the balancer was dropped meanwhile.
fn repick_state<K: Key, S, Req>(snap: &Arc<Snapshot<K, S>>, req: Option<Req>) -> State<K, S, Req>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
{
    let snap = match snap.core.upgrade() {
        Some(core) => arc_swap::Guard::into_inner(core.current()),
        None => snap.clone(),
    };
    State::Pick { snap, req }
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
                StateProj::Pick { snap, req } => {
                    let req = req.take().expect("request is present until called");
                    let slow: &mut Slow = this.slow.get_or_insert_with(Box::default);
                    let time = Cell::new(PickTime {
                        clock: *this.clock,
                        at: None,
                    });
                    let next = match pick(snap, this.key.as_ref(), &slow.tried, &time) {
                        Some(Ok(pos)) => ready_state(snap.clone(), pos, req, time.get().at),
                        Some(Err(error)) => State::Failed {
                            error: Some(slow.last.take().unwrap_or(error)),
                        },
                        None if slow.last.is_some() => State::Failed {
                            error: slow.last.take(),
                        },
                        None => match snap.core.upgrade() {
                            Some(core) => wait_or_fail(core, &mut slow.deadline, req),
                            None => State::Failed {
                                error: Some(NoEndpoints::new().into()),
                            },
                        },
                    };
                    this.state.set(next);
                }
                StateProj::Failed { error } => {
                    let error = error.take().expect("polled after completion");
                    this.state.set(State::Done);
                    return Poll::Ready(Err(error));
                }
                StateProj::Wait { core, wait, req } => {
                    ready!(wait.as_mut().poll(cx));
                    let req = req.take().expect("request is present until called");
                    let slow: &mut Slow = this.slow.get_or_insert_with(Box::default);
                    let next = wait_or_fail(core.clone(), &mut slow.deadline, req);
                    this.state.set(next);
                }
                StateProj::Ready {
                    guard,
                    svc,
                    req,
                    picked,
                } => match svc.poll_ready(cx) {
                    Poll::Pending => {
                        // The wait is not the endpoint's latency: time from the call.
                        *picked = None;
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(())) => {
                        let req = req.take().expect("request is present until called");
                        let replay = if *this.retries > 0 {
                            this.policy.replay(&req)
                        } else {
                            None
                        };
                        let clock = *this.clock;
                        let started = clock.on().then(|| picked.unwrap_or_else(|| clock.now_ns()));
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
                        let guard = guard.take().expect("guard is present until called");
                        let entry = guard.entry();
                        entry.state.record_failure();
                        entry.state.set_last_failure(crate::error::chain(&*e));
                        tracing::warn!(backend = %entry.backend.key(), error = %e,
                            "tower_lb: endpoint not ready; trying another");
                        let slow = this.slow.get_or_insert_with(Box::default);
                        slow.tried.push(entry.id);
                        slow.last =
                            Some(EndpointError::new(entry.backend.key().to_string(), e).into());
                        let next = repick_state(&guard.snap, req.take());
                        drop(guard);
                        this.state.set(next);
                    }
                },
                StateProj::Call {
                    guard,
                    fut,
                    replay,
                    started,
                } => {
                    let res = ready!(fut.poll(cx));
                    let entry = guard.entry();
                    match res {
                        Ok(rsp) => {
                            if let Some(t0) = *started {
                                let now = this.clock.now_ns();
                                entry.state.observe_rtt_ns(now.saturating_sub(t0), now);
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(rsp));
                        }
                        Err(e) => {
                            let e: BoxError = e.into();
                            entry.state.record_failure();
                            entry.state.set_last_failure(crate::error::chain(&*e));
                            if *this.retries > 0
                                && replay.as_ref().is_some_and(|r| this.policy.retry_on(r, &e))
                            {
                                tracing::warn!(backend = %entry.backend.key(), error = %e,
                                    "tower_lb: request failed before reaching the backend; retrying elsewhere");
                                *this.retries -= 1;
                                let slow = this.slow.get_or_insert_with(Box::default);
                                slow.tried.push(entry.id);
                                slow.last = Some(
                                    EndpointError::new(entry.backend.key().to_string(), e).into(),
                                );
                                let next = repick_state(&guard.snap, replay.take());
                                this.state.set(next);
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
