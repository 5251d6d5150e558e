//! The new master's side of an upgrade: it runs its workers on the sockets the old master
//! handed over, says `Ready` once `min_ready` of them are, and takes over when told (or when
//! the old master is gone): the control socket and status server start here, and systemd
//! hears this pid. Until then nothing it does reaches systemd, and any failure of its
//! workers, or the deadline, makes it say `Failed` and stop, leaving the old master serving.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Event, HandedServers, StartServers};
use crate::handover::{ToNew, ToOld};
use crate::model::WorkerId;
use crate::observe::logs::RecentLogs;
use crate::supervisor::process::Launcher;
use crate::supervisor::{RawEvent, Stopping, Supervisor, notice};
use crate::{Error, ErrorKind};

/// Lines of a failing worker sent to the old master.
const FAILED_LINES: usize = 20;
/// How long the failing worker's output gets to reach the master before its lines are read.
const OUTPUT_END_WAIT: Duration = Duration::from_millis(500);
/// How long `Failed` gets to reach the old master before this one stops anyway.
const SEND_WAIT: Duration = Duration::from_secs(1);

/// This master is the new one of an upgrade and has not taken over yet.
pub(crate) struct Incoming {
    old_pid: u32,
    tx: cluster_ipc::Sender<ToOld>,
    started: Instant,
    /// Past this without `min_ready` workers ready, the upgrade is given up.
    deadline: Instant,
    ready_sent: bool,
    handed: HandedServers,
    start: Option<StartServers>,
    logs: Option<Arc<RecentLogs>>,
}

impl Incoming {
    /// The new master's side, talking to the old master `old_pid` over `channel`; `start`
    /// serves `handed` once this master has taken over.
    pub(crate) fn new(
        old_pid: u32,
        channel: cluster_ipc::Channel<ToOld, ToNew>,
        handed: HandedServers,
        start: StartServers,
        (timeout, logs): (Duration, Option<Arc<RecentLogs>>),
    ) -> (Self, cluster_ipc::Receiver<ToNew>) {
        let (tx, rx) = channel.split();
        let now = Instant::now();
        (
            Incoming {
                old_pid,
                tx,
                started: now,
                deadline: now + timeout,
                ready_sent: false,
                handed,
                start: Some(start),
                logs,
            },
            rx,
        )
    }

    /// The deadline, until this master has said it is ready.
    pub(super) fn deadline(&self) -> Option<Instant> {
        (!self.ready_sent).then_some(self.deadline)
    }
}

/// Forwards what the old master says to the loop: `TakeOver`, or the end of its channel.
async fn listen_to_old(
    mut rx: cluster_ipc::Receiver<ToNew>,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
) {
    loop {
        match rx.recv().await {
            Ok(Some(ToNew::TakeOver)) => {
                let _ = events.send(Event::TakeOver);
                return;
            }
            // A second offer means nothing now.
            Ok(Some(ToNew::Offer(_))) => {}
            Ok(None) | Err(_) => {
                let _ = events.send(Event::OldGone);
                return;
            }
        }
    }
}

impl<L: Launcher> Supervisor<L> {
    /// This master is the new one of an upgrade: it holds back from systemd and serves no
    /// control socket until it takes over.
    pub(crate) fn set_incoming(&mut self, incoming: Incoming, rx: cluster_ipc::Receiver<ToNew>) {
        self.notify.hold();
        tokio::spawn(listen_to_old(rx, self.upgrade.events_tx.clone()));
        notice!(
            info,
            "upgrade: this master (pid {}) takes over from master {} once {} worker{} ready",
            std::process::id(),
            incoming.old_pid,
            self.options.min_ready(),
            if self.options.min_ready() == 1 {
                " is"
            } else {
                "s are"
            }
        );
        self.upgrade.incoming = Some(incoming);
    }

    /// After each turn: `Ready` to the old master the first time `ready` workers reach
    /// `min_ready`.
    pub(in crate::supervisor) fn upgrade_after_turn(&mut self, ready: usize) {
        let min_ready = self.options.min_ready();
        let Some(incoming) = &mut self.upgrade.incoming else {
            return;
        };
        if incoming.ready_sent || self.stopping.is_some() || ready < min_ready {
            return;
        }
        incoming.ready_sent = true;
        let tx = incoming.tx.clone();
        let events = self.upgrade.events_tx.clone();
        tokio::spawn(async move {
            let ready = ToOld::Ready {
                pid: std::process::id(),
                ready,
            };
            if tx.send(&ready).await.is_err() || tx.flush().await.is_err() {
                let _ = events.send(Event::OldGone);
            }
        });
    }

