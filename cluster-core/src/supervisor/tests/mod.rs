//! The supervisor's logic against fake processes, on tokio's paused clock: every interleaving
//! that real processes make hard to reach, in milliseconds.
//!
//! A fake process is a task that plays a worker over a real channel pair: it comes online,
//! becomes ready, beats, and exits 0 when asked to stop, unless its [`Behaviour`] says
//! otherwise; a test can also make it exit, crash or answer at any moment. Every test checks
//! at the end that the supervisor's view (the `Workers` snapshot) and the set of fake
//! processes alive are the same: no worker left running, none counted twice.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_ipc::{Channel, Config};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::process::{Launched, Launcher};
use super::report::Reporter;
use super::{Command, RawEvent, Supervisor};
use crate::messaging::Pending;
use crate::model::{ExitKind, SlotKey, WorkerId, WorkerInfo, WorkerState};
use crate::observe::resources::Usage;
use crate::options::{GroupOptions, Options, Signal};
use crate::protocol::{ToMaster, ToWorker};
use crate::{Error, Result};

mod autoscale;
mod faults;
mod notify;
mod recycle;
mod reload;
mod scale_signals;
mod shutdown;
mod upgrade;
mod watch;

/// How a fake process behaves on its own.
#[derive(Debug, Clone, Copy)]
pub(super) struct Behaviour {
    /// Its channel comes up.
    pub online: bool,
    /// It says it is ready once online.
    pub ready: bool,
    /// It sends heartbeats.
    pub beats: bool,
    /// It exits 0 when asked to stop.
    pub obeys: bool,
    /// The launch fails.
    pub spawn_fails: bool,
    /// It reads its channel (its heartbeats go on either way, as a real worker's do).
    pub reads: bool,
}

impl Behaviour {
    pub(super) const HEALTHY: Behaviour = Behaviour {
        online: true,
        ready: true,
        beats: true,
        obeys: true,
        spawn_fails: false,
        reads: true,
    };
    pub(super) const NEVER_READY: Behaviour = Behaviour {
        ready: false,
        ..Behaviour::HEALTHY
    };
    pub(super) const STUBBORN: Behaviour = Behaviour {
        obeys: false,
        ..Behaviour::HEALTHY
    };
    pub(super) const HANGS: Behaviour = Behaviour {
        beats: false,
        ..Behaviour::HEALTHY
    };
    pub(super) const SPAWN_FAILS: Behaviour = Behaviour {
        spawn_fails: true,
        ..Behaviour::HEALTHY
    };
    pub(super) const DEAF: Behaviour = Behaviour {
        reads: false,
        ..Behaviour::HEALTHY
    };
}

/// What a test can make a fake process do.
#[derive(Debug)]
pub(super) enum Act {
    /// Brings the channel of a process started with `online: false` up.
    Online,
    Ready,
    Exit(i32),
    /// Sends a message to the master.
    Say(ToMaster),
}

/// The fake processes' shared world.
#[derive(Default)]
struct World {
    /// Behaviours of the next launches, in order; HEALTHY once empty.
    plan: VecDeque<Behaviour>,
    /// The fake processes alive now.
    alive: BTreeSet<WorkerId>,
    /// Every launch, in order.
    launched: Vec<WorkerId>,
    /// Their controls.
    acts: BTreeMap<WorkerId, mpsc::UnboundedSender<Act>>,
    /// What each received.
    received: BTreeMap<WorkerId, Vec<ToWorker>>,
    /// Resident bytes reported by the sampler, by pid.
    rss: BTreeMap<u32, u64>,
    /// The cores every fake process uses from now on (`Harness::set_cpu`).
    cpu_rate: f64,
    /// Each process's CPU seconds at its last reading, and when: they grow at `cpu_rate`.
    cpu: BTreeMap<u32, (f64, tokio::time::Instant)>,
    next_pid: u32,
}

pub(super) struct Fake {
    world: Arc<Mutex<World>>,
}

