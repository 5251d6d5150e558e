//! Cluster and group options, their defaults, their text forms and their validation.
//!
//! Every option of [`Options`] is one entry of the table in table.rs, from which come the
//! struct, its defaults, the `with_*` setters and the getters, each option's rule, the text
//! parsers and [`OPTIONS`], the list that the README, the tests and `#[cluster::main]` read.
//! The defaults are those of the Node `manage_cluster` helper this crate replaces: two
//! workers, at most 3 restarts within 10 s, a 5 s grace period, shutdown on `SIGINT` and
//! `SIGTERM`. Nothing here starts a process: [`Options::validate`] runs before any worker is
//! forked, so that a typo fails at start-up with a message that says what would have been
//! accepted.

mod autoscale;
mod check;
mod config;
pub mod control_path;
mod group;
mod parse;
mod privileges;
mod restart;
mod signal;
mod spec;
mod sticky;
mod table;
#[cfg(test)]
mod tests;
mod token;
mod value;

use std::time::Duration;

use crate::Error;

pub use autoscale::Autoscale;
pub use config::{
    CONFIG_VAR, OptionSource, RELOADABLE, Reloaded, Resolved, Source, WEB_CONCURRENCY,
};
pub use control_path::{ClusterName, ControlPath};
pub use group::GroupOptions;
/// The signal type used throughout the public API (re-exported from `nix`).
pub use nix::sys::signal::Signal;
pub use parse::{ParseError, bytes_text, duration_text, parse_bytes, parse_duration};
pub use privileges::{Account, CpuAffinity, EnvAllow, Limit, Nice, Rlimit, Rlimits, Umask};
pub use restart::{Backoff, RestartMode, RestartPolicy};
pub use signal::{in_both_lists, parse_signal};
pub use spec::OptionSpec;
pub use sticky::KeyName;
pub use table::{OPTIONS, Options};
pub use token::StatusToken;
pub use value::OptionValue;

pub use crate::protocol::Balance;

#[doc(hidden)]
pub use check::heartbeat as heartbeat_conflict;

/// How many workers to run.
///
/// # Examples
///
/// ```
/// use cluster_core::Count;
///
/// assert_eq!(Count::default(), Count::Fixed(2));
/// assert_eq!(Count::from(4).resolve(), 4);
/// assert!(Count::Cpus.resolve() >= 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Count {
    /// Exactly this many workers. Zero is rejected by validation.
    Fixed(usize),
    /// One worker per CPU available to this process, at least one: the CPUs of its affinity
    /// mask (`taskset`, a cpuset), capped by its cgroup's CPU quota in whole cores, rounded
    /// down (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` over `cpu.cfs_period_us`, the
    /// smallest up the cgroup's path). A container limited to 1.5 CPUs runs 1 worker, not
    /// one per CPU of the node. This is [`std::thread::available_parallelism`], read when
    /// the master starts the group and when a reload applies a changed `count`
    /// (`tests/cpu_quota.rs` runs a cluster under a quota of one core).
    Cpus,
}

