//! The cluster's own metrics (workers by state, restarts, reloads, per-slot memory, CPU,
//! connections and lag, the master's uptime), built from a [`ClusterStatus`] snapshot at
//! each scrape. Apart from the merging because it depends only on the snapshot, never on
//! what workers send.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode_registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::model::WorkerState;
use crate::observe::status::{ClusterStatus, RestartCount, WorkerStatus};

/// Every [`WorkerState`], so that `cluster_workers` has a series (possibly 0) for each.
pub(super) const ALL_STATES: [WorkerState; 4] = [
    WorkerState::Starting,
    WorkerState::Online,
    WorkerState::Ready,
    WorkerState::Stopping,
];

/// The label value of a state: the same lowercase name as its JSON in `/status`.
pub(super) fn state_name(state: WorkerState) -> &'static str {
    // An exhaustive match, so that a new state cannot be forgotten here.
    match state {
        WorkerState::Starting => "starting",
        WorkerState::Online => "online",
        WorkerState::Ready => "ready",
        WorkerState::Stopping => "stopping",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    group: String,
    slot: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestartLabels {
    group: String,
    slot: usize,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AutoscaleLabels {
    group: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// The cluster's own metrics as OpenMetrics text (without `# EOF`), from a fresh registry:
/// the snapshot already holds the totals, so each counter is set to its value by one
/// `inc_by` rather than kept alive between scrapes.
pub(super) fn cluster_metrics(status: &ClusterStatus) -> String {
    let mut registry = Registry::default();

    let workers = Family::<StateLabels, Gauge>::default();
    for state in ALL_STATES {
        // Creating the series is the point: a state with no worker still shows, as 0.
        let _ = workers.get_or_create(&StateLabels {
            state: state_name(state),
        });
    }
    for worker in &status.workers {
        workers
            .get_or_create(&StateLabels {
                state: state_name(worker.state),
            })
            .inc();
    }
    registry.register("cluster_workers", "Worker processes by state", workers);

    registry.register(
        "cluster_worker_restarts",
        "Worker restarts after unexpected exits, by slot and reason: crash, hung, failed_start",
        by_slot_and_reason(&status.restarts),
    );
    registry.register(
        "cluster_worker_recycles",
        "Workers replaced while alive (the replacement ready first; never counted as restarts), by slot and reason: memory, unread_channel, max_requests, max_lifetime",
        by_slot_and_reason(&status.recycles),
    );

    if !status.autoscale.is_empty() {
        let decisions = Family::<AutoscaleLabels, Counter>::default();
        for group in &status.autoscale {
            for (direction, count) in [("up", group.decisions_up), ("down", group.decisions_down)] {
                decisions
                    .get_or_create(&AutoscaleLabels {
                        group: group.group.clone(),
                        direction,
                    })
                    .inc_by(count);
            }
        }
        registry.register(
            "cluster_autoscale_decisions",
            "Changes of an autoscaled group's size, by group and direction: up, down",
            decisions,
        );
    }

    let reloads = Counter::<u64>::default();
    reloads.inc_by(status.master.reloads_total);
    registry.register("cluster_reloads", "Completed rolling reloads", reloads);

    let upgrades = Counter::<u64>::default();
    upgrades.inc_by(status.master.upgrades_total);
    registry.register(
        "cluster_master_upgrades",
        "Upgrades of the master itself (clusterctl upgrade), those of earlier masters included",
        upgrades,
    );

    let spawn_failures = Counter::<u64>::default();
    spawn_failures.inc_by(status.master.spawn_failures_total);
    registry.register(
        "cluster_spawn_failures",
        "Worker processes that could not be started (retried with a backoff, not counted as restarts)",
        spawn_failures,
    );

    let violations = Family::<KindLabels, Counter>::default();
    for (kind, count) in &status.master.violations {
        violations
            .get_or_create(&KindLabels { kind: kind.clone() })
            .inc_by(*count);
    }
    registry.register(
        "cluster_worker_violations",
        "Bounds workers went past, by kind (see the README's failure model)",
        violations,
    );

    let ipc = Family::<DirectionLabels, Counter>::default();
    ipc.get_or_create(&DirectionLabels { direction: "sent" })
        .inc_by(status.ipc_messages_sent);
    ipc.get_or_create(&DirectionLabels {
        direction: "received",
    })
    .inc_by(status.ipc_messages_received);
    registry.register(
        "cluster_ipc_messages",
        "Messages the master sent to and received from workers",
        ipc,
    );

    let memory = Family::<SlotLabels, Gauge>::default();
    let cpu = Family::<SlotLabels, FloatCounter>::default();
    let connections = Family::<SlotLabels, Gauge>::default();
    let lag = Family::<SlotLabels, FloatGauge>::default();
    for worker in current_per_slot(&status.workers) {
        let labels = SlotLabels {
            group: worker.group.clone(),
            slot: worker.slot,
        };
        if let Some(rss) = worker.rss_bytes {
            memory
                .get_or_create(&labels)
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        // A counter must not go down; a nonsensical sample is left out rather than
        // corrupting the series.
        if let Some(seconds) = worker.cpu_seconds.filter(|s| s.is_finite() && *s >= 0.0) {
            cpu.get_or_create(&labels).inc_by(seconds);
        }
        connections
            .get_or_create(&labels)
            .set(i64::try_from(worker.connections).unwrap_or(i64::MAX));
        if let Some(ms) = worker.event_loop_lag_ms {
            lag.get_or_create(&labels).set(ms / 1000.0);
        }
    }
    registry.register_with_unit(
        "cluster_worker_resident_memory",
        "Resident memory of the slot's current worker process",
        Unit::Bytes,
        memory,
    );
    registry.register_with_unit(
        "cluster_worker_cpu",
        "CPU time (user + system) of the slot's current worker process",
        Unit::Seconds,
        cpu,
    );
    registry.register(
        "cluster_worker_connections",
        "Open connections of the slot's current worker process",
        connections,
    );
    registry.register_with_unit(
        "cluster_worker_event_loop_lag",
        "How late the worker's runtime ran its last heartbeat",
        Unit::Seconds,
        lag,
    );

    let uptime = FloatGauge::default();
    // Milliseconds to seconds: f64 is exact up to 2^53 ms, some 285,000 years.
    uptime.set(status.master.uptime_ms as f64 / 1000.0);
    registry.register_with_unit(
        "cluster_master_uptime",
        "Time since the master started",
        Unit::Seconds,
        uptime,
    );

    let mut text = String::new();
    if let Err(error) = encode_registry(&mut text, &registry) {
        // Cannot happen with these metric types and a String; no partial families either way.
        tracing::warn!(%error, "encoding the cluster's metrics failed");
        text.clear();
    }
    text
}

/// The newest process of each slot. During a restart or a rolling reload a slot briefly has
/// two processes; both would get the same `{group, slot}` labels, and the per-slot gauges
/// describe the slot's current process. `cluster_workers` still counts every process.
fn current_per_slot(workers: &[WorkerStatus]) -> impl Iterator<Item = &WorkerStatus> {
    let mut newest: BTreeMap<(&str, usize), &WorkerStatus> = BTreeMap::new();
    for worker in workers {
        newest
            .entry((worker.group.as_str(), worker.slot))
            .and_modify(|kept| {
                if worker.generation > kept.generation {
                    *kept = worker;
                }
            })
            .or_insert(worker);
    }
    newest.into_values()
}

/// A counter family of `counts`, labelled by group, slot and reason.
fn by_slot_and_reason(counts: &[RestartCount]) -> Family<RestartLabels, Counter> {
    let family = Family::<RestartLabels, Counter>::default();
    for count in counts {
        family
            .get_or_create(&RestartLabels {
                group: count.group.clone(),
                slot: count.slot,
                reason: count.reason,
            })
            .inc_by(count.count);
    }
    family
}
