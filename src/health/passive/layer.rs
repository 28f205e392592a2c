use std::{fmt, sync::Arc};

use tower_layer::Layer;

use super::{
    service::{PassiveHealth, Shared},
    FailureStatuses, Policy, Window,
};
use crate::balance::{EndpointState, Target};

/// Applies [`PassiveHealth`] to one endpoint's service. Made per endpoint inside the
/// endpoint maker, from the [`Target`] it is given. See the [module docs](super) for an
/// example.
///
/// Defaults: the [`Window`] policy (nginx: 1 failure within 10 s ejects for 10 s), the
/// [`FailureStatuses`] classifier (errors, 502/503/504, gRPC `UNAVAILABLE` and
/// `DEADLINE_EXCEEDED`), probation on, max ejection share 50 %.
#[must_use]
pub struct PassiveHealthLayer<C = FailureStatuses> {
    backend: Arc<str>,
    state: Arc<EndpointState>,
    policy: Arc<dyn Policy>,
    classifier: C,
    probation: bool,
    max_share: f64,
}

impl<C: Clone> Clone for PassiveHealthLayer<C> {
    fn clone(&self) -> Self {
        Self {
            backend: self.backend.clone(),
            state: self.state.clone(),
            policy: self.policy.clone(),
            classifier: self.classifier.clone(),
            probation: self.probation,
            max_share: self.max_share,
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for PassiveHealthLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassiveHealthLayer")
            .field("backend", &self.backend)
            .field("policy", &self.policy)
            .field("classifier", &self.classifier)
            .field("probation", &self.probation)
            .field("max_ejection_share", &self.max_share)
            .finish()
    }
}

impl PassiveHealthLayer {
    /// Passive health for the endpoint `target` describes, with the defaults above.
    pub fn new<K: fmt::Display>(target: &Target<'_, K>) -> Self {
        Self::from_state(target.key().to_string(), target.state_arc())
    }

    /// Passive health writing to `state`, naming the backend `backend` in `tracing`
    /// events: for endpoints made outside a balancer's maker, and tests.
    pub fn from_state(backend: impl Into<String>, state: Arc<EndpointState>) -> Self {
        Self {
            backend: Arc::from(backend.into()),
            state,
            policy: Arc::new(Window::new()),
            classifier: FailureStatuses::new(),
            probation: true,
            max_share: 0.5,
        }
    }
}

impl<C> PassiveHealthLayer<C> {
    /// The same settings for another endpoint: configure one layer, then call this in
    /// the maker for each target.
    pub fn for_target<K: fmt::Display>(&self, target: &Target<'_, K>) -> Self
    where
        C: Clone,
    {
        Self {
            backend: Arc::from(target.key().to_string()),
            state: target.state_arc(),
            ..self.clone()
        }
    }

    /// Sets the ejection policy: [`Window`] (nginx, the default), [`Consecutive`](super::Consecutive)
    /// (Envoy) or your own.
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// Sets the classifier that tells failures from successes: any tower-http
    /// [`ClassifyResponse`](tower_http::classify::ClassifyResponse) that is `Clone`.
    pub fn classifier<C2>(self, classifier: C2) -> PassiveHealthLayer<C2> {
        PassiveHealthLayer {
            backend: self.backend,
            state: self.state,
            policy: self.policy,
            classifier,
            probation: self.probation,
            max_share: self.max_share,
        }
    }

    /// Probation (linkerd, default on): when an ejection ends, one trial request goes to
    /// the endpoint, and no other until its verdict; success readmits it, failure ejects it
    /// again for longer. Off: the endpoint is readmitted as soon as its ejection ends.
    pub fn probation(mut self, on: bool) -> Self {
        self.probation = on;
        self
    }

    /// Never eject more than this share of the balancer's endpoints (Envoy
    /// `max_ejection_percent`, default 0.5), but always allow one ejection (gRPC). Clamped
    /// to `0.0..=1.0`.
    pub fn max_ejection_share(mut self, share: f64) -> Self {
        self.max_share = super::ejection_share(share);
        self
    }
}

impl<C> PassiveHealthLayer<C> {
    /// The settings and state one endpoint's passive health writes through (also used by
    /// endpoints that judge outcomes themselves, such as `tcp::TcpEndpoint`).
    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::new(Shared {
            backend: self.backend.clone(),
            state: self.state.clone(),
            memory: self.state.slot::<super::Memory>(),
            outlier: self.state.slot::<super::outlier::Tally>(),
            policy: self.policy.clone(),
            probation: self.probation,
            max_share: self.max_share,
        })
    }
}

impl<S, C: Clone> Layer<S> for PassiveHealthLayer<C> {
    type Service = PassiveHealth<S, C>;

    fn layer(&self, inner: S) -> PassiveHealth<S, C> {
        PassiveHealth::from_parts(inner, self.shared(), self.classifier.clone())
    }
}

// === the builder's shortcut ===

impl<K: fmt::Display, P, L> crate::balance::Builder<K, P, L>
where
    K: crate::balance::Key,
{
    /// Passive health on every endpoint with `policy` ([`Window`](super::Window), nginx,
    /// or [`Consecutive`](super::Consecutive), Envoy) and the stock failure classes:
    /// [`PassiveHealthLayer`] added around the endpoint layers so far, so it sees what
    /// they return (an [`endpoint_timeout`](crate::balance::Builder::endpoint_timeout)
    /// added before counts as a failure).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::service_fn;
    /// use tower_lb::{balance::Target, health::passive::Window, Backend, Balance};
    ///
    /// let balance = Balance::builder()
    ///     .backends(["a", "b"].map(Backend::new))
    ///     .endpoint_timeout(Duration::from_secs(2))
    ///     .passive_health(Window::new().max_fails(3))
    ///     .build(|_t: &Target<'_, &'static str>| {
    ///         service_fn(|_req: http::Request<()>| async {
    ///             Ok::<_, tower_lb::BoxError>(http::Response::new(String::new()))
    ///         })
    ///     })
    ///     .unwrap();
    /// # let _ = balance;
    /// ```
    pub fn passive_health<Po: super::Policy + Clone>(
        self,
        policy: Po,
    ) -> crate::balance::Builder<
        K,
        P,
        crate::balance::Around<
            L,
            crate::balance::PerEndpoint<impl Fn(&Target<'_, K>) -> PassiveHealthLayer>,
        >,
    > {
        self.endpoint_layer(move |t: &Target<'_, K>| {
            PassiveHealthLayer::new(t).policy(policy.clone())
        })
    }
}
