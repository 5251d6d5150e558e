//! The entry point: a builder that mirrors the origin's `manage_cluster` options, and the
//! `Master`/`Worker` traits.
//!
//! What an app writes is here; what [`Cluster::run`] then starts (the role dispatch, the
//! worker's runtime, the master's start-up) is in `run.rs`, so that the builder reads as a
//! list of options and functions, with no process or task in sight.

mod run;
mod servers;
#[cfg(test)]
mod tests;
mod upgrade;

pub use crate::error::BoxError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use crate::Error;
use crate::master::MasterContext;
use crate::model::WorkerId;
use crate::options::{Count, GroupOptions, Options, Signal};
use crate::supervisor::{SpawnHook, SpawnSettings};
use crate::worker::{Outcome, WorkerContext};

/// The name of the group that [`Cluster::worker`] adds: what [`MasterContext::scale`],
/// [`MasterContext::broadcast_group`] and [`SlotKey`](crate::SlotKey) take to name its workers,
/// and the `group` of their [`WorkerId`]s.
///
/// ```no_run
/// use cluster_core::{Cluster, DEFAULT_GROUP, SlotKey};
///
/// fn main() -> std::process::ExitCode {
///     Cluster::<String, ()>::new()
///         .worker(|ctx| async move { ctx.shutdown_requested().await })
///         .master(|ctx| async move {
///             ctx.scale(DEFAULT_GROUP, 4).await?;
///             ctx.broadcast_group(DEFAULT_GROUP, &"hello".to_owned()).await?;
///             ctx.send(&SlotKey::new(DEFAULT_GROUP, 0), &"first".to_owned()).await
///         })
///         .run()
/// }
/// ```
pub const DEFAULT_GROUP: &str = "worker";

/// The options that [`Cluster`] sets with a method of their own name (`count(3)`); every
/// other is set through [`Cluster::configure`]. The README's options table says so for each,
/// and a test holds each to its method; only tests read it.
#[cfg(test)]
pub(crate) const SHORTCUTS: &[&str] = &[
    "count",
    "max_restarts",
    "max_restarts_interval",
    "grace",
    "signals",
];

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

