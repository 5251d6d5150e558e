//! A worker's life as the supervisor sees it: started, online, ready, stopped or killed,
//! exited, and what follows an exit (restart, nothing, or giving up on the cluster).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::outbox::{Outbox, Outgoing, Refused};
use super::process::{Internal, Launched, Launcher};
use super::recycle::Limits;
use super::report::{Beat, Reporter};
use super::restart::{Decision, Exit as RestartExit, decide};
use super::slot::{Phase, Place, Proc, StopReason};
use super::{RawEvent, Stopping, Supervisor, notice};
use crate::Error;
use crate::options::duration_text;

/// The first retry of a failed start; each further failure in a row doubles it.
const SPAWN_RETRY_BASE: Duration = Duration::from_millis(100);
/// The longest wait between two tries to start a worker.
const SPAWN_RETRY_CAP: Duration = Duration::from_secs(10);

/// How long to wait after the `failures`-th failed start in a row.
fn spawn_retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    SPAWN_RETRY_BASE
        .saturating_mul(1 << doublings)
        .min(SPAWN_RETRY_CAP)
}
use crate::model::{ExitKind, WorkerId};
use crate::protocol::{Balance, ListenAddr, ToMaster, ToWorker};
use crate::violations::Violation;

impl<L: Launcher> Supervisor<L> {
    pub(super) async fn on_internal(&mut self, internal: Internal) {
        match internal {
            Internal::Online { id, sender } => self.on_online(id, sender),
            Internal::FromWorker { id, msg } => self.on_message(id, msg.into_inner()).await,
            Internal::Exited { id, exit } => self.on_exit(id, exit).await,
            Internal::Listening { id, listener } => self.on_listening(&id, listener),
        }
    }

    fn on_online(&mut self, id: WorkerId, sender: cluster_ipc::Sender<ToWorker>) {
        let notify = self.internal_tx.clone();
        let Supervisor {
            groups, outboxes, ..
        } = self;
        let Some(p) = super::find(groups, &id) else {
            // Already gone: dropping the sender closes the channel.
            return;
        };
        let outbox = Outbox::start(&id, sender.clone(), notify, outboxes);
        for msg in std::mem::take(&mut p.held) {
            // Fewer than the outbox holds: it was empty until now.
            let _ = outbox.send(msg);
        }
        p.link = Some(sender);
        match &mut p.phase {
            Phase::Starting { ready_by } => {
                p.phase = Phase::Online {
                    tx: outbox,
                    ready_by: *ready_by,
                };
            }
            Phase::Stopping { tx, .. } => {
                // Asked to stop before its channel was up (and killed then): say it anyway,
                // in case the kill is still on its way.
                let _ = outbox.send(ToWorker::Shutdown);
                *tx = Some(outbox);
            }
            Phase::Online { .. } | Phase::Ready { .. } => return,
        }
        tracing::debug!("worker {id} online");
        self.emit(RawEvent::Online { id });
    }

    async fn on_message(&mut self, id: WorkerId, msg: ToMaster) {
        self.ipc_received += 1;
        match msg {
            // Settled by the process's reporter; never queued.
            ToMaster::Heartbeat { .. }
            | ToMaster::Accepted { .. }
            | ToMaster::Served { .. }
            | ToMaster::InFlight { .. }
            | ToMaster::Store { .. } => {}
            ToMaster::Ready => {
                let Some(p) = self.proc_mut(&id) else { return };
                let tx = match &p.phase {
                    Phase::Online { tx, .. } => tx.clone(),
                    _ => return,
                };
                p.phase = Phase::Ready { tx };
                self.served = true;
                tracing::debug!("worker {id} ready");
                self.emit(RawEvent::Ready { id: id.clone() });
                self.promote_if_replacement(&id).await;
            }
            ToMaster::User(payload) => self.emit(RawEvent::Message { from: id, payload }),
            ToMaster::Request {
                id: request,
                payload,
            } => self.emit(RawEvent::Request {
                from: id,
                id: request,
                payload,
            }),
            ToMaster::Response {
                id: request,
                payload,
            } => {
                if self.pending.awaits_other(request, &id) {
                    self.violations.record(
                        Violation::StrayAnswer,
                        &id,
                        format_args!(
                            "answered request {request}, which was asked of another worker: ignored"
                        ),
                    );
                } else if !self.pending.complete_from(request, &id, payload) {
                    tracing::warn!(
                        "worker {id} answered request {request} after it was answered or timed out: ignored"
                    );
                }
            }
            ToMaster::Exiting { failed } => {
                if let Some(p) = self.proc_mut(&id) {
                    p.exiting = Some(failed);
                }
            }
            ToMaster::Listen {
                id: request,
                addr,
                balance,
            } => self.on_listen(id, request, addr, balance),
            ToMaster::Metrics { id: request, text } => {
                if self.pending.awaits_other(request, &id) {
                    self.violations.record(
                        Violation::StrayAnswer,
                        &id,
                        format_args!("sent metrics for scrape {request}, which was asked of another worker: ignored"),
                    );
                } else if !self.pending.complete_from(request, &id, text.into_bytes()) {
                    tracing::debug!(
                        "worker {id} sent metrics for scrape {request} after the scrape ended: ignored"
                    );
                }
            }
            ToMaster::Closed { listener } => self.listeners.closed(&id, listener),
            ToMaster::Dropped { dropped } => self.violations.record(
                Violation::AppQueue,
                &id,
                format_args!(
                    "does not read its messages (its app never calls recv): {dropped} messages from the master dropped so far"
                ),
            ),
        }
    }

