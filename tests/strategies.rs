//! Strategy invariants, as property tests over the public strategy API.

use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use std::sync::Arc;
use tower_lb::balance::strategy::{
    list_of, Candidate, CandidateList, LeastConn, P2c, Random, RoundRobin, Strategy,
    WeightedRoundRobin,
};
use tower_lb::balance::EndpointState;

fn all_strategies() -> Vec<Box<dyn Strategy>> {
    vec![
        Box::new(RoundRobin::new()),
        Box::new(WeightedRoundRobin::new()),
        Box::new(LeastConn::new()),
        Box::new(Random::with_seed(1)),
        Box::new(Random::with_seed(1).weighted()),
        Box::new(P2c::with_seed(1)),
        Box::new(P2c::with_seed(1).peak_ewma()),
    ]
}

#[test]
fn no_panic_with_zero_or_one_endpoint() {
    for s in all_strategies() {
        assert_eq!(s.pick(&list_of(&[]).view(), None), None, "{}", s.name());
        for _ in 0..5 {
            assert_eq!(s.pick(&list_of(&[3]).view(), None), Some(0), "{}", s.name());
        }
    }
}

#[test]
fn nginx_smooth_order_for_5_1_1() {
    let wrr = WeightedRoundRobin::new();
    let c = list_of(&[5, 1, 1]);
    let order: String = (0..14)
        .map(|_| (b'a' + wrr.pick(&c.view(), None).unwrap() as u8) as char)
        .collect();
    assert_eq!(order, "aabacaaaabacaa");
}

#[test]
fn wrr_deviation_can_exceed_one_pick() {
    // Documents why the smoothness bound in the property test is two picks, not one.
    let weights = [3u32, 7, 1, 1, 1, 7, 7, 7];
    let total: u32 = weights.iter().sum();
    let wrr = WeightedRoundRobin::new();
    let c = list_of(&weights);
    let mut counts = [0u32; 8];
    let mut worst = 0f64;
    for k in 1..=total {
        counts[wrr.pick(&c.view(), None).unwrap()] += 1;
        for (i, &w) in weights.iter().enumerate() {
            let ideal = f64::from(k) * f64::from(w) / f64::from(total);
            worst = worst.max((f64::from(counts[i]) - ideal).abs());
        }
    }
    assert!(worst > 1.0 && worst < 2.0, "{worst}");
    let per_cycle: Vec<u32> = counts.to_vec();
    assert_eq!(per_cycle, weights);
}

#[test]
fn round_robin_rotates_evenly() {
    let rr = RoundRobin::new();
    let c = list_of(&[1, 7, 1, 1]);
    let mut counts = [0; 4];
    for _ in 0..400 {
        counts[rr.pick(&c.view(), None).unwrap()] += 1;
    }
    assert_eq!(counts, [100; 4]);
}

/// Candidates with these weights over states the test keeps, each with its in-flight
/// count set.
fn with_states(weights: &[u32], loads: &[usize]) -> (CandidateList, Vec<Arc<EndpointState>>) {
    let states: Vec<Arc<EndpointState>> = weights
        .iter()
        .map(|_| Arc::new(EndpointState::detached()))
        .collect();
    for (state, &l) in states.iter().zip(loads) {
        for _ in 0..l {
            state.start_request();
        }
    }
    let list = CandidateList::new(
        weights
            .iter()
            .zip(&states)
            .enumerate()
            .map(|(i, (&w, st))| Candidate::with_state(st.clone(), i as u64, w))
            .collect(),
    );
    (list, states)
}

/// Sets each candidate's in-flight count.
fn with_loads(weights: &[u32], loads: &[usize]) -> CandidateList {
    with_states(weights, loads).0
}

fn loads_and_weights() -> impl proptest::strategy::Strategy<Value = (Vec<u32>, Vec<usize>)> {
    (1usize..12).prop_flat_map(|n| {
        (
            proptest::collection::vec(1u32..10, n),
            proptest::collection::vec(0usize..20, n),
        )
    })
}

