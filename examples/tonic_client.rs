//! A tonic gRPC client balanced over three servers: one lazy `Channel` per backend with
//! passive health judging each call by its `grpc-status`, p2c over peak EWMA, and the
//! `grpc.health.v1` prober taking out a server that reports `NOT_SERVING`.
//!
//! ```sh
//! cargo run --example tonic_client --features grpc
//! ```
//!
//! It starts three tonic servers in-process (`a`, `b`, `c`) serving the gRPC health
//! service, sends `Check` calls through the balancer, sets `b` to `NOT_SERVING`, waits for
//! the prober to mark it down, sends more calls and prints how many each server got.

use std::{net::SocketAddr, time::Duration};

use tokio::{net::TcpListener, task::JoinSet};
use tonic::transport::{server::TcpIncoming, Channel, Endpoint, Server};
use tonic_health::{
    pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest},
    server::HealthReporter,
};
use tower::ServiceBuilder;
use tower_lb::{
    balance::{strategy::P2c, Status, Target},
    health::{
        active::{GrpcProbe, Prober},
        passive::{PassiveHealth, PassiveHealthLayer, Window},
    },
    Backend, Balance, BoxError,
};

/// Calls per phase.
const CALLS: usize = 30;

/// Every endpoint: a tonic `Channel` to one server, under passive health.
type Pool = Balance<SocketAddr, PassiveHealth<Channel>>;

/// A gRPC server on an ephemeral port serving `grpc.health.v1.Health`; the reporter sets
/// what it answers (`SERVING` to start with).
async fn server() -> Result<(SocketAddr, HealthReporter), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    Ok((addr, reporter))
}

fn pool(servers: &[SocketAddr]) -> Result<Pool, BoxError> {
    Ok(Balance::builder()
        .strategy(P2c::new().peak_ewma())
        .backends(servers.iter().copied().map(Backend::new))
        .build(|t: &Target<'_, SocketAddr>| {
            // One HTTP/2 connection per backend, opened on the first call; the balancer,
            // not tonic, chooses where each call goes.
            let channel = Endpoint::from_shared(format!("http://{}", t.key()))
                .expect("a socket address makes a valid URI")
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(2))
                .connect_lazy();
            ServiceBuilder::new()
                // A gRPC call's status arrives in the trailers, so passive health judges it
                // when the response stream ends: 3 `UNAVAILABLE` or `DEADLINE_EXCEEDED`
                // answers (or transport errors) within 10 s eject the server for 10 s.
                .layer(PassiveHealthLayer::new(t).policy(Window::new().max_fails(3)))
                .service(channel)
        })?)
}

/// Sends `CALLS` health checks at once, each from its own task through a clone of the
/// client (clones share the balancer); returns how many answered `SERVING`.
///
/// The endpoints' error type is tonic's, so the calls can be awaited in spawned tasks as
/// they are. Were it `BoxError` (endpoints behind a `BoxCloneSyncService`), rustc could not
/// prove the balancer's future `Send` there ("implementation of `From` is not general
/// enough"): box it first, as `examples/axum_client.rs` does.
async fn check_all(client: &HealthClient<Pool>) -> Result<usize, BoxError> {
    let mut calls = JoinSet::new();
    for _ in 0..CALLS {
        let mut client = client.clone();
        calls.spawn(async move { client.check(HealthCheckRequest::default()).await });
    }
    let mut serving = 0;
    while let Some(rsp) = calls.join_next().await {
        if rsp??.into_inner().status() == ServingStatus::Serving {
            serving += 1;
        }
    }
    Ok(serving)
}

/// Calls sent to each server so far, and its status, in `servers` order.
fn calls(pool: &Pool, servers: &[SocketAddr]) -> Vec<(u64, Status)> {
    let stats = pool.stats();
    servers
        .iter()
        .map(|addr| {
            let b = stats
                .backends
                .iter()
                .find(|b| b.key == *addr)
                .expect("every server is a backend");
            (b.requests, b.status)
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The prober's `marked down` event, on stderr.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tower_lb=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let names = ["a", "b", "c"];
    let mut servers = Vec::new();
    let mut reporters = Vec::new();
    for name in names {
        let (addr, reporter) = server().await?;
        println!("server {name} on {addr}");
        servers.push(addr);
        reporters.push(reporter);
    }

    let pool = pool(&servers)?;
    let _prober = Prober::new(GrpcProbe::new())
        .interval(Duration::from_millis(200))
        .fast_interval(Duration::from_millis(100))
        .fall(2)
        .spawn(&pool)?;
    // `Balance` is a `Service<http::Request<tonic::body::Body>>`, so tonic's generated
    // clients take it in place of a `Channel`.
    let client = HealthClient::new(pool.clone());

    let serving = check_all(&client).await?;
    println!("before: {CALLS} calls, {serving} answered SERVING");
    let before = calls(&pool, &servers);
    for ((name, addr), (n, status)) in names.iter().zip(&servers).zip(&before) {
        println!("  {name} {addr:<16} {n:>3} calls  {status}");
    }

    // `b` stays up but tells its health checks it is not serving.
    reporters[1]
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    println!("b set to NOT_SERVING");
    let waited = tokio::time::Instant::now();
    while calls(&pool, &servers)[1].1 != Status::Down {
        if waited.elapsed() > Duration::from_secs(10) {
            return Err("the prober did not mark b down within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("b marked down by the prober");

    let serving = check_all(&client).await?;
    println!("after: {CALLS} more calls, {serving} answered SERVING");
    let after = calls(&pool, &servers);
    for (((name, addr), (n, status)), (was, _)) in
        names.iter().zip(&servers).zip(&after).zip(&before)
    {
        println!("  {name} {addr:<16} {:>3} calls  {status}", n - was);
    }
    println!(
        "b got {} of {CALLS} calls after it was marked down",
        after[1].0 - before[1].0
    );
    Ok(())
}
