//! The slice → backend rules, and the buffering of lists.

use super::*;
use serde_json::{json, Value};

/// A slice from JSON, the way the API server sends it.
#[allow(clippy::needless_pass_by_value)]
fn slice(name: &str, family: &str, ports: Value, endpoints: Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": { "name": name, "labels": { SERVICE_LABEL: "svc" } },
        "addressType": family,
        "ports": ports,
        "endpoints": endpoints,
    }))
    .unwrap()
}

fn http(port: u16) -> Value {
    json!([{ "name": "http", "port": port, "protocol": "TCP" }, { "name": "admin", "port": 9901 }])
}

#[allow(clippy::needless_pass_by_value)]
fn ep(addr: &str, conditions: Value) -> Value {
    json!({ "addresses": [addr], "conditions": conditions })
}

fn table(set: &[Desired<SocketAddr>]) -> Vec<(String, bool)> {
    set.iter()
        .map(|d| (d.backend.key().to_string(), d.draining))
        .collect()
}

fn row(a: &str, draining: bool) -> (String, bool) {
    (a.to_owned(), draining)
}

#[test]
fn unset_conditions_mean_ready() {
    let s = slice(
        "a",
        "IPv4",
        http(8080),
        json!([
            { "addresses": ["10.0.0.1"] },
            ep("10.0.0.2", json!({})),
            ep("10.0.0.3", json!({ "ready": true })),
        ]),
    );
    assert_eq!(
        table(&backends([&s], Some("http"), None)),
        [
            row("10.0.0.1:8080", false),
            row("10.0.0.2:8080", false),
            row("10.0.0.3:8080", false)
        ]
    );
}

#[test]
fn not_ready_endpoints_are_left_out() {
    let s = slice(
        "a",
        "IPv4",
        http(80),
        json!([
            ep("10.0.0.1", json!({ "ready": false })),
            ep(
                "10.0.0.2",
                json!({ "ready": false, "serving": false, "terminating": true })
            ),
            ep("10.0.0.3", json!({ "ready": true })),
        ]),
    );
    assert_eq!(
        table(&backends([&s], Some("http"), None)),
        [row("10.0.0.3:80", false)]
    );
}

#[test]
fn terminating_endpoints_drain_while_others_are_ready() {
    let s = slice(
        "a",
        "IPv4",
        http(80),
        json!([
            ep(
                "10.0.0.1",
                json!({ "ready": false, "serving": true, "terminating": true })
            ),
            ep("10.0.0.2", json!({ "ready": true })),
        ]),
    );
    assert_eq!(
        table(&backends([&s], Some("http"), None)),
        [row("10.0.0.1:80", true), row("10.0.0.2:80", false)]
    );
}

#[test]
fn terminating_endpoints_serve_when_nothing_else_does() {
    let s = slice(
        "a",
        "IPv4",
        http(80),
        json!([
            ep(
                "10.0.0.1",
                json!({ "ready": false, "serving": true, "terminating": true })
            ),
            ep("10.0.0.2", json!({ "ready": false })),
        ]),
    );
    assert_eq!(
        table(&backends([&s], Some("http"), None)),
        [row("10.0.0.1:80", false)]
    );
}

#[test]
fn slices_are_unioned_across_families_and_sizes() {
    let many = |prefix: &str, n: usize| -> Value {
        Value::Array(
            (0..n)
                .map(|i| ep(&format!("{prefix}{i}"), json!({ "ready": true })))
                .collect(),
        )
    };
    let a = slice("a", "IPv4", http(80), many("10.0.0.", 100));
    let b = slice("b", "IPv4", http(80), many("10.0.1.", 30));
    let c = slice("c", "IPv6", http(80), many("fd00::", 100));
    let set = backends([&a, &b, &c], Some("http"), None);
    assert_eq!(set.len(), 230);
    assert!(set
        .iter()
        .any(|d| d.backend.key().to_string() == "[fd00::63]:80"));
    assert!(set.iter().all(|d| !d.draining));
}

#[test]
fn the_port_is_chosen_by_name_per_slice() {
    // Two slices of one Service can carry different numbers for the same port name
    // (pods of two versions during a rollout).
    let a = slice("a", "IPv4", http(8080), json!([ep("10.0.0.1", json!({}))]));
    let b = slice("b", "IPv4", http(9090), json!([ep("10.0.0.2", json!({}))]));
    assert_eq!(
        table(&backends([&a, &b], Some("http"), None)),
        [row("10.0.0.1:8080", false), row("10.0.0.2:9090", false)]
    );
    assert_eq!(
        table(&backends([&a], Some("admin"), None)),
        [row("10.0.0.1:9901", false)]
    );
    // No such port, or no unnamed port: nothing.
    assert!(backends([&a], Some("grpc"), None).is_empty());
    assert!(backends([&a], None, None).is_empty());
    let unnamed = slice(
        "u",
        "IPv4",
        json!([{ "port": 7000 }]),
        json!([ep("10.0.0.3", json!({}))]),
    );
    assert_eq!(
        table(&backends([&unnamed], None, None)),
        [row("10.0.0.3:7000", false)]
    );
}

