//! The heartbeat task and its interval. Apart from the start-up because the master's watchdog
//! judges a worker by the beats alone: when one runs and what it carries read best in one
//! place.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::protocol::ToMaster;

/// Beats from a task on the worker's own runtime: if the runtime is stuck (a busy loop, a
/// deadlock), the beats stop and the master's watchdog replaces the worker. A thread of its
/// own would keep beating through that. Each beat carries how late it ran (the runtime's lag).
pub(super) async fn heartbeat(
    sender: cluster_ipc::Sender<ToMaster>,
    interval: Duration,
    live: Arc<AtomicUsize>,
) {
    let mut due = tokio::time::Instant::now() + interval;
    loop {
        tokio::time::sleep_until(due).await;
        let now = tokio::time::Instant::now();
        let lag_us =
            u64::try_from(now.saturating_duration_since(due).as_micros()).unwrap_or(u64::MAX);
        let connections = live.load(Ordering::Relaxed) as u64;
        if sender
            .send(&ToMaster::Heartbeat {
                lag_us,
                connections,
            })
            .await
            .is_err()
        {
            return;
        }
        due = now + interval;
    }
}

/// The interval the master asked for, in `CLUSTER_HEARTBEAT_MS` (default 1 s).
pub(super) fn heartbeat_interval() -> Duration {
    std::env::var(crate::identity::ENV_HEARTBEAT_MS)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&ms: &u64| ms > 0)
        .map_or(Duration::from_secs(1), Duration::from_millis)
}
