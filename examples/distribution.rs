//! Balances requests over three in-process backends, one of them slow, with each strategy,
//! and prints where the requests went and how long they took.
//!
//! ```sh
//! cargo run --release --example distribution --features test-util
//! ```

/// Writes one line of the demo's output (stdout from `main`, a buffer in the tests).
macro_rules! say {
    ($out:expr, $($t:tt)*) => {{
        let _ = writeln!($out, $($t)*);
    }};
}

use std::{convert::Infallible, time::Duration};

use tokio::time::Instant;
use tower::{service_fn, ServiceExt};
use tower_lb::{
    balance::{
        strategy::{LeastConn, P2c, Random, RoundRobin, Strategy, WeightedRoundRobin},
        Target,
    },
    Backend, Balance,
};

const REQUESTS: usize = 3_000;
const CONCURRENCY: usize = 32;

/// A backend that answers after its configured delay.
fn backend(t: &Target<'_, String>) -> tower::util::BoxCloneSyncService<(), String, Infallible> {
    let name = t.key().clone();
    let delay = *t
        .backend()
        .meta::<Duration>()
        .expect("every backend has a delay");
    tower::util::BoxCloneSyncService::new(service_fn(move |_: ()| {
        let name = name.clone();
        async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(name)
        }
    }))
}

async fn run(out: &mut impl std::io::Write, name: &str, strategy: impl Strategy) {
    let balance = Balance::builder()
        .strategy(strategy)
        .backends([
            Backend::new("fast-a".to_string())
                .with_weight(1)
                .with_meta(Duration::from_millis(2)),
            Backend::new("fast-b".to_string())
                .with_weight(1)
                .with_meta(Duration::from_millis(2)),
            Backend::new("slow-c".to_string())
                .with_weight(1)
                .with_meta(Duration::from_millis(20)),
        ])
        .build(backend)
        .expect("valid configuration");

    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let balance = balance.clone();
        workers.push(tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            for _ in (w..REQUESTS).step_by(CONCURRENCY) {
                let t0 = Instant::now();
                balance
                    .clone()
                    .oneshot(())
                    .await
                    .expect("in-memory backends never fail");
                worst = worst.max(t0.elapsed());
            }
            worst
        }));
    }
    let mut worst = Duration::ZERO;
    for w in workers {
        worst = worst.max(w.await.expect("worker finished"));
    }
    let elapsed = start.elapsed();

    let stats = balance.stats();
    let shares: Vec<String> = stats
        .backends
        .iter()
        .map(|b| {
            format!(
                "{} {:>5.1}%",
                b.key,
                100.0 * b.requests as f64 / REQUESTS as f64
            )
        })
        .collect();
    say!(
        out,
        "{name:<22} {}   {:>6.0} req/s   worst {:>3} ms",
        shares.join("  "),
        REQUESTS as f64 / elapsed.as_secs_f64(),
        worst.as_millis()
    );
}

/// Every strategy in turn, writing the table to `out`.
async fn demo(out: &mut impl std::io::Write) {
    say!(out,
        "{REQUESTS} requests, {CONCURRENCY} at a time, over fast-a (2 ms), fast-b (2 ms), slow-c (20 ms)\n"
    );
    run(out, "round robin", RoundRobin::new()).await;
    run(out, "weighted round robin", WeightedRoundRobin::new()).await;
    run(out, "random", Random::new()).await;
    run(out, "least connections", LeastConn::new()).await;
    run(out, "p2c (pending)", P2c::new()).await;
    run(out, "p2c (peak EWMA)", P2c::new().peak_ewma()).await;
}

#[tokio::main]
async fn main() {
    demo(&mut std::io::stdout()).await;
}

#[cfg(test)]
#[path = "support/mod.rs"]
mod support;

#[cfg(test)]
mod tests {
    use crate::support::line;

    #[tokio::test]
    async fn every_strategy_runs_and_shares_add_up() {
        let mut out = Vec::new();
        super::demo(&mut out).await;
        let out = String::from_utf8(out).unwrap();
        for strategy in [
            "round robin ",
            "weighted round robin",
            "random",
            "least connections",
            "p2c (pending)",
            "p2c (peak EWMA)",
        ] {
            let l = line(&out, strategy);
            let shares: Vec<f64> = l
                .split_whitespace()
                .filter_map(|w| w.strip_suffix('%'))
                .map(|w| w.parse().expect("a share"))
                .collect();
            assert_eq!(shares.len(), 3, "{l:?}");
            let total: f64 = shares.iter().sum();
            assert!(
                (total - 100.0).abs() < 0.5,
                "shares add up to {total}: {l:?}"
            );
        }
        // Round robin over equal weights is exact, whatever the timing.
        let rr = line(&out, "round robin ");
        assert_eq!(rr.matches("33.3%").count(), 3, "{rr:?}");
    }
}
