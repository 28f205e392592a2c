//! Hedged requests: the tail with one slow or heavy-tailed backend among ten, with and
//! without hedging, on Tokio's paused clock.
//!
//! ```sh
//! cargo bench --bench hedge
//! ```
//!
//! A real `Balance` (round robin, so the bad backend keeps its tenth of the first
//! attempts; `HttpPolicy::replay_clone` with its default retry budget) over ten model
//! backends: nine answer in 10–12 ms (uniform); the tenth is either slow (200 ms) or
//! heavy-tailed (Pareto, 10 ms minimum, shape 1.1, at most 5 s). 20 clients send `GET`s
//! back to back for one simulated minute. Latencies come from seeded generators and time
//! is the paused clock, so the run is exact and the same on every machine (it measures
//! what clients see, not speed). Prints p50, p99 and p99.9 of the clients' latencies and
//! the extra requests hedging sent, as a share of the requests.

#![allow(missing_docs)]

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use http::Request;
use tokio::time::{sleep, Instant};
use tower::{service_fn, ServiceExt};
use tower_lb::{
    balance::{strategy::RoundRobin, Hedge, Target},
    http::HttpPolicy,
    Backend, Balance,
};

const BACKENDS: usize = 10;
const CLIENTS: usize = 20;
const SECONDS: u64 = 60;

#[derive(Clone, Copy)]
enum Bad {
    Slow,
    HeavyTail,
}

/// xorshift64*: a small seeded generator, one per backend.
fn next(state: &AtomicU64) -> f64 {
    let mut x = state.load(Relaxed);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    state.store(x, Relaxed);
    (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

struct Row {
    requests: u64,
    calls: u64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
}

async fn run(bad: Bad, hedge: Option<Hedge>) -> Row {
    let keys: Vec<usize> = (0..BACKENDS).collect();
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let builder = Balance::builder()
        .strategy(RoundRobin::new())
        .backends(keys.into_iter().map(Backend::new))
        .policy(HttpPolicy::new().replay_clone());
    let builder = match hedge {
        Some(h) => builder.hedge(h),
        None => builder,
    };
    let balance = builder
        .build(move |t: &Target<'_, usize>| {
            let key = *t.key();
            let rng = Arc::new(AtomicU64::new(0x9E37_79B9_7F4A_7C15 ^ (key as u64 + 1)));
            let calls = counted.clone();
            service_fn(move |_req: Request<()>| {
                calls.fetch_add(1, Relaxed);
                let u = next(&rng);
                let ms = match (key, bad) {
                    (0, Bad::Slow) => 200.0,
                    // Pareto: x_m / U^(1/α).
                    (0, Bad::HeavyTail) => (10.0 / (1.0 - u).powf(1.0 / 1.1)).min(5000.0),
                    _ => 10.0 + 2.0 * u,
                };
                async move {
                    sleep(Duration::from_secs_f64(ms / 1000.0)).await;
                    Ok::<_, Infallible>(())
                }
            })
        })
        .unwrap();
    let end = Instant::now() + Duration::from_secs(SECONDS);
    let latencies = Mutex::new(Vec::new());
    let client = || async {
        while Instant::now() < end {
            let t0 = Instant::now();
            balance.clone().oneshot(Request::new(())).await.unwrap();
            latencies.lock().unwrap().push(t0.elapsed());
        }
    };
    futures_util::future::join_all((0..CLIENTS).map(|_| client())).await;
    let mut l = latencies.into_inner().unwrap();
    l.sort();
    let q = |q: f64| l[((q * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1];
    Row {
        requests: l.len() as u64,
        calls: calls.load(Relaxed),
        p50: q(0.5),
        p99: q(0.99),
        p999: q(0.999),
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    println!("one bad backend among {BACKENDS}, round robin, {CLIENTS} clients, {SECONDS} s (paused clock)");
    println!(
        "{:<52} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "setup", "requests", "p50", "p99", "p99.9", "extra%"
    );
    for (title, bad) in [
        ("slow (200 ms)", Bad::Slow),
        ("heavy tail (Pareto α 1.1)", Bad::HeavyTail),
    ] {
        let setups: [(&str, Option<Hedge>); 4] = [
            ("no hedging", None),
            (
                "hedge after 25 ms",
                Some(Hedge::after(Duration::from_millis(25))),
            ),
            ("hedge at p95 (floor 1 ms)", Some(Hedge::percentile(0.95))),
            ("hedge at p90 (floor 1 ms)", Some(Hedge::percentile(0.9))),
        ];
        for (name, hedge) in setups {
            let row = rt.block_on(run(bad, hedge));
            let ms = |d: Duration| format!("{:.1}ms", d.as_secs_f64() * 1000.0);
            println!(
                "{:<52} {:>9} {:>9} {:>9} {:>9} {:>7.2}%",
                format!("{title}: {name}"),
                row.requests,
                ms(row.p50),
                ms(row.p99),
                ms(row.p999),
                100.0 * (row.calls - row.requests) as f64 / row.requests as f64
            );
        }
    }
}
