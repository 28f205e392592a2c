//! Two published load-balancing experiments, replayed on the fleet simulator
//! (`test_util::sim`) for every strategy of the crate, printed as Markdown tables.
//!
//! `cargo bench --bench simulate --features test-util`
//!
//! 1. Buoyant, "Beyond Round Robin: Load Balancing for Latency" (2016): 11 backends,
//!    1,000 requests/s open loop for 60 s, a 1 s timeout; backend 0 takes 2 s from
//!    t = 15 s to t = 45 s, the others ~20 ms (log-normal, median 20 ms, σ 0.5, capped at
//!    200 ms). Published success rates: round robin ~95 %, least loaded ~99 %, peak EWMA
//!    ~99.9 %.
//! 2. tower-balance's demo (tower PR #221, peak EWMA): 10 endpoints whose latency is
//!    uniform in [0, max) with max 1, 10, 10, 10, 10, 100, 100, 100, 100 and 1,000 ms,
//!    each endpoint capped at 50 concurrent requests, 50 closed-loop clients, 100,000
//!    requests, no timeout to speak of (10 s). Published for P2C peak EWMA: p50 5 ms,
//!    p99 96 ms, p999 111 ms, the 1,000 ms endpoint at 0.1 % of traffic.
//!
//! Every run is seeded: the figures are the same on every machine. `SIM_QUICK=1` runs a
//! tenth of each experiment (CI).

// The simulation runs on Tokio's paused clock; the wall clock only says how long a run took.
#![allow(clippy::disallowed_types)]

use std::time::{Duration, Instant as WallClock};

use tower_lb::{
    balance::strategy::{
        BoundedLoad, LeastConn, LoadReport, Maglev, P2c, Random, Rendezvous, RingHash, RoundRobin,
        Strategy, WeightedRoundRobin,
    },
    test_util::sim::{BackendModel, Latency, Report, Simulation},
    Balance, Builder,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Name, builder, and whether requests carry random keys (hash strategies).
fn strategies() -> Vec<(&'static str, Builder<usize>, bool)> {
    fn b(s: impl Strategy) -> Builder<usize> {
        Balance::builder().strategy(s)
    }
    vec![
        ("round robin", b(RoundRobin::new()), false),
        ("weighted round robin", b(WeightedRoundRobin::new()), false),
        ("least conn", b(LeastConn::new()), false),
        ("random", b(Random::with_seed(1)), false),
        ("p2c (in-flight)", b(P2c::with_seed(1)), false),
        ("p2c peak EWMA", b(P2c::with_seed(1).peak_ewma()), false),
        ("load report (no reports: RR)", b(LoadReport::new()), false),
        ("ring hash, random keys", b(RingHash::new()), true),
        ("maglev, random keys", b(Maglev::new()), true),
        ("rendezvous, random keys", b(Rendezvous::new()), true),
        ("bounded load, random keys", b(BoundedLoad::new()), true),
    ]
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

fn msf(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn run(sim: &Simulation, builder: Builder<usize>, keyed: bool) -> (Report, Duration) {
    let sim = if keyed {
        sim.clone().keys(10_000)
    } else {
        sim.clone()
    };
    let t0 = WallClock::now();
    let report = sim.run(builder).expect("valid simulation");
    (report, t0.elapsed())
}

fn buoyant(quick: bool) {
    let fast = BackendModel::new(Latency::log_normal(ms(20), 0.5).capped(ms(200)));
    let mut fleet = vec![fast; 11];
    let (from, to, len) = if quick { (2, 5, 6) } else { (15, 45, 60) };
    fleet[0] = fleet[0]
        .clone()
        .latency_during(secs(from)..secs(to), Latency::constant(secs(2)));
    let sim = Simulation::new(fleet)
        .seed(2016)
        .open_loop(1_000.0)
        .duration(secs(len))
        .timeout(secs(1));
    println!("### Buoyant 2016: 11 backends, 1,000 rps, backend 0 at 2 s for {} s of {len} s, 1 s timeout\n", to - from);
    println!("| strategy | success ≤ 1 s | p50 | p99 | p999 | slow backend's share | real time |");
    println!("|---|---|---|---|---|---|---|");
    for (name, builder, keyed) in strategies() {
        let (r, took) = run(&sim, builder, keyed);
        println!(
            "| {name} | {} | {} | {} | {} | {} | {:.2} s |",
            pct(r.success_rate()),
            msf(r.p50),
            msf(r.p99),
            msf(r.p999),
            pct(r.backends[0].share),
            took.as_secs_f64()
        );
    }
    println!();
}

fn tower_demo(quick: bool) {
    let max = [1, 10, 10, 10, 10, 100, 100, 100, 100, 1_000];
    let fleet =
        max.map(|m| BackendModel::new(Latency::uniform(Duration::ZERO, ms(m))).concurrency(50));
    let n = if quick { 10_000 } else { 100_000 };
    let sim = Simulation::new(fleet)
        .seed(221)
        .closed_loop(50)
        .requests(n)
        .duration(secs(3_600))
        .timeout(secs(10));
    println!("### tower-balance demo: 10 endpoints, max latency 1 ms to 1,000 ms, 50 clients, {n} requests\n");
    println!("| strategy | p50 | p99 | p999 | 1,000 ms endpoint's share | 1 ms endpoint's share | simulated | real time |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, builder, keyed) in strategies() {
        let (r, took) = run(&sim, builder, keyed);
        println!(
            "| {name} | {} | {} | {} | {} | {} | {:.1} s | {:.2} s |",
            msf(r.p50),
            msf(r.p99),
            msf(r.p999),
            pct(r.backends[9].share),
            pct(r.backends[0].share),
            r.elapsed.as_secs_f64(),
            took.as_secs_f64()
        );
    }
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special: both run.
    let quick = std::env::var_os("SIM_QUICK").is_some();
    buoyant(quick);
    tower_demo(quick);
}
