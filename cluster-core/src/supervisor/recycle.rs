//! Recycling: replacing a worker that has not crashed but should not go on serving, the reload
//! way (its replacement is ready before it drains), so that no request fails. Four reasons: it
//! stayed over `max_memory`, it stopped reading its channel, it served `max_requests`, or it
//! ran `max_lifetime`. At most `reload_parallelism` recycles run at once and none during a
//! rolling reload (which replaces every worker anyway); a recycle is never a restart, so it
//! never counts toward `max_restarts`.
//!
//! The request and lifetime limits carry a jitter drawn per worker process when it starts:
//! workers started together (the cluster's start, a reload) would otherwise reach the same
//! limit together and recycle in one wave, the thundering herd gunicorn's
//! `max_requests_jitter` exists for.

use std::time::Duration;

use tokio::time::Instant;

use super::outbox::{OUTBOX_CAPACITY, Outbox};
use super::process::Launcher;
use super::slot::{Phase, Proc};
use super::{RawEvent, Supervisor, notice};
use crate::model::WorkerId;
use crate::options::{Options, duration_text};
use crate::violations::Violation;

/// Why a worker is recycled; its name is the `reason` label of `cluster_worker_recycles_total`
/// and of `/status`'s `recycles`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// Over `max_memory` for `memory_samples` samples in a row.
    Memory,
    /// Its outbox stayed full, or it left a handed connection unacknowledged for
    /// `heartbeat_timeout`.
    UnreadChannel,
    /// It served its `max_requests` (plus jitter).
    MaxRequests,
    /// It ran its `max_lifetime` (plus jitter).
    MaxLifetime,
}

impl Why {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Why::Memory => "memory",
            Why::UnreadChannel => "unread_channel",
            Why::MaxRequests => "max_requests",
            Why::MaxLifetime => "max_lifetime",
        }
    }
}

/// One worker process's own request and lifetime limits, drawn when it starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Recycle once it has reported serving this many requests.
    pub(crate) requests: Option<u64>,
    /// Recycle once it has run until then.
    pub(crate) until: Option<Instant>,
}

impl Limits {
    /// The limits of a process started at `started`: each configured limit plus a uniformly
    /// drawn share of its jitter.
    pub(crate) fn draw(options: &Options, started: Instant) -> Self {
        let requests = options
            .max_requests()
            .map(|max| max.saturating_add(fastrand::u64(0..=options.max_requests_jitter())));
        let until = options.max_lifetime().map(|max| {
            let jitter = options.max_lifetime_jitter().as_millis();
            let extra = u64::try_from(jitter).unwrap_or(u64::MAX);
            started + max + Duration::from_millis(fastrand::u64(0..=extra))
        });
        Limits { requests, until }
    }

    /// Whether a process with these limits is due, having served `requests` by `now`.
    pub(crate) fn due(&self, requests: u64, now: Instant) -> Option<Why> {
        if self.requests.is_some_and(|max| requests >= max) {
            return Some(Why::MaxRequests);
        }
        if self.until.is_some_and(|until| now >= until) {
            return Some(Why::MaxLifetime);
        }
        None
    }
}

impl<L: Launcher> Supervisor<L> {
    /// Whether one more recycle may start now: no reload runs (it replaces every worker
    /// anyway) and fewer than `reload_parallelism` recycles are under way.
    fn may_recycle(&self) -> bool {
        self.stopping.is_none()
            && self.reload.is_none()
            && self.recycling.len() < self.options.reload_parallelism()
    }

    /// Starts the replacement of `id` (slot `s` of group `g`) for `why`, counted by slot and
    /// reason for status and metrics, and told to the master's function.
    async fn recycle(&mut self, g: usize, s: usize, id: WorkerId, why: Why) {
        *self
            .recycles
            .entry((id.group.clone(), id.slot, why.name()))
            .or_default() += 1;
        self.recycling.insert(id.key(), why);
        self.emit(RawEvent::Recycling {
            id,
            reason: why.name(),
        });
        self.spawn_into(g, s, true).await;
    }

    /// The ready workers that no replacement is starting for: the only ones recycling may
    /// pick, with their group index and slot.
    fn recyclable(&self) -> impl Iterator<Item = (usize, usize, &Proc)> {
        self.groups.iter().enumerate().flat_map(|(g, group)| {
            group.slots.iter().filter_map(move |(&s, slot)| {
                let p = slot.current.as_ref()?;
                (slot.next.is_none() && matches!(p.phase, Phase::Ready { .. })).then_some((g, s, p))
            })
        })
    }

    /// Recycles the workers past their `max_requests` or `max_lifetime`, as many as may run
    /// at once; the others wait for a later sample. The most overdue by lifetime go first
    /// only by slot order: they were drawn apart by the jitter, so few are due together.
    pub(super) async fn recycle_due(&mut self, now: Instant) {
        if !self.may_recycle() {
            return;
        }
        let due: Vec<(usize, usize, WorkerId, Why)> = self
            .recyclable()
            .filter_map(|(g, s, p)| {
                let why = p.limits.due(p.beat.requests(), now)?;
                Some((g, s, p.id.clone(), why))
            })
            .collect();
        for (g, s, id, why) in due {
            if !self.may_recycle() {
                return;
            }
            match why {
                Why::MaxRequests => notice!(
                    info,
                    "worker {id} has served its max_requests ({} requests): recycling it",
                    self.proc_mut(&id).map_or(0, |p| p.beat.requests())
                ),
                _ => notice!(
                    info,
                    "worker {id} has run past its max_lifetime ({} plus its jitter): recycling it",
                    duration_text(&self.options.max_lifetime().unwrap_or_default())
                ),
            }
            self.recycle(g, s, id, why).await;
        }
    }

