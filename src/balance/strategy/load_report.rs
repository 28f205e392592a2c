//! Weighted round robin from backends' own load reports (gRPC A58, Envoy client-side WRR).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{weighted_rr::Edf, Candidates, RequestKey, RoundRobin, Strategy, WeightedRoundRobin};

/// The per-endpoint record of load reports that [`LoadReport`] weighs endpoints by: gRPC
/// A58's endpoint weight, kept with the endpoint's state
/// ([`EndpointState::slot`](crate::balance::EndpointState::slot)) so it survives
/// discovery updates.
///
/// A response layer writes it ([`record`](Self::record)): the stock one is
/// `http::load_report::ReadReportsLayer` (feature `http`), which reads ORCA reports from
/// response headers and gRPC trailers; a custom endpoint (a TCP protocol with its own
/// reports, say) may call `record` itself. The strategy reads it once per weight update
/// ([`weight_at`](Self::weight_at)). Both go through this type's methods only, so the
/// rules of A58's `UpdateWeight` and `GetWeight` live here and nowhere else.
///
/// Everything is atomics: recording a report takes no lock. A weight update that races a
/// report may see the fields of two consecutive reports of the same backend, each valid.
///
/// ```
/// use std::time::Duration;
/// use tokio::time::Instant;
/// use tower_lb::balance::strategy::ReportedLoad;
///
/// let load = ReportedLoad::default();
/// let t0 = Instant::now();
/// // 100 requests/s at 25 % CPU, no errors.
/// load.record(t0, 0.25, 0.0, 100.0, 0.0);
/// let (blackout, expiry) = (Duration::from_secs(10), Duration::from_secs(180));
/// // Not usable during the blackout period, then qps ÷ utilization.
/// assert_eq!(load.weight_at(t0 + Duration::from_secs(5), 1.0, blackout, expiry), 0.0);
/// load.record(t0 + Duration::from_secs(10), 0.25, 0.0, 100.0, 0.0);
/// assert_eq!(load.weight_at(t0 + Duration::from_secs(10), 1.0, blackout, expiry), 400.0);
/// ```
#[derive(Debug)]
pub struct ReportedLoad {
    base: Instant,
    /// The last usable report's rate (`f64` bits).
    qps: AtomicU64,
    /// Its error rate (`f64` bits).
    eps: AtomicU64,
    /// Its utilization: application utilization if set, else CPU (`f64` bits).
    utilization: AtomicU64,
    /// When the last usable report came (ns since `base`, plus 1; 0: never).
    last_updated: AtomicU64,
    /// Since when reports have come without a lapse (ns since `base`, plus 1; 0: not
    /// since the last lapse, A58's "infinity").
    non_empty_since: AtomicU64,
    reports: AtomicU64,
    ignored: AtomicU64,
    malformed: AtomicU64,
}

impl Default for ReportedLoad {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            qps: AtomicU64::new(0),
            eps: AtomicU64::new(0),
            utilization: AtomicU64::new(0),
            last_updated: AtomicU64::new(0),
            non_empty_since: AtomicU64::new(0),
            reports: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        }
    }
}

impl ReportedLoad {
    fn stamp(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64 + 1
    }

    fn since(&self, stamp: u64, now: Instant) -> Duration {
        let at = self.base + Duration::from_nanos(stamp - 1);
        now.saturating_duration_since(at)
    }

    /// Records one load report received at `now` (A58 `UpdateWeight`). The utilization
    /// is `application_utilization` when above 0, else `cpu_utilization` (gRPC, Envoy);
    /// `qps` is ORCA's `rps_fractional`, `eps` its errors per second.
    ///
    /// A report with no utilization or no requests (either ≤ 0, or not a finite number)
    /// carries no weight: it is counted as ignored and changes nothing, as in A58.
    pub fn record(
        &self,
        now: Instant,
        cpu_utilization: f64,
        application_utilization: f64,
        qps: f64,
        eps: f64,
    ) {
        let utilization = if application_utilization > 0.0 {
            application_utilization
        } else {
            cpu_utilization
        };
        let usable = |v: f64| v.is_finite() && v > 0.0;
        if !usable(utilization) || !usable(qps) {
            self.ignored.fetch_add(1, Relaxed);
            return;
        }
        let eps = if eps.is_finite() && eps > 0.0 {
            eps
        } else {
            0.0
        };
        self.qps.store(qps.to_bits(), Relaxed);
        self.eps.store(eps.to_bits(), Relaxed);
        self.utilization.store(utilization.to_bits(), Relaxed);
        let stamp = self.stamp(now);
        // The first report since the last lapse starts the blackout period.
        let _ = self
            .non_empty_since
            .compare_exchange(0, stamp, Relaxed, Relaxed);
        self.last_updated.store(stamp, Relaxed);
        self.reports.fetch_add(1, Relaxed);
    }

