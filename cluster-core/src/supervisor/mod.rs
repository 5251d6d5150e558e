//! The master's supervision loop: spawns workers, watches them, restarts them within limits,
//! routes messages, replaces them (reload, scale, memory) and shuts the cluster down.
//!
//! One task owns all of the state below and reacts to four queues: signals, the app's
//! commands, what the processes report ([`process::Internal`]) and its own timers. It never
//! awaits a worker: messages go through each worker's [`outbox::Outbox`]. It reaches processes
//! only through [`process::Launcher`], so its logic is unit-tested against a fake (tests.rs).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

mod autoscale;
mod command;
mod config;
pub(crate) mod control;
mod control_logs;
pub(crate) mod control_server;
mod lifecycle;
pub(crate) mod notify;
mod outbox;
pub(crate) mod privileges;
mod process;
pub(crate) mod reaper;
mod recycle;
mod reload;
mod report;
pub(crate) mod restart;
pub(crate) mod signals;
mod slot;
mod spawner;
#[cfg(test)]
mod tests;
pub(crate) mod upgrade;
mod watch;

pub use crate::error::EXIT_RESTART_LIMIT;
pub(crate) use command::{Command, CommandSource};
pub(crate) use config::LiveConfig;
pub use process::{SpawnHook, SpawnSettings};

use crate::messaging::Pending;
use crate::model::{ExitKind, SlotKey, WorkerId};
use crate::net::master_listeners::MasterListeners;
use crate::net::sticky_key::KeyRules;
use crate::observe::logs::RecentLogs;
use crate::options::{GroupOptions, Options, RestartPolicy, Signal};
use crate::{Error, Result};
use process::{Internal, Launcher, ProcessSettings, Processes};
use restart::Intensity;
use slot::{Proc, Slot};

/// Exit code of a master whose workers did not all stop within `grace`.
pub const EXIT_KILLED_AFTER_GRACE: i32 = 1;

/// The group that SIGTTIN and SIGTTOU scale (`scale_signals`): `DEFAULT_GROUP`, the one
/// `Cluster::worker` adds, spelled again here because the supervisor sits below the API that
/// defines it (a unit test holds the two equal).
const SCALED_GROUP: &str = "worker";