    /// Reads every worker's memory and CPU (and the cores it used since the last sample, for
    /// the autoscaler), and recycles a worker that stayed over
    /// `max_memory` for `memory_samples` samples in a row.
    pub(super) async fn sample(&mut self) {
        let limit = self.options.max_memory();
        let needed = self.options.memory_samples();
        let now = Instant::now();
        let since = self
            .sampled_at
            .replace(now)
            .map(|at| now.saturating_duration_since(at).as_secs_f64())
            .filter(|&secs| secs > 0.0);
        let Supervisor {
            groups, launcher, ..
        } = self;
        for group in groups.iter_mut() {
            for slot in group.slots.values_mut() {
                for p in slot.procs_mut() {
                    let Some(usage) = p.pid.and_then(|pid| launcher.usage(pid)) else {
                        continue;
                    };
                    let before = p.usage.map(|u| u.1);
                    p.cpu_cores = before
                        .zip(since)
                        .map(|(before, secs)| (usage.cpu_seconds - before).max(0.0) / secs);
                    p.usage = Some((usage.rss_bytes, usage.cpu_seconds));
                    match limit {
                        Some(limit) if usage.rss_bytes > limit && !p.is_stopping() => {
                            p.over_memory += 1
                        }
                        _ => p.over_memory = 0,
                    }
                }
            }
        }
        let Some(limit) = limit else {
            return;
        };
        if !self.may_recycle() {
            return;
        }
        let over: Vec<(usize, usize, WorkerId, u64)> = self
            .recyclable()
            .filter(|(_, _, p)| p.over_memory >= needed)
            .map(|(g, s, p)| (g, s, p.id.clone(), p.usage.map_or(0, |u| u.0)))
            .collect();
        for (g, s, id, rss) in over {
            if !self.may_recycle() {
                return;
            }
            notice!(
                warn,
                "worker {id} uses {} MiB, over max_memory ({} MiB) for {needed} samples: replacing it",
                rss >> 20,
                limit >> 20
            );
            self.recycle(g, s, id, Why::Memory).await;
        }
    }

    /// Recycles a worker that does not read its channel: its outbox is full, or it has left
    /// a handed connection unacknowledged for `heartbeat_timeout`. Its heartbeats may go on
    /// (they come from another task), so the watchdog alone would never see it.
    pub(super) async fn replace_unread(&mut self, now: Instant) {
        if !self.may_recycle() {
            return;
        }
        let bound = self.options.heartbeat_timeout();
        let in_flight = self.listeners.in_flight();
        let found = self.recyclable().find_map(|(g, s, p)| {
            let full = p.phase.outbox().is_some_and(Outbox::is_full);
            let unacked = bound
                .zip(in_flight.oldest_of(&p.id))
                .is_some_and(|(bound, at)| at + bound <= now);
            let what = if full {
                format!(
                    "does not read its channel ({OUTBOX_CAPACITY} messages wait for it): replacing it"
                )
            } else if unacked {
                format!(
                    "has left a connection unacknowledged for over {} ms (heartbeat_timeout): replacing it",
                    bound.map_or(0, |b| b.as_millis())
                )
            } else {
                return None;
            };
            Some((g, s, p.id.clone(), what))
        });
        let Some((g, s, id, what)) = found else {
            return;
        };
        self.violations.record(Violation::UnreadChannel, &id, what);
        self.recycle(g, s, id, Why::UnreadChannel).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(requests: Option<u64>, jitter: u64) -> Options {
        Options::new()
            .with_max_requests(requests)
            .with_max_requests_jitter(jitter)
    }

    #[test]
    fn no_limits_by_default() {
        let limits = Limits::draw(&Options::new(), Instant::now());
        assert_eq!(limits, Limits::default());
        assert_eq!(limits.due(u64::MAX, Instant::now()), None);
    }

    #[test]
    fn requests_limit_with_jitter_stays_in_range_and_spreads() {
        let now = Instant::now();
        let drawn: Vec<u64> = (0..200)
            .filter_map(|_| Limits::draw(&options(Some(1000), 100), now).requests)
            .collect();
        assert_eq!(drawn.len(), 200);
        assert!(drawn.iter().all(|n| (1000..=1100).contains(n)), "{drawn:?}");
        let distinct: std::collections::BTreeSet<_> = drawn.iter().collect();
        // 200 draws over 101 values: all equal would mean no jitter at all.
        assert!(distinct.len() > 20, "{distinct:?}");
        assert_eq!(
            Limits::draw(&options(Some(1000), 0), now).requests,
            Some(1000)
        );
    }

    #[test]
    fn due_by_requests_then_by_lifetime() {
        let start = Instant::now();
        let limits = Limits {
            requests: Some(10),
            until: Some(start + Duration::from_secs(60)),
        };
        assert_eq!(limits.due(9, start), None);
        assert_eq!(limits.due(10, start), Some(Why::MaxRequests));
        assert_eq!(
            limits.due(0, start + Duration::from_secs(59)),
            None,
            "not before its lifetime"
        );
        assert_eq!(
            limits.due(0, start + Duration::from_secs(60)),
            Some(Why::MaxLifetime)
        );
    }

    #[test]
    fn lifetime_jitter_stays_in_range() {
        let start = Instant::now();
        let o = Options::new()
            .with_max_lifetime(Some(Duration::from_secs(60)))
            .with_max_lifetime_jitter(Duration::from_secs(10));
        for _ in 0..100 {
            let until = Limits::draw(&o, start).until.unwrap();
            let after = until - start;
            assert!(
                after >= Duration::from_secs(60) && after <= Duration::from_secs(70),
                "{after:?}"
            );
        }
    }
}
