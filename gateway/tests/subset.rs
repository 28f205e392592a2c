//! `--subset-size` through the gateway binary, against six axum backends on loopback:
//! each gateway uses only its subset, and gateways with ids 0/3, 1/3 and 2/3 share the
//! backends out without overlap (deterministic subsetting, SRE book ch. 20).

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicU32, Ordering::Relaxed},
        Arc,
    },
};

use axum::{http::StatusCode, Router};

use crate::common::{self, client, get, Gateway, TestClient};
use crate::support::TestServer;

/// Six backends, each counting the requests it answers.
async fn backends() -> Vec<(TestServer, Arc<AtomicU32>)> {
    let mut out = Vec::new();
    for _ in 0..6 {
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        let server = TestServer::start(Router::new().fallback(move || {
            h.fetch_add(1, Relaxed);
            async { "ok" }
        }))
        .await;
        out.push((server, hits));
    }
    out
}

fn key(s: &TestServer) -> String {
    format!("http://{}", s.addr)
}

async fn gateway(servers: &[(TestServer, Arc<AtomicU32>)], subset: &[&str]) -> Gateway {
    let mut args: Vec<String> = subset.iter().map(|s| s.to_string()).collect();
    for (s, _) in servers {
        args.push("--backend".into());
        args.push(s.addr.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start(&args).await
}

/// Sends 60 requests; returns the backends that answered any.
async fn answered(
    c: &TestClient,
    gw: &Gateway,
    servers: &[(TestServer, Arc<AtomicU32>)],
) -> BTreeSet<String> {
    for (_, hits) in servers {
        hits.store(0, Relaxed);
    }
    for _ in 0..60 {
        let (status, _) = get(c, &gw.url("/x")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let seen: BTreeSet<String> = servers
        .iter()
        .filter(|(_, h)| h.load(Relaxed) > 0)
        .map(|(s, _)| key(s))
        .collect();
    assert!(!seen.is_empty());
    seen
}

/// The backends `/status` lists for the default pool.
async fn listed(c: &TestClient, gw: &Gateway) -> BTreeSet<String> {
    let v: serde_json::Value = serde_json::from_slice(&get(c, &gw.url("/status")).await.1).unwrap();
    v["pools"]["default"]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["backend"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn gateways_with_client_ids_share_out_the_backends() {
    let servers = backends().await;
    let all: BTreeSet<String> = servers.iter().map(|(s, _)| key(s)).collect();
    let c = client();
    let mut union = BTreeSet::new();
    for id in ["0/3", "1/3", "2/3"] {
        let gw = gateway(&servers, &["--subset-size", "2", "--client-id", id]).await;
        let subset = listed(&c, &gw).await;
        assert_eq!(subset.len(), 2, "{id}: {subset:?}");
        let seen = answered(&c, &gw, &servers).await;
        assert!(seen.is_subset(&subset), "{id}: {seen:?} outside {subset:?}");
        // Round 0 of n / k = 3 clients: the subsets are disjoint.
        assert!(
            union.is_disjoint(&subset),
            "{id}: {subset:?} overlaps {union:?}"
        );
        union.extend(subset);
    }
    assert_eq!(union, all);
}

#[tokio::test]
async fn a_subset_seed_picks_two_of_six() {
    let servers = backends().await;
    let c = client();
    let gw = gateway(&servers, &["--subset-size", "2", "--subset-seed", "42"]).await;
    let subset = listed(&c, &gw).await;
    assert_eq!(subset.len(), 2, "{subset:?}");
    let want: BTreeSet<String> = tower_lb::discover::subset::Subsetting::random(2, 42)
        .unwrap()
        .select(&servers.iter().map(|(s, _)| key(s)).collect::<Vec<_>>())
        .into_iter()
        .collect();
    assert_eq!(subset, want);
    let seen = answered(&c, &gw, &servers).await;
    assert!(seen.is_subset(&subset), "{seen:?} outside {subset:?}");
    // Without subsetting, every backend is listed.
    let full = gateway(&servers, &[]).await;
    assert_eq!(listed(&c, &full).await.len(), 6);
}

#[test]
fn bad_subset_flags_are_refused() {
    for (args, flag) in [
        (
            &["--subset-size", "2", "--client-id", "3/3"][..],
            "--client-id",
        ),
        (
            &["--subset-size", "2", "--client-id", "1"][..],
            "--client-id",
        ),
        (
            &["--subset-size", "0", "--subset-seed", "1"][..],
            "--subset-size",
        ),
        (&["--subset-size", "2"][..], "--client-id"),
        (&["--subset-seed", "2"][..], "--subset-size"),
        (
            &[
                "--subset-size",
                "2",
                "--subset-seed",
                "1",
                "--client-id",
                "0/2",
            ][..],
            "--client-id",
        ),
    ] {
        let out = std::process::Command::new(common::gateway_bin())
            .args(args)
            .args(["--backend", "127.0.0.1:9", "--check"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}
