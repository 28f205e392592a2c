//! The detector's task: one evaluation per interval over every endpoint of a balancer.

use std::{
    collections::HashMap,
    fmt,
    sync::{atomic::Ordering::Relaxed, Arc},
};

use tokio::time::Instant;

use super::{OutlierDetection, Tally};
use crate::balance::{later, strategy::Rng, EndpointState, Key, Refusal, Status, WeakHandle};

pub(super) async fn run<K: Key>(members: WeakHandle<K>, mut book: Book<K>) {
    let mut next = later(Instant::now(), book.cfg.interval);
    loop {
        tokio::time::sleep_until(next).await;
        // A weak reference: the detector never keeps a dropped balancer alive.
        let Some(set) = members.upgrade() else { return };
        let list = set.endpoints();
        drop(set);
        book.sync(list, true);
        book.evaluate(Instant::now());
        // Intervals keep their length even when an evaluation is late.
        next = later(Instant::now(), book.cfg.interval);
    }
}

/// One endpoint as the detector follows it.
struct Host {
    state: Arc<EndpointState>,
    tally: Arc<Tally>,
    /// This interval's verdicts.
    successes: u64,
    failures: u64,
    /// Requests sent in total at the last evaluation (to notice a missing passive layer).
    requests: u64,
    /// Serving (not ejected) after the last evaluation: the start of a clean interval.
    serving: bool,
}

pub(super) struct Book<K> {
    pub(super) cfg: OutlierDetection,
    rng: Rng,
    hosts: HashMap<K, Host>,
    /// The "no verdicts" warning was given.
    warned: bool,
}

/// Why the detector ejects an endpoint, for the `tracing` event.
enum Finding {
    SuccessRate {
        rate: f64,
        threshold: f64,
        mean: f64,
        stdev: f64,
    },
    FailurePercentage {
        failed: f64,
        threshold: f64,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::SuccessRate {
                rate,
                threshold,
                mean,
                stdev,
            } => write!(
                f,
                "success rate {:.1} % below {:.1} % (mean {:.1} % − stdev_factor × stdev {:.1} %)",
                rate * 100.0,
                threshold * 100.0,
                mean * 100.0,
                stdev * 100.0
            ),
            Self::FailurePercentage { failed, threshold } => write!(
                f,
                "{:.1} % of requests failed, threshold {:.1} %",
                failed * 100.0,
                threshold * 100.0
            ),
        }
    }
}

impl<K: Key> Book<K> {
    pub(super) fn new(cfg: OutlierDetection, rng: Rng) -> Self {
        Self {
            cfg,
            rng,
            hosts: HashMap::new(),
            warned: false,
        }
    }

    /// Follows the balancer's set and reads (and resets) every endpoint's verdicts of
    /// the interval; `keep` false drops them (the counts before the first interval).
    pub(super) fn sync(&mut self, members: Vec<(K, Arc<EndpointState>)>, keep: bool) {
        let mut seen = std::collections::HashSet::with_capacity(members.len());
        for (key, state) in members {
            let fresh = self
                .hosts
                .get(&key)
                .is_none_or(|h| !Arc::ptr_eq(&h.state, &state));
            if fresh {
                let tally = state.slot::<Tally>();
                let requests = state.requests();
                self.hosts.insert(
                    key.clone(),
                    Host {
                        state,
                        tally,
                        successes: 0,
                        failures: 0,
                        requests,
                        serving: false,
                    },
                );
            }
            let host = self.hosts.get_mut(&key).expect("inserted above");
            let (s, f) = host.tally.take();
            (host.successes, host.failures) = if keep { (s, f) } else { (0, 0) };
            seen.insert(key);
        }
        self.hosts.retain(|k, _| seen.contains(k));
    }