fn world(w: &Arc<Mutex<World>>) -> std::sync::MutexGuard<'_, World> {
    w.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Launcher for Fake {
    async fn launch(
        &mut self,
        id: &WorkerId,
        _env: &[(String, String)],
        reporter: Reporter,
    ) -> Result<Launched> {
        let (behaviour, pid, acts) = {
            let mut w = world(&self.world);
            let behaviour = w.plan.pop_front().unwrap_or(Behaviour::HEALTHY);
            if behaviour.spawn_fails {
                return Err(Error::io(
                    "cannot start the fake worker",
                    std::io::Error::from_raw_os_error(nix::libc::EAGAIN),
                ));
            }
            w.next_pid += 1;
            let pid = 1000 + w.next_pid;
            w.alive.insert(id.clone());
            w.launched.push(id.clone());
            let (tx, rx) = mpsc::unbounded_channel();
            w.acts.insert(id.clone(), tx);
            (behaviour, pid, rx)
        };
        let (kill, killed) = oneshot::channel();
        tokio::spawn(play(behaviour, reporter, killed, acts, self.world.clone()));
        Ok(Launched {
            pid: Some(pid),
            kill,
        })
    }

    fn usage(&self, pid: u32) -> Option<Usage> {
        let mut w = world(&self.world);
        let rss = w.rss.get(&pid).copied().unwrap_or(1 << 20);
        let now = tokio::time::Instant::now();
        let rate = w.cpu_rate;
        let (seconds, at) = w.cpu.get(&pid).copied().unwrap_or((0.0, now));
        let cpu_seconds = seconds + rate * (now - at).as_secs_f64();
        w.cpu.insert(pid, (cpu_seconds, now));
        Some(Usage {
            rss_bytes: rss,
            cpu_seconds,
        })
    }

    async fn finish(&mut self) {}
}

/// One fake process's life, reported as the real `watch` task reports a child's.
async fn play(
    behaviour: Behaviour,
    reporter: Reporter,
    mut killed: oneshot::Receiver<()>,
    mut acts: mpsc::UnboundedReceiver<Act>,
    w: Arc<Mutex<World>>,
) {
    let id = reporter.id().clone();
    let mut inbox = None;
    if behaviour.online {
        inbox = come_online(&reporter, behaviour).await;
    }
    let mut beat = tokio::time::interval(Duration::from_millis(500));
    let exit = loop {
        tokio::select! {
            _ = &mut killed => break ExitKind::Signal(nix::libc::SIGKILL),
            act = acts.recv() => match act {
                Some(Act::Online) => inbox = come_online(&reporter, behaviour).await,
                Some(Act::Ready) => reporter.message(ToMaster::Ready).await,
                Some(Act::Exit(code)) => break ExitKind::Code(code),
                Some(Act::Say(msg)) => reporter.message(msg).await,
                None => {}
            },
            msg = async {
                match inbox.as_mut() {
                    Some(inbox) if behaviour.reads => inbox.recv().await,
                    _ => std::future::pending().await,
                }
            } => match msg {
                Ok(Some(msg)) => {
                    let shutdown = msg == ToWorker::Shutdown;
                    world(&w).received.entry(id.clone()).or_default().push(msg);
                    if shutdown && behaviour.obeys {
                        reporter.message(ToMaster::Exiting { failed: false }).await;
                        break ExitKind::Code(0);
                    }
                }
                _ => inbox = None,
            },
            _ = beat.tick(), if behaviour.beats && inbox.is_some() => {
                reporter.message(ToMaster::Heartbeat { lag_us: 0, connections: 0 }).await
            }
        }
    };
    world(&w).alive.remove(&id);
    reporter.exited(exit);
}

