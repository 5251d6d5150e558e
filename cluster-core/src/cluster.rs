//! The entry point: a builder that mirrors the origin's `manage_cluster` options, the
//! `Master`/`Worker` traits, and the role dispatch that runs the right side in each process.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::identity::role;
use crate::master::MasterContext;
use crate::messaging::Pending;
use crate::model::{Role, WorkerId};
use crate::options::{GroupOptions, Options, Signal};
use crate::supervisor::signals;
use crate::supervisor::{SpawnHook, SpawnSettings, Supervisor};
use crate::worker::{self, Outcome, WorkerContext};
use crate::{Error, ErrorKind};

/// An error returned by app code (worker, master or hook functions).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Types that can travel between master and workers: any serde type that is `Send`.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Message for T {}

/// What a worker, master or hook function may return: `()` or `Result<(), E>`.
pub trait IntoOutcome {
    /// Converts the function's result.
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Ok
    }
}

impl<E: fmt::Display> IntoOutcome for Result<(), E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(()) => Outcome::Ok,
            // `{:#}`: errors that show their sources on it (ours, anyhow's) keep the cause.
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }
}

/// A worker written as a type. `Down` is what the master sends, `Up` what the worker sends.
///
/// ```no_run
/// use cluster_core::{Cluster, Master, MasterContext, Worker, WorkerContext, BoxError};
///
/// struct App;
///
/// #[async_trait::async_trait]
/// impl Worker for App {
///     type Down = String;
///     type Up = String;
///     async fn run(&self, ctx: WorkerContext<String, String>) -> Result<(), BoxError> {
///         ctx.send(&format!("hello from {}", ctx.id())).await?;
///         ctx.shutdown_requested().await;
///         Ok(())
///     }
/// }
///
/// struct Boss;
///
/// #[async_trait::async_trait]
/// impl Master for Boss {
///     type Down = String;
///     type Up = String;
///     async fn run(self, ctx: MasterContext<String, String>) -> Result<(), BoxError> {
///         while let Some(event) = ctx.next_event().await {
///             println!("{event:?}");
///         }
///         Ok(())
///     }
/// }
///
/// fn main() -> std::process::ExitCode {
///     Cluster::from_app(Boss, App).run()
/// }
/// ```
#[async_trait::async_trait]
pub trait Worker: Send + Sync + 'static {
    /// Messages from the master.
    type Down: Message;
    /// Messages to the master.
    type Up: Message;
    /// The worker's whole life; return when `ctx.shutdown_requested()` resolves.
    async fn run(&self, ctx: WorkerContext<Self::Down, Self::Up>) -> Result<(), BoxError>;
}

/// The master's side of an app written as types. Every method has a default.
#[async_trait::async_trait]
pub trait Master: Send + 'static {
    /// Messages to workers.
    type Down: Message;
    /// Messages from workers.
    type Up: Message;
    /// The cluster's options.
    fn options(&self) -> Options {
        Options::default()
    }
    /// Runs once in the master before the first worker is spawned (the origin's
    /// `beforeApplicationFork`). An error stops the master before any worker starts.
    async fn before_fork(&mut self) -> Result<(), BoxError> {
        Ok(())
    }
    /// Runs in the master alongside supervision. Returning `Ok` changes nothing; an error
    /// shuts the cluster down and makes the master exit non-zero.
    async fn run(self, ctx: MasterContext<Self::Down, Self::Up>) -> Result<(), BoxError>
    where
        Self: Sized,
    {
        let _ = ctx;
        Ok(())
    }
}

type WorkerFn<D, U> = Arc<dyn Fn(WorkerContext<D, U>) -> BoxFuture<Outcome> + Send + Sync>;
type MasterFn<D, U> = Box<dyn FnOnce(MasterContext<D, U>) -> BoxFuture<Outcome> + Send>;
type HookFn = Box<dyn FnOnce() -> BoxFuture<Outcome> + Send>;

/// The tokio runtime a worker runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Runtime {
    /// A multi-threaded runtime with one thread per CPU (the default).
    #[default]
    MultiThread,
    /// A single-threaded runtime: with one worker per CPU this is the prefork model.
    CurrentThread,
}

struct GroupEntry<D, U> {
    options: GroupOptions,
    /// Groups added by [`Cluster::worker`] take the cluster's `count`.
    inherits_count: bool,
    run: WorkerFn<D, U>,
}

/// A cluster: options, worker groups, and the master's hooks. Build it at the top of `main`
/// and call [`Cluster::run`]: in the master it supervises, in each worker it runs that
/// worker's function.
///
/// ```no_run
/// use std::time::Duration;
/// use cluster_core::{Cluster, Signal};
///
/// fn main() -> std::process::ExitCode {
///     Cluster::<(), ()>::new()
///         .master(|_ctx| async { println!("Master process running") })
///         .worker(|ctx| async move {
///             let mut tick = tokio::time::interval(Duration::from_secs(1));
///             loop {
///                 tokio::select! {
///                     _ = tick.tick() => println!("Worker process running"),
///                     _ = ctx.shutdown_requested() => break,
///                 }
///             }
///         })
///         .count(4)
///         .max_restarts(5)
///         .max_restarts_interval_ms(15000)
///         .grace_ms(3000)
///         .signals([Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP])
///         .run()
/// }
/// ```
#[must_use = "a cluster does nothing until `run()` or `try_run()` is called"]
pub struct Cluster<D = (), U = ()> {
    options: Options,
    groups: Vec<GroupEntry<D, U>>,
    master: Option<MasterFn<D, U>>,
    before_fork: Option<HookFn>,
    spawn_hook: Option<SpawnHook>,
    runtime: Runtime,
    duplicate_worker: bool,
}

