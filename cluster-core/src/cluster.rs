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

use crate::Error;
use crate::identity::role;
use crate::master::MasterContext;
use crate::messaging::Pending;
use crate::model::{Role, WorkerId};
use crate::options::{GroupOptions, Options, Signal};
use crate::supervisor::signals;
use crate::supervisor::{SpawnHook, SpawnSettings, Supervisor};
use crate::worker::{self, Outcome, WorkerContext};

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
            Err(e) => Outcome::Failed(e.to_string()),
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
        let invalid = |option, reason: String| Err(Error::InvalidOption { option, reason });
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

    /// Runs this process's role to the end and returns its exit code: in the master, the
    /// cluster's (0 when every worker stopped in time); in a worker, the worker's.
    pub fn run(self) -> ExitCode {
        let code = match role() {
            Ok(Role::Master) => self.run_master(),
            Ok(Role::Worker(id)) => self.run_worker(id),
            Err(e) => {
                eprintln!("cluster: {e}");
                worker::EXIT_BOOTSTRAP
            }
        };
        ExitCode::from(u8::try_from(code).unwrap_or(1))
    }

    fn run_worker(self, id: WorkerId) -> i32 {
        let Some(entry) = self
            .groups
            .into_iter()
            .find(|g| *g.options.name() == *id.group)
        else {
            eprintln!(
                "cluster worker {id}: this program has no worker group {:?}",
                id.group
            );
            return worker::EXIT_BOOTSTRAP;
        };
        let runtime = match self.runtime {
            Runtime::MultiThread => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build(),
            Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        };
        let runtime = match runtime {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("cluster worker {id}: cannot start the tokio runtime: {e}");
                return 1;
            }
        };
        let run = entry.run;
        let code = runtime.block_on(worker::run(id, true, move |ctx| run(ctx)));
        // Tasks the app left behind (or blocked threads) must not hold the exit.
        runtime.shutdown_timeout(Duration::from_millis(100));
        code
    }

    fn run_master(mut self) -> i32 {
        if let Err(e) = self.validate() {
            eprintln!("cluster: {e}");
            return 2;
        }
        // The master only routes and supervises: one thread is plenty, and keeps it small.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("cluster: cannot start the tokio runtime: {e}");
                return 1;
            }
        };
        for g in &mut self.groups {
            if g.inherits_count {
                g.options = g.options.clone().with_count(self.options.count());
            }
        }
        runtime.block_on(self.supervise())
    }

    async fn supervise(self) -> i32 {
        let signals = match signals::listen(
            &[self.options.signals(), self.options.reload_signals()].concat(),
        ) {
            Ok(signals) => signals,
            Err(e) => {
                eprintln!("cluster: {e}");
                return 1;
            }
        };
        if let Some(hook) = self.before_fork {
            if let Outcome::Failed(e) = hook().await {
                eprintln!("cluster: before_fork failed: {e}");
                return 1;
            }
        }
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let status_stop = tokio_util::sync::CancellationToken::new();
        if let Some(addr) = self.options.status_addr() {
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => listener,
                Err(e) => {
                    eprintln!("cluster: cannot serve status on {addr}: {e}");
                    return 1;
                }
            };
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
        let supervisor = match Supervisor::new(
            self.options,
            groups,
            self.spawn_hook,
            commands_rx,
            events_tx,
            pending.clone(),
        ) {
            Ok(supervisor) => supervisor,
            Err(e) => {
                eprintln!("cluster: {e}");
                return 1;
            }
        };
        let (done_tx, done_rx) = oneshot::channel();
        let master_task = match (self.master, events_rx) {
            (Some(master), Some(events)) => {
                let ctx = MasterContext {
                    commands: commands_tx,
                    events: Arc::new(Mutex::new(events)),
                    pending,
                    _types: std::marker::PhantomData,
                };
                Some(tokio::spawn(async move {
                    let failed = match master(ctx).await {
                        Outcome::Ok => false,
                        Outcome::Failed(e) => {
                            eprintln!("cluster: the master function failed: {e}");
                            true
                        }
                    };
                    let _ = done_tx.send(failed);
                }))
            }
            _ => {
                drop(commands_tx);
                None
            }
        };
        let (code, error) = supervisor.run(signals, done_rx).await;
        status_stop.cancel();
        if let Some(e) = error {
            eprintln!("cluster: {e}");
        }
        if let Some(task) = master_task {
            // The event queue is closed: a master loop on `next_event` ends by itself.
            if tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .is_err()
            {
                tracing::warn!("the master function did not return after the cluster stopped");
            }
        }
        code
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