    fn on_listen(
        &mut self,
        id: WorkerId,
        request: u64,
        addr: ListenAddr,
        balance: Option<Balance>,
    ) {
        let balance = balance.unwrap_or(self.options.balance());
        let Some(p) = self.proc_mut(&id) else { return };
        let Some(outbox) = p.phase.outbox().cloned() else {
            return;
        };
        let stopping = p.is_stopping();
        let (result, fds) = match self.listeners.listen(&id, addr, balance) {
            Ok((info, fd)) => (Ok(info), fd.into_iter().collect()),
            Err(e) => {
                notice!(warn, "worker {id}: {e}");
                (Err(e), Vec::new())
            }
        };
        // Once the answer is written, connections handed to the worker arrive after it. A
        // worker asked to stop meanwhile gets none.
        let then = match (&result, stopping) {
            (Ok(info), false) => Some(Internal::Listening {
                id: id.clone(),
                listener: info.listener,
            }),
            _ => None,
        };
        let out = Outgoing {
            msg: ToWorker::Listening {
                id: request,
                result,
            },
            fds,
            done: None,
            then,
        };
        if outbox.push(out).is_err_and(|r| r.0 == Refused::Full) {
            notice!(warn, "worker {id} does not read its channel");
        }
    }

    /// The answer to a listen request was written: the worker joins the listener's rotation.
    fn on_listening(&mut self, id: &WorkerId, listener: u32) {
        let Some(p) = self.proc_mut(id) else { return };
        if p.is_stopping() {
            return;
        }
        let (Some(link), Some(outbox)) = (p.link.clone(), p.phase.outbox().cloned()) else {
            return;
        };
        self.listeners.join(listener, id, &link);
        if let Some((msg, fd)) = self.listeners.load_share(listener, id) {
            let mut out = Outgoing::new(msg);
            out.fds.push(fd);
            let _ = outbox.push(out);
        }
    }

    /// Asks process `id` to stop, to be killed at `deadline` if it has not. It leaves the
    /// rotation of master-accepted connections first, so every connection it was handed
    /// arrives before the request and gets served.
    pub(super) fn stop_proc(&mut self, id: &WorkerId, deadline: Instant, reason: StopReason) {
        self.listeners.leave(id);
        let Some(p) = self.proc_mut(id) else { return };
        if p.is_stopping() {
            return;
        }
        let tx = p.phase.outbox().cloned();
        let asked = tx
            .as_ref()
            .is_some_and(|tx| tx.send(ToWorker::Shutdown).is_ok());
        p.phase = Phase::Stopping {
            tx,
            kill_at: deadline,
            reason,
        };
        if !asked {
            // Not online yet (no work to finish), or not reading its channel: it cannot be
            // asked.
            p.kill();
        }
    }

    /// Kills process `id` at once, for `reason`.
    fn kill_proc(&mut self, id: &WorkerId, reason: StopReason) {
        self.listeners.leave(id);
        let Some(p) = self.proc_mut(id) else { return };
        if p.killed() {
            return;
        }
        let tx = p.phase.outbox().cloned();
        p.phase = Phase::Stopping {
            tx,
            kill_at: Instant::now(),
            reason,
        };
        p.kill();
    }