    /// The endpoint (re)joined the available set (A58 `OnSubchannelBecomesReady`): its
    /// reports must cover a new blackout period before its weight is used again.
    pub fn restart_blackout(&self) {
        self.non_empty_since.store(0, Relaxed);
    }

    /// Counts a report that could not be parsed (it changes nothing else).
    pub fn record_malformed(&self) {
        self.malformed.fetch_add(1, Relaxed);
    }

    /// The weight at `now` (A58 `GetWeight`): 0 if no report came within
    /// `expiration` (and then the next report starts a new blackout), 0 while reports
    /// have come for less than `blackout`, else
    /// `qps ÷ (utilization + eps ÷ qps × error_penalty)`.
    pub fn weight_at(
        &self,
        now: Instant,
        error_penalty: f64,
        blackout: Duration,
        expiration: Duration,
    ) -> f64 {
        let last = self.last_updated.load(Relaxed);
        if last == 0 {
            return 0.0;
        }
        if self.since(last, now) >= expiration {
            // Stale: forget the run of reports, so fresh ones sit out the blackout again.
            self.non_empty_since.store(0, Relaxed);
            return 0.0;
        }
        let since = self.non_empty_since.load(Relaxed);
        if since == 0 || (!blackout.is_zero() && self.since(since, now) < blackout) {
            return 0.0;
        }
        let qps = f64::from_bits(self.qps.load(Relaxed));
        let eps = f64::from_bits(self.eps.load(Relaxed));
        let utilization = f64::from_bits(self.utilization.load(Relaxed));
        let weight = qps / (utilization + eps / qps * error_penalty);
        if weight.is_finite() && weight > 0.0 {
            weight
        } else {
            0.0
        }
    }

    /// Reports recorded with a weight.
    pub fn reports(&self) -> u64 {
        self.reports.load(Relaxed)
    }

    /// Reports without utilization or requests, which carry no weight.
    pub fn ignored(&self) -> u64 {
        self.ignored.load(Relaxed)
    }

    /// Reports that could not be parsed.
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Relaxed)
    }
}

/// The shortest weight update period gRPC allows (shorter ones are raised to it).
const MIN_UPDATE_PERIOD: Duration = Duration::from_millis(100);

/// Weights are scaled so that the heaviest endpoint weighs this much in the schedule:
/// ratios stay exact to one part in a million.
const SCALE: f64 = (1u32 << 20) as f64;

