//! The rule of each option on its own value, named in the table (`check`): run by
//! [`Options::validate`](super::Options::validate) before any worker starts, and by the text
//! parsers, so that `#[cluster::main]` refuses at compile time what the master would refuse at
//! start-up. Each returns the reason: what is wrong and what would be accepted.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::parse::ParseError;
use super::{Autoscale, Backoff, Count, signal};

/// The result of a rule: the reason when the value is refused.
pub(super) type Checked = Result<(), String>;

/// The longest duration accepted for any option. The engine adds these durations to
/// `Instant`s, which panics on overflow; a year is far beyond any sensible timeout.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

pub(super) fn not_huge(value: &Duration) -> Checked {
    if *value > MAX_DURATION {
        return Err(format!(
            "{} is too long; use at most 365 days",
            super::parse::duration_text(value)
        ));
    }
    Ok(())
}

/// A positive duration of at most a year; `zero` says why zero cannot work.
fn positive(value: &Duration, zero: &str) -> Checked {
    if value.is_zero() {
        return Err(zero.to_owned());
    }
    not_huge(value)
}

pub(super) fn count(count: &Count) -> Checked {
    if *count == Count::Fixed(0) {
        return Err(
            "0 workers would run nothing; use at least 1, or `cpus` (`count_cpus()`) for one per CPU"
                .to_owned(),
        );
    }
    Ok(())
}

pub(super) fn max_restarts_interval(value: &Duration) -> Checked {
    positive(
        value,
        "zero would never count two exits together, so the limit could never trigger; use a positive duration such as \"10s\"",
    )
}

pub(super) fn shutdown_signals(signals: &[Signal]) -> Result<(), ParseError> {
    if signals.is_empty() {
        return Err(ParseError::new(
            "no shutdown signal, so the cluster could only be stopped with SIGKILL; list at least one, e.g. SIGINT and SIGTERM",
        ));
    }
    signal::check_list(signals)
}

pub(super) fn reload_signals(signals: &[Signal]) -> Result<(), ParseError> {
    signal::check_list(signals)
}

pub(super) fn reload_parallelism(slots: &usize) -> Checked {
    if *slots == 0 {
        return Err(
            "0 slots replaced at once would never finish a rolling reload; use at least 1"
                .to_owned(),
        );
    }
    Ok(())
}

/// The most lines `log_lines` may keep per slot: with their 1 KiB each, 100 MiB a slot.
const MAX_LOG_LINES: usize = 100_000;

pub(super) fn log_lines(lines: &usize) -> Checked {
    if *lines > MAX_LOG_LINES {
        return Err(format!(
            "{lines} lines per slot could hold {} MiB of each worker's output in the master; use at most {MAX_LOG_LINES} (`clusterctl logs` is for the last lines, a log file for the rest), or 0 to keep none",
            lines / 1024
        ));
    }
    Ok(())
}

pub(super) fn backoff(backoff: &Backoff) -> Checked {
    if !backoff.factor.is_finite() || backoff.factor < 1.0 {
        return Err(format!(
            "factor {} is invalid; use a finite factor >= 1.0 (1.0 keeps the delay constant)",
            backoff.factor
        ));
    }
    if backoff.cap < backoff.base {
        return Err(format!(
            "cap {:?} is shorter than base {:?}; use a cap >= base",
            backoff.cap, backoff.base
        ));
    }
    if backoff.reset_after.is_zero() {
        return Err(
            "reset_after is zero, so no failure streak could ever build up; use a positive duration such as 10s"
                .to_owned(),
        );
    }
    for (field, value) in [("cap", backoff.cap), ("reset_after", backoff.reset_after)] {
        not_huge(&value).map_err(|why| format!("{field} {why}"))?;
    }
    Ok(())
}

pub(super) fn ready_timeout(value: &Duration) -> Checked {
    positive(
        value,
        "zero leaves a worker no time to report ready; use a positive duration such as \"30s\"",
    )
}

pub(super) fn upgrade_timeout(value: &Duration) -> Checked {
    positive(
        value,
        "zero leaves a new master no time to start its workers; use a positive duration such as \"60s\"",
    )
}

pub(super) fn heartbeat_interval(value: &Duration) -> Checked {
    positive(
        value,
        "zero would have workers report without pause; use a positive duration such as \"1s\"",
    )
}

