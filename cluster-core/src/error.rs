use std::io;

/// Everything that can go wrong in a cluster, in the master or in a worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option was rejected before any worker started.
    #[error("invalid option `{option}`: {reason}")]
    InvalidOption {
        /// The option's name as the builder spells it (`count`, `grace`, ...).
        option: &'static str,
        /// Why, and what would be accepted.
        reason: String,
    },
    /// The IPC channel to a worker or to the master failed.
    #[error(transparent)]
    Ipc(#[from] cluster_ipc::Error),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// More workers crashed than the restart policy allows: the master gave up.
    #[error(
        "restart limit reached: {restarts} unexpected exits within {window_ms} ms (max_restarts = {max_restarts}); \
         last: worker {group}/{slot} {last_exit}. The cluster was shut down; fix the crash, or raise \
         `max_restarts` / lower `max_restarts_interval`"
    )]
    RestartLimit {
        /// The group of the worker whose exit crossed the limit.
        group: String,
        /// Its slot.
        slot: usize,
        /// How it exited, e.g. "exited with code 3" or "was killed by SIGKILL".
        last_exit: String,
        /// Unexpected exits counted in the window.
        restarts: usize,
        /// The limit.
        max_restarts: u32,
        /// The window, in milliseconds.
        window_ms: u128,
    },
    /// This process was started as a worker, but its environment is incomplete.
    #[error("{0}")]
    Bootstrap(String),
    /// A request got no response in time.
    #[error("no response within {timeout_ms} ms")]
    Timeout {
        /// The timeout, in milliseconds.
        timeout_ms: u128,
    },
    /// The peer (master or worker) is gone.
    #[error("the {0} is gone")]
    Disconnected(&'static str),
    /// The master could not listen on an address a worker asked for.
    #[error("{0}")]
    Listen(String),
    /// No worker (or group) by that name.
    #[error("no worker in {0}")]
    NoWorker(String),
    /// A worker function returned an error or panicked.
    #[error("worker failed: {0}")]
    Worker(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