#[test]
fn fqdn_slices_and_bad_addresses_are_skipped() {
    let f = slice(
        "f",
        "FQDN",
        http(80),
        json!([ep("db.example.com", json!({}))]),
    );
    let bad = slice("b", "IPv4", http(80), json!([ep("not-an-ip", json!({}))]));
    assert!(backends([&f, &bad], Some("http"), None).is_empty());
}

#[test]
fn an_address_in_two_slices_keeps_its_best_condition() {
    let old = slice(
        "old",
        "IPv4",
        http(80),
        json!([ep(
            "10.0.0.1",
            json!({ "ready": false, "serving": true, "terminating": true })
        )]),
    );
    let new = slice(
        "new",
        "IPv4",
        http(80),
        json!([ep("10.0.0.1", json!({ "ready": true }))]),
    );
    assert_eq!(
        table(&backends([&old, &new], Some("http"), None)),
        [row("10.0.0.1:80", false)]
    );
}

fn watch() -> Watch {
    let balance = crate::Balance::builder()
        .build(|_: &crate::balance::Target<'_, SocketAddr>| {
            tower::service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>(()) })
        })
        .unwrap();
    Watch {
        sync: SetSync::new(balance.handle()),
        slices: BTreeMap::new(),
        listing: None,
    }
}

#[test]
fn a_list_is_buffered_until_it_is_complete() {
    let mut w = watch();
    let a = slice("a", "IPv4", http(80), json!([ep("10.0.0.1", json!({}))]));
    let b = slice("b", "IPv4", http(80), json!([ep("10.0.0.2", json!({}))]));
    assert!(!w.on_event(Event::Init));
    assert!(!w.on_event(Event::InitApply(a.clone())));
    assert!(!w.on_event(Event::InitApply(b.clone())));
    assert!(w.slices.is_empty());
    assert!(w.on_event(Event::InitDone));
    assert_eq!(w.slices.len(), 2);

    // A relist: the old slices stay until the new list is done, then it replaces them
    // (slice `b` was deleted while the watch was down).
    assert!(!w.on_event(Event::Init));
    assert!(!w.on_event(Event::InitApply(a)));
    assert_eq!(w.slices.len(), 2);
    assert!(w.on_event(Event::InitDone));
    assert_eq!(w.slices.keys().collect::<Vec<_>>(), ["a"]);

    assert!(w.on_event(Event::Apply(b.clone())));
    assert!(w.on_event(Event::Delete(b.clone())));
    assert!(!w.on_event(Event::Delete(b)));
}

#[test]
fn backends_carry_zone_and_node() {
    let s = slice(
        "a",
        "IPv4",
        http(8080),
        json!([
            { "addresses": ["10.0.0.1"], "zone": "eu-west-1a", "nodeName": "node-7" },
            { "addresses": ["10.0.0.2"] },
        ]),
    );
    // The same address, terminating, in another slice reporting another zone: the ready
    // endpoint's topology stays.
    let t = slice(
        "b",
        "IPv4",
        http(8080),
        json!([{ "addresses": ["10.0.0.1"], "zone": "old", "conditions": { "ready": false, "serving": true, "terminating": true } }]),
    );
    let set = backends([&s, &t], Some("http"), None);
    let topo: Vec<_> = set
        .iter()
        .map(|d| d.backend.meta::<Topology>().cloned().unwrap())
        .collect();
    assert_eq!(
        topo,
        [
            Topology {
                zone: Some("eu-west-1a".into()),
                node: Some("node-7".into())
            },
            Topology::default(),
        ]
    );
}

#[test]
fn prefer_zone_makes_other_zones_a_backup_level() {
    let s = slice(
        "a",
        "IPv4",
        http(8080),
        json!([
            { "addresses": ["10.0.0.1"], "zone": "eu-west-1a" },
            { "addresses": ["10.0.0.2"], "zone": "eu-west-1b" },
            { "addresses": ["10.0.0.3"] },
        ]),
    );
    let levels = |zone| {
        backends([&s], Some("http"), zone)
            .iter()
            .map(|d| (d.backend.key().to_string(), d.backend.priority()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        levels(Some("eu-west-1a")),
        [
            ("10.0.0.1:8080".to_owned(), 0),
            ("10.0.0.2:8080".to_owned(), 1),
            ("10.0.0.3:8080".to_owned(), 1),
        ]
    );
    assert!(levels(None).iter().all(|(_, level)| *level == 0));
}
