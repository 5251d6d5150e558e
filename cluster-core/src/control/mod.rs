//! The control socket: how `clusterctl` lists, reloads, restarts, scales and stops a running
//! cluster, and reads its workers' last output lines.
//!
//! The master serves a Unix stream socket (option `control_path`, named after option `name`;
//! see [`path`]) with the typed requests of [`protocol`] over cluster-ipc's channel. Only the
//! master's own user and root may use it: the socket is mode 0600 in a directory of the
//! user's, and each peer's uid (`SO_PEERCRED`) is checked. Every request becomes one of the
//! supervisor's commands, as the status server's do; nothing here touches the workers. The
//! server itself is the supervisor's (`supervisor/control_server/`): this module holds what
//! both ends share and imports nothing above the options.
//! [`client`] is the other side, for `clusterctl`.

pub mod client;
pub mod protocol;

/// Where the socket lives: with the options, whose `name` and `control_path` it reads.
pub use crate::options::control_path as path;
pub use crate::options::{ClusterName, ControlPath};

/// The channel limits both sides use: a 4 MiB frame holds the list of thousands of workers,
/// and a bound this low keeps one bad client from making the master buffer more. A request
/// that does not decode leaves the channel open, for the master to say why before it closes
/// the connection itself.
pub(crate) fn config() -> cluster_ipc::Config {
    cluster_ipc::Config::default()
        .with_max_frame_len(4 << 20)
        .with_close_on_decode_error(false)
}
