//! The control socket's requests that change the cluster: scale, and those followed to their
//! end with `--wait`: reload, restart (a rolling reload of one slot) and upgrade. Apart from
//! the server because each turns the supervisor's events into the answers a client follows.

use std::collections::BTreeMap;

use tokio::sync::broadcast;

use super::{GONE, Shared, Tx, ask, ask_to};
use crate::control::protocol::{LOGS_VERSION, Progress, Response, ScaleTo};
use crate::model::{SlotKey, WorkerId};
use crate::supervisor::Command;
use crate::supervisor::control::{Ask, ReloadStart, Tap};
use crate::supervisor::control_logs;
use crate::supervisor::upgrade::Outcome;

pub(super) async fn scale(group: String, to: ScaleTo, shared: &Shared) -> Response {
    let answer = ask_to(shared, |reply| {
        Command::Control(Ask::Scale {
            group: group.clone(),
            to,
            reply,
        })
    })
    .await;
    match answer {
        Ok(n) => Response::Done(format!("group {group} scaled to {n}")),
        Err(refused) => refused,
    }
}

async fn follow(shared: &Shared) -> Option<broadcast::Receiver<Tap>> {
    ask(shared, |reply| Command::Control(Ask::Follow { reply })).await
}

fn slot_of(id: &WorkerId) -> String {
    format!("{}/{}", id.group, id.slot)
}

/// Reports a failed reload or restart: the failing replacement's last lines first, to a client
/// that understands them ([`LOGS_VERSION`]), then the failure.
async fn failed(
    failing: Option<&WorkerId>,
    error: String,
    tx: &Tx,
    shared: &Shared,
    version: u32,
) -> cluster_ipc::Result<()> {
    if let Some(id) = failing.filter(|_| version >= LOGS_VERSION) {
        control_logs::send_failed_lines(shared.logs.as_deref(), id, tx).await?;
    }
    let slot = failing.map(slot_of);
    tx.send(&Response::ReloadFailed { slot, error }).await
}

/// Starts an upgrade of the master; with `wait`, follows it to its end.
pub(super) async fn upgrade(wait: bool, tx: &Tx, shared: &Shared) -> cluster_ipc::Result<()> {
    let started = ask_to(shared, |reply| Command::Control(Ask::Upgrade { reply })).await;
    let (pid, outcome) = match started {
        Ok(started) => started,
        Err(refused) => return tx.send(&refused).await,
    };
    tx.send(&Response::Done(format!(
        "upgrade started: new master pid {pid}"
    )))
    .await?;
    if !wait {
        return Ok(());
    }
    let response = match outcome.await {
        Ok(Outcome::Done { pid, took }) => Response::Upgraded {
            pid,
            millis: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        },
        Ok(Outcome::Failed { reason, lines }) => Response::UpgradeFailed {
            error: reason,
            lines,
        },
        Err(_) => Response::UpgradeFailed {
            error: "the master stopped before the upgrade ended".to_owned(),
            lines: Vec::new(),
        },
    };
    tx.send(&response).await?;
    tx.flush().await
}

