//! What a master knows that its successor must not lose, read for the offer and applied by
//! the new master before it starts a worker: the restart-intensity window (so a crash loop
//! cannot reset its count by upgrading), each slot's last generation (so no id is reused
//! while the old master's workers drain), a size changed at run time, and the counters that
//! `/status` and `/metrics` show.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::handover::{Count, GroupState, State};
use crate::supervisor::process::Launcher;
use crate::supervisor::{Supervisor, notice};

/// The reasons a counter may carry, as the `&'static str` labels the supervisor keys them
/// by; a reason this build does not know is dropped (a newer master's).
const REASONS: [&str; 7] = [
    "crash",
    "hung",
    "failed_start",
    "memory",
    "unread_channel",
    "max_requests",
    "max_lifetime",
];

type Counts = BTreeMap<(Arc<str>, usize, &'static str), u64>;

fn export(counts: &Counts) -> Vec<Count> {
    counts
        .iter()
        .map(|((group, slot, reason), count)| Count {
            group: group.to_string(),
            slot: *slot,
            reason: (*reason).to_owned(),
            count: *count,
        })
        .collect()
}

fn import(counts: &mut Counts, from: &[Count], groups: &[Arc<str>]) {
    for c in from {
        let Some(reason) = REASONS.iter().find(|r| **r == c.reason) else {
            continue;
        };
        let Some(group) = groups.iter().find(|g| ***g == *c.group) else {
            continue;
        };
        *counts.entry((group.clone(), c.slot, reason)).or_default() += c.count;
    }
}

impl<L: Launcher> Supervisor<L> {
    pub(in crate::supervisor) fn export_state(&self) -> State {
        let now = Instant::now();
        let groups = self
            .groups
            .iter()
            .map(|g| GroupState {
                name: g.name.to_string(),
                configured: g.options.count().resolve(),
                live: g.slots.len(),
                exits_ago_ms: g
                    .intensity
                    .ages(now)
                    .into_iter()
                    .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX))
                    .collect(),
                generations: g.generations.iter().map(|(s, g)| (*s, *g)).collect(),
            })
            .collect();
        State {
            upgrades: self.upgrade.total,
            reloads: self.reloads_total,
            groups,
            restarts: export(&self.restart_reasons),
            recycles: export(&self.recycles),
        }
    }

    /// Takes on `state`, an old master's, before any worker starts.
    pub(crate) fn apply_state(&mut self, state: &crate::handover::State) {
        let now = Instant::now();
        self.upgrade.total = state.upgrades;
        self.reloads_total = state.reloads;
        let names: Vec<Arc<str>> = self.groups.iter().map(|g| g.name.clone()).collect();
        import(&mut self.restart_reasons, &state.restarts, &names);
        import(&mut self.recycles, &state.recycles, &names);
        for old in &state.groups {
            let Some(group) = self.groups.iter_mut().find(|g| *g.name == *old.name) else {
                continue;
            };
            let ages: Vec<Duration> = old
                .exits_ago_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect();
            group.intensity.restore(&ages, now);
            for (slot, generation) in &old.generations {
                let ours = group.generations.entry(*slot).or_default();
                *ours = (*ours).max(*generation);
            }
            // A size changed at run time (`clusterctl scale`, SIGTTIN) survives; a size the
            // old master had from its options gives way to this master's options.
            if old.live != old.configured && old.live > 0 {
                notice!(
                    info,
                    "upgrade: group {} keeps the size it was scaled to, {} (its options say {})",
                    old.name,
                    old.live,
                    group.options.count().resolve()
                );
                group.options = group.options.clone().with_count(old.live);
            }
        }
    }
}
