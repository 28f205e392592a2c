//! The HTTP side of one configuration as an axum `Router`, and the service the listener
//! serves: it reads the current configuration for each request, so a reload takes effect
//! for the next request on every open connection, and requests in flight finish on the
//! configuration they started with.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use arc_swap::ArcSwap;
use axum::{
    body::{Body, Bytes, HttpBody},
    http::{header, HeaderValue, Request, Response, StatusCode},
    routing::get,
    Router,
};
use futures_util::{
    future::{Either, MapOk},
    TryFutureExt,
};
use tower::{util::Oneshot, Service, ServiceExt};
use tower_lb::{
    util::{call_now, CallNow},
    BoxError,
};

use crate::{
    admin,
    pool::{Front, FrontBody},
    state::State,
};

/// The admin endpoints' paths: served by the router, never proxied.
const HEALTH: &str = "/health";
const METRICS: &str = "/metrics";
const STATUS: &str = "/status";

/// The HTTP side of one configuration.
pub(crate) struct App {
    router: Router,
    /// The default pool, when it is the only place a proxied request can go (no route
    /// prefixes): a request for any path but the admin ones goes straight to it, as the
    /// router's fallback would send it, without matching it against the routes, and
    /// without the router's boxed service and future.
    direct: Option<Front>,
}

impl App {
    pub(crate) fn new(state: &Arc<State>) -> Self {
        Self {
            router: router(state),
            direct: state.only_pool().map(|p| p.front.clone()),
        }
    }
}

/// Serves whatever configuration is current.
#[derive(Clone)]
pub(crate) struct Current(pub(crate) Arc<ArcSwap<App>>);

/// What the listener answers with: a pool's answer as it is, or the router's.
pub(crate) type AnswerBody = http_body_util::Either<FrontBody, Body>;

fn direct_answer(rsp: Response<FrontBody>) -> Response<AnswerBody> {
    rsp.map(http_body_util::Either::Left)
}

fn routed_answer(rsp: Response<Body>) -> Response<AnswerBody> {
    rsp.map(http_body_util::Either::Right)
}

type Answer<F, B> = MapOk<F, fn(Response<B>) -> Response<AnswerBody>>;

impl<B> Service<Request<B>> for Current
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    Router: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<AnswerBody>;
    type Error = Infallible;
    type Future = Either<
        Answer<CallNow<Front, Request<Body>>, FrontBody>,
        Answer<Oneshot<Router, Request<B>>, Body>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let app = self.0.load();
        match &app.direct {
            Some(front) if !matches!(req.uri().path(), HEALTH | METRICS | STATUS) => {
                // A request without a body (most) needs no boxed one.
                let req = req.map(|b| {
                    if b.is_end_stream() {
                        Body::empty()
                    } else {
                        Body::new(b)
                    }
                });
                let answer: fn(_) -> _ = direct_answer;
                // Called at once when ready (a balancer always is), so the response
                // future is built in place rather than moved in at its first poll.
                Either::Left(call_now(front.clone(), req).map_ok(answer))
            }
            _ => {
                let answer: fn(_) -> _ = routed_answer;
                Either::Right(Router::clone(&app.router).oneshot(req).map_ok(answer))
            }
        }
    }
}

/// Admin endpoints, then one route per prefix (the URI is passed on unchanged, as nginx
/// `proxy_pass` without a URI does), then the default pool.
fn router(state: &Arc<State>) -> Router {
    let mut app: Router = Router::new()
        .route(HEALTH, get(|| async { "OK\n" }))
        .route(
            METRICS,
            get({
                let state = state.clone();
                move || async move {
                    let mut rsp = Response::new(Body::from(admin::metrics(&state)));
                    rsp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(tower_lb::metrics::prometheus_text::CONTENT_TYPE),
                    );
                    rsp
                }
            }),
        )
        .route(
            STATUS,
            get({
                let state = state.clone();
                move || async move { axum::Json(admin::status_json(&state)) }
            }),
        );
    for (prefix, pool_name) in &state.routes {
        let svc = state.pools[pool_name].service.clone();
        let base = prefix.trim_end_matches('/');
        app = app
            .route_service(&format!("{base}/{{*rest}}"), svc.clone())
            .route_service(if base.is_empty() { "/" } else { base }, svc.clone());
        if !base.is_empty() {
            app = app.route_service(&format!("{base}/"), svc);
        }
    }
    match state.fallback_pool() {
        Some(default) => app.fallback_service(default.service.clone()),
        None => app.fallback(|| async {
            let mut rsp = Response::new(Body::from("404 Not Found: no route\n"));
            *rsp.status_mut() = StatusCode::NOT_FOUND;
            rsp
        }),
    }
}
