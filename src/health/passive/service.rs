use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::Response;
use tokio::time::Instant;
use tower_http::classify::ClassifyResponse;
use tower_service::Service;

use super::{future::ResponseFuture, FailureStatuses, PassiveHealthLayer, Policy};
use crate::balance::{EndpointState, Refusal, Target};

/// Watches one endpoint's outcomes and ejects it when its [`Policy`] says so; made by
/// [`PassiveHealthLayer`]. See the [module docs](super) for the semantics and an example.
pub struct PassiveHealth<S, C = FailureStatuses> {
    inner: S,
    shared: Arc<Shared>,
    classifier: C,
}

impl<S: Clone, C: Clone> Clone for PassiveHealth<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for PassiveHealth<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassiveHealth")
            .field("inner", &self.inner)
            .field("backend", &self.shared.backend)
            .field("policy", &self.shared.policy)
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl<S> PassiveHealth<S> {
    /// Wraps `inner` with the default settings of [`PassiveHealthLayer`].
    pub fn new<K: fmt::Display>(inner: S, target: &Target<'_, K>) -> Self {
        use tower_layer::Layer;
        PassiveHealthLayer::new(target).layer(inner)
    }

    /// A layer for `target`; same as [`PassiveHealthLayer::new`].
    pub fn layer<K: fmt::Display>(target: &Target<'_, K>) -> PassiveHealthLayer {
        PassiveHealthLayer::new(target)
    }
}

impl<S, C> PassiveHealth<S, C> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared>, classifier: C) -> Self {
        Self {
            inner,
            shared,
            classifier,
        }
    }

    define_inner_service_accessors!();

    /// The endpoint state this service writes to.
    pub fn state(&self) -> &Arc<EndpointState> {
        &self.shared.state
    }
}

impl<S, C, Req, B> Service<Req> for PassiveHealth<S, C>
where
    S: Service<Req, Response = Response<B>>,
    B: http_body::Body,
    S::Error: fmt::Display,
    C: ClassifyResponse + Clone,
    C::FailureClass: fmt::Display,
{
    type Response = Response<super::ResponseBody<B, C::ClassifyEos>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    /// The inner service's readiness; a `poll_ready` error is not judged here (the request
    /// has not been sent: the balancer skips the endpoint and counts the failure).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let trial = self.shared.begin();
        let fut = self.inner.call(req);
        ResponseFuture::new(fut, self.classifier.clone(), self.shared.clone(), trial)
    }
}

// === impl Shared ===

/// One endpoint's passive-health settings and the state it writes to, shared by the
/// service's clones, its futures and bodies.
pub(crate) struct Shared {
    pub(crate) backend: Arc<str>,
    pub(crate) state: Arc<EndpointState>,
    /// Passive health's memory of this endpoint, kept with its state.
    pub(crate) memory: Arc<super::Memory>,
    /// This endpoint's verdicts for outlier detection, counted here so that both use
    /// the one classification (the classifier's).
    pub(crate) outlier: Arc<super::outlier::Tally>,
    pub(crate) policy: Arc<dyn Policy>,
    pub(crate) probation: bool,
    pub(crate) max_share: f64,
}

/// Where an endpoint stands for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Takes traffic; outcomes go to the policy.
    Normal,
    /// Ejected and the ejection has not ended: outcomes (panic-mode traffic) are ignored.
    Ejected,
    /// The ejection ended; the next verdict readmits or ejects again.
    Probation,
}

fn phase(state: &EndpointState, now: Instant) -> Phase {
    match state.ejected_until() {
        Some(until) if now < until => Phase::Ejected,
        Some(_) => Phase::Probation,
        None if state.on_probation_or_ejected() => Phase::Probation,
        None => Phase::Normal,
    }
}

/// The one probation trial in flight; dropping it (verdict in, or request cancelled) lets
/// the balancer send the next request.
pub(crate) struct Trial(Arc<EndpointState>);

impl Drop for Trial {
    fn drop(&mut self) {
        self.0.release_trial();
    }
}