    async fn on_exit(&mut self, id: WorkerId, exit: ExitKind) {
        self.listeners.gone(&id);
        let Some(g) = self.group_index(&id.group) else {
            return;
        };
        let group = &mut self.groups[g];
        let place = group
            .slots
            .get(&id.slot)
            .and_then(|s| s.place_of(id.generation));
        let Some(place) = place else {
            // A process of a slot removed by a scale-down.
            if let Some(i) = group.leaving.iter().position(|p| p.id == id) {
                group.leaving.swap_remove(i);
                tracing::info!("worker {id} {exit} after its slot was removed");
                self.emit_exit(id, exit, true, false);
            }
            return;
        };
        let Some(slot) = group.slots.get_mut(&id.slot) else {
            return;
        };
        let Some(p) = slot.take(place) else { return };
        match place {
            Place::Draining(_) => {
                tracing::info!("worker {id} {exit} after being replaced");
                self.emit_exit(id, exit, true, false);
            }
            Place::Next => {
                let stop = p.phase.stop_reason();
                let deliberate = stop.is_some_and(StopReason::deliberate);
                let orphaned = slot.current.is_none();
                // The ready timer's kill is a SIGKILL like the OOM killer's: say which it was.
                let unready =
                    (stop == Some(StopReason::FailedStart)).then(|| self.options.ready_timeout());
                self.emit(RawEvent::Exit {
                    id: id.clone(),
                    exit,
                    expected: deliberate,
                    restarting: false,
                    unready,
                });
                if !deliberate {
                    let error = format!("replacement worker {id} {}", ended_unready(exit, unready));
                    self.reload_failed(&id.key(), error).await;
                }
                // Its old worker is gone too (it crashed while this one started): the slot
                // must not stay empty.
                if orphaned && self.stopping.is_none() {
                    if let Some(slot) = self.slot_mut(&id.key()) {
                        slot.restart_at = Some(Instant::now());
                    }
                }
            }
            Place::Current => {
                let clean =
                    p.exiting == Some(false) || (p.exiting.is_none() && exit == ExitKind::Code(0));
                let stop = p.phase.stop_reason();
                let kind = match stop {
                    Some(reason) if reason.deliberate() => RestartExit::Deliberate,
                    None if clean => RestartExit::Clean,
                    _ => RestartExit::Failure,
                };
                let reason = stop.map_or("crash", StopReason::restart_reason);
                if stop == Some(StopReason::FailedStart) {
                    // Said before `after_exit`'s event, which does not tell the ready timer's
                    // SIGKILL from any other.
                    let how = ended_unready(exit, Some(self.options.ready_timeout()));
                    self.incoming_worker_failed(&id, &how);
                }
                self.after_exit(g, id, exit, kind, reason).await;
            }
        }
    }

    fn emit_exit(&mut self, id: WorkerId, exit: ExitKind, expected: bool, restarting: bool) {
        self.emit(RawEvent::Exit {
            id,
            exit,
            expected,
            restarting,
            unready: None,
        });
    }

