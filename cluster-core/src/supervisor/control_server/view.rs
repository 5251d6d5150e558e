//! What the control socket shows of the cluster: the rows of `clusterctl list` (with each
//! worker's CPU over the last sampling interval, sampled by a task of its own) and the master's
//! own lines of `clusterctl status`. Apart from the server because it only reads snapshots.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Shared, status};
use crate::control::protocol::{MasterInfo, OptionRow, SlowRequestRow, WorkerRow};
use crate::observe::status::ClusterStatus;

pub(super) fn rows(status: &ClusterStatus, shared: &Shared) -> Vec<WorkerRow> {
    let cpu = shared.cpu.lock().map(|m| m.clone()).unwrap_or_default();
    status
        .workers
        .iter()
        .map(|w| {
            // The last interval's figure once the sampler has one; until then the average
            // over the worker's life.
            let cpu_percent = w.pid.and_then(|pid| cpu.get(&pid).copied()).or_else(|| {
                let secs = w.cpu_seconds?;
                (w.uptime_ms > 0).then(|| secs * 1e5 / w.uptime_ms as f64)
            });
            WorkerRow {
                group: w.group.clone(),
                slot: w.slot,
                pid: w.pid,
                generation: w.generation,
                state: state_text(w.state),
                uptime_ms: w.uptime_ms,
                restarts: w.restarts,
                cpu_percent,
                memory_bytes: w.rss_bytes,
                connections: w.connections as u64,
                lag_ms: w.event_loop_lag_ms,
            }
        })
        .collect()
}

/// Every worker's requests under way for over a second at its last heartbeat, oldest first.
pub(super) fn slow_requests(status: &ClusterStatus) -> Vec<SlowRequestRow> {
    let mut rows: Vec<SlowRequestRow> = status
        .workers
        .iter()
        .flat_map(|w| {
            w.slow_requests.iter().map(|r| SlowRequestRow {
                group: w.group.clone(),
                slot: w.slot,
                pid: w.pid,
                generation: w.generation,
                method: r.method.clone(),
                path: r.path.clone(),
                age_ms: r.age_ms,
            })
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.age_ms));
    rows
}

fn state_text(state: crate::model::WorkerState) -> String {
    use crate::model::WorkerState::{Online, Ready, Starting, Stopping};
    match state {
        Starting => "starting",
        Online => "online",
        Ready => "ready",
        Stopping => "stopping",
    }
    .to_owned()
}

pub(super) async fn master_info(
    status: &ClusterStatus,
    options: Vec<OptionRow>,
    shared: &Shared,
) -> MasterInfo {
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "unknown".to_owned());
    let hash = shared
        .exe_hash
        .get_or_init(|| async {
            // /proc/self/exe is the file this process started from, even if the path now
            // holds a newer build; read off the loop, once.
            tokio::task::spawn_blocking(|| hash_file("/proc/self/exe"))
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| "unknown".to_owned())
        })
        .await
        .clone();
    MasterInfo {
        name: shared.name.clone(),
        pid: status.master.pid,
        uptime_ms: u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        exe,
        exe_hash: hash,
        control_path: shared.path.display().to_string(),
        workers: status.workers.len() as u64,
        ready: status
            .workers
            .iter()
            .filter(|w| w.state == crate::model::WorkerState::Ready)
            .count() as u64,
        restarts_total: status.master.restarts_total,
        reloads_total: status.master.reloads_total,
        options: options.into_iter().map(|o| (o.name, o.value)).collect(),
    }
}

/// 64-bit FNV-1a of a file: dependency-free and stable across Rust releases, enough to tell
/// two builds apart (not a security measure).
fn hash_file(path: &str) -> Option<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            return Some(format!("{hash:016x}"));
        }
        for &b in &buf[..n] {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Every `interval`, each worker's CPU use since the last round, for `list`.
pub(super) async fn sample_cpu(shared: Arc<Shared>, interval: Duration, stop: CancellationToken) {
    let mut last: HashMap<u32, (f64, Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(status) = status(&shared).await else {
            return;
        };
        let now = Instant::now();
        let mut next = HashMap::new();
        let mut percent = HashMap::new();
        for w in &status.workers {
            let (Some(pid), Some(cpu)) = (w.pid, w.cpu_seconds) else {
                continue;
            };
            // The master reads /proc on its own clock: a figure counts from when it was first
            // seen, and an unchanged one means an idle worker only after two intervals (before
            // that it may just not have been read again yet).
            let entry = match last.get(&pid) {
                Some(&(before, at)) => {
                    let elapsed = now.saturating_duration_since(at);
                    if cpu != before || elapsed >= interval * 2 {
                        let secs = elapsed.as_secs_f64();
                        if secs > 0.0 && cpu >= before {
                            percent.insert(pid, (cpu - before) * 100.0 / secs);
                        }
                        (cpu, now)
                    } else {
                        (before, at)
                    }
                }
                None => (cpu, now),
            };
            next.insert(pid, entry);
        }
        last = next;
        if let Ok(mut cpu) = shared.cpu.lock() {
            // A pid with no new figure keeps its last one.
            cpu.retain(|pid, _| last.contains_key(pid));
            cpu.extend(percent);
        }
    }
}
