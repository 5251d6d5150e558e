//! The old master's side of an upgrade: start the new master with the sockets and state, wait
//! until it is ready (or gives up, dies, or runs out of `upgrade_timeout`), then tell systemd
//! and the new master, stop accepting and drain. Until the new master is ready this master
//! changes nothing it serves, so every failure leaves it serving as before.

use std::os::fd::OwnedFd;
use std::time::Duration;

use cluster_ipc::{Channel, Config};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::{Event, ONE_AT_A_TIME, Outcome, SERVE_TO_THE_END};
use crate::handover::{ENV_UPGRADE_FD, HANDOVER_VERSION, Handed, MAX_HANDED, Offer, ToNew, ToOld};
use crate::supervisor::process::Launcher;
use crate::supervisor::{Stopping, Supervisor, notice};
use crate::{Error, ErrorKind, Result};

/// How long a new master that hung up gets to exit before its end is described without its
/// exit status.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// An upgrade this master started.
pub(crate) struct Outgoing {
    pid: u32,
    started: Instant,
    /// Past this, the new master is killed and the upgrade given up (`upgrade_timeout`).
    pub(super) deadline: Instant,
    /// Tells the task talking to the new master to send `TakeOver`.
    take_over: Option<oneshot::Sender<()>>,
    /// Tells that task to kill the new master (the upgrade was given up from here). Only a
    /// message kills: dropped unsent (the new master took over), it means nothing.
    kill: Option<oneshot::Sender<()>>,
    /// `clusterctl upgrade --wait` clients.
    waiters: Vec<oneshot::Sender<Outcome>>,
}