    /// Decides what follows the exit (or failed spawn) of a slot's current worker: restart,
    /// leave the slot empty, or give up on the whole cluster.
    pub(super) async fn after_exit(
        &mut self,
        g: usize,
        id: WorkerId,
        exit: ExitKind,
        kind: RestartExit,
        reason: &'static str,
    ) {
        let now = Instant::now();
        let expected = kind != RestartExit::Failure;
        let failure = kind == RestartExit::Failure;
        let mut restarting = false;
        if self.stopping.is_none() {
            let Supervisor {
                groups,
                restart_reasons,
                ..
            } = self;
            let group = &mut groups[g];
            let Some(slot) = group.slots.get_mut(&id.slot) else {
                return;
            };
            match decide(
                group.policy.mode(),
                kind,
                now,
                &mut group.intensity,
                &mut slot.backoff,
            ) {
                Decision::Restart { after } => {
                    slot.restarts += u64::from(failure);
                    if failure {
                        *restart_reasons
                            .entry((id.group.clone(), id.slot, reason))
                            .or_default() += 1;
                    }
                    // A crash while its replacement is starting: the replacement takes the
                    // slot when ready (the crash still counted above).
                    if slot.next.is_none() {
                        slot.restart_at = Some(now + after);
                        restarting = true;
                    }
                }
                Decision::DoNotRestart => {}
                Decision::GiveUp { count } => {
                    let error = Error::restart_limit(
                        &id.group,
                        id.slot,
                        exit,
                        count,
                        group.policy.max_restarts(),
                        group.policy.max_restarts_interval(),
                    );
                    tracing::error!("{error}");
                    self.emit_exit(id.clone(), exit, expected, false);
                    self.emit(RawEvent::RestartLimit { id, exit });
                    self.begin_stop(Stopping::RestartLimit(error));
                    return;
                }
            }
        }
        if expected {
            tracing::info!("worker {id} {exit}");
        } else {
            notice!(
                warn,
                "worker {id} {exit} unexpectedly{}",
                if restarting { ", restarting" } else { "" }
            );
        }
        let key = id.key();
        self.emit_exit(id, exit, expected, restarting);
        let due = self
            .slot_mut(&key)
            .and_then(|s| s.restart_at.filter(|t| *t <= now).map(|_| s));
        if let Some(slot) = due {
            slot.restart_at = None;
            self.spawn_into(g, key.slot, false).await;
        }
    }

    /// Starts a process in slot `slot` of group `g`: as its current worker, or (`next`) as
    /// the replacement that takes over once ready.
    pub(super) async fn spawn_into(&mut self, g: usize, slot: usize, next: bool) {
        let group = &mut self.groups[g];
        let generation = group.generations.entry(slot).or_default();
        *generation += 1;
        let id = WorkerId {
            group: group.name.clone(),
            slot,
            generation: *generation,
        };
        let env = group.options.env().to_vec();
        let beat = Arc::new(Beat::new(self.started));
        let reporter = Reporter::new(
            id.clone(),
            self.internal_tx.clone(),
            beat.clone(),
            self.listeners.in_flight(),
        )
        .with_store(self.store.clone());
        match self.launcher.launch(&id, &env, reporter).await {
            Ok(Launched { pid, kill }) => {
                let now = Instant::now();
                let ready_by = now + self.options.ready_timeout();
                let mut proc = Proc::new(id.clone(), pid, kill, beat, now, ready_by);
                proc.limits = Limits::draw(&self.options, now);
                let Some(s) = self.groups[g].slots.get_mut(&slot) else {
                    return;
                };
                s.backoff.on_start(now);
                s.spawn_failures = 0;
                let place = if next { &mut s.next } else { &mut s.current };
                if let Some(old) = place.replace(proc) {
                    // Never expected: keep the process we would otherwise lose track of.
                    s.draining.push(old);
                }
                tracing::debug!("spawned worker {id} (pid {})", pid.unwrap_or(0));
                if let Some(pid) = pid {
                    self.emit(RawEvent::Spawned { id, pid });
                }
                let retrying = self
                    .groups
                    .iter()
                    .any(|g| g.slots.values().any(|s| s.spawn_failures > 0));
                if !retrying {
                    self.spawn_error = None;
                }
            }
            Err(e) if next => {
                let error = format!("cannot spawn replacement worker {id}: {e:#}");
                Box::pin(self.reload_failed(&id.key(), error)).await;
            }
            Err(e) => self.spawn_failed(id, e),
        }
    }

    /// A worker could not be started. That says nothing about the worker's code (the
    /// descriptor or process limit, or a binary being replaced by a deploy), so it is not a
    /// restart: the slot retries on a backoff of its own, for as long as it takes.
    ///
    /// Except an option that cannot work (a worker that cannot take on its `user`, say) found
    /// before any worker was ever ready: retrying would only loop, and the master stops with
    /// exit code 2 before serving, as for any bad option. Once the cluster has served, the
    /// same failure is retried like any other, so that a cause that passes (the `nproc`
    /// limit reached for a moment) does not stop a serving cluster.
    fn spawn_failed(&mut self, id: WorkerId, error: Error) {
        if error.kind() == crate::ErrorKind::InvalidOption && !self.served {
            notice!(
                error,
                "worker {id} cannot take on the options it was given; stopping the cluster"
            );
            self.spawn_failures_total += 1;
            self.begin_stop(super::Stopping::Misconfigured(error));
            return;
        }
        let Some(slot) = self.slot_mut(&id.key()) else {
            return;
        };
        slot.spawn_failures = slot.spawn_failures.saturating_add(1);
        let retry_in = spawn_retry_delay(slot.spawn_failures);
        slot.restart_at = Some(Instant::now() + retry_in);
        let error = format!("{error:#}");
        notice!(
            error,
            "cannot start worker {id}: {error}; retrying in {} ms (not counted as a restart)",
            retry_in.as_millis()
        );
        self.spawn_failures_total += 1;
        self.spawn_error = Some(format!("worker {id}: {error}"));
        self.emit(RawEvent::SpawnFailed {
            id,
            error,
            retry_in,
        });
    }

