//! The supervisor's one way to processes: start a worker, hear how it fares, read its usage.
//!
//! [`Launcher`] is the seam: the supervisor's logic runs against [`Processes`] (real children
//! spawned from the spawner thread) in production, and against a fake in its unit tests, where
//! time is tokio's paused clock and a test plays the workers.

use std::ffi::OsString;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cluster_ipc::{Channel, Config, bootstrap};
use tokio::process::Child;
use tokio::sync::oneshot;

use super::notify::MASTER_ONLY_VARS;
use super::privileges::Policy;
use super::reaper::LivePids;
use super::report::{Credited, Reporter};
use super::spawner::Spawner;
use crate::identity::{
    ENV_GENERATION, ENV_GROUP, ENV_HEARTBEAT_MS, ENV_IPC_FD, ENV_PROTOCOL_LEVEL, ENV_SLOT,
};
use crate::model::{ExitKind, WorkerId};
use crate::observe::logs;
use crate::observe::resources::{self, Usage};
use crate::protocol::{ToMaster, ToWorker};
use crate::{Error, Result, sys};

/// What the processes (and their outboxes) report to the supervisor's loop.
pub(crate) enum Internal {
    /// The worker's channel is up.
    Online {
        id: WorkerId,
        sender: cluster_ipc::Sender<ToWorker>,
    },
    /// A message from the worker, holding one of its credits (see report.rs).
    FromWorker {
        id: WorkerId,
        msg: Credited,
    },
    Exited {
        id: WorkerId,
        exit: ExitKind,
    },
    /// The worker's outbox wrote the answer to its listen request: connections handed from
    /// now on reach it after that answer, so it may join the listener's rotation.
    Listening {
        id: WorkerId,
        listener: u32,
    },
}

/// A started worker process.
pub(crate) struct Launched {
    pub(crate) pid: Option<u32>,
    /// Fired to kill the process (SIGKILL); its exit is reported as usual.
    pub(crate) kill: oneshot::Sender<()>,
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

/// How the supervisor starts workers. Everything a process does after it started (its channel
/// coming up, its messages, its exit) is reported through the [`Reporter`] it is launched
/// with.
pub(crate) trait Launcher: Send + 'static {
    /// Starts worker `id` with the group's extra environment.
    fn launch(
        &mut self,
        id: &WorkerId,
        env: &[(String, String)],
        reporter: Reporter,
    ) -> impl Future<Output = Result<Launched>> + Send;

    /// Resident memory and CPU time of a live worker.
    fn usage(&self, pid: u32) -> Option<Usage>;

    /// Waits (bounded) for what outlives the workers: the copies of their last output lines.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

/// Real worker processes: this executable, re-executed with the worker variables.
pub(crate) struct Processes {
    /// Remembered at start, so that a binary replaced on disk later is what new workers run.
    exe: PathBuf,
    args: Vec<OsString>,
    master_pid: i32,
    spawner: Spawner,
    hook: Option<SpawnHook>,
    heartbeat_interval: Duration,
    ready_timeout: Duration,
    prefix_logs: bool,
    /// The live workers' pids, which the orphan reaper leaves to tokio.
    live: LivePids,
    /// Each slot's last lines, fed by the forwarders (option `log_lines`).
    logs: Option<Arc<logs::RecentLogs>>,
    /// Tasks copying workers' output: the master waits for them before it exits, so the
    /// last lines of its workers are not lost.
    forwarders: tokio::task::JoinSet<()>,
    /// Each group's least-privilege policy, by group name.
    policies: Vec<(String, Policy)>,
}

/// What [`Processes`] needs from the options.
pub(crate) struct ProcessSettings {
    pub(crate) hook: Option<SpawnHook>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) ready_timeout: Duration,
    pub(crate) prefix_logs: bool,
    pub(crate) live: LivePids,
    /// Each group's least-privilege policy, resolved at start.
    pub(crate) policies: Vec<(String, Policy)>,
    pub(crate) logs: Option<Arc<logs::RecentLogs>>,
}

impl Processes {
    pub(crate) fn new(settings: ProcessSettings) -> Result<Self> {
        raise_descriptor_limit();
        let exe =
            std::env::current_exe().map_err(|e| Error::io("cannot find this program's path", e))?;
        let spawner = Spawner::start(tokio::runtime::Handle::current())
            .map_err(|e| Error::io("cannot start the spawner thread", e))?;
        Ok(Processes {
            exe,
            args: std::env::args_os().skip(1).collect(),
            master_pid: std::process::id() as i32,
            spawner,
            hook: settings.hook,
            heartbeat_interval: settings.heartbeat_interval,
            ready_timeout: settings.ready_timeout,
            prefix_logs: settings.prefix_logs,
            live: settings.live,
            logs: settings.logs,
            forwarders: tokio::task::JoinSet::new(),
            policies: settings.policies,
        })
    }

    /// The executable workers are started from, as found at start.
    pub(crate) fn exe(&self) -> &std::path::Path {
        &self.exe
    }