pub(super) fn heartbeat_timeout(value: &Option<Duration>) -> Checked {
    match value {
        Some(timeout) => positive(
            timeout,
            "zero would find every worker hung; use a duration longer than `heartbeat_interval`, or \"off\" to turn the watchdog off",
        ),
        None => Ok(()),
    }
}

pub(super) fn max_memory(bytes: &Option<u64>) -> Checked {
    if *bytes == Some(0) {
        return Err(
            "0 bytes would replace every worker as soon as it is sampled; give a limit such as \"512MiB\", or \"off\""
                .to_owned(),
        );
    }
    Ok(())
}

pub(super) fn memory_samples(samples: &u32) -> Checked {
    if *samples == 0 {
        return Err(
            "0 consecutive samples over `max_memory` would replace a worker without any sample; use at least 1"
                .to_owned(),
        );
    }
    Ok(())
}

pub(super) fn max_requests(requests: &Option<u64>) -> Checked {
    if *requests == Some(0) {
        return Err(
            "0 requests would recycle every worker as soon as it is ready; give a count such as 10000, or \"off\""
                .to_owned(),
        );
    }
    Ok(())
}

pub(super) fn max_lifetime(value: &Option<Duration>) -> Checked {
    match value {
        Some(lifetime) => positive(
            lifetime,
            "zero would recycle every worker as soon as it is ready; give a duration such as \"1h\", or \"off\"",
        ),
        None => Ok(()),
    }
}

pub(super) fn sample_interval(value: &Duration) -> Checked {
    positive(
        value,
        "zero would read /proc without pause; use a positive duration such as \"1s\"",
    )
}

/// The timeout must be longer than the interval, or every worker would look hung.
#[doc(hidden)]
pub fn heartbeat(interval: Duration, timeout: Option<Duration>) -> Checked {
    match timeout {
        Some(timeout) if timeout <= interval => Err(format!(
            "{} is not longer than `heartbeat_interval` ({}), so every worker would look hung; use a longer timeout, or \"off\" to turn the watchdog off",
            super::parse::duration_text(&timeout),
            super::parse::duration_text(&interval),
        )),
        _ => Ok(()),
    }
}

/// The store's limits (keys, bytes, subscriptions, queue): 0 would refuse everything.
pub(super) fn store_limit(value: &u64) -> Checked {
    if *value == 0 {
        return Err(
            "0 would make the master's store refuse every write; use at least 1".to_owned(),
        );
    }
    Ok(())
}

pub(super) fn store_snapshot_interval(value: &Option<Duration>) -> Checked {
    match value {
        Some(interval) => positive(
            interval,
            "0 would save the store without pause; give a duration such as \"1m\", or \"off\" to save only when the cluster stops",
        ),
        None => Ok(()),
    }
}

pub(super) fn autoscale(range: &Option<Autoscale>) -> Checked {
    range.as_ref().map_or(Ok(()), Autoscale::check)
}

pub(super) fn autoscale_up_cpu(percent: &Option<u32>) -> Checked {
    if *percent == Some(0) {
        return Err(
            "0% of a core is exceeded by an idle worker, so the group would always grow; use a percentage such as 80, or `off`"
                .to_owned(),
        );
    }
    Ok(())
}

pub(super) fn autoscale_up_lag(lag: &Option<Duration>) -> Checked {
    lag.as_ref().map_or(Ok(()), |lag| {
        positive(
            lag,
            "a lag of zero is exceeded by any heartbeat, so the group would always grow; use a duration such as \"100ms\", or `off`",
        )
    })
}

pub(super) fn autoscale_up_connections(connections: &Option<u64>) -> Checked {
    if *connections == Some(0) {
        return Err(
            "0 connections per worker is exceeded by the first client, so the group would always grow; use a number such as 100, or `off`"
                .to_owned(),
        );
    }
    Ok(())
}

pub(super) fn autoscale_window(window: &Duration) -> Checked {
    positive(
        window,
        "a window of zero would decide on a single sample; use a duration such as \"10s\"",
    )
}

/// Autoscaling needs a signal to grow on: with every threshold `off`, a group would only
/// ever shrink.
pub(super) fn autoscale_signals(
    cpu: Option<u32>,
    lag: Option<Duration>,
    connections: Option<u64>,
) -> Checked {
    if cpu.is_none() && lag.is_none() && connections.is_none() {
        return Err(
            "autoscale is on but autoscale_up_cpu, autoscale_up_lag and autoscale_up_connections are all off, so the group could never grow; set at least one"
                .to_owned(),
        );
    }
    Ok(())
}
