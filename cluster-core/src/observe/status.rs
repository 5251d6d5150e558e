//! What the cluster looks like right now: the data behind `GET /status` and `/metrics`.

use serde::Serialize;

use crate::model::WorkerState;

/// A snapshot of the whole cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The master process.
    pub master: MasterStatus,
    /// Every live worker process (current ones, replacements starting, old ones draining).
    pub workers: Vec<WorkerStatus>,
    /// Restarts after unexpected exits, by slot and reason (`crash`, `hung`,
    /// `failed_start`).
    pub restarts: Vec<RestartCount>,
    /// Recycles by slot and reason (`memory`, `unread_channel`, `max_requests`,
    /// `max_lifetime`): workers replaced the reload way while alive, never counted as
    /// restarts.
    pub recycles: Vec<RestartCount>,
    /// The autoscaled groups (`autoscale`): their range, size and decisions.
    pub autoscale: Vec<AutoscaleStatus>,
    /// Messages the master sent to workers and received from them.
    pub ipc_messages_sent: u64,
    /// See `ipc_messages_sent`.
    pub ipc_messages_received: u64,
}

/// The master's own figures.
#[derive(Debug, Clone, Serialize)]
pub struct MasterStatus {
    /// Its pid.
    pub pid: u32,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Worker restarts after unexpected exits, over the master's life.
    pub restarts_total: u64,
    /// Completed rolling reloads.
    pub reloads_total: u64,
    /// Worker processes that could not be started (EMFILE, EAGAIN, a binary missing or
    /// being replaced): retried with a backoff, never counted toward `max_restarts`.
    pub spawn_failures_total: u64,
    /// Why the last start failed, while its slot still waits for a worker.
    pub spawn_error: Option<String>,
    /// Bounds workers went past, by kind (`unread_channel`, `ack_timeout`, `app_queue`,
    /// `listeners`, `metrics_size`, `stray_answer`, `flood`): see the README's failure model.
    pub violations: std::collections::BTreeMap<String, u64>,
    /// Upgrades of the master this cluster went through (`clusterctl upgrade`), those of
    /// earlier masters included.
    pub upgrades_total: u64,
}

/// One worker process.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    /// Its group.
    pub group: String,
    /// Its slot in the group.
    pub slot: usize,
    /// Its pid, once spawned.
    pub pid: Option<u32>,
    /// Which process of the slot this is (1 for the first).
    pub generation: u64,
    /// starting, online, ready or stopping.
    pub state: WorkerState,
    /// Restarts of its slot after unexpected exits.
    pub restarts: u64,
    /// Milliseconds since it was spawned.
    pub uptime_ms: u64,
    /// Resident memory at the last sample.
    pub rss_bytes: Option<u64>,
    /// CPU time (user + system) at the last sample.
    pub cpu_seconds: Option<f64>,
    /// Open connections (handed out by the master, or reported by the worker).
    pub connections: usize,
    /// How late the worker's runtime ran its last heartbeat, in milliseconds.
    pub event_loop_lag_ms: Option<f64>,
    /// Its requests under way for over a second at its last report, oldest first
    /// (`cluster::http` reports them; other servers through `worker::in_flight`).
    pub slow_requests: Vec<crate::protocol::SlowRequest>,
}

/// Restarts of one slot for one reason.
#[derive(Debug, Clone, Serialize)]
pub struct RestartCount {
    /// The group.
    pub group: String,
    /// The slot.
    pub slot: usize,
    /// Restarts: `crash`, `hung` or `failed_start`; recycles: `memory`, `unread_channel`,
    /// `max_requests` or `max_lifetime`.
    pub reason: &'static str,
    /// How many.
    pub count: u64,
}

/// One autoscaled group.
#[derive(Debug, Clone, Serialize)]
pub struct AutoscaleStatus {
    /// The group.
    pub group: String,
    /// The fewest workers the autoscaler runs.
    pub min: usize,
    /// The most.
    pub max: usize,
    /// Its slots now.
    pub workers: usize,
    /// Times it grew.
    pub decisions_up: u64,
    /// Times it shrank.
    pub decisions_down: u64,
    /// The last decision, if any.
    pub last_decision: Option<AutoscaleDecision>,
}

/// A change of an autoscaled group's size.
#[derive(Debug, Clone, Serialize)]
pub struct AutoscaleDecision {
    /// Workers before.
    pub from: usize,
    /// Workers after.
    pub to: usize,
    /// The figures that caused it.
    pub reason: String,
    /// Milliseconds since.
    pub ago_ms: u64,
}
