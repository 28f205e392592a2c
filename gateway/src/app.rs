//! The HTTP side of one configuration as an axum `Router`, and the service the listener
//! serves: it reads the current router for each request, so a reload takes effect for
//! the next request on every open connection, and requests in flight finish on the
//! router they started with.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use arc_swap::ArcSwap;
use axum::{
    body::Body,
    http::{header, HeaderValue, Request, Response, StatusCode},
    routing::get,
    Router,
};
use tower::{util::Oneshot, Service, ServiceExt};

use crate::{admin, state::State};

/// Serves whatever router is current.
#[derive(Clone)]
pub(crate) struct Current(pub(crate) Arc<ArcSwap<Router>>);

impl<B> Service<Request<B>> for Current
where
    Router: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Oneshot<Router, Request<B>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Router::clone(&self.0.load()).oneshot(req)
    }
}

/// Admin endpoints, then one route per prefix (the URI is passed on unchanged, as nginx
/// `proxy_pass` without a URI does), then the default pool.
pub(crate) fn router(state: &Arc<State>) -> Router {
    let mut app: Router = Router::new()
        .route("/health", get(|| async { "OK\n" }))
        .route(
            "/metrics",
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
            "/status",
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
    match state.pools.get("default") {
        Some(default) => app.fallback_service(default.service.clone()),
        None => app.fallback(|| async {
            let mut rsp = Response::new(Body::from("404 Not Found: no route\n"));
            *rsp.status_mut() = StatusCode::NOT_FOUND;
            rsp
        }),
    }
}