/// Weighted round robin by the load each backend reports: gRPC's `weighted_round_robin`
/// (A58) and Envoy's `client_side_weighted_round_robin`, from ORCA reports read by
/// `http::load_report::ReadReportsLayer` (feature `http`) in each endpoint's stack.
///
/// Each endpoint weighs `qps ÷ (utilization + eps ÷ qps × error_utilization_penalty)`,
/// from its latest report ([`ReportedLoad`]), where utilization is the report's
/// `application_utilization` if above 0, else its `cpu_utilization`. Weights are
/// recomputed every [`weight_update_period`](Self::weight_update_period) (and when the
/// set of available endpoints changes), not per response; between updates picks follow
/// the earliest-deadline-first schedule of [`WeightedRoundRobin`] over those weights.
///
/// | setting | gRPC A58 | Envoy `ClientSideWeightedRoundRobin` | here, default |
/// |---|---|---|---|
/// | error penalty | `error_utilization_penalty` 1.0 | `error_utilization_penalty` 1.0 | [`error_utilization_penalty`](Self::error_utilization_penalty), 1.0 |
/// | blackout | `blackout_period` 10 s | `blackout_period` 10 s | [`blackout_period`](Self::blackout_period), 10 s |
/// | expiry | `weight_expiration_period` 3 min | `weight_expiration_period` 3 min | [`weight_expiration_period`](Self::weight_expiration_period), 3 min |
/// | update | `weight_update_period` 1 s, at least 100 ms | `weight_update_period` 1 s, at least 100 ms | [`weight_update_period`](Self::weight_update_period), 1 s, at least 100 ms |
/// | reports | per call (trailers) or out of band | per call (`endpoint-load-metrics` headers) or out of band | per response, headers or trailers; no out-of-band stream |
///
/// - A weight is usable once reports have come for [`blackout_period`](Self::blackout_period)
///   since the first one with a weight, and until no report has come for
///   [`weight_expiration_period`](Self::weight_expiration_period); after such a lapse
///   the blackout starts again with the next report.
/// - With fewer than two endpoints holding a usable weight, every endpoint weighs the
///   same: plain round robin over all, as A58 says.
/// - Otherwise an endpoint without a usable weight (new, in blackout, expired) weighs the
///   mean of the usable weights, so it still gets traffic and can start reporting.
/// - An endpoint that joins the available set (new, or back from an ejection or a failed
///   probe) sits out a new blackout, as a gRPC subchannel that becomes ready does.
/// - The backends' configured weights are not used (A58 ignores them too).
///
/// ```
/// use std::time::Duration;
/// use tower_lb::balance::strategy::{LoadReport, WeightedRoundRobin};
///
/// let lb = WeightedRoundRobin::from_load_reports()
///     .blackout_period(Duration::from_secs(5))
///     .error_utilization_penalty(2.0);
/// # let _ = lb;
/// let same = LoadReport::new();
/// # let _ = same;
/// ```
///
/// See `http::load_report` (feature `http`) for the layers on both sides.
#[derive(Debug)]
pub struct LoadReport {
    penalty: f64,
    blackout: Duration,
    expiration: Duration,
    update_period: Duration,
    rr: RoundRobin,
    table: Mutex<Table>,
}

/// The weights in force and the schedule over them.
#[derive(Debug, Default)]
struct Table {
    /// The list the weights describe: generation, address, length.
    list: (u64, usize, usize),
    /// Its endpoints' report records, by position.
    loads: Vec<Arc<ReportedLoad>>,
    /// When the weights are next recomputed.
    next_update: Option<Instant>,
    /// Scaled weights by position; empty while fewer than two are usable (round robin).
    weights: Vec<u32>,
    /// The usable weights as computed, by position (0: none); for stats and tests.
    raw: Vec<f64>,
    /// Changes with every recomputation, so the schedule takes the new weights.
    epoch: u64,
    edf: Edf,
}

impl Default for LoadReport {
    fn default() -> Self {
        Self {
            penalty: 1.0,
            blackout: Duration::from_secs(10),
            expiration: Duration::from_secs(180),
            update_period: Duration::from_secs(1),
            rr: RoundRobin::new(),
            table: Mutex::new(Table::default()),
        }
    }
}

impl WeightedRoundRobin {
    /// Weighted round robin by the backends' load reports: [`LoadReport::new`].
    pub fn from_load_reports() -> LoadReport {
        LoadReport::new()
    }
}

impl LoadReport {
    /// The strategy with A58's defaults: penalty 1.0, blackout 10 s, expiry 3 min,
    /// update every second.
    pub fn new() -> Self {
        Self::default()
    }

    /// How much the error rate (eps ÷ qps) adds to the utilization (A58, Envoy
    /// `error_utilization_penalty`; default 1.0; 0 ignores errors). Negative or not a
    /// number: the default.
    #[must_use]
    pub fn error_utilization_penalty(mut self, penalty: f64) -> Self {
        self.penalty = if penalty.is_finite() && penalty >= 0.0 {
            penalty
        } else {
            1.0
        };
        self
    }

    /// How long an endpoint must have reported before its weight is used (A58, Envoy
    /// `blackout_period`; default 10 s; zero: at once).
    #[must_use]
    pub fn blackout_period(mut self, period: Duration) -> Self {
        self.blackout = period;
        self
    }

    /// After how long without a report a weight is dropped (A58, Envoy
    /// `weight_expiration_period`; default 3 min).
    #[must_use]
    pub fn weight_expiration_period(mut self, period: Duration) -> Self {
        self.expiration = period;
        self
    }

    /// How often weights are recomputed from the latest reports (A58, Envoy
    /// `weight_update_period`; default 1 s; raised to 100 ms if shorter, as gRPC does).
    #[must_use]
    pub fn weight_update_period(mut self, period: Duration) -> Self {
        self.update_period = period.max(MIN_UPDATE_PERIOD);
        self
    }

