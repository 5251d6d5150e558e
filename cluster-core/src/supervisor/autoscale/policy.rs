//! The autoscaler's decisions for one group: a state machine fed with the group's figures
//! (CPU, event-loop lag, open connections of its ready workers) at each sample and with the
//! time, so that its rules are tested without processes or sleeps.
//!
//! The rules, in the order [`Policy::observe`] applies them:
//! - a size outside `min..=max` (the operator scaled by hand) is brought back to the nearest
//!   bound, once the cooldown is over;
//! - after any change of size, the figures are ignored for `cooldown`: a new worker is
//!   starting and the load has not moved yet, so they describe the old size;
//! - up: when the *average* over `up_window` of any signal is above its threshold, the group
//!   grows to the size that brings that average under the threshold (as Kubernetes' HPA does:
//!   `ceil(size × average / threshold)`), at least one more worker and at most twice as many;
//!   a saturated group then reaches its size in a few steps rather than one per window;
//! - down: when *every* sample over the longer `down_window` shows a load that one worker
//!   less would carry at under half of each threshold ([`DOWN_FRACTION`]), one worker goes.
//!   The gap between the two thresholds is the hysteresis: the size that scaling down
//!   leaves is never one that scales up again at the same load.
//!
//! While the group is changing for another reason (a reload, a recycle, a worker starting),
//! the supervisor calls [`Policy::hold`] instead, which forgets the windows: a decision is
//! only ever made on figures of a settled group.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Scale down only when one worker less would run at under this share of each threshold.
pub(crate) const DOWN_FRACTION: f64 = 0.5;

/// The autoscaler's options for one group.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Settings {
    pub(crate) min: usize,
    pub(crate) max: usize,
    /// CPU, in cores, that one worker may use on average; `None`: not a signal.
    pub(crate) up_cpu: Option<f64>,
    /// The workers' average event-loop lag above which the group grows.
    pub(crate) up_lag: Option<Duration>,
    /// Open connections per worker above which the group grows.
    pub(crate) up_connections: Option<u64>,
    pub(crate) up_window: Duration,
    pub(crate) down_window: Duration,
    pub(crate) cooldown: Duration,
}

/// The group's figures at one sample, over its ready workers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Sample {
    /// CPU used by the group's workers since the last sample, in cores, summed.
    pub(crate) cpu: f64,
    /// Their event-loop lag, averaged.
    pub(crate) lag: Duration,
    /// Their open connections, summed.
    pub(crate) connections: u64,
}

/// A change of the group's size, with the figures that caused it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Decision {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) reason: String,
}

impl Decision {
    /// `up` or `down`: the `direction` label of `cluster_autoscale_decisions_total`.
    pub(crate) fn direction(&self) -> &'static str {
        if self.to > self.from { "up" } else { "down" }
    }
}

/// One group's autoscaler.
#[derive(Debug)]
pub(crate) struct Policy {
    settings: Settings,
    /// The size the last call saw: a different one was changed by someone else.
    size: Option<usize>,
    /// Samples since the windows began, oldest first, none older than the longer window.
    samples: VecDeque<(Instant, Sample)>,
    /// When the current windows began: their first sample.
    since: Option<Instant>,
    /// No sample counts before then.
    cooldown_until: Option<Instant>,
}

impl Policy {
    pub(crate) fn new(settings: Settings) -> Self {
        Policy {
            settings,
            size: None,
            samples: VecDeque::new(),
            since: None,
            cooldown_until: None,
        }
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The group is changing (a reload, a recycle, a worker not ready yet): its figures say
    /// nothing about its size, so the windows start again once it has settled.
    pub(crate) fn hold(&mut self) {
        self.samples.clear();
        self.since = None;
    }

    /// Takes the group's figures at `now`, with `size` workers; says whether to change it.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        size: usize,
        sample: Sample,
    ) -> Option<Decision> {
        if self.size.is_some_and(|seen| seen != size) {
            // Scaled by hand: the figures were of another size.
            self.restart_windows(now);
        }
        self.size = Some(size);
        if self.cooldown_until.is_some_and(|until| now < until) {
            return None;
        }
        let s = &self.settings;
        let bounded = size.clamp(s.min, s.max);
        if bounded != size {
            let reason = format!("outside autoscale {}..{}", s.min, s.max);
            return Some(self.decided(now, size, bounded, reason));
        }
        self.samples.push_back((now, sample));
        self.since.get_or_insert(now);
        let longest = s.up_window.max(s.down_window);
        while self
            .samples
            .front()
            .is_some_and(|&(at, _)| at + longest < now)
        {
            self.samples.pop_front();
        }
        if let Some((to, reason)) = self.up(now, size) {
            return Some(self.decided(now, size, to, reason));
        }
        if let Some(reason) = self.down(now, size) {
            return Some(self.decided(now, size, size - 1, reason));
        }
        None
    }

