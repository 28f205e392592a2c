//! A scripted balancer for health unit tests: in-memory endpoints whose outcome is set
//! per backend, wrapped in passive health, and a strategy that can be aimed at a backend.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use tokio::sync::Notify;
use tower::{util::BoxCloneSyncService, ServiceExt};

use crate::{
    backend::stable_hash,
    balance::{
        strategy::{Candidates, RequestKey},
        Builder, EndpointState, RequestPolicy, Status, Target,
    },
    error::BoxError,
    health::passive::{PassiveHealth, PassiveHealthLayer},
    Balance,
};

pub(crate) type Body = BoxBody<Bytes, BoxError>;
pub(crate) type Ep = PassiveHealth<BoxCloneSyncService<Request<()>, Response<Body>, BoxError>>;

/// What a scripted backend answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An HTTP status.
    Status(u16),
    /// An error (connection refused).
    Refused,
    /// A gRPC answer whose trailers carry this `grpc-status`.
    Grpc(i32),
    /// 200 once the rig's gate is opened.
    Wait,
}

/// A request policy that replays the rig's requests (their body is `()`), so connect
/// failures are retried on another endpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replay;

impl RequestPolicy<Request<()>> for Replay {
    fn replay(&self, req: &Request<()>) -> Option<Request<()>> {
        let mut copy = Request::new(());
        *copy.headers_mut() = req.headers().clone();
        Some(copy)
    }
}

pub(crate) struct Rig<P = ()> {
    pub(crate) balance: Balance<&'static str, Ep, P>,
    aim: Arc<AtomicU64>,
    script: Arc<Mutex<HashMap<&'static str, Outcome>>>,
    states: Arc<Mutex<HashMap<&'static str, Arc<EndpointState>>>>,
    pub(crate) gate: Arc<Notify>,
}

fn body(bytes: &'static str) -> Body {
    Full::new(Bytes::from_static(bytes.as_bytes()))
        .map_err(|e| match e {})
        .boxed()
}

impl<P: RequestPolicy<Request<()>> + Clone> Rig<P> {
    /// Builds `builder` over scripted backends (all answering 200), each wrapped in the
    /// passive layer `layer` makes. The strategy is replaced by one that picks the aimed
    /// backend when it is a candidate, and rotates otherwise.
    pub(crate) fn new(
        builder: Builder<&'static str, P>,
        layer: impl Fn(&Target<'_, &'static str>) -> PassiveHealthLayer + Send + Sync + 'static,
    ) -> Self {
        let aim = Arc::new(AtomicU64::new(0));
        let turn = AtomicU64::new(0);
        let aimed = aim.clone();
        let strategy = move |c: &Candidates<'_>, _key: Option<&RequestKey>| {
            let target = aimed.load(Relaxed);
            c.position(target)
                .or_else(|| Some((turn.fetch_add(1, Relaxed) % c.len() as u64) as usize))
        };
        let script = Arc::new(Mutex::new(HashMap::new()));
        let states = Arc::new(Mutex::new(HashMap::new()));
        let gate = Arc::new(Notify::new());
        let (s, st, g) = (script.clone(), states.clone(), gate.clone());
        let balance = builder
            .strategy(strategy)
            .build(move |t: &Target<'_, &'static str>| {
                let name = *t.key();
                st.lock().unwrap().insert(name, t.state_arc());
                let script = s.clone();
                let gate = g.clone();
                let svc = tower::service_fn(move |_req: Request<()>| {
                    let outcome = script
                        .lock()
                        .unwrap()
                        .get(name)
                        .copied()
                        .unwrap_or(Outcome::Status(200));
                    let gate = gate.clone();
                    async move {
                        let mut rsp = match outcome {
                            Outcome::Status(code) => {
                                let mut rsp = Response::new(body("ok"));
                                *rsp.status_mut() = StatusCode::from_u16(code).unwrap();
                                rsp
                            }
                            Outcome::Refused => {
                                return Err::<Response<Body>, BoxError>(Box::new(
                                    std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                                ))
                            }
                            Outcome::Grpc(code) => {
                                let mut trailers = HeaderMap::new();
                                trailers.insert("grpc-status", code.to_string().parse().unwrap());
                                let b = Full::new(Bytes::from_static(b"\0\0\0\0\0"))
                                    .map_err(|e| match e {})
                                    .with_trailers(async move { Some(Ok(trailers)) })
                                    .boxed();
                                let mut rsp = Response::new(b);
                                rsp.headers_mut()
                                    .insert("content-type", "application/grpc".parse().unwrap());
                                rsp
                            }
                            Outcome::Wait => {
                                gate.notified().await;
                                Response::new(body("late"))
                            }
                        };
                        rsp.headers_mut().insert("x-backend", name.parse().unwrap());
                        Ok(rsp)
                    }
                });
                tower::ServiceBuilder::new()
                    .layer(layer(t))
                    .service(BoxCloneSyncService::new(svc))
            })
            .unwrap();
        Self {
            balance,
            aim,
            script,
            states,
            gate,
        }
    }

    /// Sets what `key` answers from now on.
    pub(crate) fn set(&self, key: &'static str, outcome: Outcome) {
        self.script.lock().unwrap().insert(key, outcome);
    }

    /// Prefers `key` for the next requests, while it is a candidate.
    pub(crate) fn aim(&self, key: &'static str) {
        self.aim.store(stable_hash(&key), Relaxed);
    }

    /// Sends one request and reads its body to the end; returns the backend that served
    /// it and the status.
    pub(crate) async fn send(&self) -> Result<(String, StatusCode), BoxError> {
        let rsp = self.balance.clone().oneshot(Request::new(())).await?;
        let backend = rsp.headers()["x-backend"].to_str().unwrap().to_owned();
        let status = rsp.status();
        rsp.into_body().collect().await?;
        Ok((backend, status))
    }

    /// Aims at `key` and sends one request.
    pub(crate) async fn send_to(
        &self,
        key: &'static str,
    ) -> Result<(String, StatusCode), BoxError> {
        self.aim(key);
        self.send().await
    }

    pub(crate) fn state(&self, key: &'static str) -> Arc<EndpointState> {
        self.states.lock().unwrap()[key].clone()
    }

    /// `key`'s status in a fresh stats snapshot.
    pub(crate) fn status(&self, key: &'static str) -> Status {
        self.balance
            .stats()
            .backends
            .into_iter()
            .find(|b| b.key == key)
            .unwrap()
            .status
    }

    pub(crate) fn is_ejected(&self, key: &'static str) -> bool {
        matches!(self.status(key), Status::Ejected { .. })
    }
}
