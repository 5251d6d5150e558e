//! Upgrading the master itself: this master starts the executable on disk as a new master,
//! hands it every listening socket and what it must not forget, and leaves once the new one
//! serves (`outgoing.rs`, the old master's side); or this master is that new one, and takes
//! over once `min_ready` of its workers are ready (`incoming.rs`). The wire protocol is
//! `crate::handover`; the state that crosses is read and applied in `state.rs`.
//!
//! Old never `exec()`s itself: its spawner thread would end, and with it every worker's
//! parent-death signal would fire. New is an ordinary child of old, in its session and
//! cgroup, without a parent-death signal: it outlives old.

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::process::Launcher;
use super::reaper::LivePids;
use super::{Supervisor, notice};
use crate::handover::ToOld;
use crate::supervisor::control_server::ControlSocket;

mod incoming;
mod outgoing;
mod state;

pub(crate) use incoming::Incoming;

/// How an upgrade ended, for `clusterctl upgrade --wait`.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// The new master `pid` took over `took` after the request.
    Done { pid: u32, took: Duration },
    /// The upgrade was given up: this master serves on.
    Failed { reason: String, lines: Vec<String> },
}

/// The control socket and the status server this master serves: what it hands to a new
/// master, and stops when it has.
pub(crate) struct Servers {
    /// Ends both accept loops (connections already open go on).
    pub(crate) stop: CancellationToken,
    /// The tasks serving their clients, which an old master waits for (at most
    /// [`SERVE_TO_THE_END`]) once its workers are gone.
    pub(crate) tasks: TaskTracker,
    pub(crate) control: Option<ControlSocket>,
    /// A copy of the status server's listening socket.
    pub(crate) status: Option<std::net::TcpListener>,
}

/// The sockets of the control socket and status server an old master handed over, which a
/// new master serves once it has taken over.
#[derive(Default)]
pub(crate) struct HandedServers {
    pub(crate) control: Option<(std::os::unix::net::UnixListener, PathBuf)>,
    pub(crate) status: Option<std::net::TcpListener>,
}

/// Starts the control socket and status server on the handed sockets (the master's start-up
/// code, which knows what they serve).
pub(crate) type StartServers = Box<
    dyn FnOnce(HandedServers) -> Pin<Box<dyn Future<Output = crate::Result<Servers>> + Send>>
        + Send,
>;

/// How this master starts a new one: itself, as found at start.
pub(crate) struct Spawn {
    pub(crate) exe: PathBuf,
    pub(crate) args: Vec<OsString>,
    /// New's pid is registered here while old waits on it, so the orphan reaper leaves it.
    pub(crate) live: LivePids,
}

/// What the tasks talking to the other master report to the loop.
#[derive(Debug)]
pub(in crate::supervisor) enum Event {
    /// Old's side: new said something.
    FromNew(ToOld),
    /// Old's side: new ended before it was ready, as this says.
    NewGone(String),
    /// New's side: old has stopped accepting; new serves alone.
    TakeOver,
    /// New's side: old's end of the channel closed before it said to take over.
    OldGone,
}

/// Everything about upgrades the supervisor holds.
pub(crate) struct Upgrades {
    /// `None` in the unit tests' supervisor, which cannot start a master.
    pub(super) spawn: Option<Spawn>,
    pub(super) servers: Option<Servers>,
    pub(super) outgoing: Option<outgoing::Outgoing>,
    pub(super) incoming: Option<Incoming>,
    /// Failures of new's workers seen by `emit`, acted on at the loop's next turn.
    pub(super) incoming_failure: Option<(String, Option<crate::model::WorkerId>)>,
    pub(super) events_tx: mpsc::UnboundedSender<Event>,
    pub(super) events_rx: mpsc::UnboundedReceiver<Event>,
    /// Upgrades this cluster has been through, the ones of earlier masters included.
    pub(super) total: u64,
    /// The descriptors every child of this master inherits (see `Offer::passed_through`).
    pub(super) passed_through: Vec<i32>,
    /// A new master took over: until then (at most), this one waits for its accept loops
    /// to end and its workers to take what they accepted, then drains.
    pub(super) quiescing: Option<tokio::time::Instant>,
    /// Until when, at most, the old master of an upgrade, its workers gone, waits for the
    /// clients its servers accepted before the hand-over to be answered.
    pub(super) serving_until: Option<tokio::time::Instant>,
}