/// Events for the master's code, before decoding app payloads.
#[derive(Debug)]
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
        /// A replacement killed for not being ready within this `ready_timeout`.
        unready: Option<Duration>,
    },
    RestartLimit {
        id: WorkerId,
        exit: ExitKind,
    },
    SpawnFailed {
        id: WorkerId,
        error: String,
        retry_in: Duration,
    },
    ReloadStarted,
    ReloadFinished,
    ReloadFailed {
        error: String,
    },
    Recycling {
        id: WorkerId,
        reason: &'static str,
    },
    Autoscaled {
        group: String,
        from: usize,
        to: usize,
        reason: String,
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

use crate::event_queue::{EventSender, MAX_APP_BYTES, MAX_APP_EVENTS, Refused};
use crate::violations::Violations;
pub(crate) use crate::violations::notice;

/// A group of slots running the same worker function.
struct Group {
    name: Arc<str>,
    options: GroupOptions,
    policy: RestartPolicy,
    intensity: Intensity,
    slots: BTreeMap<usize, Slot>,
    /// Processes of slots removed by a scale-down, until they have exited.
    leaving: Vec<Proc>,
    /// The last generation started in each slot number, kept after a slot is removed so that
    /// a slot added again never reuses the id of a process still leaving.
    generations: BTreeMap<usize, u64>,
    /// With `autoscale`: its policy and decisions.
    autoscaler: Option<autoscale::Autoscaler>,
}

/// A rolling reload in progress.
struct Reload {
    /// Slots this pass replaces, for the progress systemd is told.
    total: usize,
    /// Slots still to replace, in order.
    queue: VecDeque<SlotKey>,
    /// Slots whose replacement is starting.
    active: Vec<SlotKey>,
    /// Another reload was asked for during this one: run one more pass after it.
    again: bool,
}

/// Why the cluster is stopping.
enum Stopping {
    Requested,
    RestartLimit(Error),
    MasterFailed(Error),
    /// The options cannot work: a worker could not take on its least-privilege settings
    /// before the cluster ever served.
    Misconfigured(Error),
    /// A new master took over (an upgrade): this one drains and exits.
    Upgraded,
}

pub(crate) struct Supervisor<L = Processes> {
    options: Options,
    groups: Vec<Group>,
    launcher: L,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    commands_rx: mpsc::UnboundedReceiver<Command>,
    events: Option<EventSender<RawEvent>>,
    pending: Arc<Pending>,
    stopping: Option<Stopping>,
    killed_after_grace: bool,
    listeners: MasterListeners,
    /// The workers' outbox tasks.
    outboxes: JoinSet<()>,
    /// Shutdown signals received, the first included. Every one after the shutdown began
    /// kills what is left, however soon it comes: no debounce, since a quick double Ctrl-C
    /// means "now". A storm of them is only counted (see `on_signal`).
    shutdown_signals: u64,
    /// A shutdown signal came after the shutdown began: every process was killed.
    stopped_now: bool,
    /// Shutdown signals after the one that stopped the cluster at once.
    signals_after_stop_now: u64,
    reload: Option<Reload>,
    reloads_total: u64,
    started: Instant,
    /// Restarts by slot and reason, for status and metrics.
    restart_reasons: BTreeMap<(Arc<str>, usize, &'static str), u64>,
    ipc_received: u64,
    /// When to read every worker's memory and CPU next.
    next_sample: Instant,
    /// When they were read last: the CPU used since then is each worker's `cpu_cores`.
    sampled_at: Option<Instant>,
    /// The slots being recycled (memory, unread channel, max_requests, max_lifetime), at most
    /// `reload_parallelism` at once.
    recycling: BTreeMap<SlotKey, recycle::Why>,
    /// Recycles by slot and reason, for status and metrics.
    recycles: BTreeMap<(Arc<str>, usize, &'static str), u64>,
    /// Worker processes that could not be started.
    spawn_failures_total: u64,
    /// The last start failure, while a slot still waits for its retry.
    spawn_error: Option<String>,
    /// A worker has been ready since the start: a configuration error found by a spawn no
    /// longer stops the cluster, which has served (see `spawn_failed`).
    served: bool,
    /// Workers' messages dropped because the master's function did not read its events.
    events_dropped: u64,
    /// Bounds workers went past, by kind; shared with the listeners and reporters.
    violations: Arc<Violations>,
    /// The watch on the executable (option `watch`); dropped when the shutdown begins.
    watch: Option<watch::ExeWatch>,
    /// A new build seen by the watch, to reload onto once no replacement is under way.
    build_waiting: Option<watch::NewBuild>,
    /// Lifecycle events for the control socket's followers (`clusterctl reload --wait`).
    taps: tokio::sync::broadcast::Sender<control::Tap>,
    /// The options file and environment the master started with, re-read at each reload.
    config: Option<LiveConfig>,
    /// What systemd is told (nothing without `NOTIFY_SOCKET`).
    notify: notify::Notifier,
    /// During the shutdown: when the workers left are killed (`grace` after it began).
    stop_deadline: Option<Instant>,
    /// The master's store, which workers' reporters hand their operations to.
    store: Option<crate::store::StoreHandle>,
    /// Upgrades of the master: one this master started, or the one it is the new master of.
    upgrade: upgrade::Upgrades,
}

impl Supervisor<Processes> {
    /// The real supervisor: `system` says what the master was started with (sockets, the
    /// live workers' pids the reaper leaves alone).
    pub(crate) fn new(
        options: Options,
        groups: Vec<GroupOptions>,
        policies: Vec<(String, privileges::Policy)>,
        spawn_hook: Option<SpawnHook>,
        queues: (
            mpsc::UnboundedReceiver<Command>,
            Option<EventSender<RawEvent>>,
            Arc<Pending>,
        ),
        system: (crate::net::inherited::Inherited, reaper::LivePids),
        logs: Option<Arc<RecentLogs>>,
    ) -> Result<Self> {
        let (commands_rx, events, pending) = queues;
        let (inherited, live) = system;
        let spawn_live = live.clone();
        let settings = ProcessSettings {
            policies,
            hook: spawn_hook,
            heartbeat_interval: options.heartbeat_interval(),
            ready_timeout: options.ready_timeout(),
            prefix_logs: options.worker_prefix_logs(),
            live,
            logs,
        };
        let mut supervisor =
            Supervisor::with_launcher(options, groups, commands_rx, events, pending, || {
                Processes::new(settings)
            })?;
        supervisor.listeners.set_inherited(inherited);
        supervisor.set_spawn(upgrade::Spawn {
            exe: supervisor.launcher.exe().to_owned(),
            args: std::env::args_os().skip(1).collect(),
            live: spawn_live,
        });
        supervisor.notify = notify::Notifier::from_env(supervisor.options.min_ready());
        if supervisor.options.watch() {
            let exe = supervisor.launcher.exe();
            supervisor.watch = Some(watch::ExeWatch::start(
                exe,
                supervisor.options.watch_debounce(),
            )?);
            notice!(
                info,
                "watching {} for new builds: each one starts a rolling reload",
                exe.display()
            );
        }
        Ok(supervisor)
    }
}

impl<L: Launcher> Supervisor<L> {
    /// A supervisor whose processes come from the launcher `make_launcher` makes.
    pub(crate) fn with_launcher<F>(
        options: Options,
        groups: Vec<GroupOptions>,
        commands_rx: mpsc::UnboundedReceiver<Command>,
        events: Option<EventSender<RawEvent>>,
        pending: Arc<Pending>,
        make_launcher: F,
    ) -> Result<Self>
    where
        F: FnOnce() -> Result<L>,
    {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let violations = Arc::new(Violations::default());
        let listeners = MasterListeners::new(
            options.accept_coalescing(),
            options.ack_timeout(),
            KeyRules {
                cookie: options.sticky_cookie().map(|c| c.as_str().to_owned()),
                header: options.sticky_header().map(|h| h.as_str().to_owned()),
                proxy: options.sticky_proxy(),
                peek_timeout: options.sticky_peek_timeout(),
            },
            violations.clone(),
        );
        let launcher = make_launcher()?;
        let groups = groups
            .into_iter()
            .map(|group| {
                let policy = group
                    .restart()
                    .copied()
                    .unwrap_or_else(|| *options.restart());
                Group {
                    name: group.name().into(),
                    autoscaler: group
                        .autoscale()
                        .map(|range| autoscale::Autoscaler::new(&options, range)),
                    intensity: Intensity::from_policy(&policy),
                    options: group,
                    policy,
                    slots: BTreeMap::new(),
                    leaving: Vec::new(),
                    generations: BTreeMap::new(),
                }
            })
            .collect();
        let now = Instant::now();
        let min_ready = options.min_ready();
        Ok(Supervisor {
            options,
            groups,
            launcher,
            internal_tx,
            internal_rx,
            commands_rx,
            events,
            pending,
            stopping: None,
            killed_after_grace: false,
            listeners,
            outboxes: JoinSet::new(),
            shutdown_signals: 0,
            stopped_now: false,
            signals_after_stop_now: 0,
            reload: None,
            reloads_total: 0,
            started: now,
            restart_reasons: BTreeMap::new(),
            ipc_received: 0,
            next_sample: now,
            sampled_at: None,
            recycling: BTreeMap::new(),
            recycles: BTreeMap::new(),
            spawn_failures_total: 0,
            spawn_error: None,
            served: false,
            events_dropped: 0,
            violations,
            watch: None,
            build_waiting: None,
            taps: tokio::sync::broadcast::channel(control::TAP_CAPACITY).0,
            config: None,
            notify: notify::Notifier::silent(min_ready),
            stop_deadline: None,
            store: None,
            upgrade: upgrade::Upgrades::default(),
        })
    }

    /// Serves workers' operations on the master's store from now on.
    pub(crate) fn set_store(&mut self, store: crate::store::StoreHandle) {
        self.store = Some(store);
    }

    /// The count of workers' violations, which the store's task adds to.
    pub(crate) fn violations(&self) -> Arc<Violations> {
        self.violations.clone()
    }

    fn emit(&mut self, event: RawEvent) {
        self.watch_incoming(&event);
        // Before the master's queue, which a cluster without a master function lacks.
        if self.taps.receiver_count() > 0 {
            if let Some(tap) = control::Tap::of(&event) {
                let _ = self.taps.send(tap);
            }
        }
        let Some(events) = &self.events else { return };
        let queued = match &event {
            RawEvent::Message { payload, .. } | RawEvent::Request { payload, .. } => {
                let bytes = payload.len();
                events.app(event, bytes)
            }
            _ => events.lifecycle(event),
        };
        match queued {
            Ok(()) => {}
            // The master's function returned: nobody reads events any more.
            Err(Refused::Closed) => self.events = None,
            Err(Refused::Full) => {
                self.events_dropped += 1;
                if self.events_dropped.is_power_of_two() {
                    notice!(
                        warn,
                        "the master's function does not read its events: {} messages from workers dropped so far ({MAX_APP_EVENTS} or {} MiB wait; lifecycle events still get in)",
                        self.events_dropped,
                        MAX_APP_BYTES >> 20
                    );
                }
            }
        }
    }

    /// Runs the cluster until it has stopped; returns the master's exit code and, when it gave
    /// up, why. `master_done` reports how the master's own function ended: with the error that
    /// shuts the cluster down, if it failed.
    pub(crate) async fn run(
        mut self,
        mut signals: mpsc::UnboundedReceiver<Signal>,
        mut master_done: oneshot::Receiver<Option<Error>>,
    ) -> (i32, Option<Error>) {
        let names: Vec<Arc<str>> = self.groups.iter().map(|g| g.name.clone()).collect();
        for name in names {
            if let Some(g) = self.group_index(&name) {
                let options = &self.groups[g].options;
                let count = options.count().resolve();
                // The count is where an autoscaled group starts, within its range.
                let count = options
                    .autoscale()
                    .map_or(count, |range| range.clamp(count));
                self.resize(g, count).await;
            }
        }
        let mut master_running = true;
        loop {
            let serving = if self.stopping.is_some() && self.live_count() == 0 {
                match self.still_serving(Instant::now()) {
                    Some(serving) => Some(serving),
                    None => break,
                }
            } else {
                None
            };
            self.reload_onto_waiting_build().await;
            self.finish_incoming_failure().await;
            self.after_turn();
            let deadline = self.next_deadline();
            let notify_at = self.notify.next_timer();
            tokio::select! {
                Some(sig) = signals.recv() => self.on_signal(sig).await,
                build = next_build(&mut self.watch) => self.on_new_build(build),
                Some(internal) = self.internal_rx.recv() => self.on_internal(internal).await,
                Some(cmd) = self.commands_rx.recv() => self.on_command(cmd).await,
                Some(event) = self.upgrade.events_rx.recv() => self.on_upgrade_event(event).await,
                failed = &mut master_done, if master_running => {
                    master_running = false;
                    if let Ok(Some(error)) = failed {
                        self.begin_stop(Stopping::MasterFailed(error));
                    }
                }
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.on_timers().await
                }
                // Here and not on a task of its own: the watchdog's ping says this loop turns.
                () = sleep_until(notify_at.unwrap_or_else(Instant::now)), if notify_at.is_some() => {
                    self.notify.on_timer(Instant::now(), self.stop_deadline)
                }
                () = served(serving.as_ref()), if serving.is_some() => {}
            }
        }
        self.launcher.finish().await;
        self.report_signal_storm();
        match self.stopping.take() {
            Some(Stopping::RestartLimit(e)) => (EXIT_RESTART_LIMIT, Some(e)),
            Some(Stopping::MasterFailed(e)) => (1, Some(e)),
            Some(Stopping::Misconfigured(e)) => (2, Some(e)),
            _ if self.killed_after_grace => (EXIT_KILLED_AFTER_GRACE, None),
            _ => (0, None),
        }
    }

    fn group_index(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| *g.name == *name)
    }

    fn slot_mut(&mut self, key: &SlotKey) -> Option<&mut Slot> {
        let g = self.group_index(&key.group)?;
        self.groups[g].slots.get_mut(&key.slot)
    }

    /// The live process `id`, wherever it is (current, replacement, draining, leaving).
    fn proc_mut(&mut self, id: &WorkerId) -> Option<&mut Proc> {
        find(&mut self.groups, id)
    }

    /// Every live process.
    fn procs(&self) -> impl Iterator<Item = &Proc> {
        self.groups
            .iter()
            .flat_map(|g| g.slots.values().flat_map(Slot::procs).chain(&g.leaving))
    }

    fn procs_mut(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.groups.iter_mut().flat_map(|g| {
            g.slots
                .values_mut()
                .flat_map(Slot::procs_mut)
                .chain(&mut g.leaving)
        })
    }

    fn live_count(&self) -> usize {
        self.procs().count()
    }

    fn next_deadline(&self) -> Option<Instant> {
        let heartbeat = self.options.heartbeat_timeout();
        let mut next = self.procs().filter_map(|p| p.deadline(heartbeat)).min();
        if self.stopping.is_none() {
            let restarts = self
                .groups
                .iter()
                .flat_map(|g| g.slots.values())
                .filter_map(|s| s.restart_at);
            next = next.into_iter().chain(restarts).min();
            next = Some(next.map_or(self.next_sample, |n| n.min(self.next_sample)));
            next = next.into_iter().chain(self.upgrade_deadline()).min();
        }
        next
    }

    /// The watch saw a new build: it is reloaded onto as soon as no replacement is under way
    /// (see [`Supervisor::reload_onto_waiting_build`]); a later build before then replaces it.
    fn on_new_build(&mut self, build: watch::NewBuild) {
        if self.stopping.is_some() {
            return;
        }
        if self.reload.is_some() {
            notice!(
                info,
                "watch: {build}; reloading onto it once the reload under way has ended"
            );
        }
        self.build_waiting = Some(build);
    }

    /// Starts the rolling reload onto the build the watch saw, once nothing is being replaced:
    /// no reload under way and no replacement still starting or leaving. A reload that is
    /// rolled back leaves its abandoned replacements in their slots until they have exited;
    /// waiting for them (rather than asking the reload under way for one more pass, which a
    /// roll-back forgets) makes a build that fixes a failed one reloaded too.
    async fn reload_onto_waiting_build(&mut self) {
        if self.build_waiting.is_none() || self.reload.is_some() || self.stopping.is_some() {
            return;
        }
        let replacing = self
            .groups
            .iter()
            .flat_map(|g| g.slots.values())
            .any(|s| s.next.is_some());
        if replacing {
            return;
        }
        if let Some(build) = self.build_waiting.take() {
            notice!(info, "watch: {build}: rolling reload");
            self.start_reload().await;
        }
    }

    /// Asks every process to stop, to be killed after `grace`; nothing is restarted from now.
    fn begin_stop(&mut self, why: Stopping) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(why);
        self.abandon_upgrade();
        self.reload = None;
        // No build is started any more: the watch and its thread go now.
        self.watch = None;
        self.build_waiting = None;
        self.recycling.clear();
        let deadline = Instant::now() + self.options.grace();
        self.stop_deadline = Some(deadline);
        self.notify.stopping();
        for slot in self.groups.iter_mut().flat_map(|g| g.slots.values_mut()) {
            slot.restart_at = None;
        }
        let ids: Vec<WorkerId> = self.procs().map(|p| p.id.clone()).collect();
        for id in ids {
            self.stop_proc(&id, deadline, slot::StopReason::Shutdown);
        }
    }
}

/// The next build the watch saw; never, without a watch.
async fn next_build(watch: &mut Option<watch::ExeWatch>) -> watch::NewBuild {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

/// When the clients the servers still serve have been (see [`Supervisor::still_serving`]),
/// or `until`; never, with nothing to wait for.
async fn served(serving: Option<&(tokio_util::task::TaskTracker, Instant)>) {
    match serving {
        Some((tasks, until)) => {
            let _ = tokio::time::timeout_at(*until, tasks.wait()).await;
        }
        None => std::future::pending().await,
    }
}

/// The live process `id` in `groups` (a free function, so that the supervisor's other fields
/// stay borrowable alongside).
fn find<'a>(groups: &'a mut [Group], id: &WorkerId) -> Option<&'a mut Proc> {
    let group = groups.iter_mut().find(|g| g.name == id.group)?;
    if let Some(p) = group
        .slots
        .get_mut(&id.slot)
        .and_then(|s| s.proc_mut(id.generation))
    {
        return Some(p);
    }
    group.leaving.iter_mut().find(|p| p.id == *id)
}
