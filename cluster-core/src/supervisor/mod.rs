//! The master's supervision loop: spawns workers, watches them, restarts them within limits,
//! routes messages, and shuts the cluster down.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) mod restart;
pub(crate) mod signals;
mod spawner;

use cluster_ipc::{Channel, Config, bootstrap};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tokio::time::sleep_until;

use crate::identity::{ENV_GENERATION, ENV_GROUP, ENV_HEARTBEAT_MS, ENV_IPC_FD, ENV_SLOT};
use crate::messaging::Pending;
use crate::model::{ExitKind, SlotKey, WorkerId, WorkerInfo, WorkerState};
use crate::net::listener::MasterListeners;
use crate::observe::status::{ClusterStatus, MasterStatus, RestartCount, WorkerStatus};
use crate::options::{GroupOptions, Options, RestartPolicy, Signal};
use crate::protocol::{Balance, ListenAddr, ToMaster, ToWorker};
use crate::supervisor::restart::{Decision, Exit as RestartExit, Intensity, SlotBackoff, decide};
use crate::supervisor::spawner::Spawner;
use crate::{Error, Result, sys};

/// Exit code of a master that gave up after too many restarts (EX_TEMPFAIL), distinct from a
/// crash of the master itself (101 for a Rust panic, 128+n for a signal).
pub const EXIT_RESTART_LIMIT: i32 = 75;
/// Exit code of a master whose workers did not all stop within `grace`.
pub const EXIT_KILLED_AFTER_GRACE: i32 = 1;

/// Requests from the master's code.
pub(crate) enum Command {
    Send {
        to: SlotKey,
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
        reply: oneshot::Sender<Vec<(String, usize, String)>>,
    },
    Shutdown,
}

/// Events for the master's code, before decoding app payloads.
pub(crate) enum RawEvent {
    Spawned {
        id: WorkerId,
        pid: u32,
    },
    Online {
        id: WorkerId,
    },
    Ready {
        id: WorkerId,
    },
    Exit {
        id: WorkerId,
        exit: ExitKind,
        expected: bool,
        restarting: bool,
    },
    RestartLimit {
        id: WorkerId,
        exit: ExitKind,
    },
    ReloadStarted,
    ReloadFinished,
    ReloadFailed {
        error: String,
    },
    Message {
        from: WorkerId,
        payload: Vec<u8>,
    },
    Request {
        from: WorkerId,
        id: u64,
        payload: Vec<u8>,
    },
}

/// What the per-worker watch tasks report.
enum Internal {
    Online {
        id: WorkerId,
        sender: cluster_ipc::Sender<ToWorker>,
    },
    FromWorker {
        id: WorkerId,
        msg: ToMaster,
    },
    Exited {
        id: WorkerId,
        exit: ExitKind,
    },
}

/// Lets the master's code adjust one worker's command line and environment.
#[derive(Debug, Default)]
pub struct SpawnSettings {
    /// Extra arguments, after the master's own.
    pub args: Vec<OsString>,
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
}

/// Called before each worker is spawned.
pub type SpawnHook = Arc<dyn Fn(&WorkerId, &mut SpawnSettings) + Send + Sync>;

struct Running {
    id: WorkerId,
    pid: Option<u32>,
    state: WorkerState,
    sender: Option<cluster_ipc::Sender<ToWorker>>,
    kill: Option<oneshot::Sender<()>>,
    started: Instant,
    /// Deadline to become ready; then it is killed as a failed start.
    ready_by: Option<Instant>,
    /// Deadline to exit after being asked to stop; then it is killed.
    kill_at: Option<Instant>,
    /// The master asked it to stop: its exit is expected.
    stop_requested: bool,
    /// What the worker said when it exited on its own (`Some(failed)`).
    exiting: Option<bool>,
    /// It was killed for not becoming ready.
    failed_start: bool,
    /// The last heartbeat (or when it came online): the watchdog's clock.
    last_beat: Option<Instant>,
    /// It was killed by the watchdog.
    hung: bool,
    /// How late its runtime ran the last heartbeat.
    lag: Option<Duration>,
    /// Open connections it reported.
    connections: u64,
    /// Resident bytes and CPU seconds at the last sample.
    usage: Option<(u64, f64)>,
    /// Consecutive samples above `max_memory`.
    over_memory: u32,
}

struct SlotState {
    generation: u64,
    running: Option<Running>,
    /// A rolling reload's replacement, until it is ready and takes over.
    next: Option<Running>,
    /// Replaced workers finishing their work.
    draining: Vec<Running>,
    backoff: SlotBackoff,
    restart_at: Option<Instant>,
    restarts: u64,
    /// Removed by a scale-down: not restarted, dropped once exited.
    retired: bool,
}

