//! The one guard type of every background task.

use std::{fmt, future::Future};

use tokio::task::{AbortHandle, JoinHandle};

use crate::error::ConfigError;

/// Owns a background task of this crate (a discovery source's DNS re-resolution,
/// Kubernetes watch or file watch; an active prober): dropping it stops the task. The
/// balancer keeps what the task last applied (a discovery source's last set; a prober
/// marks the endpoints it had marked down up again).
///
/// Keep it alive as long as the task should run, e.g. next to the balancer in your
/// application state.
#[must_use = "dropping the guard stops the task"]
pub struct Guard {
    task: AbortHandle,
    name: &'static str,
}

// Unused when no feature with a background task is on.
#[allow(dead_code)]
impl Guard {
    pub(crate) fn new<T>(name: &'static str, task: &JoinHandle<T>) -> Self {
        Self {
            task: task.abort_handle(),
            name,
        }
    }

    /// Spawns `task` on the current Tokio runtime, or fails with a typed error outside
    /// one (never a panic).
    pub(crate) fn spawn<F>(name: &'static str, task: F) -> Result<Self, ConfigError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::Invalid {
            setting: "runtime",
            reason: format!("the {name} task must be spawned within a Tokio runtime"),
        })?;
        Ok(Self::new(name, &rt.spawn(task)))
    }

    /// Whether the task has ended (it only ends when stopped, or if its runtime shut down).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the task now; the same as dropping the guard.
    pub fn stop(self) {}
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.task.abort();
        tracing::debug!(task = self.name, "tower_lb: background task stopped");
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("task", &self.name)
            .field("finished", &self.task.is_finished())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawning_outside_a_runtime_is_a_typed_error() {
        let err = Guard::spawn("test", async {}).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    setting: "runtime",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn dropping_the_guard_stops_the_task() {
        let guard = Guard::spawn("test", std::future::pending::<()>()).unwrap();
        let task = guard.task.clone();
        assert!(!guard.is_finished());
        drop(guard);
        for _ in 0..100 {
            if task.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(task.is_finished());
    }
}