impl Default for Upgrades {
    fn default() -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Upgrades {
            spawn: None,
            servers: None,
            outgoing: None,
            incoming: None,
            incoming_failure: None,
            events_tx,
            events_rx,
            total: 0,
            passed_through: Vec::new(),
            quiescing: None,
            serving_until: None,
        }
    }
}

impl Upgrades {
    /// Whether an upgrade is under way, on either side.
    pub(in crate::supervisor) fn under_way(&self) -> bool {
        self.outgoing.is_some() || self.incoming.is_some() || self.quiescing.is_some()
    }
}

/// How often the old master looks whether its workers took every connection it accepted.
const QUIESCE_CHECK: Duration = Duration::from_millis(2);

/// The most an old master waits, its workers gone, for its control socket and status server
/// to answer the clients they accepted before the hand-over: each of those is bounded (a
/// hello, one request, a status request's scrape timeout), this bounds them all.
const SERVE_TO_THE_END: Duration = Duration::from_secs(5);

/// Why a request for an upgrade is refused now, if it is.
pub(in crate::supervisor) const ONE_AT_A_TIME: &str =
    "an upgrade of the master is under way; wait for it to end (`clusterctl upgrade --wait`)";

impl<L: Launcher> Supervisor<L> {
    /// This master serves the control socket and status server of `servers`.
    pub(crate) fn set_servers(&mut self, servers: Servers) {
        self.upgrade.servers = Some(servers);
    }

    /// Every child of this master inherits `fds` (descriptors it was started with).
    pub(crate) fn set_passed_through(&mut self, fds: Vec<i32>) {
        self.upgrade.passed_through = fds;
    }

    /// This master can start a new one as `spawn` says.
    pub(crate) fn set_spawn(&mut self, spawn: Spawn) {
        self.upgrade.spawn = Some(spawn);
    }

    pub(in crate::supervisor) async fn on_upgrade_event(&mut self, event: Event) {
        match event {
            Event::FromNew(ToOld::Ready { pid, ready }) => self.hand_over(pid, ready),
            Event::FromNew(ToOld::Failed { reason, lines }) => {
                self.upgrade_failed(reason, lines);
            }
            Event::NewGone(why) => {
                if self.upgrade.outgoing.is_some() {
                    self.upgrade_failed(why, Vec::new());
                }
            }
            Event::TakeOver => self.take_over().await,
            Event::OldGone => {
                if self.upgrade.incoming.is_some() {
                    notice!(
                        warn,
                        "upgrade: the old master went away before it handed over; this master takes over now"
                    );
                    self.take_over().await;
                }
            }
        }
    }

    /// When an upgrade on either side gives up by itself.
    pub(in crate::supervisor) fn upgrade_deadline(&self) -> Option<tokio::time::Instant> {
        let outgoing = self.upgrade.outgoing.as_ref().map(|o| o.deadline);
        let incoming = self.upgrade.incoming.as_ref().and_then(Incoming::deadline);
        // Acknowledgements are settled off the loop: while quiescing, look again soon.
        let quiescing = self
            .upgrade
            .quiescing
            .map(|until| until.min(tokio::time::Instant::now() + QUIESCE_CHECK));
        outgoing.into_iter().chain(incoming).chain(quiescing).min()
    }

    /// The upgrade's deadline passed: given up, on whichever side this master is.
    pub(in crate::supervisor) async fn on_upgrade_timer(&mut self, now: tokio::time::Instant) {
        self.quiesce(now);
        let timeout = self.options.upgrade_timeout();
        let min_ready = self.options.min_ready();
        if self
            .upgrade
            .outgoing
            .as_ref()
            .is_some_and(|o| o.deadline <= now)
        {
            self.upgrade_failed(
                format!(
                    "the new master did not have {min_ready} worker{} ready within upgrade_timeout ({}) and was killed",
                    if min_ready == 1 { "" } else { "s" },
                    crate::options::duration_text(&timeout)
                ),
                Vec::new(),
            );
        }
        let late = self
            .upgrade
            .incoming
            .as_ref()
            .and_then(Incoming::deadline)
            .is_some_and(|d| d <= now);
        if late {
            let reason = format!(
                "the new master did not have {min_ready} worker{} ready within its upgrade_timeout ({})",
                if min_ready == 1 { "" } else { "s" },
                crate::options::duration_text(&timeout)
            );
            self.fail_incoming(reason, None).await;
        }
    }
}
