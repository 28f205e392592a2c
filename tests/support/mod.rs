//! Real HTTP servers on 127.0.0.1 for integration tests.
#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, time::Duration};

use axum::{routing::get, Router};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, task::JoinSet};

/// An axum server whose connections can all be killed at once, so that its port refuses
/// connections afterwards (axum's own `serve` leaves accepted connections running).
pub struct TestServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Serves `router` on a fresh 127.0.0.1 port.
    pub async fn start(router: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, router)
    }

    /// Serves `router` on `addr` again (after a stop), retrying while the port is busy.
    pub async fn restart(addr: SocketAddr, router: Router) -> Self {
        for _ in 0..200 {
            if let Ok(listener) = TcpListener::bind(addr).await {
                return Self::start_on(listener, router);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("could not rebind {addr}");
    }

    fn start_on(listener: TcpListener, router: Router) -> Self {
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the task drops the set, which aborts them.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let svc = TowerToHyperService::new(router.clone());
                conns.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self { addr, task }
    }

    /// Kills the listener and every connection.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A router answering every path with `name`, and `/health` with `OK`.
pub fn named(name: &'static str) -> Router {
    Router::new()
        .route("/health", get(|| async { "OK" }))
        .fallback(move || async move { name })
}

/// Polls `cond` every 10 ms for up to 10 s.
pub async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 10 s");
}
