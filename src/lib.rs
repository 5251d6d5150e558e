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

pub use cluster_core::*;
pub use cluster_ipc as ipc;

/// Crates the generated code and apps use, re-exported so `cluster` is the only dependency.
#[doc(hidden)]
pub mod __private {
    pub use async_trait;
    pub use serde;
    pub use tokio;
    pub use tokio_util;
}

pub use async_trait::async_trait;