/// A cluster: options, worker groups, and the master's hooks. Build it in `main` and call
/// [`Cluster::run`]: in the master it supervises, in each worker it runs that worker's
/// function, and it returns the exit code for `main` to return.
///
/// Each worker is the same program started again by the master, so whatever `main` does
/// before `run()` happens in every process: reading arguments or environment variables there
/// is fine, starting a tokio runtime (`run()` starts its own) or threads, or anything that
/// must happen once, is not (do that in [`Cluster::before_fork`] or in the worker function).
///
/// `D` is the type of the messages the master sends to workers, `U` of those workers send
/// up (any serde type, see [`Message`]); `Cluster::<(), ()>` sends none.
///
/// A worker that ticks until it is asked to stop, four of them, with the origin helper's
/// options (`cargo run`, then Ctrl-C):
///
/// ```no_run
/// # use cluster_core as cluster; // the facade crate `cluster` re-exports these names
/// use std::time::Duration;
/// use cluster::{Cluster, Signal};
///
/// fn main() -> std::process::ExitCode {
///     Cluster::<(), ()>::new()
///         .master(|_ctx| async { println!("Master process running") })
///         .worker(|ctx| async move {
///             let mut tick = tokio::time::interval(Duration::from_secs(1));
///             loop {
///                 tokio::select! {
///                     _ = tick.tick() => println!("Worker process running"),
///                     () = ctx.shutdown_requested() => break,
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
///
/// Everything but starting processes can be tried without `run()`: [`Cluster::validate`]
/// checks the options as the master would (this example runs as a doctest):
///
/// ```
/// # use cluster_core as cluster;
/// use cluster::{Cluster, ErrorKind};
///
/// let cluster = Cluster::<(), ()>::new()
///     .worker(|ctx| async move { ctx.shutdown_requested().await })
///     .count(0);
/// let error = cluster.validate().unwrap_err();
/// assert_eq!(error.kind(), ErrorKind::InvalidOption);
/// assert!(error.to_string().contains("count"), "{error}");
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
            // The first options of this cluster: nothing set before them is replaced.
            .configure(|_| options)
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

    /// Sets options with [`Options`]' `with_*` setters, on the options set so far: this is
    /// how the builder takes every option (the table of [`OPTIONS`](crate::options::OPTIONS)
    /// lists them), and the shortcuts below (`count`, `grace`, ...) are `configure` with one
    /// setter. Calls compose in order: each sees what earlier calls and shortcuts set, and an
    /// option set twice keeps the later value.
    ///
    /// ```no_run
    /// use cluster_core::{Balance, Cluster};
    ///
    /// fn main() -> std::process::ExitCode {
    ///     Cluster::<(), ()>::new()
    ///         .worker(|ctx| async move { ctx.shutdown_requested().await })
    ///         .count(4)
    ///         .configure(|o| o.with_balance(Balance::RoundRobin).with_min_ready(2))
    ///         .grace_ms(3000)
    ///         .run()
    /// }
    /// ```
    ///
    /// Settings shared between programs can be a function from the options so far to the new
    /// ones, so that they too keep what was set before them:
    ///
    /// ```
    /// use std::time::Duration;
    /// use cluster_core::{Cluster, Options};
    ///
    /// fn production(o: Options) -> Options {
    ///     o.with_max_memory(Some(512 << 20)).with_grace(Duration::from_secs(30))
    /// }
    ///
    /// let cluster = Cluster::<(), ()>::new()
    ///     .worker(|_ctx| async {})
    ///     .count(3)
    ///     .configure(production);
    /// assert!(cluster.validate().is_ok());
    /// ```
    pub fn configure(mut self, f: impl FnOnce(Options) -> Options) -> Self {
        self.options = f(self.options);
        self
    }

    // The shortcuts: one option each, the most used ones, as the origin's `manage_cluster`
    // took them. Each is listed in `SHORTCUTS`, which the README's options table reads.

    /// Number of workers of the default group (default 2): a number, or [`Count::Cpus`]. See
    /// [`Options::with_count`].
    pub fn count(self, count: impl Into<Count>) -> Self {
        self.configure(|o| o.with_count(count))
    }

    /// One worker per CPU.
    pub fn count_cpus(self) -> Self {
        self.configure(|o| o.with_count_cpus())
    }

    /// See [`Options::with_max_restarts`] (default 3).
    pub fn max_restarts(self, max: u32) -> Self {
        self.configure(|o| o.with_max_restarts(max))
    }

    /// See [`Options::with_max_restarts_interval`] (default 10 s).
    pub fn max_restarts_interval(self, interval: Duration) -> Self {
        self.configure(|o| o.with_max_restarts_interval(interval))
    }

    /// [`Cluster::max_restarts_interval`] in milliseconds, as the origin took it.
    pub fn max_restarts_interval_ms(self, ms: u64) -> Self {
        self.configure(|o| o.with_max_restarts_interval_ms(ms))
    }

    /// See [`Options::with_grace`] (default 5 s).
    pub fn grace(self, grace: Duration) -> Self {
        self.configure(|o| o.with_grace(grace))
    }

    /// [`Cluster::grace`] in milliseconds, as the origin took it.
    pub fn grace_ms(self, ms: u64) -> Self {
        self.configure(|o| o.with_grace_ms(ms))
    }

    /// The signals that shut the cluster down gracefully (default SIGINT and SIGTERM).
    pub fn signals(self, signals: impl IntoIterator<Item = Signal>) -> Self {
        self.configure(|o| o.with_signals(signals.into_iter().collect::<Vec<_>>()))
    }

    /// The worker function of the default group, [`DEFAULT_GROUP`] (`"worker"`), which has
    /// the cluster's `count`.
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
            options: GroupOptions::new(DEFAULT_GROUP),
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
            if g.options.autoscale().is_some() {
                self.options.check_autoscale_signals()?;
            }
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