    /// The weights in force, by candidate position of the last list picked from: `None`
    /// for each endpoint without a usable weight; empty before the first pick. While
    /// fewer than two are usable the strategy is plain round robin.
    pub fn weights(&self) -> Vec<Option<f64>> {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.raw.iter().map(|&w| (w > 0.0).then_some(w)).collect()
    }

    /// Recomputes the weights at `now` from the reports (A58's weight update timer).
    fn update(&self, table: &mut Table, now: Instant) {
        table.raw.clear();
        table.raw.extend(
            table
                .loads
                .iter()
                .map(|l| l.weight_at(now, self.penalty, self.blackout, self.expiration)),
        );
        let usable: Vec<f64> = table.raw.iter().copied().filter(|&w| w > 0.0).collect();
        table.weights.clear();
        if usable.len() >= 2 {
            let mean = usable.iter().sum::<f64>() / usable.len() as f64;
            let max = usable.iter().copied().fold(0.0, f64::max);
            table.weights.extend(table.raw.iter().map(|&w| {
                let w = if w > 0.0 { w } else { mean };
                ((w / max * SCALE).round() as u32).max(1)
            }));
        }
        table.epoch += 1;
        table.next_update = Some(now + self.update_period);
    }
}

impl Strategy for LoadReport {
    fn pick(&self, candidates: &Candidates<'_>, key: Option<&RequestKey>) -> Option<usize> {
        let n = candidates.len();
        if n <= 1 {
            return if n == 1 { Some(0) } else { None };
        }
        let now = candidates.now();
        // One lock per pick, as weighted round robin takes; a poisoned lock only means
        // another pick panicked, and the table is whole between steps.
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let list = (
            candidates.generation(),
            candidates.as_ptr() as usize,
            candidates.len(),
        );
        if list != table.list {
            // A new set of available endpoints: their records, and weights at once. One
            // that was not available before (recovered, or new) starts a new blackout,
            // as a gRPC subchannel that becomes ready does.
            let loads: Vec<Arc<ReportedLoad>> = candidates.iter().map(|c| c.state.slot()).collect();
            // (The first list is no join: its blackouts start with their first reports.)
            let first = table.list == (0, 0, 0);
            for l in &loads {
                if !first && !table.loads.iter().any(|old| Arc::ptr_eq(old, l)) {
                    l.restart_blackout();
                }
            }
            table.loads = loads;
            table.list = list;
            self.update(&mut table, now);
        } else if table.next_update.is_none_or(|t| now >= t) {
            self.update(&mut table, now);
        }
        if table.weights.len() != n {
            drop(table);
            return self.rr.pick(candidates, key);
        }
        let Table {
            weights,
            epoch,
            edf,
            ..
        } = &mut *table;
        Some(edf.pick_by(candidates, *epoch, |i| weights[i]))
    }

    fn wants_rebuild(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "load-report"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{
        strategy::{Candidate, CandidateList},
        EndpointState,
    };

    const S: Duration = Duration::from_secs(1);

    /// `n` detached endpoints and their report records.
    fn endpoints(n: usize) -> (CandidateList, Vec<Arc<ReportedLoad>>) {
        let states: Vec<Arc<EndpointState>> = (0..n)
            .map(|_| Arc::new(EndpointState::detached()))
            .collect();
        let loads = states.iter().map(|s| s.slot::<ReportedLoad>()).collect();
        let list = CandidateList::new(
            states
                .into_iter()
                .enumerate()
                .map(|(i, s)| Candidate::with_state(s, i as u64, 1))
                .collect(),
        );
        (list, loads)
    }

    fn counts(lb: &LoadReport, list: &CandidateList, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; list.view().len()];
        for _ in 0..picks {
            counts[lb.pick(&list.view(), None).unwrap()] += 1;
        }
        counts
    }

    /// Every endpoint reports `(cpu, qps)` at time `now`.
    fn report(loads: &[Arc<ReportedLoad>], reports: &[(f64, f64)]) {
        let now = Instant::now();
        for (l, &(cpu, qps)) in loads.iter().zip(reports) {
            l.record(now, cpu, 0.0, qps, 0.0);
        }
    }