impl Shared {
    /// Called as a request is sent: claims the probation trial when the endpoint's
    /// ejection has just ended.
    pub(crate) fn begin(&self) -> Option<Trial> {
        // Never ejected (the usual case): no trial to claim, no need to read the clock.
        if !self.probation
            || (self.state.ejected_until().is_none() && !self.state.on_probation_or_ejected())
            || phase(&self.state, Instant::now()) != Phase::Probation
        {
            return None;
        }
        if !self.state.claim_trial() {
            return None;
        }
        tracing::info!(backend = %self.backend,
            "tower_lb: ejection ended; probation: sending one trial request");
        Some(Trial(self.state.clone()))
    }

    /// A request succeeded.
    pub(crate) fn success(&self) {
        self.outlier.success();
        // The balancer's clock: every response reads it, and the time-stamp counter
        // costs a third of the system clock.
        let clock = self.state.clock();
        let now = clock.instant(clock.now_ns());
        match phase(&self.state, now) {
            Phase::Normal => self.policy.on_success(&self.memory, now),
            Phase::Ejected => {
                tracing::debug!(backend = %self.backend,
                    "tower_lb: success while ejected (panic mode); the ejection stands");
            }
            Phase::Probation => {
                self.state.readmit();
                self.memory.clear();
                if self.probation {
                    tracing::info!(backend = %self.backend,
                        "tower_lb: readmitted: the probation trial request succeeded");
                } else {
                    tracing::info!(backend = %self.backend,
                        "tower_lb: readmitted: the ejection ended (probation off)");
                }
            }
        }
    }

    /// A request failed; `count` adds it to the endpoint's failure count (errors the
    /// balancer sees are counted by the balancer itself).
    pub(crate) fn failure(&self, reason: &dyn fmt::Display, count: bool) {
        self.outlier.failure();
        if count {
            self.state.record_failure();
            self.state.set_last_failure(reason);
        }
        let now = Instant::now();
        match phase(&self.state, now) {
            Phase::Normal => self.judge(reason, now),
            Phase::Ejected => {
                tracing::debug!(backend = %self.backend, %reason,
                    "tower_lb: failure while ejected (panic mode); the ejection stands");
            }
            Phase::Probation if self.probation => {
                let time = self.policy.ejection_time(&self.memory, now);
                self.state.eject_until(crate::balance::later(now, time));
                tracing::warn!(backend = %self.backend, %reason, ejected_for = ?time,
                    times_ejected = self.state.ejections(),
                    "tower_lb: ejected again: the probation trial request failed");
            }
            Phase::Probation => {
                self.state.readmit();
                self.memory.clear();
                tracing::info!(backend = %self.backend,
                    "tower_lb: readmitted: the ejection ended (probation off)");
                self.judge(reason, now);
            }
        }
    }

    /// Feeds a failure of a serving endpoint to the policy, and ejects if it says so and
    /// the pool allows it.
    fn judge(&self, reason: &dyn fmt::Display, now: Instant) {
        let Some(why) = self.policy.on_failure(&self.memory, now) else {
            tracing::debug!(backend = %self.backend, %reason,
                "tower_lb: failure counted by passive health");
            return;
        };
        match self.state.ejection_verdict(self.max_share) {
            Ok(()) => {}
            Err(Refusal::Lone) => {
                tracing::warn!(backend = %self.backend, %reason, %why,
                    "tower_lb: not ejecting: it is the only endpoint");
                return;
            }
            Err(Refusal::Share {
                level,
                ejected,
                live,
            }) => {
                tracing::warn!(backend = %self.backend, %reason, %why,
                    level, ejected, live, max_ejection_share = self.max_share,
                    "tower_lb: not ejecting: the max ejection share of its priority level is \
                     reached and no other level can serve");
                return;
            }
        }
        let time = self.policy.ejection_time(&self.memory, now);
        self.state.eject_until(crate::balance::later(now, time));
        tracing::warn!(backend = %self.backend, %why, last_failure = %reason,
            ejected_for = ?time, times_ejected = self.state.ejections(),
            "tower_lb: ejected by passive health");
    }
}
