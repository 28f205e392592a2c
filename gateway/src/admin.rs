//! The admin endpoints: `/health`, `/metrics` (Prometheus text), `/status` (JSON).

use std::{collections::HashMap, sync::Arc};

use tokio::time::Instant;
use tower_lb::metrics::{prometheus_client::registry::Registry, prometheus_text};

use crate::pool::Pool;

/// Everything the admin endpoints read.
pub(crate) struct Gateway {
    pub(crate) pools: HashMap<String, Arc<Pool>>,
    /// Holds the library's `BalanceMetrics` collector.
    pub(crate) registry: Registry,
    pub(crate) started: Instant,
}

/// The Prometheus text of every pool and backend: the library's collector, encoded.
pub(crate) fn metrics(gw: &Gateway) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_text::encode(&mut out, &gw.registry) {
        tracing::warn!(error = %e, "cannot encode the metrics");
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
