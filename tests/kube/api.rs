//! A fake Kubernetes API server on 127.0.0.1 serving EndpointSlice list and watch
//! requests, scripted by the test.
#![allow(unreachable_pub, dead_code, clippy::needless_pass_by_value)]

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use serde_json::{json, Value};
use tokio::sync::broadcast;

#[derive(Default)]
struct Inner {
    slices: Vec<Value>,
    rv: u64,
    fail_lists: bool,
    page_delay: Duration,
    lists: usize,
    watches: usize,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<String>,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    pub async fn start(slices: Vec<Value>) -> Self {
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                rv: 1,
                ..Inner::default()
            })),
            events: broadcast::channel(64).0,
        };
        let api = Self::dummy(shared.clone());
        for s in slices {
            api.put(s);
        }
        let router = Router::new()
            .route(
                "/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices",
                get(endpointslices),
            )
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { addr, shared, task }
    }

    fn dummy(shared: Shared) -> Self {
        Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            shared,
            task: tokio::spawn(async {}),
        }
    }

    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    fn bump(&self, mut slice: Value) -> Value {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.rv += 1;
        slice["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        slice
    }

    /// Stores a slice for later lists, without a watch event.
    pub fn put(&self, slice: Value) {
        let slice = self.bump(slice);
        let mut inner = self.shared.inner.lock().unwrap();
        let name = slice["metadata"]["name"].clone();
        inner.slices.retain(|s| s["metadata"]["name"] != name);
        inner.slices.push(slice);
    }

    /// Removes a slice from later lists, without a watch event.
    pub fn take(&self, name: &str) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.slices.retain(|s| s["metadata"]["name"] != name);
    }

    /// Stores a slice and sends an `ADDED` or `MODIFIED` event.
    pub fn apply(&self, slice: Value) {
        let name = slice["metadata"]["name"].clone();
        let known = {
            let inner = self.shared.inner.lock().unwrap();
            inner.slices.iter().any(|s| s["metadata"]["name"] == name)
        };
        self.put(slice);
        let slice = {
            let inner = self.shared.inner.lock().unwrap();
            inner
                .slices
                .iter()
                .find(|s| s["metadata"]["name"] == name)
                .cloned()
                .unwrap()
        };
        let kind = if known { "MODIFIED" } else { "ADDED" };
        self.send(json!({ "type": kind, "object": slice }));
    }

    /// Removes a slice and sends a `DELETED` event.
    pub fn delete(&self, name: &str) {
        let slice = {
            let inner = self.shared.inner.lock().unwrap();
            inner
                .slices
                .iter()
                .find(|s| s["metadata"]["name"] == name)
                .cloned()
                .unwrap()
        };
        self.take(name);
        let slice = self.bump(slice);
        self.send(json!({ "type": "DELETED", "object": slice }));
    }

    /// Ends every watch with `410 Gone`: the watcher must list again.
    pub fn expire_watches(&self) {
        self.send(json!({
            "type": "ERROR",
            "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "too old resource version",
                "reason": "Expired", "code": 410
            }
        }));
    }

    pub fn fail_lists(&self, fail: bool) {
        self.shared.inner.lock().unwrap().fail_lists = fail;
    }

    /// Delay before every page but the first of a paged list.
    pub fn page_delay(&self, delay: Duration) {
        self.shared.inner.lock().unwrap().page_delay = delay;
    }

    pub fn lists(&self) -> usize {
        self.shared.inner.lock().unwrap().lists
    }

    pub fn watches(&self) -> usize {
        self.shared.inner.lock().unwrap().watches
    }

    fn send(&self, event: Value) {
        let _ = self.shared.events.send(format!("{event}\n"));
    }
}

async fn endpointslices(
    State(shared): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let rx = shared.events.subscribe();
        shared.inner.lock().unwrap().watches += 1;
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(line) => {
                        return Some((Ok::<_, Infallible>(Bytes::from(line)), rx));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    let offset: usize = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
    let delay = {
        let mut inner = shared.inner.lock().unwrap();
        inner.lists += 1;
        if inner.fail_lists {
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": "etcd is down", "reason": "InternalError",
                "code": 500
            });
            return (StatusCode::INTERNAL_SERVER_ERROR, status.to_string()).into_response();
        }
        inner.page_delay
    };
    if offset > 0 {
        tokio::time::sleep(delay).await;
    }
    let inner = shared.inner.lock().unwrap();
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    let items: Vec<Value> = inner
        .slices
        .iter()
        .skip(offset)
        .take(limit)
        .cloned()
        .collect();
    let next = offset + items.len();
    let mut metadata = json!({ "resourceVersion": inner.rv.to_string() });
    if next < inner.slices.len() {
        metadata["continue"] = json!(next.to_string());
    }
    let body = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSliceList",
        "metadata": metadata,
        "items": items,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}
