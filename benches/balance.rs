//! Per-request overhead of the balancer (`ready` + `call` + await) over always-ready
//! in-memory services, per strategy and endpoint count, beside `tower::balance::p2c`.
//!
//! `cargo bench --bench balance --features test-util`

#![allow(missing_docs)] // criterion's macros generate undocumented items

mod common;

use std::time::Duration;

use common::{rt, time_requests};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tower::{
    balance::p2c,
    discover::ServiceList,
    load::{CompleteOnResponse, PendingRequests},
};
use tower_lb::{
    balance::strategy::{
        LeastConn, LoadReport, P2c, Random, RoundRobin, Strategy, WeightedRoundRobin,
    },
    test_util::{self, Echo},
    Backend, Balance,
};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

fn ours(strategy: impl Strategy, n: usize) -> Balance<u32, Echo<u32>> {
    test_util::echo(
        Balance::builder()
            .strategy(strategy)
            .backends((0..n as u32).map(Backend::new)),
    )
}

fn bench_strategies(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("request");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let strategies: [(&str, fn(usize) -> Balance<u32, Echo<u32>>); 7] = [
        ("round-robin", |n| ours(RoundRobin::new(), n)),
        ("weighted-rr", |n| ours(WeightedRoundRobin::new(), n)),
        ("least-conn", |n| ours(LeastConn::new(), n)),
        ("random", |n| ours(Random::with_seed(1), n)),
        ("p2c", |n| ours(P2c::with_seed(1), n)),
        ("p2c-ewma", |n| ours(P2c::with_seed(1).peak_ewma(), n)),
        // No backend reports here: its round-robin fallback, with the lock and the
        // once-a-second weight update it costs.
        ("load-report", |n| ours(LoadReport::new(), n)),
    ];
    for n in SIZES {
        for (name, make) in strategies {
            let mut svc = make(n);
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter_custom(|iters| time_requests(&rt, &mut svc, iters, || ()))
            });
        }
        // The harness alone: one in-memory service called directly, no balancer.
        let mut direct = test_util::echo_service(0u32);
        g.bench_with_input(BenchmarkId::new("no-balancer", n), &n, |b, _| {
            b.iter_custom(|iters| time_requests(&rt, &mut direct, iters, || ()))
        });
        // tower's p2c over the same services, tracking pending requests.
        let services: Vec<_> = (0..n as u32)
            .map(|i| {
                PendingRequests::new(test_util::echo_service(i), CompleteOnResponse::default())
            })
            .collect();
        let mut tower_p2c: p2c::Balance<_, ()> =
            p2c::Balance::new(ServiceList::new::<()>(services));
        g.bench_with_input(BenchmarkId::new("tower-p2c", n), &n, |b, _| {
            b.iter_custom(|iters| time_requests(&rt, &mut tower_p2c, iters, || ()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_strategies);
criterion_main!(benches);