impl Count {
    /// The number of workers this count stands for.
    ///
    /// [`Count::Cpus`] falls back to 1 when the parallelism cannot be determined, so that a
    /// restricted container still runs a worker.
    #[must_use]
    pub fn resolve(&self) -> usize {
        match *self {
            Count::Fixed(n) => n,
            Count::Cpus => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl Default for Count {
    /// Two workers, as in the origin.
    fn default() -> Self {
        Count::Fixed(2)
    }
}

impl From<usize> for Count {
    fn from(n: usize) -> Self {
        Count::Fixed(n)
    }
}

impl Options {
    /// The defaults (see [`OPTIONS`]).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// One worker per available CPU: `with_count(Count::Cpus)`.
    #[must_use]
    pub fn with_count_cpus(self) -> Self {
        self.with_count(Count::Cpus)
    }

    /// [`Options::with_grace`] in milliseconds, as the origin took it.
    #[must_use]
    pub fn with_grace_ms(self, ms: u64) -> Self {
        self.with_grace(Duration::from_millis(ms))
    }

    /// [`Options::with_max_restarts_interval`] in milliseconds, as the origin took it.
    #[must_use]
    pub fn with_max_restarts_interval_ms(self, ms: u64) -> Self {
        self.with_max_restarts_interval(Duration::from_millis(ms))
    }

    /// [`Options::with_ready_timeout`] in milliseconds.
    #[must_use]
    pub fn with_ready_timeout_ms(self, ms: u64) -> Self {
        self.with_ready_timeout(Duration::from_millis(ms))
    }

    /// Replaces the whole restart policy: `max_restarts`, `max_restarts_interval`,
    /// `restart_mode` and `backoff` at once.
    #[must_use]
    pub fn with_restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// The restart policy the options make up; groups without their own use it.
    #[must_use]
    pub fn restart(&self) -> &RestartPolicy {
        &self.restart
    }

    /// Sets the option named `key` from text, as a configuration file or an environment
    /// variable writes it: `set_from_str("grace", "3s")`, `set_from_str("signals",
    /// "INT, TERM")`, `set_from_str("max_memory", "512MiB")`. The value must pass the option's
    /// own rule (see [`OPTIONS`] for what each accepts); the rules between options are
    /// checked by [`Options::validate`].
    ///
    /// # Errors
    ///
    /// an error of kind [`InvalidOption`](crate::ErrorKind::InvalidOption) naming the option, with what was wrong and what would be
    /// accepted, for an unknown key or a bad value; the options are then unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use cluster_core::{Count, Options};
    ///
    /// let mut options = Options::new();
    /// options.set_from_str("count", "cpus")?;
    /// options.set_from_str("heartbeat_timeout", "off")?;
    /// assert_eq!(options.count(), Count::Cpus);
    /// assert_eq!(options.heartbeat_timeout(), None);
    /// assert!(options.set_from_str("grace", "soon").is_err());
    /// # Ok::<(), cluster_core::Error>(())
    /// ```
    pub fn set_from_str(&mut self, key: &str, text: &str) -> Result<(), Error> {
        match OptionSpec::find(key) {
            Some(spec) => spec.set(self, text),
            None => Err(Error::invalid_option(
                "unknown",
                format!(
                    "no option is named {key:?}; the options are: {}",
                    OPTIONS
                        .iter()
                        .map(OptionSpec::name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// Checks every option; the master calls this before forking anything.
    ///
    /// Each option's own rule (see [`OPTIONS`]): among them a count of 0; a zero
    /// `max_restarts_interval`, `ready_timeout`, `heartbeat_interval` or `sample_interval`; a
    /// duration over a year; an `accept_coalescing` over 100 ms; a bad [`Backoff`]; no
    /// shutdown signal; a signal that cannot serve (`SIGKILL`, `SIGSTOP`, the synchronous
    /// faults `SIGILL`, `SIGFPE`, `SIGSEGV`, `SIGBUS`, `SIGTRAP`, and `SIGCHLD`, `SIGPIPE`) or
    /// one listed twice; a `max_memory` of 0 bytes. Then the rules between options: a signal
    /// both in `signals` and `reload_signals`, a `heartbeat_timeout` not longer than the
    /// `heartbeat_interval`.
    ///
    /// # Errors
    ///
    /// The first problem found, as an error of kind [`InvalidOption`](crate::ErrorKind::InvalidOption) naming the option as the builder
    /// spells it, with a reason that says what would be accepted.
    pub fn validate(&self) -> Result<(), Error> {
        for spec in OPTIONS {
            spec.check(self)?;
        }
        check::heartbeat(self.heartbeat_interval, self.heartbeat_timeout)
            .map_err(|reason| Error::invalid_option("heartbeat_timeout", reason))?;
        if self.autoscale.is_some() {
            self.check_autoscale_signals()?;
        }
        if self.balance == Balance::StickyKey
            && self.sticky_cookie.is_none()
            && self.sticky_header.is_none()
            && !self.sticky_proxy
        {
            return Err(Error::invalid_option(
                "balance",
                "sticky-key needs where the key is: set sticky_cookie, sticky_header or sticky_proxy (or use sticky, which routes by the client's IP)".to_owned(),
            ));
        }
        if let Some(&signal) = self
            .reload_signals
            .iter()
            .find(|s| self.signals.contains(s))
        {
            return Err(Error::invalid_option(
                "reload_signals",
                in_both_lists(signal, "a shutdown signal in `signals`"),
            ));
        }
        Ok(())
    }

    /// With a group autoscaled: at least one signal to grow on.
    pub(crate) fn check_autoscale_signals(&self) -> Result<(), Error> {
        check::autoscale_signals(
            self.autoscale_up_cpu,
            self.autoscale_up_lag,
            self.autoscale_up_connections,
        )
        .map_err(|reason| Error::invalid_option("autoscale", reason))
    }
}
