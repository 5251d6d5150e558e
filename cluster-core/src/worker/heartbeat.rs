//! The heartbeat task and its interval. Apart from the start-up because the master's watchdog
//! judges a worker by the beats alone: when one runs and what it carries read best in one
//! place.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::in_flight;
use crate::protocol::ToMaster;

/// Requests served by this process: one relaxed add per request, read once a beat.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Counts one request served by this worker, for the master's `max_requests` recycling and its
/// status. `cluster::http` counts the requests it serves itself; call this once per request
/// (or message, job...) when serving another protocol. A relaxed atomic add: cheap on any path.
pub fn count_request() {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
}

/// Beats from a task on the worker's own runtime: if the runtime is stuck (a busy loop, a
/// deadlock), the beats stop and the master's watchdog replaces the worker. A thread of its
/// own would keep beating through that. Each beat carries how late it ran (the runtime's lag).
pub(super) async fn heartbeat(
    sender: cluster_ipc::Sender<ToMaster>,
    interval: Duration,
    live: Arc<AtomicUsize>,
    level: u32,
    stall_mark: Arc<AtomicU64>,
) {
    let mut due = tokio::time::Instant::now() + interval;
    let mut reported = 0;
    let mut slow_before = false;
    loop {
        tokio::time::sleep_until(due).await;
        let now = tokio::time::Instant::now();
        in_flight::mark(&stall_mark);
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
        // Sent only when it changed, so an idle worker's beat stays one message.
        let requests = REQUESTS.load(Ordering::Relaxed);
        if level >= 2
            && requests != reported
            && sender.send(&ToMaster::Served { requests }).await.is_err()
        {
            return;
        }
        reported = requests;
        // The slow requests while there are any, then one empty list when they are done.
        if level >= 2 {
            let slow = in_flight::slowest(
                std::time::Instant::now(),
                in_flight::SLOW,
                in_flight::REPORTED,
            );
            let any = !slow.is_empty();
            if (any || slow_before)
                && sender
                    .send(&ToMaster::InFlight { requests: slow })
                    .await
                    .is_err()
            {
                return;
            }
            slow_before = any;
        }
        due = now + interval;
    }
}

/// The master's protocol level (`CLUSTER_PROTOCOL_LEVEL`): 1 when unset, for a master older
/// than the levels.
pub(super) fn master_level() -> u32 {
    std::env::var(crate::identity::ENV_PROTOCOL_LEVEL)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// The interval the master asked for, in `CLUSTER_HEARTBEAT_MS` (default 1 s).
pub(super) fn heartbeat_interval() -> Duration {
    std::env::var(crate::identity::ENV_HEARTBEAT_MS)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&ms: &u64| ms > 0)
        .map_or(Duration::from_secs(1), Duration::from_millis)
}
