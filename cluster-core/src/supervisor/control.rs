//! What the control socket asks of the loop beyond the app's commands: to follow lifecycle
//! events (for `clusterctl reload --wait`), a reload of one group, the graceful replacement of
//! one slot, a relative scale, a stop with another grace, the options in force.

use std::time::Duration;

use tokio::sync::{broadcast, oneshot};

use super::process::Launcher;
use super::{RawEvent, Stopping, Supervisor, notice};
use crate::control::protocol::{OptionRow, ScaleTo};
use crate::model::{SlotKey, WorkerId};
use crate::{Error, ErrorKind, Result};

/// How many lifecycle events a follower may fall behind before it misses some.
pub(super) const TAP_CAPACITY: usize = 1024;

/// A lifecycle event, as the control socket follows it.
#[derive(Debug, Clone)]
pub(crate) enum Tap {
    Spawned {
        id: WorkerId,
        pid: u32,
    },
    Ready {
        id: WorkerId,
    },
    /// `how`: as [`super::lifecycle::ended_unready`] says it (the followers care only about
    /// replacements that end before they are ready).
    Exit {
        id: WorkerId,
        how: String,
    },
    ReloadStarted,
    ReloadFinished,
    ReloadFailed {
        error: String,
    },
}

impl Tap {
    pub(super) fn of(event: &RawEvent) -> Option<Tap> {
        Some(match event {
            RawEvent::Spawned { id, pid } => Tap::Spawned {
                id: id.clone(),
                pid: *pid,
            },
            RawEvent::Ready { id } => Tap::Ready { id: id.clone() },
            RawEvent::Exit {
                id, exit, unready, ..
            } => Tap::Exit {
                id: id.clone(),
                how: super::lifecycle::ended_unready(*exit, *unready),
            },
            RawEvent::ReloadStarted => Tap::ReloadStarted,
            RawEvent::ReloadFinished => Tap::ReloadFinished,
            RawEvent::ReloadFailed { error } => Tap::ReloadFailed {
                error: error.clone(),
            },
            _ => return None,
        })
    }
}

/// How a reload asked for by the control socket began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReloadStart {
    /// A new pass: its end is the next `ReloadFinished` or `ReloadFailed`.
    Started,
    /// Another pass was under way: this one runs after it, so its end is the second
    /// `ReloadFinished` from now (or the first `ReloadFailed`).
    Queued,
}