/// Brings a fake process's channel up, and says it is ready if its behaviour says so.
async fn come_online(
    reporter: &Reporter,
    behaviour: Behaviour,
) -> Option<Channel<ToMaster, ToWorker>> {
    let (ours, theirs) = Channel::<ToWorker, ToMaster>::pair(Config::default())
        .await
        .ok()?;
    reporter.online(ours.sender());
    if behaviour.ready {
        reporter.message(ToMaster::Ready).await;
    }
    Some(theirs)
}

/// A supervisor under test, with its queues.
pub(super) struct Harness {
    world: Arc<Mutex<World>>,
    commands: mpsc::UnboundedSender<Command>,
    events: crate::event_queue::EventReceiver<RawEvent>,
    signals: mpsc::UnboundedSender<Signal>,
    /// Plays the watch on the executable: each build sent is one it saw.
    builds: mpsc::UnboundedSender<super::watch::NewBuild>,
    master_done: Option<oneshot::Sender<Option<Error>>>,
    /// The master's table of requests waiting for a worker's answer.
    pub pending: Arc<Pending>,
    run: Option<JoinHandle<(i32, Option<Error>)>>,
    /// Every event seen so far, as text.
    pub seen: Vec<String>,
}

/// Plenty: every wait in these tests is on the paused clock, which jumps to the next timer.
const WAIT: Duration = Duration::from_secs(600);

pub(super) fn group(count: usize) -> GroupOptions {
    GroupOptions::new("worker").with_count(count)
}

pub(super) fn key(slot: usize) -> SlotKey {
    SlotKey::new("worker", slot)
}

pub(super) fn wid(slot: usize, generation: u64) -> WorkerId {
    WorkerId {
        group: "worker".into(),
        slot,
        generation,
    }
}

fn describe(event: &RawEvent) -> String {
    match event {
        RawEvent::Spawned { id, .. } => format!("spawned {id}"),
        RawEvent::Online { id } => format!("online {id}"),
        RawEvent::Ready { id } => format!("ready {id}"),
        RawEvent::Exit {
            id,
            expected,
            restarting,
            ..
        } => format!(
            "exit {id}{}{}",
            if *expected { "" } else { " unexpected" },
            if *restarting { " restarting" } else { "" }
        ),
        RawEvent::RestartLimit { id, .. } => format!("restart-limit {id}"),
        RawEvent::SpawnFailed { id, .. } => format!("spawn-failed {id}"),
        RawEvent::ReloadStarted => "reload-started".into(),
        RawEvent::ReloadFinished => "reload-finished".into(),
        RawEvent::ReloadFailed { .. } => "reload-failed".into(),
        RawEvent::Recycling { id, reason } => format!("recycling {id} {reason}"),
        RawEvent::Autoscaled {
            group, from, to, ..
        } => format!("autoscaled {group} {from} -> {to}"),
        RawEvent::Message { from, .. } => format!("message {from}"),
        RawEvent::Request { from, .. } => format!("request {from}"),
    }
}

impl Harness {
    /// Starts a supervisor with `options` and `groups`; the first launches behave as `plan`.
    pub(super) fn start(options: Options, groups: Vec<GroupOptions>, plan: &[Behaviour]) -> Self {
        Self::start_notifying(options, groups, plan, None)
    }

    /// As [`Harness::start`], telling `notifier` what systemd would hear.
    pub(super) fn start_notifying(
        options: Options,
        groups: Vec<GroupOptions>,
        plan: &[Behaviour],
        notifier: Option<super::notify::Notifier>,
    ) -> Self {
        Self::start_with(options, groups, plan, move |supervisor| {
            if let Some(notifier) = notifier {
                supervisor.notify = notifier;
            }
        })
    }

