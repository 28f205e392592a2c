use std::time::Duration;

use super::{BackendModel, Latency, Simulation, SimulationError};
use crate::{
    balance::strategy::{LeastConn, P2c, RingHash, RoundRobin},
    Balance,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn fleet(n: usize) -> Vec<BackendModel> {
    vec![BackendModel::new(Latency::log_normal(ms(10), 0.5).capped(ms(100))); n]
}

#[test]
fn same_seed_same_report() {
    let sim = Simulation::new(fleet(5))
        .seed(42)
        .open_loop(500.0)
        .duration(secs(5));
    let run = || {
        sim.run(Balance::builder().strategy(P2c::with_seed(3).peak_ewma()))
            .unwrap()
    };
    let a = run();
    assert_eq!(a, run());
    assert_eq!(a.requests, 2_500);
    let other = Simulation::new(fleet(5))
        .seed(43)
        .open_loop(500.0)
        .duration(secs(5));
    let c = other
        .run(Balance::builder().strategy(P2c::with_seed(3).peak_ewma()))
        .unwrap();
    assert_ne!(a, c, "another seed draws other latencies");
}

#[test]
fn open_loop_rate_is_honoured() {
    let sim = Simulation::new(fleet(3))
        .open_loop(1_000.0)
        .duration(secs(10));
    let r = sim
        .run(Balance::builder().strategy(RoundRobin::new()))
        .unwrap();
    assert_eq!(r.requests, 10_000);
    assert_eq!(r.successes, 10_000);
    // The last request leaves just before 10 s and takes at most 100 ms.
    assert!(
        r.elapsed >= ms(9_999) && r.elapsed <= ms(10_101),
        "{:?}",
        r.elapsed
    );
    assert!(
        (r.throughput() - 1_000.0).abs() < 15.0,
        "{}",
        r.throughput()
    );
    for b in &r.backends {
        assert!((b.requests as i64 - 3_333).abs() <= 1, "{b:?}");
    }
}

#[test]
fn closed_loop_concurrency_is_honoured() {
    // 8 clients over constant 10 ms backends: 8 requests every 10 ms, never more in
    // flight, so a backend capped at 8 never queues.
    let one = BackendModel::new(Latency::constant(ms(10))).concurrency(8);
    let sim = Simulation::new([one]).closed_loop(8).duration(secs(1));
    let r = sim
        .run(Balance::builder().strategy(RoundRobin::new()))
        .unwrap();
    assert_eq!(r.requests, 800);
    assert_eq!(r.p999, ms(10));
    // Capped at 4, half the requests wait one service time in the queue.
    let capped = BackendModel::new(Latency::constant(ms(10))).concurrency(4);
    let r = Simulation::new([capped])
        .closed_loop(8)
        .duration(secs(1))
        .run(Balance::builder().strategy(RoundRobin::new()))
        .unwrap();
    // Four answers every 10 ms from t = 10 ms; each sends another until t = 1 s.
    assert_eq!(r.requests, 404);
    assert_eq!(r.p50, ms(20));
    assert_eq!(r.backends[0].p99, ms(20));
}

#[test]
fn requests_cap_stops_a_closed_loop() {
    let sim = Simulation::new(fleet(2)).closed_loop(10).requests(1_234);
    let r = sim
        .run(Balance::builder().strategy(LeastConn::new()))
        .unwrap();
    assert_eq!(r.requests, 1_234);
    assert_eq!(r.backends.iter().map(|b| b.requests).sum::<u64>(), 1_234);
}

#[test]
fn scripted_slow_window_shows_in_the_report() {
    let mut backends = fleet(4);
    backends[3] = backends[3]
        .clone()
        .latency_during(secs(10)..secs(20), Latency::constant(secs(2)));
    let sim = Simulation::new(backends)
        .open_loop(100.0)
        .duration(secs(30));
    let r = sim
        .run(Balance::builder().strategy(RoundRobin::new()))
        .unwrap();
    // Round robin sends backend 3 a quarter of the 1,000 requests of the window; each
    // times out at 1 s.
    assert_eq!(r.timeouts, 250);
    assert_eq!(r.requests, 3_000);
    assert_eq!(r.successes, 2_750);
    assert_eq!(r.p999, secs(1));
    assert!(
        r.backends[3].p99 < ms(101),
        "finished attempts are the fast ones"
    );
}

#[test]
fn scripted_error_rate_and_refusals() {
    let mut backends = fleet(2);
    backends[0] = backends[0].clone().error_rate_during(secs(5).., 1.0);
    backends[1] = backends[1].clone().refuse_rate(0.5);
    let sim = Simulation::new(backends)
        .open_loop(100.0)
        .duration(secs(10));
    let r = sim
        .run(Balance::builder().strategy(RoundRobin::new()).retries(1))
        .unwrap();
    assert_eq!(r.backends[0].errors, r.errors);
    assert!(r.backends[0].errors > 200, "{r}");
    assert!(r.backends[1].refused > 100, "{r}");
    assert!(r.retries > 100 && r.retries <= r.backends[1].refused, "{r}");
    assert_eq!(r.hedges, 0);
}

#[test]
fn keys_drive_hash_strategies() {
    // One key: every request goes to the same backend.
    let r = Simulation::new(fleet(4))
        .keys(1)
        .closed_loop(2)
        .requests(100)
        .run(Balance::builder().strategy(RingHash::new()))
        .unwrap();
    assert_eq!(r.backends.iter().filter(|b| b.requests == 100).count(), 1);
}

#[test]
fn bad_settings_are_typed_errors() {
    let rr = || Balance::builder().strategy(RoundRobin::new());
    assert!(matches!(
        Simulation::new([]).run(rr()),
        Err(SimulationError::NoBackends)
    ));
    assert!(matches!(
        Simulation::new(fleet(1)).open_loop(0.0).run(rr()),
        Err(SimulationError::InvalidLoad)
    ));
    assert!(matches!(
        Simulation::new(fleet(1)).closed_loop(0).run(rr()),
        Err(SimulationError::InvalidLoad)
    ));
    let bad = BackendModel::new(Latency::constant(ms(1))).error_rate(1.5);
    assert!(matches!(
        Simulation::new([bad]).run(rr()),
        Err(SimulationError::InvalidRate { backend: 0 })
    ));
    let bad = BackendModel::new(Latency::pareto(ms(1), -1.0));
    assert!(matches!(
        Simulation::new([bad]).run(rr()),
        Err(SimulationError::InvalidLatency(_))
    ));
    let bad = BackendModel::new(Latency::constant(ms(1))).concurrency(0);
    assert!(matches!(
        Simulation::new([bad]).run(rr()),
        Err(SimulationError::ZeroConcurrency { backend: 0 })
    ));
}

#[cfg(feature = "health-passive")]
#[test]
fn passive_health_in_the_endpoint_stack_ejects_a_failing_backend() {
    use crate::{balance::Target, health::passive::PassiveHealthLayer};

    let mut backends = fleet(4);
    backends[2] = backends[2].clone().error_rate_during(secs(5).., 1.0);
    let sim = Simulation::new(backends)
        .open_loop(100.0)
        .duration(secs(30));
    let plain = sim
        .run(Balance::builder().strategy(RoundRobin::new()))
        .unwrap();
    // Every request backend 2 gets from t = 5 s fails: a quarter of 2,500.
    assert_eq!(plain.backends[2].errors, 625);
    let ejecting = sim
        .run(
            Balance::builder()
                .strategy(RoundRobin::new())
                .endpoint_layer(|t: &Target<'_, usize>| PassiveHealthLayer::new(t)),
        )
        .unwrap();
    // nginx defaults: ejected for 10 s after each failure, then one trial.
    assert!(ejecting.backends[2].errors < 10, "{ejecting}");
    assert!(ejecting.success_rate() > 0.99, "{ejecting}");
}
