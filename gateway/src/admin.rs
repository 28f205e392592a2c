//! The admin endpoints: `/health`, `/metrics` (Prometheus text), `/status` (JSON).

use tower_lb::{balance::Stats, metrics::prometheus_text};

use crate::{cli::Source, state::State};

/// The Prometheus text of every pool and backend: the library's collector, encoded.
pub(crate) fn metrics(state: &State) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let last = &state.shared.metrics_len;
    // The last text's size and a little more, for backends that joined since.
    let mut out = String::with_capacity(last.load(Relaxed) / 16 * 17);
    if let Err(e) = prometheus_text::encode(&mut out, &state.shared.registry) {
        tracing::warn!(error = %e, "cannot encode the metrics");
    }
    last.store(out.len(), Relaxed);
    out
}

/// One balancer's stats as JSON.
fn stats_json(s: &Stats<String>, source: &str) -> serde_json::Value {
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
    serde_json::json!({
        "strategy": s.strategy,
        "source": source,
        "tier": format!("{:?}", s.tier),
        "level": s.level,
        "panic": s.panic(),
        "available": s.available,
        "discover_error": s.discover_error,
        "backends": backends,
    })
}

/// Every pool, TCP proxy and backend, and how reloads went, as JSON.
pub(crate) fn status_json(state: &State) -> serde_json::Value {
    let pools: serde_json::Map<String, serde_json::Value> = state
        .pools
        .iter()
        .map(|(name, p)| {
            let source = match &p.upkeep.feed.source {
                Some(Source::File(path)) => format!("file:{}", path.display()),
                Some(Source::Dns(name)) => format!("dns:{name}"),
                Some(Source::List(_)) | None => "list".to_owned(),
            };
            (name.clone(), stats_json(&p.balance.stats(), &source))
        })
        .collect();
    let tcp: serde_json::Map<String, serde_json::Value> = state
        .tcp
        .iter()
        .map(|(listen, p)| {
            let mut json = stats_json(&p.balance.stats(), "list");
            json["address"] = p.local_addr().map(|a| a.to_string()).into();
            (listen.to_string(), json)
        })
        .collect();
    let reloads = state.shared.reloads();
    serde_json::json!({
        "uptime_seconds": state.shared.started.elapsed().as_secs(),
        "config": {
            "generation": reloads.generation,
            "failed_reloads": reloads.failed,
            "last_reload_error": reloads.last_error,
        },
        "pools": pools,
        "tcp": tcp,
    })
}
