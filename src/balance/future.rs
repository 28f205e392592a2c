use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll, Waker},
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::{clock::Clock, hedge::Shared, strategy::PickTime};
use super::{
    set::{candidate, Core, Key, Snapshot},
    strategy::{Candidate, CandidateList, Candidates, RequestKey},
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
    #[inline]
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
        #[pin]
        first: Attempt<K, S, P, Req>,
        // Only when the balancer hedges (see `hedge.rs`): the delay, the copy, the second
        // attempt.
        hedge: Option<Box<Hedging<K, S, P, Req>>>,
    }
}

pin_project! {
    // One attempt of a request: picks, retries on endpoints not tried yet, and answers.
    // `cancel` drops its in-flight guard (the request no longer counts) and records no
    // latency: that is how a hedge's loser is cancelled. Dropped while it waits on a
    // response (its client gave up, a timeout fired), it records the time waited so far as
    // the endpoint's latency sample, as tower's `PeakEwma` does: a lower bound, but a
    // backend whose answers outlast the clients' timeouts must not look unmeasured.
    struct Attempt<K, S, P, Req>
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
        #[pin]
        state: State<K, S, Req>,
    }

    impl<K, S, P, Req> PinnedDrop for Attempt<K, S, P, Req>
    where
        S: Service<Req>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let StateProj::Call {
                guard,
                started: Some(t0),
                ..
            } = this.state.project()
            {
                let now = guard.snap.clock.now_ns();
                guard
                    .entry()
                    .state
                    .observe_rtt_ns(now.saturating_sub(*t0), now);
            }
        }
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
            .field(
                "tried",
                &self.first.slow.as_ref().map_or(0, |s| s.tried.len()),
            )
            .field(
                "hedged",
                &self.hedge.as_ref().is_some_and(|h| h.second.is_some()),
            )
            .finish_non_exhaustive()
    }
}

/// The hedging part of a request (see [`hedge`](super::hedge)).
struct Hedging<K, S, P, Req>
where
    S: Service<Req>,
{
    shared: Arc<Shared>,
    // Weak, as the request's snapshot holds it: a request in flight does not keep a
    // dropped balancer alive (its copy is then not sent).
    core: std::sync::Weak<Core<K, S>>,
    clock: Clock,
    retries: usize,
    /// When the request came, on the balancer's clock.
    started: u64,
    /// The copy and the policy for the second attempt, until it is sent.
    copy: Option<(Req, P)>,
    /// The delay, while the copy waits.
    timer: Option<Pin<Box<Sleep>>>,
    /// The second attempt, once sent.
    second: Option<Pin<Box<Attempt<K, S, P, Req>>>>,
    /// The first attempt's error, while the second still runs.
    first_failed: Option<BoxError>,
}

impl<K, S, P, Req> ResponseFuture<K, S, P, Req>
where
    K: Key,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    P: RequestPolicy<Req> + Clone,
{
    pub(crate) fn new(
        core: &Arc<Core<K, S>>,
        snap: &Arc<Snapshot<K, S>>,
        policy: P,
        req: Req,
    ) -> Self {
        let Some(shared) = &core.cfg.hedge else {
            return Self {
                first: Attempt::new(core, snap, policy, req),
                hedge: None,
            };
        };
        policy.on_request(&req);
        shared.budget.deposit();
        let started = core.cfg.clock.now_ns();
        // The copy is made before the first attempt takes the request; the timer starts
        // now, so the delay counts the pick and the endpoint's readiness too.
        let (copy, timer) = match shared.delay(started).zip(policy.hedge(&req)) {
            Some((delay, copy)) => (
                Some((copy, policy.clone())),
                Some(Box::pin(tokio::time::sleep(delay))),
            ),
            None => (None, None),
        };
        Self {
            first: Attempt::start(core, snap, policy, req),
            hedge: Some(Box::new(Hedging {
                shared: shared.clone(),
                core: Arc::downgrade(core),
                clock: core.cfg.clock,
                retries: core.cfg.retries,
                started,
                copy,
                timer,
                second: None,
                first_failed: None,
            })),
        }
    }
}

