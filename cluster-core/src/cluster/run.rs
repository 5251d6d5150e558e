//! Role dispatch and start-up: which side this process runs, the worker's runtime, and the
//! master's start (signals, `before_fork`, the status server, the supervisor, the master
//! function). Apart from the builder because it is the one part that starts processes and
//! tasks; the builder only collects what they will run.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Cluster, Message, Runtime, servers, upgrade};
use crate::identity::role;
use crate::master::MasterContext;
use crate::messaging::Pending;
use crate::model::{Role, WorkerId};
use crate::net::inherited::Inherited;
use crate::observe::logs::RecentLogs;
use crate::options::Resolved;
use crate::supervisor::privileges::Policy;
use crate::supervisor::upgrade::{Incoming, StartServers};
use crate::supervisor::{LiveConfig, Supervisor};
use crate::supervisor::{reaper, signals};
use crate::worker::{self, Outcome, panic_message};
use crate::{Error, ErrorKind};

/// What the master's start prepares before its runtime: the options in force, the sockets of
/// socket activation, each group's least-privilege policy.
type Prepared = (Resolved, Inherited, Vec<(String, Policy)>);

impl<D: Message, U: Message> Cluster<D, U> {
    /// Runs this process's role to the end and returns the exit code for `main` to return:
    /// [`Cluster::try_run`], with an error printed to stderr and turned into an exit code.
    ///
    /// It returns when [`Cluster::try_run`] does: in the master once the cluster has stopped,
    /// in a worker once the worker's function has ended. The codes:
    ///
    /// - 0: the cluster stopped with every worker exiting in time, or the worker's function
    ///   returned normally;
    /// - 1: the master's function failed or panicked; a worker had to be killed after `grace`
    ///   ([`EXIT_KILLED_AFTER_GRACE`](crate::EXIT_KILLED_AFTER_GRACE)); the worker's function
    ///   failed; or a system call failed;
    /// - 2: an option was invalid ([`ErrorKind::InvalidOption`]), in the code, the options
    ///   file or the environment (see [`Resolved`]); no worker was started (or, for a worker
    ///   that could not take on its `user`, `rlimits` and the like before any was ready, none
    ///   ran its code);
    /// - [`EXIT_RESTART_LIMIT`](crate::EXIT_RESTART_LIMIT): too many workers crashed;
    /// - [`EXIT_BOOTSTRAP`](crate::EXIT_BOOTSTRAP): started with the worker variables but not
    ///   by a master;
    /// - [`EXIT_MASTER_GONE`](crate::EXIT_MASTER_GONE): the worker's master vanished.
    pub fn run(self) -> ExitCode {
        let role = role();
        let prefix = match &role {
            Ok(Role::Worker(id)) => format!("cluster worker {id}"),
            _ => "cluster".to_owned(),
        };
        match role.and_then(|role| self.run_role(role)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("{prefix}: {e:#}");
                if e.kind() == ErrorKind::InvalidOption && prefix == "cluster" {
                    // The master stops at the first bad option, before any worker: say so,
                    // and where options come from, so that the fix is one look away.
                    eprintln!(
                        "{prefix}: no worker was started; fix the option where it is set (the code, the file named by {} or `config_file`, or a CLUSTER_* variable) and start again",
                        crate::options::CONFIG_VAR
                    );
                }
                ExitCode::from(e.exit_code())
            }
        }
    }

    /// Runs this process's role to the end, like [`Cluster::run`], but gives the caller what
    /// went wrong instead of printing it: for apps that report errors their own way, or do
    /// more after the cluster stopped.
    ///
    /// In the **master** it returns once the cluster has stopped and every worker has exited:
    /// after a shutdown signal or [`MasterContext::shutdown`], after the master's function
    /// failed or panicked, or after the restart limit was reached. `Ok` is the exit code of a
    /// cluster that stopped as asked: [`ExitCode::SUCCESS`] when every worker stopped within
    /// `grace`, [`EXIT_KILLED_AFTER_GRACE`](crate::EXIT_KILLED_AFTER_GRACE) when one had to be
    /// killed. The master's function, if it is still running then, gets about a second to
    /// return (its event queue has ended) and is then left behind.
    ///
    /// In a **worker** it returns once the worker's function has ended (returned, failed or
    /// panicked) and the master has been told how, with `Ok(ExitCode::SUCCESS)` when the
    /// function returned normally. Tasks the function left running get 100 ms before the
    /// runtime is shut down under them.
    ///
    /// ```no_run
    /// use cluster_core::{Cluster, ErrorKind};
    ///
    /// fn main() -> std::process::ExitCode {
    ///     let cluster = Cluster::<(), ()>::new().worker(|ctx| async move {
    ///         ctx.shutdown_requested().await;
    ///     });
    ///     match cluster.try_run() {
    ///         Ok(code) => code,
    ///         Err(e) if e.kind() == ErrorKind::RestartLimit => {
    ///             eprintln!("crash loop, paging someone: {e:#}");
    ///             std::process::ExitCode::from(75)
    ///         }
    ///         Err(e) => {
    ///             eprintln!("{e:#}");
    ///             std::process::ExitCode::FAILURE
    ///         }
    ///     }
    /// }
    /// ```
    ///
    /// # Errors
    ///
    /// In the master:
    /// - [`ErrorKind::InvalidOption`]: [`Cluster::validate`] failed; nothing was started;
    /// - [`ErrorKind::MasterFailed`]: `before_fork` failed (no worker was started), or the
    ///   master's function failed or panicked (the cluster was shut down gracefully first);
    /// - [`ErrorKind::RestartLimit`]: too many workers crashed; the cluster was shut down;
    /// - [`ErrorKind::Listen`]: the status server's address could not be bound;
    /// - [`ErrorKind::Io`]: the runtime, a signal handler or the spawner could not be started.
    ///
    /// In a worker:
    /// - [`ErrorKind::Bootstrap`]: the process has the worker variables but no usable channel
    ///   to a master, or names a group this program does not have;
    /// - [`ErrorKind::WorkerFailed`]: the worker's function returned an error or panicked;
    /// - [`ErrorKind::Disconnected`]: the master vanished before the worker was ready;
    /// - [`ErrorKind::Io`]: the runtime could not be started.
    pub fn try_run(self) -> Result<ExitCode, Error> {
        self.run_role(role()?)
    }

    fn run_role(self, role: Role) -> Result<ExitCode, Error> {
        match role {
            Role::Master => self.run_master(),
            Role::Worker(id) => self.run_worker(id),
        }
    }

    fn run_worker(self, id: WorkerId) -> Result<ExitCode, Error> {
        let Some(entry) = self
            .groups
            .into_iter()
            .find(|g| *g.options.name() == *id.group)
        else {
            return Err(Error::new(
                ErrorKind::Bootstrap,
                format!("this program has no worker group {:?}", id.group),
            ));
        };
        // Before the runtime, while this process has one thread: the environment is edited.
        let boot = worker::Boot::take()?;
        let runtime = match self.runtime {
            Runtime::MultiThread => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build(),
            Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        }
        .map_err(|e| Error::io("cannot start the tokio runtime", e))?;
        let run = entry.run;
        let result = runtime.block_on(worker::run(id, boot, true, move |ctx| run(ctx)));
        // Tasks the app left behind (or blocked threads) must not hold the exit.
        runtime.shutdown_timeout(Duration::from_millis(100));
        result.map(|()| ExitCode::SUCCESS)
    }

    fn run_master(mut self) -> Result<ExitCode, Error> {
        // First: the new master of an upgrade reports even a bad option to the old one,
        // which then serves on.
        let upgrade = upgrade::take_channel()?;
        let prepared = self.prepare_master();
        let (resolved, inherited, policies) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                if let Some(incoming) = upgrade {
                    upgrade::refuse(incoming, &e);
                }
                return Err(e);
            }
        };
        let passed_through = upgrade::inheritable_descriptors();
        // The master only routes and supervises: one thread is plenty, and keeps it small.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the tokio runtime", e))?;
        runtime.block_on(async move {
            let received = match upgrade {
                Some(incoming) => Some(upgrade::receive(incoming).await?),
                None => None,
            };
            let to_old = received.as_ref().map(|r| r.channel.sender());
            let system = (inherited, passed_through);
            let result = self.supervise(resolved, system, policies, received).await;
            if let (Err(e), Some(tx)) = (&result, to_old) {
                upgrade::report(&tx, e).await;
            }
            result
        })
    }

    /// Options from the file and environment over the code's, checked; the sockets of socket
    /// activation; each group's least-privilege policy. Before the runtime, while this
    /// process has one thread: the environment is edited.
    fn prepare_master(&mut self) -> Result<Prepared, Error> {
        // Before anything starts, so that a bad value stops the master with nothing to clean
        // up.
        let resolved = Resolved::resolve(self.options.clone())?;
        for warning in resolved.warnings() {
            crate::supervisor::notice!(warn, "{warning}");
        }
        self.options = resolved.options().clone();
        self.validate()?;
        let inherited = take_inherited_sockets()?;
        for g in &mut self.groups {
            if g.inherits_count {
                g.options = g.options.clone().with_count(self.options.count());
                if let (None, Some(range)) = (g.options.autoscale(), self.options.autoscale()) {
                    g.options = g.options.clone().with_autoscale(range.min(), range.max());
                }
            }
        }
        // Users, groups and CPUs looked up now, so that a name that does not exist stops the
        // master before anything (the control socket, `before_fork`) starts.
        let groups: Vec<_> = self.groups.iter().map(|g| g.options.clone()).collect();
        let policies = Policy::resolve_all(&self.options, &groups)?;
        Ok((resolved, inherited, policies))
    }

    async fn supervise(
        self,
        resolved: Resolved,
        (inherited, passed_through): (Inherited, Vec<i32>),
        policies: Vec<(String, Policy)>,
        received: Option<upgrade::Received>,
    ) -> Result<ExitCode, Error> {
        // First: as PID 1 (a container) a signal without a handler is ignored, so SIGTERM
        // and SIGINT do anything only once these are installed.
        let signals = signals::listen(&signals::handled(&self.options))?;
        let live = reaper::LivePids::default();
        reaper::start(live.clone());
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let status_stop = tokio_util::sync::CancellationToken::new();
        // Each slot's last lines, for `clusterctl logs`: workers' output reaches the master,
        // to be kept, only when it prefixes it.
        let logs = if self.options.worker_prefix_logs() {
            RecentLogs::new(self.options.log_lines())
        } else {
            None
        };
        let parts = servers::Parts {
            commands: commands_tx.clone(),
            stop: status_stop.clone(),
            logs: logs.clone(),
            tasks: tokio_util::task::TaskTracker::new(),
        };
        // The new master of an upgrade listens on what the old one handed over, and serves
        // the control socket and status port only once it has taken over.
        let (inherited, incoming) = match received {
            Some(r) => (
                r.listeners,
                Some((r.old_pid, r.channel, r.servers, r.state)),
            ),
            None => (inherited, None),
        };
        // Before anything else starts, so that a second master of the same name stops here;
        // the supervisor removes the socket file when it ends.
        let mut servers = match incoming {
            None => Some(servers::bind_control(&self.options, &parts).await?),
            Some(_) => None,
        };
        if let Some(hook) = self.before_fork {
            if let Outcome::Failed(e) = hook().await {
                return Err(Error::new(
                    ErrorKind::MasterFailed,
                    format!("before_fork failed: {e}"),
                ));
            }
        }
        if let Some(servers) = &mut servers {
            servers.status = servers::bind_status(&self.options, &parts).await?;
        }
        let pending = Arc::new(Pending::default());
        let (events_tx, events_rx) = match self.master {
            Some(_) => {
                let (tx, rx) = crate::event_queue::event_queue();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let count_groups = self
            .groups
            .iter()
            .filter(|g| g.inherits_count)
            .map(|g| g.options.name().into())
            .collect();
        let groups = self.groups.into_iter().map(|g| g.options).collect();
        let store_config = crate::store::StoreConfig::from_options(&self.options);
        let options = self.options.clone();
        let upgrade_timeout = self.options.upgrade_timeout();
        let mut supervisor = Supervisor::new(
            self.options,
            groups,
            policies,
            self.spawn_hook,
            (commands_rx, events_tx, pending.clone()),
            (inherited, live.clone()),
            logs.clone(),
        )?;
        supervisor.set_config(LiveConfig {
            resolved,
            count_groups,
        });
        if let Some(servers) = servers {
            supervisor.set_servers(servers);
        }
        supervisor.set_passed_through(passed_through);
        if let Some((old_pid, channel, handed, state)) = incoming {
            supervisor.apply_state(&state);
            let start: StartServers = Box::new(move |handed| {
                Box::pin(async move { servers::start_handed(&options, &parts, handed).await })
            });
            let (incoming, rx) = Incoming::new(
                old_pid,
                channel,
                handed,
                start,
                (upgrade_timeout, logs.clone()),
            );
            supervisor.set_incoming(incoming, rx);
        }
        let (store, _store_task) = crate::store::start(store_config, supervisor.violations())?;
        supervisor.set_store(store.clone());
        let (done_tx, done_rx) = oneshot::channel();
        let master_task = match (self.master, events_rx) {
            (Some(master), Some(events)) => {
                let ctx = MasterContext {
                    commands: commands_tx,
                    events: Arc::new(Mutex::new(events)),
                    pending,
                    store: crate::store::Store::for_master(store.clone()),
                    _types: std::marker::PhantomData,
                };
                // A task of its own, so that a panic in it ends only it, and is seen here as a
                // failure like an error.
                let function = tokio::spawn(master(ctx));
                Some(tokio::spawn(async move {
                    let failure = match function.await {
                        Ok(Outcome::Ok) => None,
                        Ok(Outcome::Failed(e)) => Some(format!("the master function failed: {e}")),
                        Err(e) if e.is_panic() => Some(format!(
                            "the master function panicked: {}",
                            panic_message(&*e.into_panic())
                        )),
                        // Cancelled: nothing aborts it, so only a runtime shutting down would.
                        Err(_) => None,
                    };
                    let failure = failure.map(|message| {
                        eprintln!("cluster: {message}; shutting the cluster down");
                        Error::new(ErrorKind::MasterFailed, message)
                    });
                    let _ = done_tx.send(failure);
                }))
            }
            _ => {
                drop(commands_tx);
                None
            }
        };
        let (code, error) = supervisor.run(signals, done_rx).await;
        // Every worker's exit has been collected: whatever child is left a zombie is an orphan.
        reaper::reap_all(&live);
        status_stop.cancel();
        if let Some(task) = master_task {
            // The event queue is closed: a master loop on `next_event` ends by itself.
            if tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .is_err()
            {
                tracing::warn!("the master function did not return after the cluster stopped");
            }
        }
        // Every worker has exited: nothing writes to the store any more.
        if let Err(e) = store.stop().await {
            crate::supervisor::notice!(warn, "{e:#}");
        }
        match error {
            Some(e) => Err(e),
            None => Ok(ExitCode::from(u8::try_from(code).unwrap_or(1))),
        }
    }
}

/// The sockets this master was started with (socket activation), with `LISTEN_*` removed from
/// the environment. Variables meant for another process (`LISTEN_PID` names another pid: the
/// master was started through a wrapper that did not pass them on correctly) are removed too,
/// and the operator told why the sockets are ignored.
fn take_inherited_sockets() -> Result<Inherited, Error> {
    let pid = std::env::var("LISTEN_PID").ok();
    if std::env::var_os("LISTEN_FDS").is_some()
        && pid.as_deref() != Some(&std::process::id().to_string())
    {
        crate::supervisor::notice!(
            warn,
            "LISTEN_FDS is set for process {} (LISTEN_PID), not this master ({}): its sockets are ignored and addresses are bound as usual",
            pid.as_deref().unwrap_or("?"),
            std::process::id()
        );
    }
    let fds = crate::sys::take_listen_fds().map_err(|e| {
        Error::io(
            "cannot take the sockets of socket activation (LISTEN_FDS, LISTEN_FDNAMES); check the socket unit or the command that started the master",
            e,
        )
    })?;
    let inherited = Inherited::new(fds);
    if !inherited.is_empty() {
        crate::supervisor::notice!(
            info,
            "started with {} inherited socket{}: workers listening on their addresses or names use them",
            inherited.len(),
            if inherited.len() == 1 { "" } else { "s" }
        );
    }
    Ok(inherited)
}
