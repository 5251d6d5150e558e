//! The shared vocabulary of the crate: who a worker is, where it lives, how it ended. Imports
//! nothing else of the crate, so every other module can use it.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

/// The role of this process, read from the environment the master sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Started by hand (or by systemd, a shell, ...): this process supervises.
    Master,
    /// Started by a master.
    Worker(WorkerId),
}

/// Identifies one worker process: its group, its slot in the group (0-based, stable across
/// restarts) and its generation (1 for the first process in the slot, incremented by each
/// restart or reload).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId {
    /// The group's name.
    pub group: Arc<str>,
    /// The slot, `0..count`.
    pub slot: usize,
    /// Which process of this slot, starting at 1.
    pub generation: u64,
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.group, self.slot, self.generation)
    }
}

/// A worker's place in its group: what stays the same when the process in it is replaced.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotKey {
    /// The group's name.
    pub group: Arc<str>,
    /// The slot, `0..count`.
    pub slot: usize,
}

impl SlotKey {
    /// The key of `slot` in `group`; the group of [`Cluster::worker`](crate::Cluster::worker)
    /// is [`DEFAULT_GROUP`](crate::DEFAULT_GROUP): `SlotKey::new(DEFAULT_GROUP, 0)`.
    pub fn new(group: &str, slot: usize) -> Self {
        SlotKey {
            group: group.into(),
            slot,
        }
    }
}

impl WorkerId {
    /// The slot this worker occupies.
    pub fn key(&self) -> SlotKey {
        SlotKey {
            group: self.group.clone(),
            slot: self.slot,
        }
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitKind::Code(code) => write!(f, "exited with code {code}"),
            ExitKind::Signal(sig) => match nix::sys::signal::Signal::try_from(sig) {
                Ok(sig) => write!(f, "was killed by {}", sig.as_str()),
                Err(_) => write!(f, "was killed by signal {sig}"),
            },
        }
    }
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Spawned, channel not yet up.
    Starting,
    /// Channel up, not yet ready.
    Online,
    /// Ready for work.
    Ready,
    /// Asked to stop, not yet exited.
    Stopping,
}

/// A snapshot of one worker.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// Its identity.
    pub id: WorkerId,
    /// Its process id, once spawned.
    pub pid: Option<u32>,
    /// Its state.
    pub state: WorkerState,
    /// When it was spawned.
    pub started: Instant,
    /// How many times its slot was restarted after an unexpected exit.
    pub restarts: u64,
    /// Connections the master handed it that are still open (master-accept policies).
    pub connections: usize,
}
