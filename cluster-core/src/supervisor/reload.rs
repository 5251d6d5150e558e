//! Replacing workers without a gap: the rolling reload (every slot, `reload_parallelism` at a
//! time), the memory replacement of one slot, and scaling a group up or down. A replacement
//! starts beside the worker it replaces and takes over only once ready; if it fails, the old
//! workers keep serving.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::process::Launcher;
use super::restart::SlotBackoff;
use super::slot::{Slot, StopReason};
use super::{RawEvent, Reload, Supervisor, notice};
use crate::model::{SlotKey, WorkerId};

impl<L: Launcher> Supervisor<L> {
    /// Starts a rolling reload, or asks the one under way for one more pass.
    pub(super) async fn start_reload(&mut self) {
        self.start_reload_of(None).await;
    }

    /// Starts a rolling reload of every slot, or of `group`'s only (asked through the control
    /// socket), or asks the one under way for one more pass. The options file and environment
    /// are re-read for a whole reload only: what they change (`count`, limits) is the
    /// cluster's, not one group's.
    pub(super) async fn start_reload_of(&mut self, group: Option<&str>) {
        if self.stopping.is_some() {
            return;
        }
        if self.upgrade.under_way() {
            notice!(
                info,
                "no rolling reload: an upgrade of the master is under way (the new master starts every worker anew)"
            );
            return;
        }
        if let Some(reload) = &mut self.reload {
            reload.again = true;
            return;
        }
        let queue: VecDeque<SlotKey> = self
            .groups
            .iter()
            .filter(|g| group.is_none_or(|name| *g.name == *name))
            .flat_map(|g| {
                g.slots
                    .keys()
                    .map(|&slot| SlotKey::new(&g.name, slot))
                    .collect::<Vec<_>>()
            })
            .collect();
        self.reload = Some(Reload {
            total: queue.len(),
            queue,
            active: Vec::new(),
            again: false,
        });
        self.emit(RawEvent::ReloadStarted);
        self.notify.reload_started();
        if group.is_none() {
            // After the queue is made: slots a new `count` adds start new, not to be replaced.
            self.reread_config().await;
        }
        self.pump_reload().await;
    }

    /// Starts replacements until `reload_parallelism` are under way; ends the pass when
    /// every slot is done.
    pub(super) async fn pump_reload(&mut self) {
        loop {
            let parallelism = self.options.reload_parallelism();
            let Some(reload) = &mut self.reload else {
                return;
            };
            if reload.active.len() >= parallelism {
                return;
            }
            let Some(key) = reload.queue.pop_front() else {
                if !reload.active.is_empty() {
                    return;
                }
                let again = reload.again;
                self.reload = None;
                self.reloads_total += 1;
                notice!(info, "rolling reload finished");
                self.emit(RawEvent::ReloadFinished);
                if again {
                    Box::pin(self.start_reload()).await;
                }
                // One more pass is the same reload for systemd: READY=1 once it is over.
                if self.reload.is_none() {
                    self.notify.reload_ended();
                }
                return;
            };
            let Some(g) = self.group_index(&key.group) else {
                continue;
            };
            // A slot removed by a scale-down since the pass began has nothing to replace.
            let Some(slot) = self.groups[g].slots.get(&key.slot) else {
                continue;
            };
            let replacing = slot.next.is_some();
            if let Some(reload) = &mut self.reload {
                reload.active.push(key.clone());
            }
            // A recycle already under way is this slot's replacement too.
            if !replacing {
                Box::pin(self.spawn_into(g, key.slot, true)).await;
            }
        }
    }

    /// A replacement became ready: it takes its slot and the old worker drains.
    pub(super) async fn promote_if_replacement(&mut self, id: &WorkerId) {
        let key = id.key();
        let deadline = Instant::now() + self.options.grace();
        let Some(slot) = self.slot_mut(&key) else {
            return;
        };
        if slot
            .next
            .as_ref()
            .is_none_or(|p| p.id.generation != id.generation)
        {
            return;
        }
        let old = std::mem::replace(&mut slot.current, slot.next.take());
        if let Some(old) = old {
            let old_id = old.id.clone();
            slot.draining.push(old);
            self.stop_proc(&old_id, deadline, StopReason::Replaced);
        }
        self.recycling.remove(&key);
        if let Some(reload) = &mut self.reload {
            reload.active.retain(|k| *k != key);
        }
        self.pump_reload().await;
    }

    /// The replacement for slot `key` failed: a recycle is given up, a reload stops; the old
    /// workers keep serving, and the operator is told why.
    pub(super) async fn reload_failed(&mut self, key: &SlotKey, error: String) {
        if let Some(why) = self.recycling.remove(key) {
            notice!(
                error,
                "recycling {}/{} ({}) failed, the old worker keeps serving: {error}",
                key.group,
                key.slot,
                why.name()
            );
        }
        if !self.reload.as_ref().is_some_and(|r| r.active.contains(key)) {
            return;
        }
        let Some(reload) = self.reload.take() else {
            return;
        };
        notice!(
            error,
            "rolling reload aborted, the old workers keep serving: {error}"
        );
        let deadline = Instant::now() + self.options.grace();
        for key in reload.active {
            if self.recycling.contains_key(&key) {
                // The recycle it adopted goes on as before the reload.
                continue;
            }
            let next = self
                .slot_mut(&key)
                .and_then(|s| s.next.as_ref())
                .map(|p| p.id.clone());
            if let Some(id) = next {
                self.stop_proc(&id, deadline, StopReason::Abandoned);
            }
        }
        self.emit(RawEvent::ReloadFailed { error });
        self.notify.reload_ended();
    }

    /// Grows group `g` to `count` slots (the lowest free slot numbers), or removes its least
    /// busy slots (fewest slow requests, then connections, then CPU; the highest numbered
    /// among equals): their workers leave the rotation, drain and stop, and are not replaced.
    pub(super) async fn resize(&mut self, g: usize, count: usize) {
        if self.stopping.is_some() {
            return;
        }
        let live = self.groups[g].slots.len();
        if count > live {
            let mut wanted = count - live;
            let mut number = 0;
            while wanted > 0 {
                if !self.groups[g].slots.contains_key(&number) {
                    let backoff = SlotBackoff::new(self.groups[g].policy.backoff());
                    self.groups[g].slots.insert(number, Slot::new(backoff));
                    self.spawn_into(g, number, false).await;
                    wanted -= 1;
                }
                number += 1;
            }
            return;
        }
        let deadline = Instant::now() + self.options.grace();
        let removed = self.least_busy(g, live - count);
        for number in removed {
            let group = &mut self.groups[g];
            let Some(slot) = group.slots.remove(&number) else {
                continue;
            };
            let key = SlotKey::new(&group.name, number);
            let ids: Vec<WorkerId> = slot.procs().map(|p| p.id.clone()).collect();
            group.leaving.extend(slot.current);
            group.leaving.extend(slot.next);
            group.leaving.extend(slot.draining);
            for id in ids {
                self.stop_proc(&id, deadline, StopReason::Retired);
            }
            self.recycling.remove(&key);
            if let Some(reload) = &mut self.reload {
                reload.queue.retain(|k| *k != key);
                reload.active.retain(|k| *k != key);
            }
        }
        // A replacement the reload waited for may have left with its slot.
        self.pump_reload().await;
    }
}