    async fn start(
        &mut self,
        id: &WorkerId,
        env: &[(String, String)],
    ) -> Result<(Child, std::os::unix::net::UnixStream)> {
        let mut settings = SpawnSettings::default();
        if let Some(hook) = &self.hook {
            hook(id, &mut settings);
        }
        let (ours, child_end) = bootstrap::socketpair()?;
        let policy = self
            .policies
            .iter()
            .find(|(group, _)| *group == *id.group)
            .map(|(_, policy)| policy);
        let mut cmd = tokio::process::Command::new(&self.exe);
        // First: `env_clear` must not remove the variables set below.
        if let Some(policy) = policy {
            policy.start_env(&mut cmd);
        }
        cmd.args(&self.args)
            .args(&settings.args)
            .env(ENV_GROUP, &*id.group)
            .env(ENV_SLOT, id.slot.to_string())
            .env(ENV_GENERATION, id.generation.to_string())
            .env(
                ENV_HEARTBEAT_MS,
                self.heartbeat_interval.as_millis().to_string(),
            )
            .env(ENV_PROTOCOL_LEVEL, crate::protocol::LEVEL.to_string())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .envs(settings.env)
            // The terminal's input stays with the master.
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for var in MASTER_ONLY_VARS {
            cmd.env_remove(var);
        }
        child_end.pass_to(cmd.as_std_mut(), ENV_IPC_FD);
        // Before the parent-death signal, which a change of credentials clears.
        let restricted = match policy {
            Some(policy) => match policy.restrictions(id.slot)? {
                Some(restrictions) => {
                    let report = sys::StepReport::new()
                        .map_err(|e| Error::io("cannot create a pipe for a worker's start", e))?;
                    sys::restrict(&mut cmd, restrictions, &report);
                    Some((policy, report))
                }
                None => None,
            },
            None => None,
        };
        sys::kill_with_parent(&mut cmd, self.master_pid);
        sys::ignore_terminal_signals(&mut cmd);
        if self.prefix_logs {
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
        }
        let mut child = match self.spawner.spawn(cmd).await {
            Ok(child) => child,
            Err(e) => {
                let step = restricted
                    .as_ref()
                    .and_then(|(policy, report)| report.failed_step().map(|step| (policy, step)));
                return Err(match step {
                    Some((policy, step)) => policy.step_error(id, step, e),
                    None => Error::io(format!("cannot start {}", self.exe.display()), e),
                });
            }
        };
        drop(child_end);
        // Reap finished forwarders so they do not pile up across restarts.
        while self.forwarders.try_join_next().is_some() {}
        if self.prefix_logs {
            // Each line of the worker reaches the master's matching stream whole, prefixed
            // with who wrote it, and the slot's ring.
            let prefix = format!(
                "[{}/{} pid {}] ",
                id.group,
                id.slot,
                child.id().unwrap_or(0)
            );
            let logs = self.logs.clone();
            let recorder = |stream| logs.as_ref().map(|l| l.recorder(id, stream));
            if let Some(out) = child.stdout.take() {
                let stream = logs::Stream::Stdout;
                let forward = logs::forward(out, stream, prefix.clone(), recorder(stream));
                self.forwarders.spawn(forward);
            }
            if let Some(err) = child.stderr.take() {
                let stream = logs::Stream::Stderr;
                let forward = logs::forward(err, stream, prefix, recorder(stream));
                self.forwarders.spawn(forward);
            }
        }
        Ok((child, ours))
    }
}

impl Launcher for Processes {
    async fn launch(
        &mut self,
        id: &WorkerId,
        env: &[(String, String)],
        reporter: Reporter,
    ) -> Result<Launched> {
        let (child, stream) = self.start(id, env).await?;
        let pid = child.id();
        let (kill, kill_rx) = oneshot::channel();
        // Registered until its exit has been collected: the reaper never takes it.
        let registered = pid.map(|pid| self.live.register(pid));
        let ready_timeout = self.ready_timeout;
        tokio::spawn(async move {
            watch(child, stream, ready_timeout, reporter, kill_rx).await;
            drop(registered);
        });
        Ok(Launched { pid, kill })
    }

    fn usage(&self, pid: u32) -> Option<Usage> {
        resources::sample(pid)
    }

    async fn finish(&mut self) {
        let forwarders = async { while self.forwarders.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(2), forwarders).await;
    }
}

/// Raises this process's soft limit on open descriptors to the hard limit. The master holds
/// descriptors for every worker (channel, output pipes) and, under a master-accept policy,
/// for every connection in flight; the soft default of 1,024 is reached long before the hard
/// limit the administrator granted. Workers inherit the raised limit.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!("cannot raise the open-descriptor limit from {soft} to {hard}: {e}");
        }
    }
}

pub(super) fn exit_kind(status: std::io::Result<std::process::ExitStatus>) -> ExitKind {
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

/// Watches one worker process: its handshake, its messages, its exit. The `Child` lives here,
/// so it is always reaped (no zombies) and its pid is never signalled after being reaped.
async fn watch(
    mut child: Child,
    stream: std::os::unix::net::UnixStream,
    ready_timeout: Duration,
    reporter: Reporter,
    mut kill: oneshot::Receiver<()>,
) {
    let id = reporter.id().clone();
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
                reporter.online(sender);
            }
            Ok(Err(e)) => {
                super::notice!(warn, "worker {id}: handshake failed: {}", crate::error::chain(&e));
                let _ = child.start_kill();
                killed = true;
            }
            Err(_) => {
                super::notice!(warn, "worker {id}: no handshake within {} ms", ready_timeout.as_millis());
                let _ = child.start_kill();
                killed = true;
            }
        },
        status = child.wait() => {
            reporter.exited(exit_kind(status));
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
                        reporter.message(msg).await;
                    }
                }
                reporter.exited(exit_kind(status));
                return;
            }
            msg = async { match receiver.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => match msg {
                Ok(Some(msg)) => reporter.message(msg).await,
                Ok(None) => receiver = None,
                // Nothing past a bad frame can be read: the worker is broken, as if it had
                // crashed, and waiting for its heartbeat to time out would only delay that.
                Err(e) => {
                    reporter.bad_frame(&e);
                    receiver = None;
                    if !killed {
                        let _ = child.start_kill();
                        killed = true;
                    }
                }
            },
            _ = &mut kill, if !killed => {
                let _ = child.start_kill();
                killed = true;
            }
        }
    }
}
