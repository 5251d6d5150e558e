//! Who this process is: the master, or which worker.

use std::fmt;
use std::sync::Arc;

/// Environment variables the master sets for each worker.
pub(crate) const ENV_GROUP: &str = "CLUSTER_WORKER_GROUP";
pub(crate) const ENV_SLOT: &str = "CLUSTER_WORKER_SLOT";
pub(crate) const ENV_GENERATION: &str = "CLUSTER_WORKER_GENERATION";
pub(crate) const ENV_IPC_FD: &str = "CLUSTER_IPC_FD";
pub(crate) const ENV_HEARTBEAT_MS: &str = "CLUSTER_HEARTBEAT_MS";

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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// Reads this process's role. A process with the worker variables set but unusable gets an
/// error naming the variable.
///
/// ```
/// assert_eq!(cluster_core::role().unwrap(), cluster_core::Role::Master);
/// ```
pub fn role() -> Result<Role, crate::Error> {
    let Some(group) = std::env::var_os(ENV_GROUP) else {
        return Ok(Role::Master);
    };
    let bad = |var: &str, reason: String| {
        crate::Error::Bootstrap(format!(
            "{var}: {reason}; this process was started with the cluster worker variables but not by a cluster master \
             (unset {ENV_GROUP} to run it as a master)"
        ))
    };
    let group = group
        .into_string()
        .map_err(|v| bad(ENV_GROUP, format!("not UTF-8: {v:?}")))?;
    let number = |var: &str| -> Result<u64, crate::Error> {
        let value = std::env::var(var).map_err(|e| bad(var, e.to_string()))?;
        value
            .parse()
            .map_err(|_| bad(var, format!("expected a number, found {value:?}")))
    };
    let slot = number(ENV_SLOT)?;
    let generation = number(ENV_GENERATION)?;
    Ok(Role::Worker(WorkerId {
        group: group.into(),
        slot: usize::try_from(slot).map_err(|_| bad(ENV_SLOT, format!("{slot} is too large")))?,
        generation,
    }))
}
