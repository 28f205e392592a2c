//! The gRPC face: the same checks written into a tonic-health `HealthReporter`.

use std::time::Duration;

use tonic_health::{server::HealthReporter, ServingStatus};

use super::{HealthChecks, Probe};
use crate::{error::ConfigError, Guard};

/// Feeds a [`HealthChecks`] registry into tonic-health's `grpc.health.v1` service: every
/// [`interval`](Self::interval) (default 1 s) it takes the report of each registered
/// service name's probe and sets `SERVING` or `NOT_SERVING`; when draining starts it sets
/// `NOT_SERVING` at once. Features `health-service` and `grpc`.
///
/// By default the server as a whole (service name `""`) follows readiness. Kubernetes'
/// gRPC probes name a service (`grpc: {port: 50051, service: liveness}`), so a liveness
/// name can be added with [`service`](Self::service). The reports come from the
/// registry's cache, so the checks run at most once per cache interval whatever the
/// number of names and HTTP probes.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_lb::BoxError> {
/// use tower_lb::health::service::{Check, GrpcReporter, HealthChecks, Probe};
///
/// let checks = HealthChecks::builder()
///     .check(Check::new("database", || async { Ok::<_, std::io::Error>(()) }))
///     .build()?;
/// let (reporter, health_server) = tonic_health::server::health_reporter();
/// let _guard = GrpcReporter::new(&checks, reporter)
///     .service("liveness", Probe::Liveness)
///     .spawn()?;
/// // tonic::transport::Server::builder().add_service(health_server) …
/// # drop(health_server);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use]
pub struct GrpcReporter {
    checks: HealthChecks,
    reporter: HealthReporter,
    services: Vec<(String, Probe)>,
    interval: Duration,
}

impl GrpcReporter {
    /// Reports `checks` through `reporter` (from `tonic_health::server::health_reporter`),
    /// the server as a whole (`""`) following readiness.
    pub fn new(checks: &HealthChecks, reporter: HealthReporter) -> Self {
        Self {
            checks: checks.clone(),
            reporter,
            services: vec![(String::new(), Probe::Readiness)],
            interval: Duration::from_secs(1),
        }
    }

    /// Also reports `probe` under the service name `name` (a name given twice keeps the
    /// last probe).
    pub fn service(mut self, name: impl Into<String>, probe: Probe) -> Self {
        let name = name.into();
        self.services.retain(|(n, _)| *n != name);
        self.services.push((name, probe));
        self
    }

    /// How often the statuses are refreshed (default 1 s).
    pub fn interval(mut self, every: Duration) -> Self {
        self.interval = every;
        self
    }

    /// Starts the refresh task; dropping the returned [`Guard`] stops it (the statuses
    /// then stay as last set). Fails with [`ConfigError::Invalid`] for a zero interval or
    /// outside a Tokio runtime.
    pub fn spawn(self) -> Result<Guard, ConfigError> {
        if self.interval.is_zero() {
            return Err(ConfigError::Invalid {
                setting: "gRPC health interval",
                reason: "must be above zero".into(),
            });
        }
        Guard::spawn("grpc health reporter", self.run())
    }

    async fn run(self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the first report is made before any wait.
        tick.tick().await;
        let mut draining = false;
        loop {
            for (name, probe) in &self.services {
                let status = if self.checks.report(*probe).await.is_healthy() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                self.reporter.set_service_status(name, status).await;
            }
            if draining {
                tick.tick().await;
            } else {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = self.checks.drained() => draining = true,
                }
            }
        }
    }
}
