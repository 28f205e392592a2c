//! The handle that owns a discovery task.

use std::fmt;

use tokio::task::{AbortHandle, JoinHandle};

/// Owns a background discovery task (DNS re-resolution, a Kubernetes watch, a file
/// watch): dropping it stops the task. The balancer keeps the last set the task applied.
///
/// Keep it alive as long as the balancer should follow its source, e.g. next to the
/// balancer in your application state. See the [module docs](crate::discover).
#[must_use = "dropping the guard stops the discovery task"]
pub struct Guard {
    task: AbortHandle,
    name: &'static str,
}

impl Guard {
    pub(crate) fn new<T>(name: &'static str, task: &JoinHandle<T>) -> Self {
        Self {
            task: task.abort_handle(),
            name,
        }
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
        tracing::debug!(source = self.name, "tower_lb: discovery task stopped");
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("source", &self.name)
            .field("finished", &self.task.is_finished())
            .finish()
    }
}
