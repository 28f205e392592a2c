//! EndpointSlice discovery through the real kube-runtime watcher, against a fake API
//! server on 127.0.0.1.
#![allow(clippy::needless_pass_by_value)]

mod api;

use std::{net::SocketAddr, time::Duration};

use crate::support::{addr_balance, eventually, AddrSvc};

use api::FakeApi;
use serde_json::{json, Value};
use tower_lb::{balance::Status, discover::kube::EndpointSlices, Balance, Guard};

type Svc = AddrSvc;

fn balance() -> Balance<SocketAddr, Svc> {
    addr_balance()
}

/// A fake API server holding `slices`, and a balancer fed from it by `EndpointSlices`
/// (port `http`) until the guard drops.
async fn watching(slices: Vec<Value>) -> (FakeApi, Balance<SocketAddr, Svc>, Guard) {
    let api = FakeApi::start(slices).await;
    let b = balance();
    let guard = EndpointSlices::new(api.client(), "prod", "checkout")
        .port("http")
        .spawn(b.handle())
        .unwrap();
    (api, b, guard)
}

fn slice(name: &str, family: &str, endpoints: Vec<Value>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": "prod",
            "labels": { "kubernetes.io/service-name": "checkout" }
        },
        "addressType": family,
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": endpoints,
    })
}

fn ready(prefix: &str, range: std::ops::Range<usize>) -> Vec<Value> {
    range
        .map(|i| json!({ "addresses": [format!("{prefix}{i}")], "conditions": { "ready": true } }))
        .collect()
}

fn keys(b: &Balance<SocketAddr, Svc>) -> Vec<String> {
    let mut k: Vec<String> = b.handle().keys().iter().map(ToString::to_string).collect();
    k.sort();
    k
}

fn status(b: &Balance<SocketAddr, Svc>, key: &str) -> Option<Status> {
    b.stats()
        .backends
        .iter()
        .find(|s| s.key.to_string() == key)
        .map(|s| s.status)
}

#[tokio::test]
async fn a_paged_initial_list_is_applied_as_one_snapshot() {
    let api = FakeApi::start(vec![
        slice("checkout-a", "IPv4", ready("10.0.0.", 0..100)),
        slice("checkout-b", "IPv4", ready("10.0.1.", 0..50)),
        slice("checkout-c", "IPv6", ready("fd00::", 1..101)),
    ])
    .await;
    api.page_delay(Duration::from_millis(300));
    let b = balance();
    let _guard = EndpointSlices::new(api.client(), "prod", "checkout")
        .port("http")
        .page_size(1)
        .spawn(b.handle())
        .unwrap();
    // While the later pages are pending, nothing is applied: no partial Service.
    assert!(eventually(10, || api.lists() >= 1).await);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(keys(&b).is_empty());
    assert!(
        eventually(10, || keys(&b).len() == 250).await,
        "{}",
        keys(&b).len()
    );
    assert!(keys(&b).contains(&"[fd00::64]:8080".to_owned()));
    assert!(keys(&b).contains(&"10.0.1.49:8080".to_owned()));
}