impl SlotState {
    fn all(&self) -> impl Iterator<Item = &Running> {
        self.running.iter().chain(&self.next).chain(&self.draining)
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Running> {
        self.running
            .iter_mut()
            .chain(&mut self.next)
            .chain(&mut self.draining)
    }

    fn is_empty(&self) -> bool {
        self.running.is_none() && self.next.is_none() && self.draining.is_empty()
    }
}

/// A rolling reload in progress.
struct Reload {
    /// Slots still to replace, in order.
    queue: VecDeque<(usize, usize)>,
    /// Slots whose replacement is starting.
    active: Vec<(usize, usize)>,
    /// Another reload was asked for during this one: run one more pass after it.
    again: bool,
}

struct Group {
    name: Arc<str>,
    options: GroupOptions,
    policy: RestartPolicy,
    intensity: Intensity,
    slots: Vec<SlotState>,
}

/// Why the cluster is stopping.
enum Stopping {
    Requested,
    RestartLimit(Error),
    MasterFailed,
}

pub(crate) struct Supervisor {
    exe: PathBuf,
    args: Vec<OsString>,
    pid: i32,
    options: Options,
    groups: Vec<Group>,
    spawner: Spawner,
    spawn_hook: Option<SpawnHook>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    commands_rx: mpsc::UnboundedReceiver<Command>,
    events: Option<mpsc::Sender<RawEvent>>,
    pending: Arc<Pending>,
    stopping: Option<Stopping>,
    killed_after_grace: bool,
    listeners: MasterListeners,
    /// When the shutdown began: a repeat of the signal within `SIGNAL_DEBOUNCE` is the same
    /// request (GNU `timeout`, for one, signals the master and then its whole group).
    stop_signalled_at: Option<Instant>,
    reload: Option<Reload>,
    reloads_total: u64,
    started: Instant,
    /// Restarts by slot and reason, for status and metrics.
    restart_reasons: std::collections::BTreeMap<(Arc<str>, usize, &'static str), u64>,
    ipc_received: u64,
    /// When to read every worker's memory and CPU next.
    next_sample: Instant,
    /// The slot being replaced for using too much memory (one at a time).
    recycling: Option<(usize, usize)>,
    /// Tasks copying workers' output: the master waits for them before it exits, so the
    /// last lines of its workers are not lost.
    forwarders: tokio::task::JoinSet<()>,
}

/// A shutdown signal repeated within this is not "a second signal".
const SIGNAL_DEBOUNCE: Duration = Duration::from_millis(250);

/// Lifecycle notices go through `tracing`; without a subscriber they would vanish, and an
/// operator must still see why workers were killed or restarted.
macro_rules! notice {
    ($level:ident, $($arg:tt)*) => {{
        if tracing::dispatcher::has_been_set() {
            tracing::$level!($($arg)*);
        } else {
            eprintln!("cluster: {}", format_args!($($arg)*));
        }
    }};
}

fn exit_kind(status: std::io::Result<std::process::ExitStatus>) -> ExitKind {
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitKind::Code(code),
            (None, Some(sig)) => ExitKind::Signal(sig),
            (None, None) => ExitKind::Code(-1),
        },
        // wait() itself failed: report it as a failure.
        Err(_) => ExitKind::Code(-1),
    }
}

impl Supervisor {
    pub(crate) fn new(
        options: Options,
        groups: Vec<GroupOptions>,
        spawn_hook: Option<SpawnHook>,
        commands_rx: mpsc::UnboundedReceiver<Command>,
        events: Option<mpsc::Sender<RawEvent>>,
        pending: Arc<Pending>,
    ) -> Result<Self> {
        // Remembered now, so that a binary replaced on disk later is what new workers run.
        let exe =
            std::env::current_exe().map_err(|e| Error::io("cannot find this program's path", e))?;
        let args = std::env::args_os().skip(1).collect();
        let spawner = Spawner::start(tokio::runtime::Handle::current())
            .map_err(|e| Error::io("cannot start the spawner thread", e))?;
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let groups = groups
            .into_iter()
            .map(|group| {
                let policy = group
                    .restart()
                    .copied()
                    .unwrap_or_else(|| *options.restart());
                Group {
                    name: group.name().into(),
                    intensity: Intensity::from_policy(&policy),
                    options: group,
                    policy,
                    slots: Vec::new(),
                }
            })
            .collect();
        let listeners = MasterListeners::new(options.accept_coalescing());
        Ok(Supervisor {
            exe,
            args,
            pid: std::process::id() as i32,
            options,
            groups,
            spawner,
            spawn_hook,
            internal_tx,
            internal_rx,
            commands_rx,
            events,
            pending,
            stopping: None,
            killed_after_grace: false,
            listeners,
            stop_signalled_at: None,
            reload: None,
            reloads_total: 0,
            started: Instant::now(),
            restart_reasons: std::collections::BTreeMap::new(),
            ipc_received: 0,
            next_sample: Instant::now(),
            recycling: None,
            forwarders: tokio::task::JoinSet::new(),
        })
    }