impl<L: Launcher> Supervisor<L> {
    /// Starts an upgrade (control socket or `upgrade_signals`): returns the new master's
    /// pid; `waiter` hears how it ends.
    pub(crate) fn start_upgrade(
        &mut self,
        waiter: Option<oneshot::Sender<Outcome>>,
    ) -> Result<u32> {
        let refuse = |why: &str| Err(Error::new(ErrorKind::NoWorker, why.to_owned()));
        if self.stopping.is_some() {
            return refuse("the cluster is shutting down");
        }
        if self.upgrade.under_way() {
            return refuse(ONE_AT_A_TIME);
        }
        if self.reload.is_some() {
            return refuse(
                "a rolling reload is under way; upgrade once it has ended (`clusterctl reload --wait`)",
            );
        }
        let Some(spawn) = &self.upgrade.spawn else {
            return refuse("this master cannot start another");
        };
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut sockets = Vec::new();
        let handed = self
            .listeners
            .handover()
            .map_err(|e| Error::io("cannot copy the listening sockets for the new master", e))?;
        for (fd, what) in handed {
            fds.push(fd);
            sockets.push(what);
        }
        // The status port and control socket follow; past the bound, the new master could
        // not receive the offer at all.
        if fds.len() + 2 > MAX_HANDED {
            return refuse(
                "this master holds more listening sockets than an upgrade can hand over",
            );
        }
        if let Some(servers) = &self.upgrade.servers {
            if let Some(status) = &servers.status {
                let copy = status
                    .try_clone()
                    .map_err(|e| Error::io("cannot copy the status server's socket", e))?;
                fds.push(copy.into());
                sockets.push(Handed::Status);
            }
            if let Some(control) = &servers.control {
                let copy = control
                    .listener
                    .try_clone()
                    .map_err(|e| Error::io("cannot copy the control socket", e))?;
                fds.push(copy);
                sockets.push(Handed::Control {
                    path: control.path.clone(),
                });
            }
        }
        let offer = Offer {
            version: HANDOVER_VERSION,
            pid: std::process::id(),
            sockets,
            state: self.export_state(),
            passed_through: self.upgrade.passed_through.clone(),
        };
        let (ours, child_end) = cluster_ipc::bootstrap::socketpair().map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot make the upgrade's channel: {e}"),
            )
        })?;
        let mut cmd = tokio::process::Command::new(&spawn.exe);
        // Its own pid is not known before it starts: without WATCHDOG_PID, systemd's
        // watchdog variables apply to whichever process reads them, and new pings once it
        // is the main process.
        cmd.args(&spawn.args)
            .env_remove("WATCHDOG_PID")
            .kill_on_drop(false);
        child_end.pass_to(cmd.as_std_mut(), ENV_UPGRADE_FD);
        let child = cmd.spawn().map_err(|e| {
            Error::io(
                format!("cannot start the new master {}", spawn.exe.display()),
                e,
            )
        })?;
        drop(child_end);
        let pid = child.id().unwrap_or(0);
        let registered = spawn.live.register(pid);
        let (take_over_tx, take_over_rx) = oneshot::channel();
        let (kill_tx, kill_rx) = oneshot::channel();
        let events = self.upgrade.events_tx.clone();
        tokio::spawn(async move {
            let _registered = registered;
            talk_to_new(ours, (offer, fds), child, (take_over_rx, kill_rx), events).await;
        });
        let now = Instant::now();
        notice!(
            info,
            "upgrade: started a new master from {} (pid {pid}); this master (pid {}) serves until it has {} worker{} ready",
            spawn.exe.display(),
            std::process::id(),
            self.options.min_ready(),
            if self.options.min_ready() == 1 {
                ""
            } else {
                "s"
            }
        );
        self.upgrade.outgoing = Some(Outgoing {
            pid,
            started: now,
            deadline: now + self.options.upgrade_timeout(),
            take_over: Some(take_over_tx),
            kill: Some(kill_tx),
            waiters: waiter.into_iter().collect(),
        });
        Ok(pid)
    }

    /// The new master is ready: systemd hears its pid, it hears to take over, and this
    /// master stops accepting anywhere and drains.
    pub(in crate::supervisor) fn hand_over(&mut self, pid: u32, ready: usize) {
        let Some(mut outgoing) = self.upgrade.outgoing.take() else {
            return;
        };
        // First, so that systemd never sees a moment without a main process it knows.
        self.notify.hand_over(pid);
        if let Some(go) = outgoing.take_over.take() {
            let _ = go.send(());
        }
        if let Some(servers) = &mut self.upgrade.servers {
            servers.stop.cancel();
            // Nothing new to serve: `tasks` ends once the clients already accepted have been.
            servers.tasks.close();
            if let Some(control) = &mut servers.control {
                control.keep_file();
            }
        }
        self.listeners.stop_accepting();
        let took = outgoing.started.elapsed();
        notice!(
            info,
            "upgrade: the new master (pid {pid}) has {ready} worker{} ready and took over {} ms after the request; this master (pid {}) stops accepting, drains its workers and exits",
            if ready == 1 { "" } else { "s" },
            took.as_millis(),
            std::process::id()
        );
        for waiter in outgoing.waiters.drain(..) {
            let _ = waiter.send(Outcome::Done { pid, took });
        }
        self.upgrade.total += 1;
        // The workers drain once every connection the accept loops took is theirs: one
        // still on its way to a worker that drained would have no other worker to go to.
        self.upgrade.quiescing = Some(Instant::now() + self.options.ack_timeout());
    }

    /// While the old master waits for its accept loops to end and its workers to take what
    /// they accepted: stops the cluster once they have (or `ack_timeout` ran out).
    pub(in crate::supervisor) fn quiesce(&mut self, now: Instant) {
        let Some(until) = self.upgrade.quiescing else {
            return;
        };
        if self.stopping.is_some() {
            self.upgrade.quiescing = None;
            return;
        }
        if self.listeners.quiet() || until <= now {
            self.upgrade.quiescing = None;
            self.begin_stop(Stopping::Upgraded);
        }
    }

    /// The old master of an upgrade, its workers gone: the tasks still serving clients its
    /// control socket and status server accepted before the hand-over, and until when it
    /// waits for them; `None` when it may exit.
    pub(in crate::supervisor) fn still_serving(
        &mut self,
        now: Instant,
    ) -> Option<(TaskTracker, Instant)> {
        if !matches!(self.stopping, Some(Stopping::Upgraded)) {
            return None;
        }
        let tasks = self.upgrade.servers.as_ref()?.tasks.clone();
        if tasks.is_empty() {
            return None;
        }
        let until = *self
            .upgrade
            .serving_until
            .get_or_insert(now + SERVE_TO_THE_END);
        if until <= now {
            notice!(
                warn,
                "upgrade: {} client{} of the control socket or status port still open {} ms after the workers were gone; this master exits, closing them",
                tasks.len(),
                if tasks.len() == 1 { "" } else { "s" },
                SERVE_TO_THE_END.as_millis()
            );
            return None;
        }
        Some((tasks, until))
    }

    /// The upgrade was given up (by the new master, its death, or the deadline): the new
    /// master is killed if it still runs, and this one serves on.
    pub(in crate::supervisor) fn upgrade_failed(&mut self, reason: String, lines: Vec<String>) {
        let Some(mut outgoing) = self.upgrade.outgoing.take() else {
            return;
        };
        if let Some(kill) = outgoing.kill.take() {
            let _ = kill.send(());
        }
        notice!(
            warn,
            "upgrade failed: {reason} (new master pid {}); this master (pid {}) serves on, nothing changed{}",
            outgoing.pid,
            std::process::id(),
            if lines.is_empty() {
                String::new()
            } else {
                format!("; the failing worker's last lines:\n{}", lines.join("\n"))
            }
        );
        for waiter in outgoing.waiters.drain(..) {
            let _ = waiter.send(Outcome::Failed {
                reason: reason.clone(),
                lines: lines.clone(),
            });
        }
    }

    /// The cluster is shutting down during an upgrade: the new master goes (its workers
    /// with it, by their parent-death signal).
    pub(in crate::supervisor) fn abandon_upgrade(&mut self) {
        if self.upgrade.outgoing.is_some() {
            self.upgrade_failed("the cluster is shutting down".to_owned(), Vec::new());
        }
    }
}