    #[test]
    fn the_formula_is_a58s() {
        let load = ReportedLoad::default();
        let t = Instant::now();
        let (b, e) = (Duration::ZERO, Duration::from_secs(180));
        // 100 qps, 50 % CPU, 10 errors/s: 100 ÷ (0.5 + 0.1 × penalty).
        load.record(t, 0.5, 0.0, 100.0, 10.0);
        assert_eq!(load.weight_at(t, 1.0, b, e), 100.0 / 0.6);
        assert_eq!(load.weight_at(t, 0.0, b, e), 200.0);
        assert_eq!(load.weight_at(t, 2.0, b, e), 100.0 / 0.7);
        // Application utilization wins over CPU when set.
        load.record(t, 0.5, 0.25, 100.0, 0.0);
        assert_eq!(load.weight_at(t, 1.0, b, e), 400.0);
        // Reports without weight are ignored: the last weight stands.
        load.record(t, 0.0, 0.0, 100.0, 0.0);
        load.record(t, 0.5, 0.0, 0.0, 0.0);
        load.record(t, f64::NAN, 0.0, 100.0, 0.0);
        load.record(t, 0.5, 0.0, f64::INFINITY, 0.0);
        assert_eq!(load.weight_at(t, 1.0, b, e), 400.0);
        assert_eq!((load.reports(), load.ignored()), (2, 4));
        // Never reported: no weight.
        assert_eq!(ReportedLoad::default().weight_at(t, 1.0, b, e), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn blackout_then_usable() {
        let load = ReportedLoad::default();
        let (b, e) = (Duration::from_secs(10), Duration::from_secs(180));
        let t0 = Instant::now();
        load.record(t0, 0.5, 0.0, 100.0, 0.0);
        for s in 0..10 {
            tokio::time::advance(S).await;
            load.record(Instant::now(), 0.5, 0.0, 100.0, 0.0);
            let w = load.weight_at(Instant::now(), 1.0, b, e);
            if s < 9 {
                assert_eq!(w, 0.0, "{}s after the first report", s + 1);
            } else {
                assert_eq!(w, 200.0, "10 s after the first report");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_restarts_the_blackout() {
        let load = ReportedLoad::default();
        let (b, e) = (Duration::from_secs(10), Duration::from_secs(180));
        load.record(Instant::now(), 0.5, 0.0, 100.0, 0.0);
        tokio::time::advance(10 * S).await;
        assert_eq!(load.weight_at(Instant::now(), 1.0, b, e), 200.0);
        // Still usable just before the expiry, gone at it.
        tokio::time::advance(170 * S - Duration::from_millis(1)).await;
        assert_eq!(load.weight_at(Instant::now(), 1.0, b, e), 200.0);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(load.weight_at(Instant::now(), 1.0, b, e), 0.0);
        // A fresh report sits out a new blackout.
        load.record(Instant::now(), 0.5, 0.0, 100.0, 0.0);
        tokio::time::advance(9 * S).await;
        assert_eq!(load.weight_at(Instant::now(), 1.0, b, e), 0.0);
        tokio::time::advance(S).await;
        assert_eq!(load.weight_at(Instant::now(), 1.0, b, e), 200.0);
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_until_two_weights_are_usable() {
        let (list, loads) = endpoints(3);
        let lb = LoadReport::new().blackout_period(Duration::ZERO);
        // No reports: round robin.
        assert_eq!(counts(&lb, &list, 300), [100, 100, 100]);
        // One endpoint with a weight: still round robin over all.
        report(&loads[..1], &[(0.1, 1000.0)]);
        tokio::time::advance(S).await;
        assert_eq!(counts(&lb, &list, 300), [100, 100, 100]);
        assert_eq!(lb.weights(), [Some(10_000.0), None, None]);
        // Two: weighted, the third at the mean of the two.
        report(&loads[1..2], &[(0.4, 1000.0)]);
        tokio::time::advance(S).await;
        // Weights 10000, 2500 and their mean 6250: 8 : 2 : 5.
        assert_eq!(counts(&lb, &list, 15 * 100), [800, 200, 500]);
        assert_eq!(lb.weights(), [Some(10_000.0), Some(2_500.0), None]);
    }

    #[tokio::test(start_paused = true)]
    async fn weights_change_only_on_the_update_period() {
        let (list, loads) = endpoints(2);
        let lb = LoadReport::new().blackout_period(Duration::ZERO);
        report(&loads, &[(0.5, 100.0), (0.25, 100.0)]);
        assert_eq!(counts(&lb, &list, 300), [100, 200]);
        // New reports do not change the weights before the period ends…
        report(&loads, &[(0.25, 100.0), (0.5, 100.0)]);
        tokio::time::advance(S - Duration::from_millis(1)).await;
        assert_eq!(counts(&lb, &list, 300), [100, 200]);
        // …and do at its end.
        tokio::time::advance(Duration::from_millis(1)).await;
        let got = counts(&lb, &list, 300);
        // The schedule keeps each endpoint's place across the change: within one pick.
        assert!(got[0].abs_diff(200) <= 1, "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn blackout_and_expiry_through_the_strategy() {
        let (list, loads) = endpoints(2);
        let lb = LoadReport::new();
        for _ in 0..9 {
            report(&loads, &[(0.5, 100.0), (0.25, 100.0)]);
            tokio::time::advance(S).await;
            assert_eq!(counts(&lb, &list, 30), [15, 15], "in blackout");
        }
        report(&loads, &[(0.5, 100.0), (0.25, 100.0)]);
        tokio::time::advance(S).await;
        assert_eq!(counts(&lb, &list, 30), [10, 20], "after the blackout");
        // No report for three minutes: round robin again.
        tokio::time::advance(Duration::from_secs(180)).await;
        assert_eq!(counts(&lb, &list, 30), [15, 15], "expired");
        assert_eq!(lb.weights(), [None, None]);
    }

    #[tokio::test(start_paused = true)]
    async fn large_sets_use_the_deadline_schedule() {
        let (list, loads) = endpoints(64);
        let lb = LoadReport::new().blackout_period(Duration::ZERO);
        // Half at 10 % utilization, half at 40 %: weights 4 : 1.
        let reports: Vec<(f64, f64)> = (0..64)
            .map(|i| if i % 2 == 0 { (0.1, 10.0) } else { (0.4, 10.0) })
            .collect();
        report(&loads, &reports);
        let got = counts(&lb, &list, 32 * 5 * 10);
        for (i, &c) in got.iter().enumerate() {
            assert_eq!(c, if i % 2 == 0 { 40 } else { 10 }, "endpoint {i}: {got:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_returning_endpoint_sits_out_a_new_blackout() {
        let (list, loads) = endpoints(3);
        let lb = LoadReport::new();
        for _ in 0..10 {
            report(&loads, &[(0.5, 100.0), (0.25, 100.0), (0.25, 100.0)]);
            tokio::time::advance(S).await;
        }
        let _ = counts(&lb, &list, 1);
        assert_eq!(lb.weights(), [Some(200.0), Some(400.0), Some(400.0)]);
        // Endpoint 2 leaves the available set (ejected), then comes back.
        let items: Vec<Candidate> = list.view().to_vec();
        let without = CandidateList::with_generation(items[..2].to_vec(), 1);
        let _ = counts(&lb, &without, 1);
        let back = CandidateList::with_generation(items, 2);
        let _ = counts(&lb, &back, 1);
        report(&loads, &[(0.5, 100.0), (0.25, 100.0), (0.25, 100.0)]);
        // Its reports count from here: no weight (the mean of the others) for 10 s.
        assert_eq!(lb.weights(), [Some(200.0), Some(400.0), None]);
        for _ in 0..10 {
            tokio::time::advance(S).await;
            report(&loads, &[(0.5, 100.0), (0.25, 100.0), (0.25, 100.0)]);
        }
        let _ = counts(&lb, &back, 1);
        assert_eq!(lb.weights(), [Some(200.0), Some(400.0), Some(400.0)]);
    }

    #[test]
    fn settings_are_clamped() {
        let lb = LoadReport::new()
            .error_utilization_penalty(-1.0)
            .weight_update_period(Duration::from_millis(1));
        assert_eq!(lb.penalty, 1.0);
        assert_eq!(lb.update_period, MIN_UPDATE_PERIOD);
        let lb = LoadReport::new().error_utilization_penalty(f64::NAN);
        assert_eq!(lb.penalty, 1.0);
    }

    #[test]
    fn one_or_no_candidate() {
        let lb = LoadReport::new();
        assert_eq!(lb.pick(&CandidateList::new(vec![]).view(), None), None);
        assert_eq!(
            lb.pick(&crate::balance::strategy::list_of(&[1]).view(), None),
            Some(0)
        );
    }
}