/// The control socket's requests.
pub(crate) enum Ask {
    /// A receiver of lifecycle events from now on.
    Follow {
        reply: oneshot::Sender<broadcast::Receiver<Tap>>,
    },
    Reload {
        group: Option<String>,
        reply: oneshot::Sender<Result<ReloadStart>>,
    },
    /// Answered with the replacement's generation.
    Restart {
        key: SlotKey,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Answered with the group's new size.
    Scale {
        group: String,
        to: ScaleTo,
        reply: oneshot::Sender<Result<usize>>,
    },
    Stop {
        grace: Option<Duration>,
    },
    /// Every option in force, with its source.
    Options {
        reply: oneshot::Sender<Vec<OptionRow>>,
    },
    /// Answered with the new master's pid and how the upgrade will end.
    Upgrade {
        reply: oneshot::Sender<Result<(u32, oneshot::Receiver<super::upgrade::Outcome>)>>,
    },
}

fn refused(message: String) -> Error {
    Error::new(ErrorKind::NoWorker, message)
}

impl<L: Launcher> Supervisor<L> {
    pub(super) async fn on_ask(&mut self, ask: Ask) {
        match ask {
            Ask::Follow { reply } => {
                let _ = reply.send(self.taps.subscribe());
            }
            Ask::Upgrade { reply } => {
                let (done, outcome) = oneshot::channel();
                let started = self.start_upgrade(Some(done)).map(|pid| (pid, outcome));
                let _ = reply.send(started);
            }
            Ask::Reload { group, reply } => {
                let result = self.control_reload(group).await;
                let _ = reply.send(result);
            }
            Ask::Restart { key, reply } => {
                let result = self.control_restart(&key).await;
                let _ = reply.send(result);
            }
            Ask::Scale { group, to, reply } => {
                let result = match self.group_index(&group) {
                    _ if self.stopping.is_some() => {
                        Err(refused("the cluster is shutting down".to_owned()))
                    }
                    _ if self.upgrade.under_way() => {
                        Err(refused(super::upgrade::ONE_AT_A_TIME.to_owned()))
                    }
                    None => Err(refused(format!("no group named {group:?}"))),
                    Some(g) => {
                        let live = self.groups[g].slots.len();
                        let count = match to {
                            ScaleTo::Exactly(n) => Some(n),
                            ScaleTo::Add(n) => live.checked_add(n),
                            ScaleTo::Remove(n) => live.checked_sub(n),
                        };
                        match count {
                            // A group of none would leave it serving nothing, with no worker
                            // to say so: `stop` is the way to end the cluster.
                            Some(0) | None => Err(refused(format!(
                                "group {group:?} has {live} slots: it must keep at least 1"
                            ))),
                            // An upper bound so that a typo cannot fork-bomb the machine.
                            Some(n) if n > 4096 => Err(refused(format!(
                                "{n} workers is more than the 4096 a scale may ask for"
                            ))),
                            Some(n) => {
                                self.resize(g, n).await;
                                Ok(n)
                            }
                        }
                    }
                };
                let _ = reply.send(result);
            }
            Ask::Stop { grace } => {
                if let Some(grace) = grace {
                    self.options = self.options.clone().with_grace(grace);
                }
                notice!(info, "control socket: shutting down gracefully");
                self.begin_stop(Stopping::Requested);
            }
            Ask::Options { reply } => {
                let _ = reply.send(self.option_rows());
            }
        }
    }

    /// A reload of every slot, or of group `group`'s.
    async fn control_reload(&mut self, group: Option<String>) -> Result<ReloadStart> {
        if self.stopping.is_some() {
            return Err(refused("the cluster is shutting down".to_owned()));
        }
        if self.upgrade.under_way() {
            return Err(refused(super::upgrade::ONE_AT_A_TIME.to_owned()));
        }
        if let Some(name) = &group {
            if self.group_index(name).is_none() {
                return Err(refused(format!("no group named {name:?}")));
            }
        }
        if self.reload.is_some() {
            // One more pass of everything after this one, as a second reload signal does.
            self.start_reload().await;
            return Ok(ReloadStart::Queued);
        }
        self.start_reload_of(group.as_deref()).await;
        Ok(ReloadStart::Started)
    }

    /// Starts a replacement for slot `key`, as a memory replacement does: it takes over once
    /// ready, and if it fails the old worker keeps serving.
    async fn control_restart(&mut self, key: &SlotKey) -> Result<u64> {
        if self.stopping.is_some() {
            return Err(refused("the cluster is shutting down".to_owned()));
        }
        if self.upgrade.under_way() {
            return Err(refused(super::upgrade::ONE_AT_A_TIME.to_owned()));
        }
        let Some(g) = self.group_index(&key.group) else {
            return Err(refused(format!("no group named {:?}", key.group)));
        };
        let name = format!("{}/{}", key.group, key.slot);
        let Some(slot) = self.groups[g].slots.get(&key.slot) else {
            return Err(refused(format!("no slot {name}")));
        };
        if slot.next.is_some() {
            return Err(refused(format!(
                "slot {name} is already being replaced (a reload or a recycle)"
            )));
        }
        if slot.current.is_none() {
            return Err(refused(format!(
                "slot {name} has no worker to replace; it is waiting for a restart"
            )));
        }
        self.spawn_into(g, key.slot, true).await;
        let generation = self.groups[g]
            .slots
            .get(&key.slot)
            .and_then(|s| s.next.as_ref())
            .map(|p| p.id.generation);
        generation.ok_or_else(|| refused(format!("the replacement for {name} could not start")))
    }
}
