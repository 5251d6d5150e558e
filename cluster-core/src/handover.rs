//! The protocol between two generations of the master during an upgrade (`clusterctl
//! upgrade`, `upgrade_signals`): the running master ("old") starts the executable on disk as
//! a new master ("new") with one end of a socketpair at descriptor 3, named by
//! [`ENV_UPGRADE_FD`], and the two speak these messages over cluster-ipc's framing, the
//! sockets travelling beside them with `SCM_RIGHTS`:
//!
//! ```text
//! old                                   new
//!  |-- Offer {version, sockets, state} -->|  (one descriptor per `sockets` entry)
//!  |                                      |  options checked, workers started on the
//!  |                                      |  handed sockets, `min_ready` of them ready
//!  |<------------- Ready {pid} -----------|
//!  |  MAINPID=new to systemd; stops        |
//!  |  accepting, control and status too    |
//!  |------------- TakeOver --------------->|  serves the control socket and status port,
//!  |  drains its workers, exits            |  READY=1
//! ```
//!
//! Before `Ready`, new may say `Failed` (and exits); old then goes on as if nothing happened.
//!
//! Old and new are different builds, and the codec is positional, so, as in `protocol`, the
//! enums and structs here are **append-only**: add variants and fields at the end, never
//! reorder or remove; `tests::pinned_bytes` pins the encoding. [`HANDOVER_VERSION`] is in
//! the offer so that a new master can refuse an old one it cannot understand (by saying
//! `Failed`, which every version has at the same place) instead of misreading it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::protocol::ListenAddr;

/// The version of this protocol this build speaks. New accepts an offer of this version or
/// lower.
pub(crate) const HANDOVER_VERSION: u32 = 1;

/// The variable that tells a process it is the new master of an upgrade, naming the
/// descriptor of its channel to the old one.
pub(crate) const ENV_UPGRADE_FD: &str = "CLUSTER_UPGRADE_FD";

/// The most sockets one offer carries: the master's listeners (at most 64), the sockets it
/// was started with that no worker claimed, the status port and the control socket.
pub(crate) const MAX_HANDED: usize = 200;

/// Old to new.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum ToNew {
    /// The first message, with one descriptor per entry of `sockets`, in order.
    Offer(Offer),
    /// Old has stopped accepting and has told systemd new's pid: new serves alone from now.
    TakeOver,
}

/// What old hands over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Offer {
    /// Old's [`HANDOVER_VERSION`].
    pub(crate) version: u32,
    /// Old's pid.
    pub(crate) pid: u32,
    pub(crate) sockets: Vec<Handed>,
    pub(crate) state: State,
    /// The descriptors old's children inherit without asking: those it was started with
    /// that are not close-on-exec (a shell's or a supervisor's). New finds them open too;
    /// any other it finds beyond 0-3 leaked from old.
    pub(crate) passed_through: Vec<i32>,
}

/// What one handed descriptor is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Handed {
    /// A listening socket of the workers: the addresses workers asked for that old bound
    /// (or adopted) it as, and its socket-activation name (`"upgrade"` for a socket old bound
    /// itself). New's workers asking for any of these addresses get this socket, not a new
    /// bind: `127.0.0.1:0` asked again finds the port old picked for it.
    Listener {
        bound_as: Vec<ListenAddr>,
        name: String,
    },
    /// The status server's listening socket (`status_addr`).
    Status,
    /// The control socket's listening socket, bound at `path`.
    Control { path: PathBuf },
}

/// What old knows that new must not lose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct State {
    /// Upgrades before this one.
    pub(crate) upgrades: u64,
    /// Rolling reloads so far.
    pub(crate) reloads: u64,
    pub(crate) groups: Vec<GroupState>,
    /// Restarts by group, slot and reason.
    pub(crate) restarts: Vec<Count>,
    /// Recycles by group, slot and reason.
    pub(crate) recycles: Vec<Count>,
}

/// One group's history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct GroupState {
    pub(crate) name: String,
    /// The size its options gave it.
    pub(crate) configured: usize,
    /// The size it has (a `clusterctl scale` or SIGTTIN since may have changed it).
    pub(crate) live: usize,
    /// How long ago, in milliseconds, each failure inside the restart-intensity window
    /// happened: a crash loop must not reset its count by upgrading.
    pub(crate) exits_ago_ms: Vec<u64>,
    /// The last generation started in each slot, so that new's workers never reuse an id
    /// of old's.
    pub(crate) generations: Vec<(usize, u64)>,
}

/// A counter by slot and reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Count {
    pub(crate) group: String,
    pub(crate) slot: usize,
    pub(crate) reason: String,
    pub(crate) count: u64,
}

/// New to old.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum ToOld {
    /// New gives up: old keeps serving. `lines` are the last output lines of the worker that
    /// failed, when one did.
    Failed { reason: String, lines: Vec<String> },
    /// `ready` of new's workers are ready (at least `min_ready`): old may stop.
    Ready { pid: u32, ready: usize },
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_ipc::{Bincode, Codec};

    fn bytes<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        Bincode.encode(value, &mut out).unwrap();
        out
    }

    /// If this fails, a variant or field was inserted, removed or reordered: two builds would
    /// misread each other during an upgrade. Append instead.
    #[test]
    fn pinned_bytes() {
        assert_eq!(bytes(&ToNew::TakeOver), [1]);
        assert_eq!(
            bytes(&ToOld::Failed {
                reason: "x".into(),
                lines: vec!["y".into()]
            }),
            [0, 1, b'x', 1, 1, b'y']
        );
        assert_eq!(bytes(&ToOld::Ready { pid: 9, ready: 2 }), [1, 9, 2]);
        let offer = ToNew::Offer(Offer {
            version: 1,
            pid: 7,
            sockets: vec![
                Handed::Listener {
                    bound_as: vec![ListenAddr::Named("a".into())],
                    name: "b".into(),
                },
                Handed::Status,
                Handed::Control { path: "/c".into() },
            ],
            state: State {
                upgrades: 3,
                reloads: 4,
                groups: vec![GroupState {
                    name: "w".into(),
                    configured: 2,
                    live: 3,
                    exits_ago_ms: vec![5],
                    generations: vec![(0, 6)],
                }],
                restarts: vec![Count {
                    group: "w".into(),
                    slot: 1,
                    reason: "r".into(),
                    count: 8,
                }],
                recycles: vec![],
            },
            passed_through: vec![10],
        });
        assert_eq!(
            bytes(&offer),
            [
                0, 1, 7, // Offer, version, pid
                3, // sockets
                0, 1, 2, 1, b'a', 1, b'b', // Listener { [Named("a")], "b" }
                1,    // Status
                2, 2, b'/', b'c', // Control { "/c" }
                3, 4, // upgrades, reloads
                1, 1, b'w', 2, 3, 1, 5, 1, 0, 6, // groups
                1, 1, b'w', 1, 1, b'r', 8, // restarts
                0, // recycles
                1, 20, // passed_through: zigzag varint
            ]
        );
    }
}