    fn decided(&mut self, now: Instant, from: usize, to: usize, reason: String) -> Decision {
        self.size = Some(to);
        self.restart_windows(now);
        Decision { from, to, reason }
    }

    fn restart_windows(&mut self, now: Instant) {
        self.hold();
        self.cooldown_until = Some(now + self.settings.cooldown);
    }

    /// Whether the samples cover `window` up to `now`.
    fn covers(&self, now: Instant, window: Duration) -> bool {
        self.since.is_some_and(|since| since + window <= now)
    }

    fn within(&self, now: Instant, window: Duration) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |(at, _)| *at + window >= now)
            .map(|(_, sample)| sample)
    }

    /// The size to grow to, and why, if the load over the up window calls for it.
    fn up(&self, now: Instant, size: usize) -> Option<(usize, String)> {
        let s = &self.settings;
        if size >= s.max || !self.covers(now, s.up_window) {
            return None;
        }
        let window = s.up_window;
        let count = self.within(now, window).count().max(1) as f64;
        let sum = self
            .within(now, window)
            .fold(Sample::default(), |a, b| Sample {
                cpu: a.cpu + b.cpu,
                lag: a.lag + b.lag,
                connections: a.connections + b.connections,
            });
        let cpu = sum.cpu / count;
        let lag = sum.lag.as_secs_f64() / count;
        let connections = sum.connections as f64 / count;
        let per = size as f64;
        let over = |value: f64, limit: f64| (value > limit).then_some(value / limit);
        let mut ratio: f64 = 0.0;
        let mut why = Vec::new();
        let over_window = duration_text(window);
        if let Some(r) = s.up_cpu.and_then(|up| over(cpu, up * per)) {
            ratio = ratio.max(r);
            let up = s.up_cpu.unwrap_or_default();
            why.push(format!(
                "cpu {cpu:.2} cores avg over {over_window} > {up:.2} x {size}"
            ));
        }
        if let Some(r) = s.up_lag.and_then(|up| over(lag, up.as_secs_f64())) {
            ratio = ratio.max(r);
            let up = s.up_lag.unwrap_or_default();
            why.push(format!(
                "event-loop lag {:.0} ms avg over {over_window} > {} ms",
                lag * 1e3,
                up.as_millis()
            ));
        }
        if let Some(r) = s
            .up_connections
            .and_then(|up| over(connections, up as f64 * per))
        {
            ratio = ratio.max(r);
            let up = s.up_connections.unwrap_or_default();
            why.push(format!(
                "{connections:.0} connections avg over {over_window} > {up} x {size}"
            ));
        }
        if why.is_empty() {
            return None;
        }
        let wanted = (per * ratio).ceil() as usize;
        let to = wanted.clamp(size + 1, size.saturating_mul(2)).min(s.max);
        Some((to, why.join(", ")))
    }

    /// Why to remove one worker, if every sample over the down window was quiet enough.
    fn down(&self, now: Instant, size: usize) -> Option<String> {
        let s = &self.settings;
        if size <= s.min || !self.covers(now, s.down_window) {
            return None;
        }
        let window = s.down_window;
        let fewer = (size - 1) as f64;
        let peak = self
            .within(now, window)
            .fold(Sample::default(), |a, b| Sample {
                cpu: a.cpu.max(b.cpu),
                lag: a.lag.max(b.lag),
                connections: a.connections.max(b.connections),
            });
        let mut why = Vec::new();
        if let Some(up) = s.up_cpu {
            let bound = up * DOWN_FRACTION * fewer;
            if peak.cpu >= bound {
                return None;
            }
            why.push(format!(
                "cpu at most {:.2} cores < {DOWN_FRACTION} x {up:.2} x {}",
                peak.cpu,
                size - 1
            ));
        }
        if let Some(up) = s.up_lag {
            let bound = up.mul_f64(DOWN_FRACTION);
            if peak.lag >= bound {
                return None;
            }
            why.push(format!(
                "event-loop lag at most {} ms < {} ms",
                peak.lag.as_millis(),
                bound.as_millis()
            ));
        }
        if let Some(up) = s.up_connections {
            let bound = up as f64 * DOWN_FRACTION * fewer;
            if peak.connections as f64 >= bound {
                return None;
            }
            why.push(format!(
                "{} connections at most < {DOWN_FRACTION} x {up} x {}",
                peak.connections,
                size - 1
            ));
        }
        if why.is_empty() {
            // No signal at all (the options' check refuses this): nothing says it is quiet.
            return None;
        }
        Some(format!(
            "quiet for {}: {}",
            duration_text(window),
            why.join(", ")
        ))
    }
}

fn duration_text(d: Duration) -> String {
    crate::options::duration_text(&d)
}

#[cfg(test)]
mod tests;