impl<D: Message, U: Message> Default for Cluster<D, U> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D, U> fmt::Debug for Cluster<D, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("options", &self.options)
            .field(
                "groups",
                &self
                    .groups
                    .iter()
                    .map(|g| g.options.name())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<D: Message, U: Message> Cluster<D, U> {
    /// A cluster with the default options and no workers yet.
    pub fn new() -> Self {
        Cluster {
            options: Options::default(),
            groups: Vec::new(),
            master: None,
            before_fork: None,
            spawn_hook: None,
            runtime: Runtime::default(),
            duplicate_worker: false,
        }
    }

    /// An app written as [`Master`] and [`Worker`] types.
    pub fn from_app<M, W>(master: M, worker: W) -> Self
    where
        M: Master<Down = D, Up = U>,
        W: Worker<Down = D, Up = U>,
    {
        let master = Arc::new(Mutex::new(Some(master)));
        let worker = Arc::new(worker);
        let options = match master.try_lock() {
            Ok(guard) => guard.as_ref().map(Master::options).unwrap_or_default(),
            Err(_) => Options::default(),
        };
        let for_fork = master.clone();
        Cluster::new()
            .options(options)
            .worker(move |ctx| {
                let worker = worker.clone();
                async move { worker.run(ctx).await }
            })
            .before_fork(move || async move {
                match for_fork.lock().await.as_mut() {
                    Some(master) => master.before_fork().await,
                    None => Ok(()),
                }
            })
            .master(move |ctx| async move {
                match master.lock().await.take() {
                    Some(master) => master.run(ctx).await,
                    None => Ok(()),
                }
            })
    }

    /// Replaces every option at once.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Adjusts the options with any of [`Options`]' setters, for those without a shortcut
    /// here.
    ///
    /// ```no_run
    /// # use cluster_core::{Balance, Cluster};
    /// let cluster = Cluster::<(), ()>::new().configure(|o| o.with_balance(Balance::RoundRobin).with_min_ready(2));
    /// ```
    pub fn configure(self, f: impl FnOnce(Options) -> Options) -> Self {
        self.with_options(f)
    }

    fn with_options(mut self, f: impl FnOnce(Options) -> Options) -> Self {
        self.options = f(self.options);
        self
    }

    /// Number of workers of the default group (default 2). See [`Options::with_count`].
    pub fn count(self, count: usize) -> Self {
        self.with_options(|o| o.with_count(count))
    }

    /// One worker per CPU.
    pub fn count_cpus(self) -> Self {
        self.with_options(|o| o.with_count_cpus())
    }

    /// See [`Options::with_max_restarts`] (default 3).
    pub fn max_restarts(self, max: u32) -> Self {
        self.with_options(|o| o.with_max_restarts(max))
    }

    /// See [`Options::with_max_restarts_interval`] (default 10 s).
    pub fn max_restarts_interval(self, interval: Duration) -> Self {
        self.with_options(|o| o.with_max_restarts_interval(interval))
    }

    /// [`Cluster::max_restarts_interval`] in milliseconds, as the origin took it.
    pub fn max_restarts_interval_ms(self, ms: u64) -> Self {
        self.with_options(|o| o.with_max_restarts_interval_ms(ms))
    }

    /// See [`Options::with_grace`] (default 5 s).
    pub fn grace(self, grace: Duration) -> Self {
        self.with_options(|o| o.with_grace(grace))
    }

    /// [`Cluster::grace`] in milliseconds, as the origin took it.
    pub fn grace_ms(self, ms: u64) -> Self {
        self.with_options(|o| o.with_grace_ms(ms))
    }

    /// The signals that shut the cluster down gracefully (default SIGINT and SIGTERM).
    pub fn signals(self, signals: impl IntoIterator<Item = Signal>) -> Self {
        self.with_options(|o| o.with_signals(signals.into_iter().collect::<Vec<_>>()))
    }

    /// The worker function of the default group, `worker`, which has the cluster's `count`.
    pub fn worker<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(WorkerContext<D, U>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoOutcome,
    {
        if self.groups.iter().any(|g| g.inherits_count) {
            self.duplicate_worker = true;
        }
        self.groups.push(GroupEntry {
            options: GroupOptions::new("worker"),
            inherits_count: true,
            run: boxed_worker(f),
        });
        self
    }

    /// A named group with its own count, environment, restart policy and function.
    pub fn group<F, Fut>(mut self, options: GroupOptions, f: F) -> Self
    where
        F: Fn(WorkerContext<D, U>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoOutcome,
    {
        self.groups.push(GroupEntry {
            options,
            inherits_count: false,
            run: boxed_worker(f),
        });
        self
    }

    /// The master's function, run alongside supervision (optional).
    pub fn master<F, Fut>(mut self, f: F) -> Self
    where
        F: FnOnce(MasterContext<D, U>) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoOutcome,
    {
        self.master = Some(Box::new(move |ctx| {
            Box::pin(async move { f(ctx).await.into_outcome() })
        }));
        self
    }

    /// Runs once in the master before the first worker is spawned (the origin's
    /// `beforeApplicationFork`); an error stops the master before any worker starts.
    pub fn before_fork<F, Fut>(mut self, f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoOutcome,
    {
        self.before_fork = Some(Box::new(move || {
            Box::pin(async move { f().await.into_outcome() })
        }));
        self
    }

    /// Called in the master before each worker is spawned, to add arguments or environment
    /// variables to that one worker.
    pub fn on_spawn(
        mut self,
        hook: impl Fn(&WorkerId, &mut SpawnSettings) + Send + Sync + 'static,
    ) -> Self {
        self.spawn_hook = Some(Arc::new(hook));
        self
    }

    /// The tokio runtime of the workers (default multi-threaded).
    pub fn worker_runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = runtime;
        self
    }

    /// Checks every option and group; the master does this before starting any worker.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |option, reason: String| Err(Error::invalid_option(option, reason));
        self.options.validate()?;
        if self.groups.is_empty() {
            return invalid(
                "worker",
                "no worker function was given: call `.worker(...)` or `.group(...)`".into(),
            );
        }
        if self.duplicate_worker {
            return invalid(
                "worker",
                "`.worker(...)` was called twice; use `.group(...)` for more kinds of worker"
                    .into(),
            );
        }
        for (i, g) in self.groups.iter().enumerate() {
            g.options.validate()?;
            if self.groups[..i]
                .iter()
                .any(|h| h.options.name() == g.options.name())
            {
                return invalid(
                    "group",
                    format!("two groups are named {:?}", g.options.name()),
                );
            }
        }
        Ok(())
    }

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
    /// - 2: an option was invalid ([`ErrorKind::InvalidOption`]);
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
        let result = runtime.block_on(worker::run(id, true, move |ctx| run(ctx)));
        // Tasks the app left behind (or blocked threads) must not hold the exit.
        runtime.shutdown_timeout(Duration::from_millis(100));
        result.map(|()| ExitCode::SUCCESS)
    }

    fn run_master(mut self) -> Result<ExitCode, Error> {
        self.validate()?;
        // The master only routes and supervises: one thread is plenty, and keeps it small.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("cannot start the tokio runtime", e))?;
        for g in &mut self.groups {
            if g.inherits_count {
                g.options = g.options.clone().with_count(self.options.count());
            }
        }
        runtime.block_on(self.supervise())
    }

    async fn supervise(self) -> Result<ExitCode, Error> {
        let signals =
            signals::listen(&[self.options.signals(), self.options.reload_signals()].concat())?;
        if let Some(hook) = self.before_fork {
            if let Outcome::Failed(e) = hook().await {
                return Err(Error::new(
                    ErrorKind::MasterFailed,
                    format!("before_fork failed: {e}"),
                ));
            }
        }
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let status_stop = tokio_util::sync::CancellationToken::new();
        if let Some(addr) = self.options.status_addr() {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                Error::new(ErrorKind::Listen, format!("cannot serve status on {addr}"))
                    .with_source(e)
            })?;
            let source = Arc::new(crate::supervisor::CommandSource {
                commands: commands_tx.clone(),
            });
            let options = crate::observe::status_server::StatusOptions {
                min_ready: self.options.min_ready(),
                ..Default::default()
            };
            tokio::spawn(crate::observe::status_server::serve_status(
                listener,
                source,
                options,
                status_stop.clone(),
            ));
        }
        let pending = Arc::new(Pending::default());
        let (events_tx, events_rx) = match self.master {
            Some(_) => {
                let (tx, rx) = mpsc::channel(4096);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let groups = self.groups.into_iter().map(|g| g.options).collect();
        let supervisor = Supervisor::new(
            self.options,
            groups,
            self.spawn_hook,
            commands_rx,
            events_tx,
            pending.clone(),
        )?;
        let (done_tx, done_rx) = oneshot::channel();
        let master_task = match (self.master, events_rx) {
            (Some(master), Some(events)) => {
                let ctx = MasterContext {
                    commands: commands_tx,
                    events: Arc::new(Mutex::new(events)),
                    pending,
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
        match error {
            Some(e) => Err(e),
            None => Ok(ExitCode::from(u8::try_from(code).unwrap_or(1))),
        }
    }
}

/// The message a panic was raised with, for saying why a function failed.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "a panic without a message"
    }
}

fn boxed_worker<D, U, F, Fut>(f: F) -> WorkerFn<D, U>
where
    F: Fn(WorkerContext<D, U>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoOutcome,
{
    Arc::new(move |ctx| {
        let fut = f(ctx);
        Box::pin(async move { fut.await.into_outcome() })
    })
}
