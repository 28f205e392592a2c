//! Balances HTTP requests over whatever a DNS name resolves to, re-resolved at its TTL.
//!
//! ```text
//! cargo run --example dns_discovery --features dns
//! cargo run --example dns_discovery --features dns -- localhost:8080
//! cargo run --example dns_discovery --features dns -- _http._tcp.api.internal
//! ```
//!
//! With no argument it starts an HTTP server on 127.0.0.1 and, where available, [::1] on one
//! free port, and resolves `localhost:PORT` (answered from the hosts file: no DNS server
//! needed), so both loopback addresses become backends and share the requests.

/// Writes one line of the demo's output (stdout from `main`, a buffer in the tests).
macro_rules! say {
    ($out:expr, $($t:tt)*) => {{
        let _ = writeln!($out, $($t)*);
    }};
}

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use axum::{extract::State, routing::get, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tower::{Service, ServiceExt};
use tower_lb::{
    discover::dns::DnsSource,
    http::{HttpEndpoints, HttpPolicy},
    Balance, BoxError,
};

async fn serve(addr: SocketAddr) -> Result<SocketAddr, std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/",
            get(|State(me): State<SocketAddr>| async move { me.to_string() }),
        )
        .with_state(local);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(local)
}

/// Balances over what `name` resolves to (or local servers), writing the answers to `out`.
async fn run(out: &mut (impl std::io::Write + Send), name: Option<String>) -> Result<(), BoxError> {
    let name = match name {
        Some(name) => name,
        None => {
            let v4 = serve("127.0.0.1:0".parse()?).await?;
            // Same port on IPv6 loopback, if the machine has one.
            match serve(SocketAddr::new("::1".parse()?, v4.port())).await {
                Ok(v6) => say!(out, "serving on {v4} and {v6}"),
                Err(e) => say!(out, "serving on {v4} (no IPv6 loopback: {e})"),
            }
            format!("localhost:{}", v4.port())
        }
    };

    let mut balance = Balance::builder()
        .policy(HttpPolicy::new().replay_clone())
        .build(HttpEndpoints::<Empty<Bytes>>::new())?;
    let _guard = DnsSource::parse(&name)?
        .min_ttl(Duration::from_secs(5))
        .spawn(balance.handle())?;

    // Wait for the first answer.
    for _ in 0..100 {
        if !balance.handle().keys().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    say!(out, "{name} resolved to {:?}", balance.handle().keys());

    let mut answers = BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        let req = http::Request::get("/").body(Empty::new())?;
        match balance.ready().await?.call(req).await {
            Ok(rsp) => {
                let body = rsp.into_body().collect().await?.to_bytes();
                *answers
                    .entry(String::from_utf8_lossy(&body).into_owned())
                    .or_default() += 1;
            }
            Err(e) => *answers.entry(format!("error: {e}")).or_default() += 1,
        }
    }
    for (who, n) in answers {
        say!(out, "{n:>3} answered by {who}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tower_lb=info".into()),
        )
        .init();
    run(&mut std::io::stdout(), std::env::args().nth(1)).await
}

#[cfg(test)]
#[path = "support/mod.rs"]
mod support;

#[cfg(test)]
mod tests {
    use crate::support::{count_before, line};

    #[tokio::test]
    async fn localhost_resolves_and_every_request_is_answered() {
        let mut out = Vec::new();
        super::run(&mut out, None).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        let resolved = line(&out, "localhost:");
        assert!(resolved.contains("resolved to"), "{out}");
        assert!(resolved.contains("127.0.0.1:"), "{out}");
        let answered: Vec<&str> = out
            .lines()
            .filter(|l| l.contains(" answered by "))
            .collect();
        assert!(answered.iter().any(|l| l.contains("127.0.0.1:")), "{out}");
        assert!(
            answered.iter().all(|l| !l.contains("answered by error")),
            "{out}"
        );
        let total: u64 = answered.iter().map(|l| count_before(l, "answered")).sum();
        assert_eq!(total, 20, "{out}");
    }
}