    /// One evaluation: the two tests, then the clean-interval decay.
    fn evaluate(&mut self, now: Instant) {
        self.warn_without_verdicts();
        // Only endpoints that serve normally are judged; the others are out already.
        let healthy = |h: &Host| h.state.status_at(now) == Status::Healthy;
        let mut ejected: Vec<K> = Vec::new();

        if let Some(sr) = self.cfg.success_rate {
            let qualify: Vec<(&K, f64)> = self
                .hosts
                .iter()
                .filter(|(_, h)| healthy(h))
                .filter_map(|(k, h)| {
                    let volume = h.successes + h.failures;
                    (volume > 0 && volume >= sr.request_volume)
                        .then(|| (k, h.successes as f64 / volume as f64))
                })
                .collect();
            if !qualify.is_empty() && qualify.len() >= sr.minimum_hosts {
                let n = qualify.len() as f64;
                let mean = qualify.iter().map(|(_, r)| r).sum::<f64>() / n;
                let var = qualify.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
                let stdev = var.sqrt();
                let threshold = mean - sr.stdev_factor * stdev;
                let outliers: Vec<(K, Finding)> = qualify
                    .iter()
                    .filter(|(_, rate)| *rate < threshold)
                    .map(|(k, rate)| {
                        let finding = Finding::SuccessRate {
                            rate: *rate,
                            threshold,
                            mean,
                            stdev,
                        };
                        ((*k).clone(), finding)
                    })
                    .collect();
                for (key, finding) in outliers {
                    if self.enforce(sr.enforcing) && self.eject(&key, &finding, now) {
                        ejected.push(key);
                    }
                }
            } else {
                tracing::trace!(
                    qualifying = qualify.len(),
                    minimum_hosts = sr.minimum_hosts,
                    "tower_lb: outlier detection: too few endpoints with enough requests \
                     for the success-rate test"
                );
            }
        }

        if let Some(fp) = self.cfg.failure_percentage {
            let qualify: Vec<(&K, f64)> = self
                .hosts
                .iter()
                .filter(|(k, h)| healthy(h) && !ejected.contains(k))
                .filter_map(|(k, h)| {
                    let volume = h.successes + h.failures;
                    (volume > 0 && volume >= fp.request_volume)
                        .then(|| (k, h.failures as f64 / volume as f64))
                })
                .collect();
            if !qualify.is_empty() && qualify.len() >= fp.minimum_hosts {
                let outliers: Vec<(K, Finding)> = qualify
                    .iter()
                    .filter(|(_, failed)| *failed >= fp.threshold)
                    .map(|(k, failed)| {
                        let finding = Finding::FailurePercentage {
                            failed: *failed,
                            threshold: fp.threshold,
                        };
                        ((*k).clone(), finding)
                    })
                    .collect();
                for (key, finding) in outliers {
                    if self.enforce(fp.enforcing) && self.eject(&key, &finding, now) {
                        ejected.push(key);
                    }
                }
            }
        }

        // Envoy's multiplier decay: one less for every interval spent serving.
        for (key, host) in &mut self.hosts {
            let serving = !host.state.on_probation_or_ejected();
            if host.serving && serving && !ejected.contains(key) {
                let times = host.tally.times_ejected.load(Relaxed);
                if times > 0 {
                    host.tally.times_ejected.store(times - 1, Relaxed);
                    tracing::debug!(backend = %key, times_ejected = times - 1,
                        "tower_lb: outlier detection: a clean interval; times ejected decreased");
                }
            }
            host.serving = serving;
        }
    }

    /// The `enforcing` draw.
    fn enforce(&self, share: f64) -> bool {
        share >= 1.0 || ((self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < share
    }

    /// Ejects `key` if the max ejection share allows it; true if it did.
    fn eject(&self, key: &K, finding: &Finding, now: Instant) -> bool {
        let Some(host) = self.hosts.get(key) else {
            return false;
        };
        let volume = host.successes + host.failures;
        if let Err(refusal) = host.state.ejection_verdict(self.cfg.max_share) {
            match refusal {
                Refusal::Lone => tracing::warn!(backend = %key, why = %finding,
                    "tower_lb: not ejecting: it is the only endpoint"),
                Refusal::Share {
                    level,
                    ejected,
                    live,
                } => tracing::warn!(backend = %key, why = %finding,
                    level, ejected, live, max_ejection_share = self.cfg.max_share,
                    "tower_lb: not ejecting: the max ejection share of its priority level is \
                     reached and no other level can serve"),
            }
            return false;
        }
        let base = self.cfg.base_ejection_time;
        let max = self.cfg.max_ejection_time;
        // Counts past the cap add nothing but would slow the decay.
        let top = max.as_nanos().div_ceil(base.as_nanos()).clamp(1, 1 << 20) as u64;
        let times = (host.tally.times_ejected.load(Relaxed) + 1).min(top);
        host.tally.times_ejected.store(times, Relaxed);
        let time = base
            .checked_mul(u32::try_from(times).unwrap_or(u32::MAX))
            .map_or(max, |t| t.min(max));
        let until = later(now, time);
        // Set before the ejection, so a probe that passes right after it finds it.
        *host.tally.probe_may_end() = self.cfg.readmit_on_probe.then_some(until);
        host.state.eject_until(until);
        tracing::warn!(backend = %key, why = %finding, requests = volume,
            failures = host.failures, ejected_for = ?time, times_ejected = times,
            "tower_lb: ejected by outlier detection");
        true
    }

    /// Requests went out but no verdict came in: the passive layer is missing.
    fn warn_without_verdicts(&mut self) {
        let mut sent = 0;
        let mut judged = 0;
        for host in self.hosts.values_mut() {
            let now = host.state.requests();
            sent += now.saturating_sub(host.requests);
            host.requests = now;
            judged += host.successes + host.failures;
        }
        if !self.warned && sent > 0 && judged == 0 {
            self.warned = true;
            tracing::warn!(
                requests = sent,
                "tower_lb: outlier detection sees requests but no verdicts: put \
                 PassiveHealthLayer on the endpoints (it classifies their outcomes)"
            );
        }
    }
}