impl<K, S, P, Req> Hedging<K, S, P, Req>
where
    K: Key,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    P: RequestPolicy<Req>,
{
    /// The delay passed: sends the copy to an endpoint `first` has not tried nor holds,
    /// if there is one and both budgets allow. Otherwise the request is not hedged.
    fn fire(&mut self, first: &Attempt<K, S, P, Req>) {
        let Some((copy, policy)) = self.copy.take() else {
            return;
        };
        let mut tried = first
            .slow
            .as_ref()
            .map_or_else(Vec::new, |s| s.tried.clone());
        if let Some(id) = first.state.endpoint() {
            tried.push(id);
        }
        let Some(core) = self.core.upgrade() else {
            return;
        };
        let snap = arc_swap::Guard::into_inner(core.current());
        let time = PickTime::new(&self.clock);
        let Some(Ok(pos)) = pick(&snap, first.key.as_ref(), &tried, &time) else {
            return;
        };
        // Both budgets: the hedges' own share first (a read), then the budget shared with
        // retries (the policy's), then take the hedge.
        if self.shared.budget.balance() < 1.0
            || !policy.send_hedge(&copy)
            || !self.shared.budget.withdraw()
        {
            return;
        }
        tracing::debug!(backend = %snap.entries[pos].backend.key(), "tower_lb: hedging");
        let mut slow = Some(Box::new(Slow {
            tried,
            ..Slow::default()
        }));
        let state = ready_state(snap, pos, copy, time.at(), &policy, self.retries, &mut slow);
        self.second = Some(Box::pin(Attempt {
            policy,
            key: first.key,
            slow,
            retries: self.retries,
            state,
        }));
    }

    /// A request answered: its time from the start is a latency sample (for a hedged
    /// request, a lower bound of the first attempt's).
    fn record(&self) {
        let now = self.clock.now_ns();
        self.shared.record(now.saturating_sub(self.started), now);
    }
}

impl<K, S, Req> State<K, S, Req>
where
    S: Service<Req>,
{
    /// The endpoint this attempt holds, if any.
    fn endpoint(&self) -> Option<u64> {
        match self {
            Self::Ready {
                guard: Some(guard), ..
            } => Some(guard.entry().id),
            Self::Call { guard, .. } => Some(guard.entry().id),
            _ => None,
        }
    }
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
        let Some(h) = this.hedge.as_mut() else {
            return this.first.poll(cx);
        };
        if h.first_failed.is_none() {
            match this.first.as_mut().poll(cx) {
                Poll::Ready(Ok(rsp)) => {
                    // The first wins: the second (if any) is cancelled, with no latency
                    // sample (it started late: its time so far would flatter its backend).
                    h.record();
                    if let Some(mut second) = h.second.take() {
                        second.as_mut().cancel();
                    }
                    return Poll::Ready(Ok(rsp));
                }
                // Nothing hedged (yet): the request fails as without hedging.
                Poll::Ready(Err(e)) if h.second.is_none() => return Poll::Ready(Err(e)),
                // The second may still answer.
                Poll::Ready(Err(e)) => h.first_failed = Some(e),
                Poll::Pending => {}
            }
        }
        if let Some(timer) = &mut h.timer
            && timer.as_mut().poll(cx).is_ready()
        {
            h.timer = None;
            h.fire(&this.first);
        }
        let Some(second) = &mut h.second else {
            return Poll::Pending;
        };
        match ready!(second.as_mut().poll(cx)) {
            Ok(rsp) => {
                // The second wins: cancel the first now, so its endpoint's in-flight
                // count falls and no latency is recorded for it.
                h.record();
                this.first.cancel();
                h.second = None;
                Poll::Ready(Ok(rsp))
            }
            Err(e) => {
                h.second = None;
                match h.first_failed.take() {
                    // Both failed: the first's error, as without hedging.
                    Some(first) => Poll::Ready(Err(first)),
                    // The first still runs (polled above, so it will wake us): wait
                    // for it.
                    None => {
                        tracing::debug!(error = %e, "tower_lb: hedge failed");
                        Poll::Pending
                    }
                }
            }
        }
    }
}