    fn emit(&mut self, event: RawEvent) {
        let Some(events) = &self.events else { return };
        match events.try_send(event) {
            Ok(()) => {}
            // The master's function returned: nobody reads events any more.
            Err(mpsc::error::TrySendError::Closed(_)) => self.events = None,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    "the master's event queue is full (its function does not read events); an event was dropped"
                )
            }
        }
    }

    /// Runs the cluster until it has stopped; returns the master's exit code and, when it gave
    /// up, why. `master_done` reports whether the master's own function failed.
    pub(crate) async fn run(
        mut self,
        mut signals: mpsc::UnboundedReceiver<Signal>,
        mut master_done: oneshot::Receiver<bool>,
    ) -> (i32, Option<Error>) {
        for g in 0..self.groups.len() {
            let count = self.groups[g].options.count().resolve();
            self.resize(g, count).await;
        }
        let mut master_running = true;
        loop {
            if self.stopping.is_some() && self.running_count() == 0 {
                break;
            }
            let deadline = self.next_deadline();
            tokio::select! {
                Some(sig) = signals.recv() => self.on_signal(sig).await,
                Some(internal) = self.internal_rx.recv() => self.on_internal(internal).await,
                Some(cmd) = self.commands_rx.recv() => self.on_command(cmd).await,
                failed = &mut master_done, if master_running => {
                    master_running = false;
                    if matches!(failed, Ok(true)) {
                        self.begin_stop(Stopping::MasterFailed).await;
                    }
                }
                () = sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                    self.on_timers().await
                }
            }
        }
        let forwarders = async { while self.forwarders.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), forwarders).await;
        match self.stopping.take() {
            Some(Stopping::RestartLimit(e)) => (EXIT_RESTART_LIMIT, Some(e)),
            Some(Stopping::MasterFailed) => (1, None),
            _ if self.killed_after_grace => (EXIT_KILLED_AFTER_GRACE, None),
            _ => (0, None),
        }
    }

    fn running_count(&self) -> usize {
        self.groups
            .iter()
            .flat_map(|g| &g.slots)
            .map(|s| s.all().count())
            .sum()
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if self.stopping.is_none() {
            consider(Some(self.next_sample));
        }
        for slot in self.groups.iter().flat_map(|g| &g.slots) {
            if self.stopping.is_none() {
                consider(slot.restart_at);
            }
            for r in slot.all() {
                consider(r.ready_by);
                consider(r.kill_at);
                if let (Some(timeout), false) =
                    (self.options.heartbeat_timeout(), r.stop_requested || r.hung)
                {
                    consider(r.last_beat.map(|beat| beat + timeout));
                }
            }
        }
        next
    }

    fn slot_mut(&mut self, key: &SlotKey) -> Option<&mut SlotState> {
        self.groups
            .iter_mut()
            .find(|g| g.name == key.group)?
            .slots
            .get_mut(key.slot)
    }

    /// The live worker process `id` (current, replacement or draining).
    fn running_mut(&mut self, id: &WorkerId) -> Option<&mut Running> {
        self.slot_mut(&id.key())?
            .all_mut()
            .find(|r| r.id.generation == id.generation)
    }

    async fn on_signal(&mut self, sig: Signal) {
        if self.stopping.is_some() {
            if self
                .stop_signalled_at
                .is_some_and(|t| t.elapsed() < SIGNAL_DEBOUNCE)
            {
                return;
            }
            notice!(
                warn,
                "{} again: killing the remaining workers without waiting",
                sig.as_str()
            );
            let now = Instant::now();
            for r in self
                .groups
                .iter_mut()
                .flat_map(|g| &mut g.slots)
                .flat_map(SlotState::all_mut)
            {
                r.kill_at = Some(now);
            }
            return;
        }
        if self.options.reload_signals().contains(&sig) {
            notice!(info, "{}: rolling reload", sig.as_str());
            self.start_reload().await;
            return;
        }
        notice!(info, "{}: shutting down gracefully", sig.as_str());
        self.stop_signalled_at = Some(Instant::now());
        self.begin_stop(Stopping::Requested).await;
    }

    async fn begin_stop(&mut self, why: Stopping) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(why);
        self.reload = None;
        let deadline = Instant::now() + self.options.grace();
        for slot in self.groups.iter_mut().flat_map(|g| &mut g.slots) {
            slot.restart_at = None;
            for r in slot.all_mut() {
                stop_worker(&mut self.listeners, r, deadline).await;
            }
        }
    }

    /// Asks the current worker of a slot to stop, and to be killed at `deadline` if it has not.
    async fn request_stop(&mut self, g: usize, s: usize, deadline: Instant) {
        if let Some(r) = self.groups[g].slots[s].running.as_mut() {
            stop_worker(&mut self.listeners, r, deadline).await;
        }
    }

    async fn on_internal(&mut self, internal: Internal) {
        match internal {
            Internal::Online { id, sender } => {
                let Some(r) = self.running_mut(&id) else {
                    return;
                };
                if r.stop_requested {
                    let _ = send_bounded(&sender, &ToWorker::Shutdown).await;
                } else if r.state == WorkerState::Starting {
                    r.state = WorkerState::Online;
                }
                r.sender = Some(sender);
                r.last_beat = Some(Instant::now());
                tracing::debug!("worker {id} online");
                self.emit(RawEvent::Online { id });
            }
            Internal::FromWorker { id, msg } => self.on_message(id, msg).await,
            Internal::Exited { id, exit } => self.on_exit(id, exit).await,
        }
    }

    async fn on_message(&mut self, id: WorkerId, msg: ToMaster) {
        self.ipc_received += 1;
        match msg {
            ToMaster::Ready => {
                let Some(r) = self.running_mut(&id) else {
                    return;
                };
                if r.state == WorkerState::Stopping {
                    return;
                }
                r.state = WorkerState::Ready;
                r.ready_by = None;
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
            ToMaster::Response { id, payload } => self.pending.complete(id, payload),
            ToMaster::Exiting { failed } => {
                if let Some(r) = self.running_mut(&id) {
                    r.exiting = Some(failed);
                }
            }
            ToMaster::Listen {
                id: request,
                addr,
                balance,
            } => self.on_listen(id, request, addr, balance).await,
            ToMaster::Accepted { conn } => self.listeners.in_flight().ack(conn),
            ToMaster::Heartbeat {
                lag_us,
                connections,
            } => {
                if let Some(r) = self.running_mut(&id) {
                    r.last_beat = Some(Instant::now());
                    r.lag = Some(Duration::from_micros(lag_us));
                    r.connections = connections;
                }
            }
            ToMaster::Metrics { id, text } => self.pending.complete(id, text.into_bytes()),
            ToMaster::Closed { listener } => self.listeners.closed(&id, listener),
        }
    }

    async fn on_exit(&mut self, id: WorkerId, exit: ExitKind) {
        let Some(g) = self.groups.iter().position(|g| g.name == id.group) else {
            return;
        };
        let s = id.slot;
        let Some(slot) = self.groups[g].slots.get_mut(s) else {
            return;
        };
        if let Some(i) = slot
            .draining
            .iter()
            .position(|r| r.id.generation == id.generation)
        {
            // A replaced worker finished draining.
            let r = slot.draining.swap_remove(i);
            self.listeners.remove(&r.id);
            tracing::info!("worker {id} {exit} after being replaced");
            self.emit(RawEvent::Exit {
                id,
                exit,
                expected: true,
                restarting: false,
            });
            return;
        }
        if slot
            .next
            .as_ref()
            .is_some_and(|r| r.id.generation == id.generation)
        {
            if let Some(r) = slot.next.take() {
                self.listeners.remove(&r.id);
                let stopping = r.stop_requested;
                self.emit(RawEvent::Exit {
                    id: id.clone(),
                    exit,
                    expected: stopping,
                    restarting: false,
                });
                if !stopping {
                    self.reload_failed(format!(
                        "replacement worker {id} {exit} before it became ready"
                    ))
                    .await;
                }
            }
            return;
        }
        if slot
            .running
            .as_ref()
            .is_none_or(|r| r.id.generation != id.generation)
        {
            return;
        }
        let Some(r) = slot.running.take() else { return };
        self.listeners.remove(&r.id);

        let clean = r.exiting == Some(false) || (r.exiting.is_none() && exit == ExitKind::Code(0));
        let reason = if r.hung {
            "hung"
        } else if r.failed_start {
            "failed_start"
        } else {
            "crash"
        };
        let kind = if r.stop_requested {
            RestartExit::Deliberate
        } else if clean && !r.failed_start {
            RestartExit::Clean
        } else {
            RestartExit::Failure
        };
        self.after_exit(g, s, id, exit, kind, reason).await;
    }

    /// Decides what follows a worker's exit (or failed spawn): restart, leave the slot empty,
    /// or give up on the whole cluster.
    async fn after_exit(
        &mut self,
        g: usize,
        s: usize,
        id: WorkerId,
        exit: ExitKind,
        kind: RestartExit,
        reason: &'static str,
    ) {
        let now = Instant::now();
        let expected = kind != RestartExit::Failure;
        let failure = kind == RestartExit::Failure;
        let stopping = self.stopping.is_some();
        let group = &mut self.groups[g];
        let retired = group.slots[s].retired;
        let mut restarting = false;
        if !stopping && !retired {
            let slot = &mut group.slots[s];
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
                        *self
                            .restart_reasons
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
                    let error = Error::RestartLimit {
                        group: id.group.to_string(),
                        slot: id.slot,
                        last_exit: exit.to_string(),
                        restarts: count,
                        max_restarts: group.policy.max_restarts(),
                        window_ms: group.policy.max_restarts_interval().as_millis(),
                    };
                    tracing::error!("{error}");
                    self.emit(RawEvent::Exit {
                        id: id.clone(),
                        exit,
                        expected,
                        restarting: false,
                    });
                    self.emit(RawEvent::RestartLimit { id, exit });
                    self.begin_stop(Stopping::RestartLimit(error)).await;
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
        self.emit(RawEvent::Exit {
            id,
            exit,
            expected,
            restarting,
        });
        if retired {
            let slots = &mut self.groups[g].slots;
            while slots.last().is_some_and(|s| s.retired && s.is_empty()) {
                slots.pop();
            }
        }
        if restarting && self.groups[g].slots[s].restart_at.is_some_and(|t| t <= now) {
            self.groups[g].slots[s].restart_at = None;
            self.spawn(g, s).await;
        }
    }

    async fn on_listen(
        &mut self,
        id: WorkerId,
        request: u64,
        addr: ListenAddr,
        balance: Option<Balance>,
    ) {
        let default = self.options.balance();
        let Some(r) = self.running_mut(&id) else {
            return;
        };
        let Some(sender) = r.sender.clone() else {
            return;
        };
        let stopping = r.stop_requested;
        let balance = balance.unwrap_or(default);
        let (result, fds) = match self.listeners.listen(addr, balance) {
            Ok((info, fd)) => (Ok(info), fd.into_iter().collect()),
            Err(e) => {
                notice!(warn, "worker {id}: {e}");
                (Err(e), Vec::new())
            }
        };
        let joins = result.as_ref().ok().map(|info| info.listener);
        crate::protocol::SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let msg = ToWorker::Listening {
            id: request,
            result,
        };
        match tokio::time::timeout(Duration::from_secs(1), sender.send_with_fds(&msg, fds)).await {
            // The answer is queued: connections handed from now on arrive after it. A worker
            // asked to stop meanwhile gets none.
            Ok(Ok(())) => {
                if let (Some(listener), false) = (joins, stopping) {
                    self.listeners.join(listener, &id, &sender);
                    if let Some((msg, fd)) = self.listeners.load_share(listener, &id) {
                        // Bounded like the answer: a worker that does not read its channel
                        // must not stall the supervisor.
                        let send = sender.send_with_fds(&msg, vec![fd]);
                        let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
                    }
                }
            }
            Ok(Err(_)) => {}
            Err(_) => tracing::warn!("worker {id} does not read its channel"),
        }
    }

    fn status(&self) -> ClusterStatus {
        let now = Instant::now();
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut workers = Vec::new();
        for group in &self.groups {
            for (s, slot) in group.slots.iter().enumerate() {
                for r in slot.all() {
                    workers.push(WorkerStatus {
                        group: group.name.to_string(),
                        slot: s,
                        pid: r.pid,
                        generation: r.id.generation,
                        state: r.state,
                        restarts: slot.restarts,
                        uptime_ms: millis(now.saturating_duration_since(r.started)),
                        rss_bytes: r.usage.map(|u| u.0),
                        cpu_seconds: r.usage.map(|u| u.1),
                        connections: (r.connections as usize)
                            .max(self.listeners.open_connections(&r.id)),
                        event_loop_lag_ms: r.lag.map(|lag| lag.as_secs_f64() * 1e3),
                    });
                }
            }
        }
        let restarts: Vec<RestartCount> = self
            .restart_reasons
            .iter()
            .map(|((group, slot, reason), count)| RestartCount {
                group: group.to_string(),
                slot: *slot,
                reason,
                count: *count,
            })
            .collect();
        ClusterStatus {
            master: MasterStatus {
                pid: std::process::id(),
                uptime_ms: millis(now.saturating_duration_since(self.started)),
                // Restarts after unexpected exits, like each slot's `restarts`: a memory
                // replacement is listed by reason but is not one (nor counts toward
                // `max_restarts`).
                restarts_total: restarts
                    .iter()
                    .filter(|r| r.reason != "memory")
                    .map(|r| r.count)
                    .sum(),
                reloads_total: self.reloads_total,
            },
            workers,
            restarts,
            ipc_messages_sent: crate::protocol::SENT.load(std::sync::atomic::Ordering::Relaxed),
            ipc_messages_received: self.ipc_received,
        }
    }

    /// Asks every ready worker for its metrics; a task gathers the answers until `timeout`,
    /// so a slow or dead worker is skipped and never holds up the supervisor or the scrape.
    async fn collect_metrics(
        &mut self,
        timeout: Duration,
        reply: oneshot::Sender<Vec<(String, usize, String)>>,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut waiting = Vec::new();
        for group in &self.groups {
            for (s, slot) in group.slots.iter().enumerate() {
                let Some(r) = slot
                    .running
                    .as_ref()
                    .filter(|r| r.state == WorkerState::Ready)
                else {
                    continue;
                };
                let Some(sender) = &r.sender else { continue };
                let (guard, rx) = self.pending.register();
                let msg = ToWorker::MetricsRequest { id: guard.id };
                crate::protocol::SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // try_send semantics: a worker whose channel is full is simply skipped.
                if tokio::time::timeout(Duration::from_millis(10), sender.send(&msg))
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    waiting.push((group.name.to_string(), s, guard, rx));
                }
            }
        }
        tokio::spawn(async move {
            let mut texts = Vec::new();
            for (group, slot, guard, rx) in waiting {
                if let Ok(Ok(text)) = tokio::time::timeout_at(deadline, rx).await {
                    texts.push((group, slot, String::from_utf8_lossy(&text).into_owned()));
                }
                drop(guard);
            }
            let _ = reply.send(texts);
        });
    }

    /// Reads every worker's memory and CPU, and replaces (the reload way) a worker that stayed
    /// over `max_memory` for `memory_samples` samples in a row: one slot at a time, so a leak
    /// shared by every worker does not recycle them all at once.
    async fn sample(&mut self) {
        let limit = self.options.max_memory();
        let needed = self.options.memory_samples();
        let mut over = None;
        for (g, group) in self.groups.iter_mut().enumerate() {
            for (s, slot) in group.slots.iter_mut().enumerate() {
                let replacing = slot.next.is_some();
                for r in slot.all_mut() {
                    let Some(usage) = r.pid.and_then(crate::observe::resources::sample) else {
                        continue;
                    };
                    r.usage = Some((usage.rss_bytes, usage.cpu_seconds));
                    match limit {
                        Some(limit) if usage.rss_bytes > limit && !r.stop_requested => {
                            r.over_memory += 1
                        }
                        _ => r.over_memory = 0,
                    }
                }
                let current = slot
                    .running
                    .as_ref()
                    .filter(|r| !r.stop_requested && r.state == WorkerState::Ready);
                if let (Some(r), true, false) = (current, over.is_none(), replacing) {
                    if r.over_memory >= needed {
                        over = Some((g, s, r.id.clone(), r.usage.map_or(0, |u| u.0)));
                    }
                }
            }
        }
        let (Some(limit), Some((g, s, id, rss))) = (limit, over) else {
            return;
        };
        if self.recycling.is_some() || self.reload.is_some() {
            return;
        }
        notice!(
            warn,
            "worker {id} uses {} MiB, over max_memory ({} MiB) for {needed} samples: replacing it",
            rss >> 20,
            limit >> 20
        );
        *self
            .restart_reasons
            .entry((id.group.clone(), id.slot, "memory"))
            .or_default() += 1;
        self.recycling = Some((g, s));
        self.spawn_into(g, s, true).await;
    }

    /// Starts a rolling reload, or asks the one under way for one more pass.
    async fn start_reload(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        if let Some(reload) = &mut self.reload {
            reload.again = true;
            return;
        }
        let queue = self
            .groups
            .iter()
            .enumerate()
            .flat_map(|(g, group)| {
                group
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(_, slot)| !slot.retired)
                    .map(move |(s, _)| (g, s))
            })
            .collect();
        self.reload = Some(Reload {
            queue,
            active: Vec::new(),
            again: false,
        });
        self.emit(RawEvent::ReloadStarted);
        Box::pin(self.pump_reload()).await;
    }

    /// Starts replacements until `reload_parallelism` are under way; ends the pass when
    /// every slot is done.
    async fn pump_reload(&mut self) {
        loop {
            let Some(reload) = &mut self.reload else {
                return;
            };
            if reload.active.len() >= self.options.reload_parallelism() {
                return;
            }
            let Some((g, s)) = reload.queue.pop_front() else {
                if !reload.active.is_empty() {
                    return;
                }
                let again = reload.again;
                self.reload = None;
                self.reloads_total += 1;
                notice!(info, "rolling reload finished");
                self.emit(RawEvent::ReloadFinished);
                if again {
                    Box::pin(self.start_reload()).await;
                }
                return;
            };
            let slot = &self.groups[g].slots[s];
            if slot.retired || slot.next.is_some() {
                continue;
            }
            reload.active.push((g, s));
            Box::pin(self.spawn_into(g, s, true)).await;
        }
    }

    /// A replacement became ready: it takes its slot and the old worker drains.
    async fn promote_if_replacement(&mut self, id: &WorkerId) {
        let Some(g) = self.groups.iter().position(|g| g.name == id.group) else {
            return;
        };
        let s = id.slot;
        let deadline = Instant::now() + self.options.grace();
        let Some(slot) = self.groups[g].slots.get_mut(s) else {
            return;
        };
        if slot
            .next
            .as_ref()
            .is_none_or(|r| r.id.generation != id.generation)
        {
            return;
        }
        let old = std::mem::replace(&mut slot.running, slot.next.take());
        if let Some(mut old) = old {
            stop_worker(&mut self.listeners, &mut old, deadline).await;
            slot.draining.push(old);
        }
        if self.recycling == Some((g, s)) {
            self.recycling = None;
        }
        if let Some(reload) = &mut self.reload {
            reload.active.retain(|&(ag, as_)| (ag, as_) != (g, s));
        }
        self.pump_reload().await;
    }

    /// A replacement failed: stop the reload, keep the old workers, and say why.
    async fn reload_failed(&mut self, error: String) {
        if self.reload.is_none() && self.recycling.take().is_some() {
            notice!(
                error,
                "memory replacement failed, the old worker keeps serving: {error}"
            );
            return;
        }
        let Some(reload) = self.reload.take() else {
            return;
        };
        notice!(
            error,
            "rolling reload aborted, the old workers keep serving: {error}"
        );
        let deadline = Instant::now() + self.options.grace();
        for (g, s) in reload.active {
            if let Some(next) = self.groups[g].slots[s].next.as_mut() {
                stop_worker(&mut self.listeners, next, deadline).await;
            }
        }
        self.emit(RawEvent::ReloadFailed { error });
    }

    async fn on_timers(&mut self) {
        let now = Instant::now();
        let stopping = self.stopping.is_some();
        let heartbeat_timeout = self.options.heartbeat_timeout();
        let mut killed_late = false;
        let mut due = Vec::new();
        for g in 0..self.groups.len() {
            for s in 0..self.groups[g].slots.len() {
                let slot = &mut self.groups[g].slots[s];
                if !stopping && slot.restart_at.is_some_and(|t| t <= now) {
                    slot.restart_at = None;
                    due.push((g, s));
                }
                for r in slot.all_mut() {
                    if let Some(timeout) = heartbeat_timeout {
                        if !r.stop_requested
                            && !r.hung
                            && r.last_beat.is_some_and(|beat| beat + timeout <= now)
                        {
                            notice!(
                                warn,
                                "worker {} is hung (no heartbeat from its runtime for {} ms): killing it",
                                r.id,
                                timeout.as_millis()
                            );
                            r.hung = true;
                            r.last_beat = None;
                            kill(r);
                        }
                    }
                    if r.ready_by.is_some_and(|t| t <= now) {
                        notice!(
                            warn,
                            "worker {} did not become ready in time: killing it",
                            r.id
                        );
                        r.ready_by = None;
                        r.failed_start = true;
                        kill(r);
                    }
                    if r.kill_at.is_some_and(|t| t <= now) {
                        notice!(
                            warn,
                            "worker {} did not stop within the grace period: killing it",
                            r.id
                        );
                        r.kill_at = None;
                        killed_late |= stopping;
                        kill(r);
                    }
                }
            }
        }
        self.killed_after_grace |= killed_late;
        // Reap finished forwarders so they do not pile up across restarts.
        while self.forwarders.try_join_next().is_some() {}
        if !stopping && self.next_sample <= now {
            self.next_sample = now + self.options.sample_interval();
            self.sample().await;
        }
        for (g, s) in due {
            self.spawn(g, s).await;
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Send { to, msg, reply } => {
                let sender = self
                    .slot_mut(&to)
                    .and_then(|slot| slot.running.as_ref())
                    .and_then(|r| r.sender.clone());
                let result = match sender {
                    Some(sender) => send_bounded(&sender, &msg).await,
                    None => Err(Error::NoWorker(format!("{}/{}", to.group, to.slot))),
                };
                let _ = reply.send(result);
            }
            Command::Broadcast { group, msg, reply } => {
                let senders: Vec<_> = self
                    .groups
                    .iter()
                    .filter(|g| group.as_deref().is_none_or(|name| *g.name == *name))
                    .flat_map(|g| &g.slots)
                    .filter_map(|s| s.running.as_ref())
                    .filter(|r| r.state != WorkerState::Stopping)
                    .filter_map(|r| r.sender.clone())
                    .collect();
                let mut sent = 0;
                for sender in senders {
                    sent += usize::from(send_bounded(&sender, &msg).await.is_ok());
                }
                let _ = reply.send(sent);
            }
            Command::Scale {
                group,
                count,
                reply,
            } => {
                let result = match self.groups.iter().position(|g| *g.name == *group) {
                    Some(g) => {
                        self.resize(g, count).await;
                        Ok(())
                    }
                    None => Err(Error::NoWorker(format!("no group named {group:?}"))),
                };
                let _ = reply.send(result);
            }
            Command::Workers { reply } => {
                let workers = self
                    .groups
                    .iter()
                    .flat_map(|g| &g.slots)
                    .flat_map(|s| s.all().map(move |r| (s, r)))
                    .map(|(s, r)| WorkerInfo {
                        id: r.id.clone(),
                        pid: r.pid,
                        state: r.state,
                        started: r.started,
                        restarts: s.restarts,
                        connections: self.listeners.open_connections(&r.id),
                    })
                    .collect();
                let _ = reply.send(workers);
            }
            Command::Shutdown => self.begin_stop(Stopping::Requested).await,
            Command::Reload => self.start_reload().await,
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::WorkerMetrics { timeout, reply } => self.collect_metrics(timeout, reply).await,
        }
    }

    /// Grows a group to `count` slots, or retires its highest slots.
    async fn resize(&mut self, g: usize, count: usize) {
        if self.stopping.is_some() {
            return;
        }
        let live = self.groups[g].slots.iter().filter(|s| !s.retired).count();
        if count > live {
            // Slots retired by an earlier scale-down whose workers are still stopping come
            // back first, so slot numbers stay within 0..count: the stopping worker drains
            // on the side while a new one starts in its slot.
            let mut wanted = count - live;
            for s in 0..self.groups[g].slots.len() {
                if wanted == 0 {
                    break;
                }
                let slot = &mut self.groups[g].slots[s];
                if !slot.retired {
                    continue;
                }
                slot.retired = false;
                if let Some(old) = slot.running.take() {
                    slot.draining.push(old);
                }
                wanted -= 1;
                self.spawn(g, s).await;
            }
            for _ in 0..wanted {
                let s = self.groups[g].slots.len();
                let backoff = SlotBackoff::new(self.groups[g].policy.backoff());
                self.groups[g].slots.push(SlotState {
                    generation: 0,
                    running: None,
                    next: None,
                    draining: Vec::new(),
                    backoff,
                    restart_at: None,
                    restarts: 0,
                    retired: false,
                });
                self.spawn(g, s).await;
            }
        } else {
            let deadline = Instant::now() + self.options.grace();
            let mut to_retire = live - count;
            for s in (0..self.groups[g].slots.len()).rev() {
                if to_retire == 0 {
                    break;
                }
                if self.groups[g].slots[s].retired {
                    continue;
                }
                to_retire -= 1;
                let slot = &mut self.groups[g].slots[s];
                slot.retired = true;
                slot.restart_at = None;
                self.request_stop(g, s, deadline).await;
            }
            let slots = &mut self.groups[g].slots;
            while slots.last().is_some_and(|s| s.retired && s.is_empty()) {
                slots.pop();
            }
        }
    }

    /// Starts a new process in a slot.
    async fn spawn(&mut self, g: usize, s: usize) {
        self.spawn_into(g, s, false).await;
    }

    /// Starts a process in a slot, as its current worker or (`next`) as its replacement.
    async fn spawn_into(&mut self, g: usize, s: usize, next: bool) {
        let group = &mut self.groups[g];
        let slot = &mut group.slots[s];
        slot.generation += 1;
        let id = WorkerId {
            group: group.name.clone(),
            slot: s,
            generation: slot.generation,
        };
        match self.start_process(g, &id).await {
            Ok((child, stream)) => {
                let pid = child.id();
                let (kill_tx, kill_rx) = oneshot::channel();
                let now = Instant::now();
                let slot = &mut self.groups[g].slots[s];
                slot.backoff.on_start(now);
                let place = if next {
                    &mut slot.next
                } else {
                    &mut slot.running
                };
                *place = Some(Running {
                    id: id.clone(),
                    pid,
                    state: WorkerState::Starting,
                    sender: None,
                    kill: Some(kill_tx),
                    started: now,
                    ready_by: Some(now + self.options.ready_timeout()),
                    kill_at: None,
                    stop_requested: false,
                    exiting: None,
                    failed_start: false,
                    last_beat: None,
                    hung: false,
                    lag: None,
                    connections: 0,
                    usage: None,
                    over_memory: 0,
                });
                let watch = watch(
                    id.clone(),
                    child,
                    stream,
                    self.options.ready_timeout(),
                    self.internal_tx.clone(),
                    kill_rx,
                    self.listeners.in_flight(),
                );
                tokio::spawn(watch);
                tracing::debug!("spawned worker {id} (pid {})", pid.unwrap_or(0));
                if let Some(pid) = pid {
                    self.emit(RawEvent::Spawned { id, pid });
                }
            }
            Err(e) if next => {
                self.reload_failed(format!("cannot spawn replacement worker {id}: {e}"))
                    .await;
            }
            Err(e) => {
                notice!(error, "cannot spawn worker {id}: {e}");
                // A spawn that fails is a failed start: it counts, and backs off.
                Box::pin(self.after_exit(
                    g,
                    s,
                    id,
                    ExitKind::Code(-1),
                    RestartExit::Failure,
                    "failed_start",
                ))
                .await;
            }
        }
    }

    async fn start_process(
        &mut self,
        g: usize,
        id: &WorkerId,
    ) -> Result<(Child, std::os::unix::net::UnixStream)> {
        let mut settings = SpawnSettings::default();
        if let Some(hook) = &self.spawn_hook {
            hook(id, &mut settings);
        }
        let (ours, child_end) = bootstrap::socketpair()?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(&self.args)
            .args(&settings.args)
            .env(ENV_GROUP, &*id.group)
            .env(ENV_SLOT, id.slot.to_string())
            .env(ENV_GENERATION, id.generation.to_string())
            .env(
                ENV_HEARTBEAT_MS,
                self.options.heartbeat_interval().as_millis().to_string(),
            )
            .envs(self.groups[g].options.env().iter().map(|(k, v)| (k, v)))
            .envs(settings.env)
            // The terminal's input stays with the master.
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        child_end.pass_to(cmd.as_std_mut(), ENV_IPC_FD);
        sys::kill_with_parent(&mut cmd, self.pid);
        sys::ignore_terminal_signals(&mut cmd);
        let prefix_logs = self.options.worker_prefix_logs();
        if prefix_logs {
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
        }
        let mut child = self
            .spawner
            .spawn(cmd)
            .await
            .map_err(|e| Error::io(format!("cannot start {}", self.exe.display()), e))?;
        drop(child_end);
        if prefix_logs {
            // Each line of the worker reaches the master's matching stream whole, prefixed
            // with who wrote it.
            let prefix = format!(
                "[{}/{} pid {}] ",
                id.group,
                id.slot,
                child.id().unwrap_or(0)
            );
            if let Some(out) = child.stdout.take() {
                self.forwarders.spawn(crate::observe::logs::forward(
                    out,
                    crate::observe::logs::Stream::Stdout,
                    prefix.clone(),
                ));
            }
            if let Some(err) = child.stderr.take() {
                self.forwarders.spawn(crate::observe::logs::forward(
                    err,
                    crate::observe::logs::Stream::Stderr,
                    prefix,
                ));
            }
        }
        Ok((child, ours))
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

    async fn worker_metrics(
        &self,
        timeout: Duration,
    ) -> Vec<crate::observe::metrics::WorkerMetricsText> {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::WorkerMetrics { timeout, reply })
            .is_err()
        {
            return Vec::new();
        }
        rx.await
            .unwrap_or_default()
            .into_iter()
            .map(
                |(group, slot, text)| crate::observe::metrics::WorkerMetricsText {
                    group,
                    slot,
                    text,
                },
            )
            .collect()
    }
}

