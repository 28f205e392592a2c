//! The published experiments of `benches/simulate.rs`, at a third of their size, as
//! regression tests: the order of the strategies and the tail figures they reach.

use std::time::Duration;

use tower_lb::{
    balance::strategy::{LeastConn, P2c, RoundRobin, Strategy},
    test_util::sim::{BackendModel, Latency, Report, Simulation},
    Balance,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn run(sim: &Simulation, strategy: impl Strategy) -> Report {
    sim.run(Balance::builder().strategy(strategy)).unwrap()
}

#[test]
fn buoyant_slow_backend_round_robin_loses_what_it_sends_there() {
    let mut fleet = vec![BackendModel::new(Latency::log_normal(ms(20), 0.5).capped(ms(200))); 11];
    fleet[0] = fleet[0]
        .clone()
        .latency_during(secs(5)..secs(15), Latency::constant(secs(2)));
    let sim = Simulation::new(fleet)
        .seed(2016)
        .open_loop(1_000.0)
        .duration(secs(20))
        .timeout(secs(1));
    let rr = run(&sim, RoundRobin::new());
    let lc = run(&sim, LeastConn::new());
    let ewma = run(&sim, P2c::with_seed(1).peak_ewma());
    assert_eq!(rr.requests, 20_000);
    // One eleventh of the 10,000 requests of the slow window time out.
    assert_eq!(rr.timeouts, 909, "{rr}");
    assert!(lc.success_rate() > 0.99, "{lc}");
    // Peak EWMA learns from the requests dropped at the timeout, so it beats least
    // connections here (Buoyant: ~99.9 % against ~99 %).
    assert!(ewma.success_rate() > 0.995, "{ewma}");
    assert!(ewma.success_rate() >= lc.success_rate(), "{ewma}\n{lc}");
    assert!(ewma.success_rate() > rr.success_rate() + 0.02);
    assert!(lc.backends[0].share < rr.backends[0].share / 1.5);
}

#[test]
fn tower_demo_peak_ewma_keeps_the_tail_near_100_ms() {
    let max = [1, 10, 10, 10, 10, 100, 100, 100, 100, 1_000];
    let fleet =
        max.map(|m| BackendModel::new(Latency::uniform(Duration::ZERO, ms(m))).concurrency(50));
    let sim = Simulation::new(fleet)
        .seed(221)
        .closed_loop(50)
        .requests(30_000)
        .duration(secs(3_600))
        .timeout(secs(10));
    let rr = run(&sim, RoundRobin::new());
    let ewma = run(&sim, P2c::with_seed(1).peak_ewma());
    assert_eq!(ewma.requests, 30_000);
    assert_eq!(ewma.successes, 30_000);
    assert!(rr.p99 > ms(800), "{rr}");
    assert!(ewma.p99 < ms(120), "{ewma}");
    assert!(ewma.backends[9].share < 0.005, "{ewma}");
    assert!(ewma.p50 < rr.p50);
}