impl<K, S, P, Req> Attempt<K, S, P, Req>
where
    K: Key,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    P: RequestPolicy<Req>,
{
    #[inline]
    fn new(core: &Arc<Core<K, S>>, snap: &Arc<Snapshot<K, S>>, policy: P, req: Req) -> Self {
        policy.on_request(&req);
        Self::start(core, snap, policy, req)
    }

    /// The first attempt, after `on_request`.
    #[inline]
    fn start(core: &Arc<Core<K, S>>, snap: &Arc<Snapshot<K, S>>, policy: P, req: Req) -> Self {
        let key = policy.key(&req).or_else(super::take_key);
        let mut slow = None;
        // Pick at once from the caller's snapshot: the common case starts in `Ready`.
        let time = PickTime::new(&snap.clock);
        let state = match pick(snap, key.as_ref(), &[], &time) {
            Some(Ok(pos)) => ready_state(
                snap.clone(),
                pos,
                req,
                time.at(),
                &policy,
                core.cfg.retries,
                &mut slow,
            ),
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
            state,
        }
    }
}

/// The state of a request that picked `pos` in `snap` (at `picked`, if the pick read the
/// clock): the endpoint is asked for readiness at once (with a waker that does nothing:
/// one that is not ready is asked again from `poll`, with the task's) and called at once
/// when ready, so the request goes straight into the endpoint's future instead of waiting
/// in this one for its first poll.
#[inline(always)]
fn ready_state<K: Key, S, P, Req>(
    snap: Arc<Snapshot<K, S>>,
    pos: usize,
    req: Req,
    picked: Option<u64>,
    policy: &P,
    retries: usize,
    slow: &mut Option<Box<Slow>>,
) -> State<K, S, Req>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    P: RequestPolicy<Req>,
{
    let guard = InFlight::new(snap, pos);
    let entry = guard.entry();
    tracing::debug!(backend = %entry.backend.key(), "tower_lb: picked");
    let mut svc = entry.service.clone();
    match svc.poll_ready(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => call_state(policy, retries, guard, &mut svc, req, picked),
        Poll::Ready(Err(e)) => not_ready(slow, guard, e.into(), Some(req)),
        // The wait is not the endpoint's latency: time from the call.
        Poll::Pending => State::Ready {
            guard: Some(guard),
            svc,
            req: Some(req),
            picked: None,
        },
    }
}

