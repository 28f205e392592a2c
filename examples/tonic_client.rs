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

/// Writes one line of the demo's output (stdout from `main`, a buffer in the tests).
macro_rules! say {
    ($out:expr, $($t:tt)*) => {{
        let _ = writeln!($out, $($t)*);
    }};
}

use std::{net::SocketAddr, time::Duration};

use tokio::{net::TcpListener, task::JoinSet};
use tonic::transport::{server::TcpIncoming, Channel, Endpoint, Server};
use tonic_health::{
    pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest},
    server::HealthReporter,
};
use tower_lb::{
    balance::{strategy::P2c, Status, Target},
    health::{
        active::{GrpcProbe, Prober},
        passive::{PassiveHealth, Window},
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

/// The user's part: one lazy `Channel` per backend (the balancer, not tonic, chooses
/// where each call goes), passive health judging each call by the `grpc-status` in its
/// trailers (3 `UNAVAILABLE` or `DEADLINE_EXCEEDED` within 10 s eject a server for 10 s).
fn pool(servers: &[SocketAddr]) -> Result<Pool, BoxError> {
    Ok(Balance::builder()
        .strategy(P2c::new().peak_ewma())
        .backends(servers.iter().copied().map(Backend::new))
        .passive_health(Window::new().max_fails(3))
        .build(|t: &Target<'_, SocketAddr>| {
            Endpoint::from_shared(format!("http://{}", t.key()))
                .expect("a socket address makes a valid URI")
                .timeout(Duration::from_secs(2))
                .connect_lazy()
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

/// Runs the demo, writing what happened to `out`.
async fn run(out: &mut (impl std::io::Write + Send)) -> Result<(), BoxError> {
    let names = ["a", "b", "c"];
    let mut servers = Vec::new();
    let mut reporters = Vec::new();
    for name in names {
        let (addr, reporter) = server().await?;
        say!(out, "server {name} on {addr}");
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
    say!(out, "before: {CALLS} calls, {serving} answered SERVING");
    let before = calls(&pool, &servers);
    for ((name, addr), (n, status)) in names.iter().zip(&servers).zip(&before) {
        say!(out, "  {name} {addr:<16} {n:>3} calls  {status}");
    }

    // `b` stays up but tells its health checks it is not serving.
    reporters[1]
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    say!(out, "b set to NOT_SERVING");
    let waited = tokio::time::Instant::now();
    while calls(&pool, &servers)[1].1 != Status::Down {
        if waited.elapsed() > Duration::from_secs(10) {
            return Err("the prober did not mark b down within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    say!(out, "b marked down by the prober");

    let serving = check_all(&client).await?;
    say!(out, "after: {CALLS} more calls, {serving} answered SERVING");
    let after = calls(&pool, &servers);
    for (((name, addr), (n, status)), (was, _)) in
        names.iter().zip(&servers).zip(&after).zip(&before)
    {
        say!(out, "  {name} {addr:<16} {:>3} calls  {status}", n - was);
    }
    say!(
        out,
        "b got {} of {CALLS} calls after it was marked down",
        after[1].0 - before[1].0
    );
    Ok(())
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
    run(&mut std::io::stdout()).await
}

#[cfg(test)]
#[path = "support/mod.rs"]
mod support;

#[cfg(test)]
mod tests {
    use crate::support::{count_before, line};

    #[tokio::test]
    async fn a_not_serving_server_gets_no_more_calls() {
        let mut out = Vec::new();
        super::run(&mut out).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        line(&out, "before: 30 calls, 30 answered SERVING");
        line(&out, "b marked down by the prober");
        line(&out, "after: 30 more calls, 30 answered SERVING");
        line(&out, "b got 0 of 30 calls after it was marked down");
        let after = &out[out.find("after:").expect("an after: line")..];
        let b = line(after, "b 127.0.0.1:");
        assert_eq!(count_before(b, "calls"), 0, "{out}");
        assert!(b.ends_with("down"), "{out}");
        let (a, c) = (line(after, "a 127.0.0.1:"), line(after, "c 127.0.0.1:"));
        assert_eq!(
            count_before(a, "calls") + count_before(c, "calls"),
            30,
            "{out}"
        );
    }
}