    /// Before the takeover, an event that means new's workers cannot serve: a crash, a
    /// worker not ready in time, one that could not be started. Acted on at the loop's next
    /// turn ([`Supervisor::finish_incoming_failure`]).
    pub(in crate::supervisor) fn watch_incoming(&mut self, event: &RawEvent) {
        let Some(incoming) = &self.upgrade.incoming else {
            return;
        };
        if incoming.ready_sent || self.upgrade.incoming_failure.is_some() {
            return;
        }
        let failure = match event {
            RawEvent::Exit {
                id,
                exit,
                expected: false,
                unready,
                ..
            } => Some((
                format!(
                    "worker {id} of the new master {}",
                    crate::supervisor::lifecycle::ended_unready(*exit, *unready)
                ),
                Some(id.clone()),
            )),
            RawEvent::SpawnFailed { id, error, .. } => Some((
                format!("the new master could not start worker {id}: {error}"),
                None,
            )),
            _ => None,
        };
        self.upgrade.incoming_failure = failure;
    }

    /// Before the takeover, worker `id` ended as `how` says (the ready timer killed it).
    pub(in crate::supervisor) fn incoming_worker_failed(&mut self, id: &WorkerId, how: &str) {
        let waiting = self
            .upgrade
            .incoming
            .as_ref()
            .is_some_and(|incoming| !incoming.ready_sent);
        if waiting && self.upgrade.incoming_failure.is_none() {
            self.upgrade.incoming_failure = Some((
                format!("worker {id} of the new master {how}"),
                Some(id.clone()),
            ));
        }
    }

    /// Acts on a failure [`Supervisor::watch_incoming`] saw.
    pub(in crate::supervisor) async fn finish_incoming_failure(&mut self) {
        if let Some((reason, id)) = self.upgrade.incoming_failure.take() {
            self.fail_incoming(reason, id).await;
        }
    }

    /// The upgrade is given up from this side: the old master hears why (with the last
    /// lines of worker `id`, when one failed) and this master stops. Its accept loops end
    /// first, so that no connection is taken from the sockets' queues that its workers would
    /// not serve.
    pub(super) async fn fail_incoming(&mut self, reason: String, id: Option<WorkerId>) {
        let Some(incoming) = self.upgrade.incoming.take() else {
            return;
        };
        self.listeners.stop_accepting();
        let mut lines = Vec::new();
        if let (Some(logs), Some(id)) = (&incoming.logs, &id) {
            logs.wait_closed(id, OUTPUT_END_WAIT).await;
            lines = logs
                .tail_of(id, FAILED_LINES)
                .into_iter()
                .map(|line| String::from_utf8_lossy(&line.text).into_owned())
                .collect();
        }
        notice!(
            warn,
            "upgrade failed: {reason}; stopping this master (pid {}), the old master (pid {}) serves on",
            std::process::id(),
            incoming.old_pid
        );
        let failed = ToOld::Failed {
            reason: reason.clone(),
            lines,
        };
        let tx = &incoming.tx;
        let _ = tokio::time::timeout(SEND_WAIT, async {
            tx.send(&failed).await?;
            tx.flush().await
        })
        .await;
        let error = Error::new(
            ErrorKind::MasterFailed,
            format!(
                "the upgrade failed: {reason}; the old master (pid {}) serves on",
                incoming.old_pid
            ),
        );
        self.begin_stop(Stopping::MasterFailed(error));
    }

    /// The old master stopped accepting (or is gone): this master serves the control socket
    /// and status server and tells systemd it is the main process and ready.
    pub(super) async fn take_over(&mut self) {
        let Some(mut incoming) = self.upgrade.incoming.take() else {
            return;
        };
        let summary = self.summary();
        self.notify.take_over(&summary);
        if let Some(start) = incoming.start.take() {
            let handed = std::mem::take(&mut incoming.handed);
            match start(handed).await {
                Ok(servers) => self.upgrade.servers = Some(servers),
                Err(e) => notice!(
                    warn,
                    "upgrade: cannot serve the control socket or status server handed over: {e:#}"
                ),
            }
        }
        self.upgrade.total += 1;
        notice!(
            info,
            "upgrade: took over from master {} {} ms after starting, with {}/{} workers ready",
            incoming.old_pid,
            incoming.started.elapsed().as_millis(),
            summary.ready,
            summary.slots
        );
        self.listeners.report_unclaimed();
    }
}
