//! What the master's code, the status server and `MasterContext` ask of the supervisor, and
//! the snapshots it answers with. Nothing here waits for a worker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::outbox::{OUTBOX_CAPACITY, Outgoing, Refused};
use super::process::Launcher;
use super::slot::Phase;
use super::{Stopping, Supervisor};
use crate::model::{SlotKey, WorkerId, WorkerInfo};
use crate::observe::metrics::WorkerMetricsText;
use crate::observe::status::{ClusterStatus, MasterStatus, RestartCount, WorkerStatus};
use crate::protocol::{self, ToWorker};
use crate::{Error, ErrorKind, Result};

/// Requests from the master's code.
pub(crate) enum Command {
    Send {
        to: SlotKey,
        msg: ToWorker,
        reply: oneshot::Sender<Result<()>>,
    },
    /// The master's answer to worker `to`'s request: to that very process, not to whichever
    /// worker has its slot now.
    Answer {
        to: WorkerId,
        msg: ToWorker,
        reply: oneshot::Sender<Result<()>>,
    },
    Broadcast {
        group: Option<String>,
        msg: ToWorker,
        reply: oneshot::Sender<usize>,
    },
    Scale {
        group: String,
        count: usize,
        reply: oneshot::Sender<Result<()>>,
    },
    Workers {
        reply: oneshot::Sender<Vec<WorkerInfo>>,
    },
    Reload,
    Status {
        reply: oneshot::Sender<ClusterStatus>,
    },
    WorkerMetrics {
        timeout: Duration,
        reply: oneshot::Sender<Vec<WorkerMetricsText>>,
    },
    Shutdown,
    /// What the control socket asks (`clusterctl`).
    Control(super::control::Ask),
}

