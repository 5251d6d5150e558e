//! The worker side: its context, and the process's life from bootstrap to exit.
//!
//! In files by task, bottom to top: `shared.rs` (the state the context and the reader share),
//! `context.rs` (the app's [`WorkerContext`]), `reader.rs` (the task reading the master's
//! channel), `heartbeat.rs`, and `run.rs` (the process's life, which starts them all). Each
//! imports only those before it, so the app's API can be read without the machinery under it.

mod context;
mod heartbeat;
pub mod in_flight;
mod reader;
mod run;
mod shared;
#[cfg(test)]
mod tests;

pub use crate::error::{EXIT_BOOTSTRAP, EXIT_MASTER_GONE};
pub use context::{Incoming, WorkerContext};
pub use heartbeat::count_request;
pub use run::Outcome;
pub(crate) use run::{Boot, panic_message, run};