    /// As [`Harness::start`], with `prepare` done to the supervisor before it runs.
    pub(super) fn start_with(
        options: Options,
        groups: Vec<GroupOptions>,
        plan: &[Behaviour],
        prepare: impl FnOnce(&mut Supervisor<Fake>),
    ) -> Self {
        let world = Arc::new(Mutex::new(World {
            plan: plan.iter().copied().collect(),
            ..World::default()
        }));
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = crate::event_queue::event_queue();
        let (signals, signals_rx) = mpsc::unbounded_channel();
        let (master_done, done_rx) = oneshot::channel();
        let w = world.clone();
        let pending = Arc::new(Pending::default());
        let mut supervisor = Supervisor::with_launcher(
            options,
            groups,
            commands_rx,
            Some(events_tx),
            pending.clone(),
            move || Ok(Fake { world: w }),
        )
        .unwrap();
        let (builds, watch) = super::watch::ExeWatch::fake();
        supervisor.watch = Some(watch);
        prepare(&mut supervisor);
        let run = tokio::spawn(supervisor.run(signals_rx, done_rx));
        Harness {
            world,
            commands,
            events,
            signals,
            builds,
            master_done: Some(master_done),
            pending,
            run: Some(run),
            seen: Vec::new(),
        }
    }

    /// The behaviours of the next launches.
    pub(super) fn plan(&self, behaviours: &[Behaviour]) {
        world(&self.world).plan.extend(behaviours.iter().copied());
    }