/// Sends to a worker without letting one worker that stopped reading stall the supervisor.
async fn send_bounded(sender: &cluster_ipc::Sender<ToWorker>, msg: &ToWorker) -> Result<()> {
    crate::protocol::SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match tokio::time::timeout(Duration::from_secs(1), sender.send(msg)).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Error::Timeout { timeout_ms: 1000 }),
    }
}

/// Asks a worker to stop, to be killed at `deadline` if it has not. It leaves the rotation of
/// master-accepted connections first, so every connection it was handed arrives before the
/// request and gets served.
async fn stop_worker(listeners: &mut MasterListeners, r: &mut Running, deadline: Instant) {
    if r.stop_requested {
        return;
    }
    listeners.remove(&r.id);
    r.stop_requested = true;
    r.state = WorkerState::Stopping;
    r.ready_by = None;
    r.kill_at = Some(deadline);
    match &r.sender {
        Some(sender) => {
            if send_bounded(sender, &ToWorker::Shutdown).await.is_err() {
                kill(r);
            }
        }
        // Not online yet: it cannot be asked, and has no work to finish.
        None => kill(r),
    }
}

fn kill(r: &mut Running) {
    if let Some(kill) = r.kill.take() {
        let _ = kill.send(());
    }
}

/// Watches one worker process: its handshake, its messages, its exit. The `Child` lives here,
/// so it is always reaped (no zombies) and its pid is never signalled after being reaped.
async fn watch(
    id: WorkerId,
    mut child: Child,
    stream: std::os::unix::net::UnixStream,
    ready_timeout: Duration,
    internal: mpsc::UnboundedSender<Internal>,
    mut kill: oneshot::Receiver<()>,
    in_flight: Arc<crate::net::listener::InFlightTable>,
) {
    let mut killed = false;
    let mut receiver = None;
    let handshake = tokio::time::timeout(
        ready_timeout,
        Channel::<ToWorker, ToMaster>::from_std(stream, Config::default()),
    );
    tokio::select! {
        result = handshake => match result {
            Ok(Ok(channel)) => {
                let (sender, rx) = channel.split();
                receiver = Some(rx);
                let _ = internal.send(Internal::Online { id: id.clone(), sender });
            }
            Ok(Err(e)) => {
                notice!(warn, "worker {id}: handshake failed: {e}");
                let _ = child.start_kill();
                killed = true;
            }
            Err(_) => {
                notice!(warn, "worker {id}: no handshake within {} ms", ready_timeout.as_millis());
                let _ = child.start_kill();
                killed = true;
            }
        },
        status = child.wait() => {
            let _ = internal.send(Internal::Exited { id, exit: exit_kind(status) });
            return;
        }
        _ = &mut kill => {
            let _ = child.start_kill();
            killed = true;
        }
    }
    loop {
        tokio::select! {
            status = child.wait() => {
                // Deliver what the worker sent before it exited (its `Exiting` message).
                if let Some(rx) = receiver.as_mut() {
                    while let Ok(Ok(Some(msg))) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                        let _ = internal.send(Internal::FromWorker { id: id.clone(), msg });
                    }
                }
                let _ = internal.send(Internal::Exited { id, exit: exit_kind(status) });
                return;
            }
            msg = async { match receiver.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => match msg {
                // Acknowledgements of handed connections are the busiest message with a
                // master-accept policy: settle them here, off the supervisor's loop.
                Ok(Some(ToMaster::Accepted { conn })) => in_flight.ack(conn),
                Ok(Some(msg)) => { let _ = internal.send(Internal::FromWorker { id: id.clone(), msg }); }
                Ok(None) => receiver = None,
                Err(e) => {
                    tracing::warn!("worker {id}: {e}");
                    receiver = None;
                }
            },
            _ = &mut kill, if !killed => {
                let _ = child.start_kill();
                killed = true;
            }
        }
    }
}