/// Sends `req` to the ready endpoint `svc`, keeping a copy for a retry when `retries`
/// allow; its latency counts from `picked` (the pick's clock reading, if the endpoint took
/// the request at once) or from now.
#[inline(always)]
fn call_state<K: Key, S, P, Req>(
    policy: &P,
    retries: usize,
    guard: InFlight<K, S>,
    svc: &mut S,
    req: Req,
    picked: Option<u64>,
) -> State<K, S, Req>
where
    S: Service<Req>,
    P: RequestPolicy<Req>,
{
    let replay = if retries > 0 {
        policy.replay(&req)
    } else {
        None
    };
    let clock = guard.snap.clock;
    let started = clock.on().then(|| picked.unwrap_or_else(|| clock.now_ns()));
    let fut = svc.call(req);
    State::Call {
        guard,
        fut,
        replay,
        started,
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
#[inline(always)]
fn pick<K, S>(
    snap: &Snapshot<K, S>,
    key: Option<&RequestKey>,
    tried: &[u64],
    time: &PickTime<'_>,
) -> Option<Result<usize, BoxError>> {
    let view = snap.candidates.view_timed(time);
    if view.is_empty() {
        return None;
    }
    // Fast path: one pick, one relaxed load for the cap.
    if tried.is_empty()
        && let Some(c) = snap.strategy.pick(&view, key).and_then(|i| view.get(i))
        && !c.state.at_capacity()
    {
        return Some(Ok(c.pos));
    }
    Some(pick_again(snap, &view, key, tried, time))
}

/// The slow path of [`pick`]: leaves out endpoints already tried or at their cap, and
/// asks the strategy again.
#[inline(never)]
fn pick_again<K, S>(
    snap: &Snapshot<K, S>,
    view: &Candidates<'_>,
    key: Option<&RequestKey>,
    tried: &[u64],
    time: &PickTime<'_>,
) -> Result<usize, BoxError> {
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
    match (!view.is_empty())
        .then(|| snap.strategy.pick(&view, key))
        .flatten()
        .and_then(|i| view.get(i))
    {
        Some(c) => Ok(c.pos),
        None => Err(AllUnavailable::new(snap.entries.len()).into()),
    }
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

/// The endpoint was not ready: the request never left. Records the failure and re-picks,
/// leaving this endpoint out.
#[cold]
#[inline(never)]
fn not_ready<K: Key, S, Req>(
    slow: &mut Option<Box<Slow>>,
    guard: InFlight<K, S>,
    e: BoxError,
    req: Option<Req>,
) -> State<K, S, Req>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
{
    let entry = guard.entry();
    entry.state.record_failure();
    entry.state.set_last_failure(crate::error::chain(&*e));
    tracing::warn!(backend = %entry.backend.key(), error = %e,
        "tower_lb: endpoint not ready; trying another");
    let next = try_another(slow, &guard, e, req);
    // The endpoint no longer counts this request.
    drop(guard);
    next
}

/// Leaves the guarded endpoint out of this request's next picks, keeping `e` to answer
/// if no other endpoint is left, and re-picks.
fn try_another<K: Key, S, Req>(
    slow: &mut Option<Box<Slow>>,
    guard: &InFlight<K, S>,
    e: BoxError,
    req: Option<Req>,
) -> State<K, S, Req>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
{
    let entry = guard.entry();
    let slow = slow.get_or_insert_with(Box::default);
    slow.tried.push(entry.id);
    slow.last = Some(EndpointError::new(entry.backend.key().to_string(), e).into());
    repick_state(&guard.snap, req)
}

/// The endpoint's call failed: records the failure, then the state that retries the
/// request elsewhere (when the policy kept a replay copy and the error allows it), or the
/// error to answer.
#[cold]
#[inline(never)]
fn call_failed<K: Key, S, P, Req>(
    policy: &P,
    retries: &mut usize,
    slow: &mut Option<Box<Slow>>,
    guard: &InFlight<K, S>,
    e: BoxError,
    replay: &mut Option<Req>,
) -> Result<State<K, S, Req>, BoxError>
where
    S: Service<Req> + Clone + Send + Sync + 'static,
    P: RequestPolicy<Req>,
{
    let entry = guard.entry();
    entry.state.record_failure();
    entry.state.set_last_failure(crate::error::chain(&*e));
    if *retries > 0 && replay.as_ref().is_some_and(|r| policy.retry_on(r, &e)) {
        tracing::warn!(backend = %entry.backend.key(), error = %e,
            "tower_lb: request failed before reaching the backend; retrying elsewhere");
        *retries -= 1;
        return Ok(try_another(slow, guard, e, replay.take()));
    }
    tracing::debug!(backend = %entry.backend.key(), error = %e, "tower_lb: request failed");
    Err(EndpointError::new(entry.backend.key().to_string(), e).into())
}

impl<K, S, P, Req> Attempt<K, S, P, Req>
where
    S: Service<Req>,
{
    /// Drops what the attempt holds (its endpoint's call and in-flight guard) without
    /// recording anything; it must not be polled again.
    fn cancel(self: Pin<&mut Self>) {
        self.project().state.set(State::Done);
    }
}

impl<K, S, P, Req> Future for Attempt<K, S, P, Req>
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
                    let time = PickTime::new(&snap.clock);
                    let next = match pick(snap, this.key.as_ref(), &slow.tried, &time) {
                        Some(Ok(pos)) => ready_state(
                            snap.clone(),
                            pos,
                            req,
                            time.at(),
                            this.policy,
                            *this.retries,
                            this.slow,
                        ),
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
                        let guard = guard.take().expect("guard is present until called");
                        let next = call_state(this.policy, *this.retries, guard, svc, req, *picked);
                        this.state.set(next);
                    }
                    Poll::Ready(Err(e)) => {
                        let guard = guard.take().expect("guard is present until called");
                        let next = not_ready(this.slow, guard, e.into(), req.take());
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
                                let now = guard.snap.clock.now_ns();
                                entry.state.observe_rtt_ns(now.saturating_sub(t0), now);
                            }
                            this.state.set(State::Done);
                            return Poll::Ready(Ok(rsp));
                        }
                        Err(e) => {
                            match call_failed(
                                this.policy,
                                this.retries,
                                this.slow,
                                guard,
                                e.into(),
                                replay,
                            ) {
                                Ok(next) => this.state.set(next),
                                Err(err) => {
                                    this.state.set(State::Done);
                                    return Poll::Ready(Err(err));
                                }
                            }
                        }
                    }
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}