#[tokio::test]
async fn watch_events_drain_terminating_endpoints_and_remove_deleted_slices() {
    let (api, b, _guard) = watching(vec![
        slice("checkout-a", "IPv4", ready("10.0.0.", 1..3)),
        slice("checkout-b", "IPv4", ready("10.0.1.", 1..2)),
    ])
    .await;
    assert!(eventually(10, || keys(&b).len() == 3).await);
    assert!(eventually(10, || api.watches() >= 1).await);

    // 10.0.0.1 starts terminating: drained, not removed.
    api.apply(slice(
        "checkout-a",
        "IPv4",
        vec![
            json!({ "addresses": ["10.0.0.1"], "conditions": { "ready": false, "serving": true, "terminating": true } }),
            json!({ "addresses": ["10.0.0.2"], "conditions": { "ready": true } }),
        ],
    ));
    assert!(eventually(10, || status(&b, "10.0.0.1:8080") == Some(Status::Draining)).await);
    assert_eq!(status(&b, "10.0.0.2:8080"), Some(Status::Healthy));

    api.delete("checkout-b");
    assert!(eventually(10, || keys(&b) == ["10.0.0.1:8080", "10.0.0.2:8080"]).await);

    // A new slice, unset conditions: ready.
    api.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": { "name": "checkout-d", "namespace": "prod",
                      "labels": { "kubernetes.io/service-name": "checkout" } },
        "addressType": "IPv4",
        "ports": [{ "name": "http", "port": 9090 }],
        "endpoints": [{ "addresses": ["10.0.3.1"] }],
    }));
    assert!(eventually(10, || keys(&b).contains(&"10.0.3.1:9090".to_owned())).await);
}

#[tokio::test]
async fn a_relist_keeps_the_set_through_errors_then_applies_the_new_list() {
    let (api, b, _guard) = watching(vec![
        slice("checkout-a", "IPv4", ready("10.0.0.", 1..3)),
        slice("checkout-b", "IPv4", ready("10.0.1.", 1..3)),
    ])
    .await;
    let before = [
        "10.0.0.1:8080",
        "10.0.0.2:8080",
        "10.0.1.1:8080",
        "10.0.1.2:8080",
    ];
    assert!(eventually(10, || keys(&b) == before).await);
    assert!(eventually(10, || api.watches() >= 1).await);

    // While the watch was down, slice b went away and c appeared; lists fail for a while.
    api.take("checkout-b");
    api.put(slice("checkout-c", "IPv4", ready("10.0.2.", 1..2)));
    api.fail_lists(true);
    let lists = api.lists();
    api.expire_watches();
    assert!(eventually(10, || api.lists() >= lists + 2).await);
    assert_eq!(keys(&b), before, "a failed relist keeps the last set");

    api.fail_lists(false);
    let after = ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.2.1:8080"];
    assert!(eventually(20, || keys(&b) == after).await, "{:?}", keys(&b));
}

#[tokio::test]
async fn prefer_zone_serves_the_local_zone_then_falls_back() {
    let zoned = |addr: &str, zone: &str| json!({ "addresses": [addr], "zone": zone, "conditions": { "ready": true } });
    let api = FakeApi::start(vec![slice(
        "checkout-a",
        "IPv4",
        vec![
            zoned("10.0.0.1", "eu-west-1a"),
            zoned("10.0.0.2", "eu-west-1b"),
            zoned("10.0.0.3", "eu-west-1b"),
        ],
    )])
    .await;
    let b = balance();
    let _guard = EndpointSlices::new(api.client(), "prod", "checkout")
        .port("http")
        .prefer_zone("eu-west-1a")
        .spawn(b.handle())
        .unwrap();
    assert!(eventually(10, || keys(&b).len() == 3).await);
    assert!(eventually(10, || api.watches() >= 1).await);
    let picks = |b: Balance<SocketAddr, Svc>| async move {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            seen.insert(b.send(()).await.unwrap().to_string());
        }
        seen.into_iter().collect::<Vec<_>>()
    };
    assert_eq!(picks(b.clone()).await, ["10.0.0.1:8080"]);

    // The local endpoint goes away: the other zone serves.
    api.apply(slice(
        "checkout-a",
        "IPv4",
        vec![
            zoned("10.0.0.2", "eu-west-1b"),
            zoned("10.0.0.3", "eu-west-1b"),
        ],
    ));
    assert!(eventually(10, || keys(&b).len() == 2).await);
    let fallback = picks(b.clone()).await;
    assert!(
        !fallback.is_empty()
            && fallback
                .iter()
                .all(|k| k == "10.0.0.2:8080" || k == "10.0.0.3:8080"),
        "{fallback:?}"
    );
}
