//! `cluster`: run a service as a supervised cluster of worker processes.
//!
//! One binary: started by hand it becomes the **master**, which re-executes itself `count`
//! times as **workers**, restarts them when they crash (within `max_restarts` per
//! `max_restarts_interval`), routes typed messages between them, and shuts them down
//! gracefully on SIGINT/SIGTERM (killing what is left after `grace`).
//!
//! ```no_run
//! use std::time::Duration;
//!
//! fn main() -> std::process::ExitCode {
//!     cluster::Cluster::<(), ()>::new()
//!         .master(|_ctx| async { println!("Master process running") })
//!         .worker(|ctx| async move {
//!             let mut tick = tokio::time::interval(Duration::from_secs(1));
//!             loop {
//!                 tokio::select! {
//!                     _ = tick.tick() => println!("Worker process running"),
//!                     _ = ctx.shutdown_requested() => break,
//!                 }
//!             }
//!         })
//!         .count(4)
//!         .max_restarts(5)
//!         .max_restarts_interval_ms(15000)
//!         .grace_ms(3000)
//!         .signals([cluster::Signal::SIGINT, cluster::Signal::SIGTERM, cluster::Signal::SIGHUP])
//!         .run()
//! }
//! ```
//!
//! # `#[cluster::main]`
//!
//! The same cluster with the attribute: the app's functions go in `main`'s body, each marked
//! with its role, and the options are the attribute's arguments (see [`macro@main`] for the
//! grammar and why the functions sit inside `main`).
//!
//! ```no_run
//! #[derive(serde::Serialize, serde::Deserialize)]
//! enum Cmd { Ping }
//! #[derive(serde::Serialize, serde::Deserialize)]
//! enum Report { Pong }
//!
//! #[cluster::main(count = 4, max_restarts = 5, max_restarts_interval = 15000, grace = 3000,
//!                 signals = [SIGINT, SIGTERM, SIGHUP])]
//! fn main() {
//!     #[cluster::master]
//!     async fn master(_ctx: cluster::MasterContext<Cmd, Report>) {
//!         println!("Master process running");
//!     }
//!
//!     #[cluster::worker]
//!     async fn worker(ctx: cluster::WorkerContext<Cmd, Report>) {
//!         println!("Worker process running");
//!         ctx.shutdown_requested().await;
//!     }
//!
//!     #[cluster::before_fork]
//!     async fn before_fork() -> Result<(), std::io::Error> {
//!         Ok(())
//!     }
//! }
//! ```
//!
//! An app written as [`Master`] and [`Worker`] types names values of them instead:
//!
//! ```no_run
//! use cluster::{BoxError, Worker, WorkerContext};
//!
//! struct App;
//!
//! #[cluster::async_trait]
//! impl Worker for App {
//!     type Down = ();
//!     type Up = ();
//!     async fn run(&self, ctx: WorkerContext) -> Result<(), BoxError> {
//!         ctx.shutdown_requested().await;
//!         Ok(())
//!     }
//! }
//!
//! #[cluster::main(worker = App, count = cpus, grace = "3s")]
//! fn main() {}
//! ```

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
// The everyday names, at the root; everything else in the module of its part.
/// The control socket's protocol, paths and client (what `clusterctl` speaks).
pub use cluster_core::control;
pub use cluster_core::{
    Balance, BoxError, Cluster, Count, DEFAULT_GROUP, Error, ErrorKind, Event, GroupOptions,
    Incoming, Master, MasterContext, Message, Options, Request, Result, Runtime, Signal, SlotKey,
    Worker, WorkerContext, WorkerId,
};
pub use cluster_ipc as ipc;

/// The master's side: its context, the events it sees, what it knows of each worker, and its
/// exit codes.
pub mod master {
    pub use cluster_core::{
        EXIT_KILLED_AFTER_GRACE, EXIT_RESTART_LIMIT, Event, ExitKind, Master, MasterContext,
        SlotKey, SpawnHook, SpawnSettings, WorkerInfo, WorkerState,
    };
}

/// The worker's side: its context, what it receives, how its function ends, and its exit
/// codes.
pub mod worker {
    pub use cluster_core::{
        EXIT_BOOTSTRAP, EXIT_MASTER_GONE, Incoming, IntoOutcome, Outcome, Role, Worker,
        WorkerContext, WorkerId, count_request, in_flight, role,
    };
}

/// Ports shared by the cluster: the worker's listener and its connections, and how
/// connections are spread.
pub mod net {
    pub use cluster_core::{Balance, Connection, Listener};
}

/// The master's store: keys, values, counters, compare-and-swap, expiry and publish/subscribe
/// shared by the workers of one host (`ctx.store()`; README, "Shared state").
pub mod store {
    pub use cluster_core::{Cas, Store, StoreEvent, Subscription};
}

/// What the cluster shows about itself: the status snapshot behind `GET /status`, the status
/// server's options, and the metrics a worker exports.
pub mod observe {
    pub use cluster_core::{
        AutoscaleDecision, AutoscaleStatus, ClusterStatus, MasterStatus, RestartCount, SlowRequest,
        StatusOptions, WorkerMetrics, WorkerStatus, prometheus_client,
    };
}

/// Options of the cluster and of its groups, and the types of their values.
pub mod options {
    pub use cluster_core::options::{
        Account, CONFIG_VAR, ClusterName, ControlPath, CpuAffinity, EnvAllow, KeyName, Limit, Nice,
        OptionSource, RELOADABLE, Reloaded, Resolved, Rlimit, Rlimits, Source, StatusToken, Umask,
        WEB_CONCURRENCY,
    };
    pub use cluster_core::{
        Autoscale, Backoff, Balance, Count, GroupOptions, Options, RestartMode, RestartPolicy,
        Runtime, Signal, parse_signal,
    };
}

#[cfg(feature = "http")]
pub mod http;
/// The master-worker protocol, for tests that play a misbehaving worker (the `testing`
/// feature; not a stable API).
#[cfg(feature = "testing")]
pub use cluster_core::wire;
/// The `#[cluster::main]` attribute and the markers of its functions.
pub use cluster_macros::{before_fork, main, master, worker};

/// Crates the generated code and apps use, re-exported so `cluster` is the only dependency.
#[doc(hidden)]
pub mod __private {
    pub use async_trait;
    pub use serde;
    pub use tokio;
    pub use tokio_util;
}

pub use async_trait::async_trait;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
