//! Autoscaling a group on its load (`autoscale`, off by default): at each sample the loop
//! gives each autoscaled group's figures to its [`policy::Policy`], and carries out what it
//! decides: a scale-up through `resize`, a scale-down by retiring the least busy worker the
//! graceful way (it leaves the rotation, drains, then stops). Each decision is logged, sent
//! to the master's function as `Event::Autoscaled`, shown in `/status` and counted in
//! `cluster_autoscale_decisions_total`.

pub(crate) mod policy;

use std::time::Duration;

use tokio::time::Instant;

use super::process::Launcher;
use super::slot::Phase;
use super::{Group, RawEvent, Supervisor, notice};
use crate::model::SlotKey;
use crate::observe::status::{AutoscaleDecision, AutoscaleStatus};
use crate::options::{Autoscale, Options};
use policy::{Decision, Policy, Sample, Settings};

/// One autoscaled group's policy and what it decided so far.
#[derive(Debug)]
pub(crate) struct Autoscaler {
    policy: Policy,
    last: Option<(Instant, Decision)>,
    ups: u64,
    downs: u64,
}

impl Autoscaler {
    pub(crate) fn new(options: &Options, range: Autoscale) -> Self {
        let settings = Settings {
            min: range.min(),
            max: range.max(),
            up_cpu: options.autoscale_up_cpu().map(|p| f64::from(p) / 100.0),
            up_lag: options.autoscale_up_lag(),
            up_connections: options.autoscale_up_connections(),
            up_window: options.autoscale_up_window(),
            down_window: options.autoscale_down_window(),
            cooldown: options.autoscale_cooldown(),
        };
        Autoscaler {
            policy: Policy::new(settings),
            last: None,
            ups: 0,
            downs: 0,
        }
    }

    /// The group's autoscaling as `/status` shows it.
    pub(crate) fn status(&self, group: &Group, now: Instant) -> AutoscaleStatus {
        let s = self.policy.settings();
        AutoscaleStatus {
            group: group.name.to_string(),
            min: s.min,
            max: s.max,
            workers: group.slots.len(),
            decisions_up: self.ups,
            decisions_down: self.downs,
            last_decision: self.last.as_ref().map(|(at, d)| AutoscaleDecision {
                from: d.from,
                to: d.to,
                reason: d.reason.clone(),
                ago_ms: u64::try_from(now.saturating_duration_since(*at).as_millis())
                    .unwrap_or(u64::MAX),
            }),
        }
    }
}

/// How busy a worker is, least busy first when sorted: requests under way for over a second,
/// then open connections, then CPU. A worker with nothing open has no request in flight.
#[derive(Debug, PartialEq, PartialOrd)]
pub(super) struct Busy {
    slow: usize,
    connections: u64,
    cpu: f64,
}

impl<L: Launcher> Supervisor<L> {
    /// How busy slot `s` of group `g` is: its current worker's figures, with those of any
    /// replacement or draining process it holds (all leave with the slot).
    pub(super) fn busy(&self, g: usize, s: usize) -> Busy {
        let mut busy = Busy {
            slow: 0,
            connections: 0,
            cpu: 0.0,
        };
        let Some(slot) = self.groups[g].slots.get(&s) else {
            return busy;
        };
        for p in slot.procs() {
            busy.slow += p.beat.slow_requests().len();
            busy.connections += self.open_connections(p);
            busy.cpu += p.cpu_cores.unwrap_or(0.0);
        }
        busy
    }

    /// The `count` slots of group `g` to remove first: the least busy, and among equals the
    /// highest numbered (the newest, as before the autoscaler).
    pub(super) fn least_busy(&self, g: usize, count: usize) -> Vec<usize> {
        let mut slots: Vec<(Busy, usize)> = self.groups[g]
            .slots
            .keys()
            .map(|&s| (self.busy(g, s), s))
            .collect();
        slots.sort_by(|(a, sa), (b, sb)| {
            a.partial_cmp(b)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(sb.cmp(sa))
        });
        slots.into_iter().take(count).map(|(_, s)| s).collect()
    }

    /// One turn of every autoscaled group, after the sample of the workers' usage.
    pub(super) async fn autoscale(&mut self, now: Instant) {
        if self.stopping.is_some() {
            return;
        }
        for g in 0..self.groups.len() {
            if self.groups[g].autoscaler.is_none() {
                continue;
            }
            let figures = self.settled_figures(g);
            let size = self.groups[g].slots.len();
            let Some(autoscaler) = self.groups[g].autoscaler.as_mut() else {
                continue;
            };
            let Some(sample) = figures else {
                autoscaler.policy.hold();
                continue;
            };
            let Some(decision) = autoscaler.policy.observe(now, size, sample) else {
                continue;
            };
            if decision.direction() == "up" {
                autoscaler.ups += 1;
            } else {
                autoscaler.downs += 1;
            }
            autoscaler.last = Some((now, decision.clone()));
            self.carry_out(g, decision).await;
        }
    }

    async fn carry_out(&mut self, g: usize, decision: Decision) {
        let name = self.groups[g].name.clone();
        notice!(
            info,
            "autoscale {name}: {} -> {} workers: {}",
            decision.from,
            decision.to,
            decision.reason
        );
        self.emit(RawEvent::Autoscaled {
            group: name.to_string(),
            from: decision.from,
            to: decision.to,
            reason: decision.reason,
        });
        self.resize(g, decision.to).await;
    }

    /// The group's figures over its ready workers, or `None` while it is changing: a reload
    /// or a recycle of one of its slots, a worker starting, restarting or without a CPU
    /// figure yet.
    fn settled_figures(&self, g: usize) -> Option<Sample> {
        let group = &self.groups[g];
        let reloading = self.reload.as_ref().is_some_and(|r| {
            r.queue
                .iter()
                .chain(&r.active)
                .any(|k| *k.group == *group.name)
        });
        let recycling = self
            .recycling
            .keys()
            .any(|k: &SlotKey| *k.group == *group.name);
        if reloading || recycling {
            return None;
        }
        let mut sample = Sample::default();
        let mut lag = Duration::ZERO;
        for slot in group.slots.values() {
            if slot.next.is_some() || slot.restart_at.is_some() {
                return None;
            }
            let p = slot.current.as_ref()?;
            if !matches!(p.phase, Phase::Ready { .. }) {
                return None;
            }
            sample.cpu += p.cpu_cores?;
            lag += p.beat.lag().unwrap_or_default();
            sample.connections += self.open_connections(p);
        }
        let workers = u32::try_from(group.slots.len().max(1)).unwrap_or(u32::MAX);
        sample.lag = lag / workers;
        Some(sample)
    }

    /// A process's open connections: those the master handed it and has not seen closed, or
    /// what its heartbeat reported, whichever is more (as `/status` shows them).
    fn open_connections(&self, p: &super::slot::Proc) -> u64 {
        p.beat
            .connections()
            .max(self.listeners.open_connections(&p.id) as u64)
    }
}
