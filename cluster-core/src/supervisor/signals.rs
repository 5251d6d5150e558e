//! The master's signal handling.
//!
//! Handlers are installed once at start and kept for the master's life: tokio never restores a
//! signal's default action, and deliveries coalesce, so each notification means "at least one".
//! The kernel merges a signal into one already pending, too: in practice the two signals GNU
//! `timeout` sends microseconds apart (to the master, then to its group) arrive as one. The
//! loop takes every notification after the first shutdown signal as a second one, however
//! soon it comes (`Supervisor::on_signal`).

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use super::process::Launcher;
use super::{SCALED_GROUP, Stopping, Supervisor, notice};
use crate::options::{Options, Signal};
use crate::{Error, Result};

/// The signals the master handles under `options`, each once: the shutdown and reload signals
/// and, with `scale_signals`, SIGTTIN and SIGTTOU. Those two are handled whenever the option
/// is on, not only when one is sent: their default action stops the process, and a master
/// stopped by them would leave its workers unsupervised.
pub(crate) fn handled(options: &Options) -> Vec<Signal> {
    let scale: &[Signal] = if options.scale_signals() {
        &[Signal::SIGTTIN, Signal::SIGTTOU]
    } else {
        &[]
    };
    let mut all: Vec<Signal> = Vec::new();
    for &sig in options
        .signals()
        .iter()
        .chain(options.reload_signals())
        .chain(options.upgrade_signals())
        .chain(scale)
    {
        // Two handlers for one signal would deliver it twice.
        if !all.contains(&sig) {
            all.push(sig);
        }
    }
    all
}

/// Starts forwarding each signal in `signals` to the returned queue.
pub(crate) fn listen(signals: &[Signal]) -> Result<mpsc::UnboundedReceiver<Signal>> {
    let (tx, rx) = mpsc::unbounded_channel();
    for &sig in signals {
        let mut stream = signal(SignalKind::from_raw(sig as i32))
            .map_err(|e| Error::io(format!("cannot handle {}", sig.as_str()), e))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

/// The loop's reactions to the signals: shutdown (a second one kills at once), reload,
/// upgrade, scale.
impl<L: Launcher> Supervisor<L> {
    pub(super) async fn on_signal(&mut self, sig: Signal) {
        let other =
            self.options.signals().contains(&sig) || self.options.reload_signals().contains(&sig);
        if self.options.upgrade_signals().contains(&sig) && !other {
            notice!(info, "{}: upgrading the master", sig.as_str());
            if let Err(e) = self.start_upgrade(None) {
                notice!(warn, "{}: no upgrade: {e}", sig.as_str());
            }
            return;
        }
        let reload = self.options.reload_signals().contains(&sig);
        // A scale signal also listed as a shutdown or reload signal does what that list says.
        if !reload
            && self.options.scale_signals()
            && !self.options.signals().contains(&sig)
            && matches!(sig, Signal::SIGTTIN | Signal::SIGTTOU)
        {
            self.scale_by_signal(sig).await;
            return;
        }
        if self.stopping.is_some() {
            if reload {
                notice!(
                    info,
                    "{}: no reload, the cluster is shutting down",
                    sig.as_str()
                );
            } else {
                self.shutdown_signals += 1;
                self.stop_now(sig);
            }
            return;
        }
        if reload {
            notice!(info, "{}: rolling reload", sig.as_str());
            self.start_reload().await;
            return;
        }
        self.shutdown_signals += 1;
        notice!(info, "{}: shutting down gracefully", sig.as_str());
        self.begin_stop(Stopping::Requested);
    }

    /// SIGTTIN adds a worker to [`SCALED_GROUP`], SIGTTOU removes one but never its last, as
    /// gunicorn does (option `scale_signals`).
    async fn scale_by_signal(&mut self, sig: Signal) {
        let name = sig.as_str();
        if self.stopping.is_some() {
            notice!(info, "{name}: no scaling, the cluster is shutting down");
            return;
        }
        let Some(g) = self.group_index(SCALED_GROUP) else {
            notice!(
                warn,
                "{name}: no group named {SCALED_GROUP:?} (the one `Cluster::worker` adds) to scale; nothing changed"
            );
            return;
        };
        let live = self.groups[g].slots.len();
        let count = if sig == Signal::SIGTTIN {
            live + 1
        } else if live <= 1 {
            notice!(
                info,
                "{name}: the {SCALED_GROUP:?} group keeps its last worker; nothing changed"
            );
            return;
        } else {
            live - 1
        };
        notice!(
            info,
            "{name}: scaling the {SCALED_GROUP:?} group from {live} to {count} worker{}",
            if count == 1 { "" } else { "s" }
        );
        self.resize(g, count).await;
    }

    /// A shutdown signal during a shutdown: kill every process now instead of waiting out the
    /// grace. Only the first such signal says so; the rest of a storm (a script repeating
    /// `kill`, a held Ctrl-C) find nothing left to kill (`Proc::kill` acts once) and are
    /// counted for [`Supervisor::report_signal_storm`], so each costs one pass over the
    /// processes and no output.
    fn stop_now(&mut self, sig: Signal) {
        if self.stopped_now {
            self.signals_after_stop_now += 1;
        } else {
            let live = self.procs().filter(|p| !p.killed()).count();
            self.stopped_now = true;
            // The first signal may not have been ours to count: the app or the restart limit
            // can begin a shutdown too.
            let which = if self.shutdown_signals >= 2 {
                "second signal"
            } else {
                "signal during the shutdown"
            };
            notice!(
                warn,
                "{}: {which}: stopping now, killing {live} remaining worker{} without waiting for the grace period",
                sig.as_str(),
                if live == 1 { "" } else { "s" }
            );
        }
        // The grace was cut short: the exit code says so, as when it runs out.
        self.killed_after_grace |= self.live_count() > 0;
        for p in self.procs_mut() {
            p.kill();
        }
    }

    /// Says how many shutdown signals came after the one that stopped the cluster at once, if
    /// any did: they changed nothing, but were not lost.
    pub(super) fn report_signal_storm(&self) {
        let extra = self.signals_after_stop_now;
        if extra > 0 {
            notice!(
                info,
                "{extra} more shutdown signal{} came while the workers were being killed",
                if extra == 1 { "" } else { "s" }
            );
        }
    }
}