impl<L: Launcher> Supervisor<L> {
    pub(super) async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Send { to, msg, reply } => {
                let target = self
                    .slot_mut(&to)
                    .and_then(|slot| slot.current.as_ref())
                    .map(|p| p.id.clone());
                let where_ = format!("{}/{}", to.group, to.slot);
                self.send_to(target.as_ref(), &where_, msg, reply);
            }
            Command::Answer { to, msg, reply } => {
                let target = self.proc_mut(&to).map(|p| p.id.clone());
                let where_ = format!("worker {to} (it has exited)");
                self.send_to(target.as_ref(), &where_, msg, reply);
            }
            Command::Broadcast { group, msg, reply } => {
                // Every worker that is or will be serving: a replacement or restart still
                // starting gets the message as soon as its channel is up, so a configuration
                // broadcast during a reload reaches the new workers too.
                let mut sent = 0;
                let procs = self
                    .groups
                    .iter_mut()
                    .filter(|g| group.as_deref().is_none_or(|name| *g.name == *name))
                    .flat_map(|g| g.slots.values_mut())
                    .flat_map(|s| s.current.iter_mut().chain(s.next.iter_mut()));
                for p in procs {
                    let queued = match &p.phase {
                        Phase::Stopping { .. } => false,
                        Phase::Starting { .. } if p.held.len() < OUTBOX_CAPACITY => {
                            p.held.push(msg.clone());
                            true
                        }
                        Phase::Starting { .. } => false,
                        Phase::Online { tx, .. } | Phase::Ready { tx } => {
                            tx.send(msg.clone()).is_ok()
                        }
                    };
                    sent += usize::from(queued);
                }
                let _ = reply.send(sent);
            }
            Command::Scale {
                group,
                count,
                reply,
            } => {
                let result = match self.group_index(&group) {
                    Some(g) => {
                        self.resize(g, count).await;
                        Ok(())
                    }
                    None => Err(Error::new(
                        ErrorKind::NoWorker,
                        format!("no group named {group:?}"),
                    )),
                };
                let _ = reply.send(result);
            }
            Command::Workers { reply } => {
                let now = Instant::now();
                let workers = self
                    .groups
                    .iter()
                    .flat_map(|g| {
                        g.slots
                            .values()
                            .flat_map(|s| s.procs().map(move |p| (s.restarts, p)))
                            .chain(g.leaving.iter().map(|p| (0, p)))
                    })
                    .map(|(restarts, p)| WorkerInfo {
                        id: p.id.clone(),
                        pid: p.pid,
                        state: p.phase.state(),
                        started: std::time::Instant::now()
                            .checked_sub(now.saturating_duration_since(p.started))
                            .unwrap_or_else(std::time::Instant::now),
                        restarts,
                        connections: self.listeners.open_connections(&p.id),
                    })
                    .collect();
                let _ = reply.send(workers);
            }
            Command::Shutdown => self.begin_stop(Stopping::Requested),
            Command::Reload => self.start_reload().await,
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::WorkerMetrics { timeout, reply } => self.collect_metrics(timeout, reply),
            Command::Control(ask) => self.on_ask(ask).await,
        }
    }

    /// Queues `msg` for process `to` (`where_` names it for an error); `reply` learns
    /// whether it was written. A request's answer will count only from that process.
    fn send_to(
        &mut self,
        to: Option<&WorkerId>,
        where_: &str,
        msg: ToWorker,
        reply: oneshot::Sender<Result<()>>,
    ) {
        let outbox = to
            .and_then(|id| self.proc_mut(id))
            .and_then(|p| p.phase.outbox().cloned());
        let (Some(to), Some(outbox)) = (to, outbox) else {
            let _ = reply.send(Err(Error::new(
                ErrorKind::NoWorker,
                format!("no worker in {where_}"),
            )));
            return;
        };
        if let ToWorker::Request { id, .. } = &msg {
            self.pending.expect_from(*id, to);
        }
        let out = Outgoing {
            msg,
            fds: Vec::new(),
            done: Some(reply),
            then: None,
        };
        if let Err(refused) = outbox.push(out) {
            let (refused, out) = *refused;
            let why = match refused {
                Refused::Full => format!("has not read its last {OUTBOX_CAPACITY} messages"),
                Refused::Closed => "has closed its channel".to_owned(),
            };
            if let Some(reply) = out.done {
                let _ = reply.send(Err(Error::new(
                    ErrorKind::NoWorker,
                    format!("the worker {to} {why}; the message was not sent"),
                )));
            }
        }
    }

    pub(super) fn status(&self) -> ClusterStatus {
        let now = Instant::now();
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut workers = Vec::new();
        for group in &self.groups {
            let slots = group
                .slots
                .values()
                .flat_map(|s| s.procs().map(move |p| (s.restarts, p)));
            for (restarts, p) in slots.chain(group.leaving.iter().map(|p| (0, p))) {
                workers.push(WorkerStatus {
                    group: group.name.to_string(),
                    slot: p.id.slot,
                    pid: p.pid,
                    generation: p.id.generation,
                    state: p.phase.state(),
                    restarts,
                    uptime_ms: millis(now.saturating_duration_since(p.started)),
                    rss_bytes: p.usage.map(|u| u.0),
                    cpu_seconds: p.usage.map(|u| u.1),
                    connections: (p.beat.connections() as usize)
                        .max(self.listeners.open_connections(&p.id)),
                    event_loop_lag_ms: p.beat.lag().map(|lag| lag.as_secs_f64() * 1e3),
                    slow_requests: p.beat.slow_requests(),
                });
            }
        }
        let counts = |map: &BTreeMap<(Arc<str>, usize, &'static str), u64>| -> Vec<RestartCount> {
            map.iter()
                .map(|((group, slot, reason), count)| RestartCount {
                    group: group.to_string(),
                    slot: *slot,
                    reason,
                    count: *count,
                })
                .collect()
        };
        let restarts = counts(&self.restart_reasons);
        ClusterStatus {
            master: MasterStatus {
                pid: std::process::id(),
                uptime_ms: millis(now.saturating_duration_since(self.started)),
                restarts_total: restarts.iter().map(|r| r.count).sum(),
                reloads_total: self.reloads_total,
                spawn_failures_total: self.spawn_failures_total,
                spawn_error: self.spawn_error.clone(),
                violations: self
                    .violations
                    .snapshot()
                    .into_iter()
                    .map(|(kind, count)| (kind.to_string(), count))
                    .collect(),
                upgrades_total: self.upgrade.total,
            },
            workers,
            restarts,
            recycles: counts(&self.recycles),
            autoscale: self
                .groups
                .iter()
                .filter_map(|g| Some(g.autoscaler.as_ref()?.status(g, now)))
                .collect(),
            ipc_messages_sent: protocol::SENT.load(Ordering::Relaxed),
            ipc_messages_received: self.ipc_received,
        }
    }

    /// Asks every ready worker for its metrics; a task gathers the answers until `timeout`,
    /// so a slow or dead worker is skipped and never holds up the supervisor or the scrape.
    fn collect_metrics(
        &mut self,
        timeout: Duration,
        reply: oneshot::Sender<Vec<WorkerMetricsText>>,
    ) {
        let deadline = Instant::now() + timeout;
        let mut waiting = Vec::new();
        for group in &self.groups {
            for (&slot, s) in &group.slots {
                let Some((id, Phase::Ready { tx })) = s.current.as_ref().map(|p| (&p.id, &p.phase))
                else {
                    continue;
                };
                let (guard, rx) = self.pending.register();
                self.pending.expect_from(guard.id, id);
                // A worker whose outbox is full is simply skipped.
                if tx.send(ToWorker::MetricsRequest { id: guard.id }).is_ok() {
                    waiting.push((group.name.to_string(), slot, guard, rx));
                }
            }
        }
        tokio::spawn(async move {
            let mut texts = Vec::new();
            for (group, slot, guard, rx) in waiting {
                if let Ok(Ok(text)) = tokio::time::timeout_at(deadline, rx).await {
                    let text = String::from_utf8_lossy(&text).into_owned();
                    texts.push(WorkerMetricsText { group, slot, text });
                }
                drop(guard);
            }
            let _ = reply.send(texts);
        });
    }
}

/// The status server's view of the cluster, asked of the supervisor over its command queue.
pub(crate) struct CommandSource {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
}

impl crate::observe::status_server::StatusSource for CommandSource {
    async fn status(&self) -> Option<ClusterStatus> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Status { reply }).ok()?;
        rx.await.ok()
    }

    async fn worker_metrics(&self, timeout: Duration) -> Vec<WorkerMetricsText> {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::WorkerMetrics { timeout, reply })
            .is_err()
        {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}