pub(super) async fn reload(
    group: Option<String>,
    wait: bool,
    tx: &Tx,
    shared: &Shared,
    version: u32,
) -> cluster_ipc::Result<()> {
    // Following starts before the reload, so no event of it is missed.
    let events = if wait { follow(shared).await } else { None };
    let started = ask_to(shared, |reply| {
        Command::Control(Ask::Reload {
            group: group.clone(),
            reply,
        })
    })
    .await;
    let start = match started {
        Ok(start) => start,
        Err(refused) => return tx.send(&refused).await,
    };
    let what = match (&group, start) {
        (_, ReloadStart::Queued) => {
            "a reload is under way: another pass of every slot follows it".to_owned()
        }
        (Some(g), ReloadStart::Started) => format!("rolling reload of group {g} started"),
        (None, ReloadStart::Started) => "rolling reload started".to_owned(),
    };
    tx.send(&Response::Done(what)).await?;
    let Some(mut events) = events else {
        return Ok(());
    };
    // A queued pass ends at the second finish from now.
    let mut finishes_to_skip = usize::from(start == ReloadStart::Queued);
    // Replacements seen starting, by slot: (the replacement, ready yet).
    let mut replacing: BTreeMap<String, (WorkerId, bool)> = BTreeMap::new();
    let mut last_exit: Option<WorkerId> = None;
    loop {
        let tap = match events.recv().await {
            Ok(tap) => tap,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => {
                let failed = Response::ReloadFailed {
                    slot: None,
                    error: "the master stopped before the reload ended".to_owned(),
                };
                return tx.send(&failed).await;
            }
        };
        let response = match tap {
            Tap::Spawned { id, pid } if id.generation > 1 => {
                replacing.insert(slot_of(&id), (id.clone(), false));
                Response::Progress(Progress::Replacing {
                    slot: slot_of(&id),
                    generation: id.generation,
                    pid,
                })
            }
            Tap::Ready { id } => match replacing.get_mut(&slot_of(&id)) {
                Some((replacement, ready)) if *replacement == id => {
                    *ready = true;
                    Response::Progress(Progress::Replaced {
                        slot: slot_of(&id),
                        generation: id.generation,
                    })
                }
                _ => continue,
            },
            Tap::Exit { id, how } => match replacing.get(&slot_of(&id)) {
                Some((replacement, false)) if *replacement == id => {
                    last_exit = Some(id.clone());
                    Response::Progress(Progress::Exited {
                        slot: slot_of(&id),
                        generation: id.generation,
                        how,
                    })
                }
                _ => continue,
            },
            Tap::ReloadFinished if finishes_to_skip > 0 => {
                finishes_to_skip -= 1;
                continue;
            }
            Tap::ReloadFinished => return tx.send(&Response::ReloadFinished).await,
            Tap::ReloadFailed { error } => {
                let failing = last_exit.or_else(|| {
                    replacing
                        .values()
                        .find(|(_, ready)| !ready)
                        .map(|(id, _)| id.clone())
                });
                return failed(failing.as_ref(), error, tx, shared, version).await;
            }
            Tap::Spawned { .. } | Tap::ReloadStarted => continue,
        };
        tx.send(&response).await?;
    }
}

pub(super) async fn restart(
    group: String,
    slot: usize,
    tx: &Tx,
    shared: &Shared,
    version: u32,
) -> cluster_ipc::Result<()> {
    let Some(mut events) = follow(shared).await else {
        return tx.send(&Response::Refused(GONE.to_owned())).await;
    };
    let key = SlotKey::new(&group, slot);
    let name = format!("{group}/{slot}");
    let started = ask_to(shared, |reply| {
        Command::Control(Ask::Restart {
            key: key.clone(),
            reply,
        })
    })
    .await;
    let generation = match started {
        Ok(generation) => generation,
        Err(refused) => return tx.send(&refused).await,
    };
    tx.send(&Response::Done(format!(
        "replacing {name} with generation {generation}"
    )))
    .await?;
    let ours = |id: &WorkerId| id.key() == key && id.generation == generation;
    loop {
        let tap = match events.recv().await {
            Ok(tap) => tap,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => {
                let failed = Response::ReloadFailed {
                    slot: Some(name),
                    error: "the master stopped before the replacement was ready".to_owned(),
                };
                return tx.send(&failed).await;
            }
        };
        match tap {
            Tap::Spawned { id, pid } if ours(&id) => {
                let step = Progress::Replacing {
                    slot: name.clone(),
                    generation,
                    pid,
                };
                tx.send(&Response::Progress(step)).await?;
            }
            Tap::Ready { id } if ours(&id) => {
                let step = Progress::Replaced {
                    slot: name.clone(),
                    generation,
                };
                tx.send(&Response::Progress(step)).await?;
                return tx.send(&Response::ReloadFinished).await;
            }
            Tap::Exit { id, how } if ours(&id) => {
                let error = format!("replacement worker {id} {how}");
                return failed(Some(&id), error, tx, shared, version).await;
            }
            _ => {}
        }
    }
}