/// Three cycles of Σw picks: each cycle gives every endpoint exactly its weight, and at
/// every prefix of k picks each endpoint's count stays within two picks of k·w/W.
fn exact_per_cycle_and_smooth(
    wrr: &WeightedRoundRobin,
    weights: &[u32],
) -> Result<(), proptest::test_runner::TestCaseError> {
    let c = list_of(weights);
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    for _cycle in 0..3 {
        let mut counts = vec![0u64; weights.len()];
        for k in 1..=total {
            counts[wrr.pick(&c.view(), None).unwrap()] += 1;
            for (i, &w) in weights.iter().enumerate() {
                let ideal = k as f64 * f64::from(w) / total as f64;
                prop_assert!(
                    (counts[i] as f64 - ideal).abs() < 2.0,
                    "prefix {k}: endpoint {i} has {} picks, ideal {ideal}",
                    counts[i]
                );
            }
        }
        let expected: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
        prop_assert_eq!(counts, expected);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Each cycle of Σw picks gives every endpoint exactly its weight, and at every prefix
    /// of k picks each endpoint's count stays within two picks of k·w/W (smoothness).
    ///
    /// One pick is not a bound: weights 3,7,1,1,1,7,7,7 deviate by 1.12 at pick 20 (see
    /// `wrr_deviation_can_exceed_one_pick`). Over 20,000 random weight vectors of this
    /// domain, simulated, the largest deviation was 1.12.
    #[test]
    fn wrr_exact_per_cycle_and_smooth(weights in proptest::collection::vec(1u32..10, 1..10)) {
        exact_per_cycle_and_smooth(&WeightedRoundRobin::new(), &weights)?;
    }

    /// The deadline schedule used above `EXACT_UP_TO` endpoints: every cycle of Σw picks
    /// gives each endpoint exactly its weight, and at every prefix of k picks each
    /// endpoint's count stays within two picks of k·w/W, as nginx's order does.
    #[test]
    fn wrr_schedule_exact_per_cycle_and_smooth(
        weights in proptest::collection::vec(1u32..50, 1..80),
    ) {
        exact_per_cycle_and_smooth(&WeightedRoundRobin::new().exact_up_to(0), &weights)?;
    }

    /// Least connections always picks an endpoint with minimal in-flight ÷ weight.
    #[test]
    fn least_conn_picks_a_minimum((weights, loads) in loads_and_weights()) {
        let list = with_loads(&weights, &loads);
        let lc = LeastConn::new();
        for _ in 0..weights.len() {
            let i = lc.pick(&list.view(), None).unwrap();
            let cost = |j: usize| loads[j] as f64 / f64::from(weights[j]);
            let min = (0..weights.len()).map(cost).fold(f64::INFINITY, f64::min);
            prop_assert!((cost(i) - min).abs() < 1e-12);
        }
    }

    /// P2C draws two distinct endpoints and never takes the worse of them.
    #[test]
    fn p2c_never_takes_the_worse((weights, loads) in loads_and_weights(), seed in any::<u64>()) {
        prop_assume!(weights.len() >= 2);
        let list = with_loads(&weights, &loads);
        let drawer = P2c::with_seed(seed);
        let picker = P2c::with_seed(seed);
        for _ in 0..20 {
            let (i, j) = drawer.draw(&list.view());
            prop_assert_ne!(i, j);
            let p = picker.pick(&list.view(), None).unwrap();
            prop_assert!(p == i || p == j);
            let other = if p == i { j } else { i };
            let cost = |k: usize| loads[k] as f64 / f64::from(weights[k]);
            prop_assert!(cost(p) <= cost(other));
        }
    }

    /// Weighted random converges to the weight shares.
    #[test]
    fn weighted_random_converges(weights in proptest::collection::vec(1u32..10, 1..8), seed in any::<u64>()) {
        let r = Random::with_seed(seed).weighted();
        let c = list_of(&weights);
        let n = 50_000;
        let mut counts = vec![0u32; weights.len()];
        for _ in 0..n {
            counts[r.pick(&c.view(), None).unwrap()] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let share = f64::from(counts[i]) / f64::from(n);
            let want = f64::from(w) / f64::from(total);
            prop_assert!((share - want).abs() < 0.02, "endpoint {i}: {share} vs {want}");
        }
    }

    /// P2C's draws follow weights: over many picks with equal loads, shares follow weight.
    #[test]
    fn p2c_draws_follow_weights(seed in any::<u64>()) {
        let p = P2c::with_seed(seed);
        let c = list_of(&[1, 3]);
        let mut first = [0u32; 2];
        for _ in 0..20_000 {
            let (i, _) = p.draw(&c.view());
            first[i] += 1;
        }
        let share = f64::from(first[1]) / 20_000.0;
        prop_assert!((share - 0.75).abs() < 0.03, "{share}");
    }

    /// Every strategy returns an index in range for any list.
    #[test]
    fn picks_are_in_range(weights in proptest::collection::vec(1u32..100, 1..50)) {
        let c = list_of(&weights);
        for s in all_strategies() {
            for _ in 0..10 {
                let i = s.pick(&c.view(), None).unwrap();
                prop_assert!(i < weights.len());
            }
        }
    }
}

#[test]
fn p2c_with_two_endpoints_always_takes_the_idle_one() {
    // Envoy draws with replacement, so the busier of two wins 25 % of the time; we never do.
    let list = with_loads(&[1, 1], &[5, 0]);
    let p = P2c::with_seed(9);
    for _ in 0..1000 {
        assert_eq!(p.pick(&list.view(), None), Some(1));
    }
}

#[test]
fn custom_candidates_work() {
    let list = CandidateList::new(vec![Candidate::detached(7, 2), Candidate::detached(9, 1)]);
    assert_eq!(list.view().position(9), Some(1));
    assert_eq!(list.view().total_weight(), 3);
}

/// The gateway's slow-backend case: two busy fast endpoints (0.5 ms, 15 requests in flight)
/// and one idle endpoint that answers in 20 ms. One local stall makes the in-flight answers
/// of the busy endpoints arrive late (8 ms); the many fast answers that follow must wash
/// that peak out, or the slow endpoint looks cheaper than the busy ones for seconds.
#[test]
fn peak_ewma_forgets_a_stall_after_fast_answers() {
    use std::time::Duration;
    use tokio::time::Instant;

    let (list, states) = with_states(&[1, 1, 1], &[15, 15, 0]);
    let view = list.view();
    let now = Instant::now();
    let ms = Duration::from_millis;
    let (fast, slow) = (&states[0..2], &states[2]);
    slow.observe_rtt(ms(20), now);
    for c in fast {
        c.observe_rtt(Duration::from_micros(500), now);
        // The stall: every in-flight answer comes back late at once.
        for _ in 0..15 {
            c.observe_rtt(ms(8), now);
        }
    }
    let p = P2c::with_seed(3).peak_ewma();
    let picks_of_slow = |p: &P2c| (0..1000).filter(|_| p.pick(&view, None) == Some(2)).count();
    // Right after the stall the busy endpoints cost 8 ms × 16: the slow one is preferred
    // whenever it is drawn, as peak EWMA intends.
    assert!(picks_of_slow(&p) > 500);
    // A few hundred fast answers later (well under a second at this rate) the peak is gone.
    for c in fast {
        for _ in 0..500 {
            c.observe_rtt(Duration::from_micros(500), now);
        }
    }
    assert_eq!(picks_of_slow(&p), 0);
    // An endpoint that stays slow keeps its peak.
    assert!(slow.ewma().unwrap() >= ms(20));
}
