//! The process's one task tracker: every task pgbackd starts is spawned here, in the span of the
//! code that starts it, so none is detached from shutdown. A part that must wait for its own
//! tasks (the daemon for its jobs, the notifier for its deliveries) counts them with a group
//! ([`TaskTracker::track_future`]) while they still run under this tracker.
//!
//! Cancellation is the other half: one root `CancellationToken` made by the entry point, and
//! child tokens below it (the daemon's jobs, its services, each job's own), never a second root.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

static TRACKER: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// Spawns `task` on the runtime, tracked, in the current span.
pub fn spawn<F>(task: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    TRACKER.spawn(task.in_current_span())
}

/// Tasks still running.
pub fn running() -> usize {
    TRACKER.len()
}

/// At exit: waits up to `limit` for every task to end (a delivery in flight, a child being
/// stopped); returns whether they all did.
pub async fn wait_all(limit: Duration) -> bool {
    TRACKER.close();
    tokio::time::timeout(limit, TRACKER.wait()).await.is_ok()
}