/// The task that speaks to the new master: the offer, then its answer, then (when the loop
/// says so) `TakeOver`. Every end before `Ready` is reported as [`Event::NewGone`] or the
/// new master's own `Failed`.
async fn talk_to_new(
    stream: std::os::unix::net::UnixStream,
    (offer, fds): (Offer, Vec<OwnedFd>),
    mut child: Child,
    (take_over, mut kill): (oneshot::Receiver<()>, oneshot::Receiver<()>),
    events: mpsc::UnboundedSender<Event>,
) {
    let talk = async {
        let channel =
            Channel::<ToNew, ToOld>::from_std(stream, Config::default().with_max_fds(MAX_HANDED))
                .await
                .map_err(|e| e.to_string())?;
        let (tx, mut rx) = channel.split();
        tx.send_with_fds(&ToNew::Offer(offer), fds)
            .await
            .map_err(|e| e.to_string())?;
        let answer = rx.recv().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((tx, rx, answer))
    };
    let answer = tokio::select! {
        answer = talk => answer,
        Ok(()) = &mut kill => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return;
        }
    };
    let (tx, _rx) = match answer {
        Ok((tx, rx, Some(ToOld::Ready { pid, ready }))) => {
            let _ = events.send(Event::FromNew(ToOld::Ready { pid, ready }));
            (tx, rx)
        }
        Ok((_, _, Some(failed @ ToOld::Failed { .. }))) => {
            let _ = events.send(Event::FromNew(failed));
            // It stops by itself; collected so that no zombie is left.
            let _ = child.wait().await;
            return;
        }
        Ok((_, _, None)) | Err(_) => {
            let why = match tokio::time::timeout(EXIT_WAIT, child.wait()).await {
                Ok(status) => format!(
                    "the new master {} before it was ready",
                    crate::supervisor::process::exit_kind(status)
                ),
                _ => {
                    let _ = child.start_kill();
                    "the new master hung up before it was ready".to_owned()
                }
            };
            let _ = events.send(Event::NewGone(why));
            return;
        }
    };
    tokio::select! {
        go = take_over => {
            if go.is_ok() {
                let _ = tx.send(&ToNew::TakeOver).await;
                let _ = tx.flush().await;
            }
        }
        Ok(()) = &mut kill => {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
    // The new master outlives this one: never waited on, never killed from here on.
}
