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
