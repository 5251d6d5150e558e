//! Supervision of a cluster of worker processes: options, role dispatch, restarts, signals,
//! typed messaging between master and workers.
//!
//! A program builds a [`Cluster`] at the top of `main` and calls [`Cluster::run`]. Started by
//! hand, the process is the **master**: it re-executes its own binary `count` times as
//! **workers** (spawned, not forked: `fork` is unsafe in a multi-threaded tokio process),
//! restarts those that crash within `max_restarts` per `max_restarts_interval`, and on a
//! shutdown signal asks every worker to stop, killing what is left after `grace`.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod cluster;
pub mod control;
mod error;
mod event_queue;
mod handover;
mod identity;
mod master;
mod messaging;
mod model;
mod net;
mod observe;
pub mod options;
mod protocol;
mod request;
mod store;
mod supervisor;
mod sys;
mod violations;
#[cfg(feature = "testing")]
pub mod wire;
mod worker;

pub use cluster::{
    BoxError, Cluster, DEFAULT_GROUP, IntoOutcome, Master, Message, Runtime, Worker,
};
pub use error::{Error, ErrorKind, Result};
pub use identity::role;
pub use master::{Event, MasterContext};
pub use model::{ExitKind, Role, SlotKey, WorkerId, WorkerInfo, WorkerState};
pub use net::listener::{Connection, Listener};
pub use net::proxy_header;
pub use observe::metrics::WorkerMetrics;
pub use observe::status::{
    AutoscaleDecision, AutoscaleStatus, ClusterStatus, MasterStatus, RestartCount, WorkerStatus,
};
pub use observe::status_server::StatusOptions;
pub use options::{
    Autoscale, Backoff, Balance, Count, GroupOptions, Options, RestartMode, RestartPolicy, Signal,
    parse_signal,
};
pub use protocol::SlowRequest;
pub use request::Request;
pub use store::{Cas, Store, StoreEvent, Subscription};
pub use supervisor::{EXIT_KILLED_AFTER_GRACE, EXIT_RESTART_LIMIT, SpawnHook, SpawnSettings};
pub use worker::{
    EXIT_BOOTSTRAP, EXIT_MASTER_GONE, Incoming, Outcome, WorkerContext, count_request, in_flight,
};

/// The metrics library behind [`WorkerMetrics`], re-exported so that apps can build metrics
/// without depending on it themselves.
pub use prometheus_client;