    /// Waits for the event described as `want` (see [`describe`]), keeping every event seen.
    pub(super) async fn expect(&mut self, want: &str) {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(event) = self.events.recv().await {
                let text = describe(&event);
                self.seen.push(text.clone());
                if text == want {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            found == Ok(true),
            "never saw {want:?}; saw {:#?}",
            self.seen
        );
    }

    /// Waits for `want` like [`Harness::expect`] and says when it came.
    pub(super) async fn expect_at(&mut self, want: &str) -> tokio::time::Instant {
        self.expect(want).await;
        tokio::time::Instant::now()
    }

    /// Whether the events in `order` were seen, in that order (others may stand between).
    pub(super) fn assert_order(&self, order: &[&str]) {
        let mut at = 0;
        for want in order {
            match self.seen[at..].iter().position(|s| s == want) {
                Some(i) => at += i + 1,
                None => panic!(
                    "{want:?} not seen after position {at}; seen {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Asserts that `event` was never seen, taking every event queued so far first.
    pub(super) fn assert_never(&mut self, event: &str) {
        while let Some(queued) = self.events.try_recv() {
            self.seen.push(describe(&queued));
        }
        assert!(
            !self.seen.iter().any(|s| s == event),
            "{event:?} was seen: {:#?}",
            self.seen
        );
    }

    pub(super) fn act(&self, id: &WorkerId, act: Act) {
        let tx = world(&self.world).acts.get(id).cloned();
        tx.expect("no such fake process").send(act).unwrap();
    }

    pub(super) fn signal(&self, sig: Signal) {
        self.signals.send(sig).unwrap();
    }

    /// The watch saw build number `n` of the executable. Ignored once the shutdown began,
    /// which drops the watch.
    pub(super) fn new_build(&self, n: u64) {
        let _ = self.builds.send(super::watch::NewBuild {
            path: "/fake/app".into(),
            bytes: 1000 + n,
            hash: n,
        });
    }

    pub(super) fn command(&self, cmd: Command) {
        assert!(self.commands.send(cmd).is_ok(), "the supervisor is gone");
    }

    pub(super) fn reload(&self) {
        self.command(Command::Reload);
    }

    pub(super) async fn scale(&self, count: usize) {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Scale {
            group: "worker".into(),
            count,
            reply,
        });
        rx.await.unwrap().unwrap();
    }

    pub(super) async fn workers(&self) -> Vec<WorkerInfo> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Workers { reply });
        rx.await.unwrap()
    }

    pub(super) async fn status(&self) -> crate::observe::status::ClusterStatus {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Status { reply });
        rx.await.unwrap()
    }

    /// Every fake process uses `cores` from now on; the CPU used so far stays counted.
    pub(super) fn set_cpu(&self, cores: f64) {
        let mut w = world(&self.world);
        let now = tokio::time::Instant::now();
        let rate = w.cpu_rate;
        for (seconds, at) in w.cpu.values_mut() {
            *seconds += rate * (now - *at).as_secs_f64();
            *at = now;
        }
        w.cpu_rate = cores;
    }

    pub(super) fn set_rss(&self, pid: u32, bytes: u64) {
        world(&self.world).rss.insert(pid, bytes);
    }

    pub(super) fn launched(&self) -> Vec<WorkerId> {
        world(&self.world).launched.clone()
    }

    pub(super) fn received(&self, id: &WorkerId) -> Vec<ToWorker> {
        world(&self.world)
            .received
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// Starts a reload whose first replacement (slot 0's) comes online but does not say it
    /// is ready until the test makes it (`Act::Ready`), so the test can act while the reload
    /// waits for it.
    pub(super) async fn reload_holding_slot_0(&mut self) {
        self.plan(&[Behaviour::NEVER_READY]);
        self.reload();
        self.expect("spawned worker/0#2").await;
    }

    /// Waits until process `id` has read `n` messages.
    pub(super) async fn wait_received(&self, id: &WorkerId, n: usize) {
        let wait = async {
            while self.received(id).len() < n {
                // A timer, not a yield: the paused clock advances only while the runtime
                // idles, and the bound below must be able to fire.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("{id} never read {n} messages"));
    }

    /// The master function ended, failed or not.
    pub(super) fn master_done(&mut self, failed: bool) {
        if let Some(tx) = self.master_done.take() {
            let _ = tx.send(failed.then(|| Error::other("the master function failed")));
        }
    }

    /// Asserts that the live fake processes are exactly the supervisor's workers, that each
    /// slot has exactly one worker that is not stopping, and that these are `slots`.
    pub(super) async fn assert_settled(&self, slots: &[usize]) {
        let workers = self.workers().await;
        let alive = world(&self.world).alive.clone();
        let listed: BTreeSet<WorkerId> = workers.iter().map(|w| w.id.clone()).collect();
        assert_eq!(
            listed.len(),
            workers.len(),
            "a worker listed twice: {workers:#?}"
        );
        assert_eq!(listed, alive, "supervisor's view vs processes alive");
        let serving: Vec<usize> = workers
            .iter()
            .filter(|w| w.state != WorkerState::Stopping)
            .map(|w| w.id.slot)
            .collect();
        assert_eq!(serving, slots, "slots served: {workers:#?}");
    }

    /// Waits until every process in the supervisor's view is in `state`.
    pub(super) async fn wait_state(&self, state: WorkerState) {
        let wait = async {
            while !self.workers().await.iter().all(|w| w.state == state) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .expect("the workers never reached the state");
    }

    /// Waits until every process in the supervisor's view is ready (or none is left
    /// stopping), so a snapshot is taken at rest.
    pub(super) async fn settle(&self) {
        let rest = async {
            loop {
                let workers = self.workers().await;
                if workers.iter().all(|w| w.state == WorkerState::Ready) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(WAIT, rest)
            .await
            .expect("the cluster never came to rest");
    }

    /// Waits for the supervisor to end; returns its exit code and checks no process is left.
    pub(super) async fn finished(&mut self) -> (i32, Option<Error>) {
        let run = self.run.take().expect("finished twice");
        let result = tokio::time::timeout(WAIT, run)
            .await
            .expect("the supervisor never ended")
            .unwrap();
        while let Some(event) = self.events.try_recv() {
            self.seen.push(describe(&event));
        }
        let alive = world(&self.world).alive.clone();
        assert!(alive.is_empty(), "processes left running: {alive:?}");
        result
    }

    /// Shuts down with SIGTERM and waits for the end.
    pub(super) async fn shutdown(&mut self) -> (i32, Option<Error>) {
        self.signal(Signal::SIGTERM);
        self.finished().await
    }
}

/// Options for tests: the defaults but with a quick restart backoff, so tests read easily.
pub(super) fn options() -> Options {
    Options::new()
}
