//! Who this process is: the master, or which worker.

use crate::model::{Role, WorkerId};

/// Environment variables the master sets for each worker.
pub(crate) const ENV_GROUP: &str = "CLUSTER_WORKER_GROUP";
pub(crate) const ENV_SLOT: &str = "CLUSTER_WORKER_SLOT";
pub(crate) const ENV_GENERATION: &str = "CLUSTER_WORKER_GENERATION";
pub(crate) const ENV_IPC_FD: &str = "CLUSTER_IPC_FD";
pub(crate) const ENV_HEARTBEAT_MS: &str = "CLUSTER_HEARTBEAT_MS";
/// The master's `protocol::LEVEL`; absent from a master older than the levels (level 1).
pub(crate) const ENV_PROTOCOL_LEVEL: &str = "CLUSTER_PROTOCOL_LEVEL";

/// Whether `var` is one of the variables a master sets for its workers.
pub(crate) fn is_cluster_var(var: &std::ffi::OsStr) -> bool {
    [
        ENV_GROUP,
        ENV_SLOT,
        ENV_GENERATION,
        ENV_IPC_FD,
        ENV_HEARTBEAT_MS,
        ENV_PROTOCOL_LEVEL,
    ]
    .iter()
    .any(|name| var == *name)
}

/// Reads this process's role. A process with the worker variables set but unusable gets an
/// error naming the variable. In a worker, `Cluster::run` removes the variables once it has
/// read them (so that programs the worker starts are not taken for workers): from then on
/// this says `Master`, and the worker's identity is `WorkerContext::id`.
///
/// ```
/// assert_eq!(cluster_core::role().unwrap(), cluster_core::Role::Master);
/// ```
pub fn role() -> Result<Role, crate::Error> {
    let Some(group) = std::env::var_os(ENV_GROUP) else {
        return Ok(Role::Master);
    };
    let bad = |var: &str, reason: String| {
        crate::Error::new(
            crate::ErrorKind::Bootstrap,
            format!(
                "{var}: {reason}; this process was started with the cluster worker variables but not by a cluster master \
                 (unset {ENV_GROUP} to run it as a master)"
            ),
        )
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