    pub(super) async fn on_timers(&mut self) {
        let now = Instant::now();
        self.on_upgrade_timer(now).await;
        let heartbeat = self.options.heartbeat_timeout();
        let mut hung = Vec::new();
        let mut unready = Vec::new();
        let mut late = Vec::new();
        for p in self.procs() {
            if p.hung_at(heartbeat).is_some_and(|t| t <= now) {
                hung.push(p.id.clone());
            }
            match p.phase {
                Phase::Starting { ready_by } | Phase::Online { ready_by, .. }
                    if ready_by <= now =>
                {
                    unready.push(p.id.clone())
                }
                Phase::Stopping { kill_at, .. } if kill_at <= now => late.push(p.id.clone()),
                _ => {}
            }
        }
        for id in hung {
            if let Some(timeout) = heartbeat {
                // What it was doing, as far as the master knows: its last report of slow
                // requests (a request that froze the runtime at once is in the worker's own
                // last stderr line instead, written by its stall watch).
                let slow = self
                    .proc_mut(&id)
                    .map(|p| p.beat.slow_requests())
                    .unwrap_or_default();
                let doing = if slow.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; requests under way at its last heartbeat: {}",
                        crate::protocol::SlowRequest::describe_all(&slow)
                    )
                };
                notice!(
                    warn,
                    "worker {id} is hung (no heartbeat from its runtime for {} ms): killing it{doing}",
                    timeout.as_millis()
                );
            }
            self.kill_proc(&id, StopReason::Hung);
        }
        for id in unready {
            notice!(warn, "worker {id} did not become ready in time: killing it");
            self.kill_proc(&id, StopReason::FailedStart);
        }
        let stopping = self.stopping.is_some();
        for id in late {
            let Some(p) = self.proc_mut(&id) else {
                continue;
            };
            if p.killed() {
                continue;
            }
            notice!(
                warn,
                "worker {id} did not stop within the grace period: killing it"
            );
            p.kill();
            self.killed_after_grace |= stopping;
        }
        while self.outboxes.try_join_next().is_some() {}
        if stopping {
            return;
        }
        if self.next_sample <= now {
            self.next_sample = now + self.options.sample_interval();
            self.sample().await;
            self.replace_unread(now).await;
            self.recycle_due(now).await;
            self.autoscale(now).await;
        }
        let due: Vec<(usize, usize)> = self
            .groups
            .iter_mut()
            .enumerate()
            .flat_map(|(g, group)| {
                group.slots.iter_mut().filter_map(move |(&s, slot)| {
                    slot.restart_at.is_some_and(|t| t <= now).then(|| {
                        slot.restart_at = None;
                        (g, s)
                    })
                })
            })
            .collect();
        for (g, s) in due {
            // A slot whose worker is back (a replacement took over meanwhile) needs none.
            if self.groups[g]
                .slots
                .get(&s)
                .is_some_and(|slot| slot.current.is_none() && slot.next.is_none())
            {
                self.spawn_into(g, s, false).await;
            }
        }
    }
}

/// How a replacement ended before it was ready, as a clause after its id: killed by the ready
/// timer after `unready`, or exited (crashed, killed from outside) on its own.
pub(in crate::supervisor) fn ended_unready(exit: ExitKind, unready: Option<Duration>) -> String {
    match unready {
        Some(timeout) => format!(
            "was not ready within ready_timeout ({}) and was killed",
            duration_text(&timeout)
        ),
        None => format!("{exit} before it became ready"),
    }
}
