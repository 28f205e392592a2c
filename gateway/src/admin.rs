//! The admin endpoints: `/health`, `/metrics` (Prometheus text), `/status` (JSON).

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::pool::Pool;

/// Everything the admin endpoints read.
pub(crate) struct Gateway {
    pub(crate) pools: HashMap<String, Arc<Pool>>,
    pub(crate) histograms: Histograms,
    pub(crate) started: Instant,
}

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Counts one observation in its own bucket only (one atomic add); the cumulative
    /// counts Prometheus expects are summed when exported.
    pub(crate) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }
}

/// Every backend's latency histogram, by pool and backend.
#[derive(Clone, Default)]
pub(crate) struct Histograms(Arc<Mutex<BTreeMap<String, Arc<Histogram>>>>);

impl Histograms {
    /// The histogram of `backend` in `pool`, new or kept from an earlier endpoint.
    pub(crate) fn register(&self, pool: &str, backend: &str) -> Arc<Histogram> {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.entry(format!("{pool}\u{0}{backend}"))
            .or_default()
            .clone()
    }

    fn snapshot(&self) -> BTreeMap<String, Arc<Histogram>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The Prometheus text of every pool and backend.
pub(crate) fn metrics(gw: &Gateway) -> String {
    let mut out = String::new();
    let hists = gw.histograms.snapshot();
    let mut pools: Vec<_> = gw.pools.values().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    // One snapshot per pool for the whole scrape: every family reads the same moment.
    let pools: Vec<_> = pools.into_iter().map(|p| (p, p.balance.stats())).collect();
    let families = [
        (
            "tower_lb_requests_total",
            "counter",
            "Requests sent to the backend.",
        ),
        (
            "tower_lb_failures_total",
            "counter",
            "Requests that failed on the backend.",
        ),
        (
            "tower_lb_in_flight",
            "gauge",
            "Requests in flight to the backend.",
        ),
        (
            "tower_lb_ejections_total",
            "counter",
            "Times the backend was ejected.",
        ),
        (
            "tower_lb_backend_up",
            "gauge",
            "1 if the backend takes new requests.",
        ),
        (
            "tower_lb_backend_state",
            "gauge",
            "1 for the backend's current health state.",
        ),
        ("tower_lb_ewma_seconds", "gauge", "Peak-EWMA response time."),
    ];
    for (name, kind, help) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (pool, stats) in &pools {
            for b in &stats.backends {
                let value = match name {
                    "tower_lb_requests_total" => b.requests as f64,
                    "tower_lb_failures_total" => b.failures as f64,
                    "tower_lb_in_flight" => b.in_flight as f64,
                    "tower_lb_ejections_total" => b.ejections as f64,
                    "tower_lb_backend_up" => f64::from(u8::from(matches!(
                        b.status,
                        tower_lb::balance::Status::Healthy | tower_lb::balance::Status::Probation
                    ))),
                    "tower_lb_backend_state" => 1.0,
                    _ => b.ewma.map_or(0.0, |d| d.as_secs_f64()),
                };
                let extra = if name == "tower_lb_backend_state" {
                    format!(",state=\"{}\"", b.status)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    out,
                    "{name}{{pool=\"{}\",backend=\"{}\"{extra}}} {value}",
                    pool.name, b.key
                );
            }
        }
    }
    let name = "tower_lb_response_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time to response headers from the backend.\n# TYPE {name} histogram"
    );
    for (key, h) in &hists {
        let (pool, backend) = key.split_once('\u{0}').unwrap_or(("", key));
        let labels = format!("pool=\"{pool}\",backend=\"{backend}\"");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = h.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            h.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
    let pool_families: [(&str, &str, fn(&tower_lb::balance::Stats<String>) -> f64); 3] = [
        (
            "tower_lb_pool_available",
            "Backends of the pool taking new requests.",
            |s| s.available as f64,
        ),
        (
            "tower_lb_pool_level",
            "Priority level serving (0: primaries).",
            |s| f64::from(s.level),
        ),
        (
            "tower_lb_pool_panic",
            "1 in panic mode (too few backends available: health ignored).",
            |s| f64::from(u8::from(s.panic())),
        ),
    ];
    for (name, help, value) in pool_families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (pool, stats) in &pools {
            let _ = writeln!(out, "{name}{{pool=\"{}\"}} {}", pool.name, value(stats));
        }
    }
    out
}

/// Every pool and backend as JSON.
pub(crate) fn status_json(gw: &Gateway) -> serde_json::Value {
    let pools: serde_json::Map<String, serde_json::Value> = gw
        .pools
        .values()
        .map(|p| {
            let s = p.balance.stats();
            let backends: Vec<_> = s
                .backends
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "backend": b.key,
                        "weight": b.weight,
                        "effective_weight": b.effective_weight,
                        "backup": b.backup,
                        "priority": b.priority,
                        "state": b.status.to_string(),
                        "requests": b.requests,
                        "failures": b.failures,
                        "in_flight": b.in_flight,
                        "ejections": b.ejections,
                        "ewma_ms": b.ewma.map(|d| d.as_secs_f64() * 1e3),
                        "last_failure": b.last_failure,
                    })
                })
                .collect();
            (
                p.name.clone(),
                serde_json::json!({
                    "strategy": s.strategy,
                    "tier": format!("{:?}", s.tier),
                    "level": s.level,
                    "panic": s.panic(),
                    "available": s.available,
                    "backends": backends,
                }),
            )
        })
        .collect();
    serde_json::json!({
        "uptime_seconds": gw.started.elapsed().as_secs(),
        "pools": pools,
    })
}
