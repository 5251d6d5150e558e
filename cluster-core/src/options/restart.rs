//! When crashed workers are restarted, and how fast: [`RestartMode`], [`Backoff`] and the
//! [`RestartPolicy`] that holds them with the restart limit.
//!
//! The cluster's policy is part of [`Options`](super::Options) (its four values are options of
//! the table); a group may carry a policy of its own.

use std::time::Duration;

use super::check;
use crate::Error;

/// When a worker that exited on its own is restarted (the restart types of Erlang/OTP).
///
/// Exits the master caused itself (shutdown, reload, scale-down) are never restarted by the
/// restart policy, whatever the mode. As text: `permanent`, `transient` or `temporary`.
///
/// # Examples
///
/// ```
/// use cluster_core::RestartMode;
///
/// assert!(RestartMode::Permanent.restarts_after(false));
/// assert!(RestartMode::Transient.restarts_after(true));
/// assert!(!RestartMode::Transient.restarts_after(false));
/// assert!(!RestartMode::Temporary.restarts_after(true));
/// assert_eq!("transient".parse(), Ok(RestartMode::Transient));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RestartMode {
    /// Always restart, after a failure and after a clean exit.
    #[default]
    Permanent,
    /// Restart only after a failure (non-zero exit code, killed by a signal, or the worker
    /// function returned an error); a clean exit (code 0, the worker returned `Ok`) leaves the
    /// slot empty.
    Transient,
    /// Never restart.
    Temporary,
}

impl RestartMode {
    /// Whether a worker that exited on its own is restarted; `failure` is true for a non-zero
    /// exit code, a death by signal, or a worker function that returned an error.
    #[must_use]
    pub fn restarts_after(&self, failure: bool) -> bool {
        match self {
            RestartMode::Permanent => true,
            RestartMode::Transient => failure,
            RestartMode::Temporary => false,
        }
    }
}

/// The delay before restarting a worker that keeps failing.
///
/// The first failure after a stable period restarts at once; each further consecutive failure
/// waits `base`, `base * factor`, `base * factor²`, ... up to `cap`. The streak is forgotten once
/// a worker has stayed up for `reset_after`. As text, the fields to change from the defaults:
/// `"base=50ms, factor=3, cap=2s, reset_after=30s"`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cluster_core::Backoff;
///
/// let backoff = Backoff::new()
///     .with_base(Duration::from_millis(50))
///     .with_factor(3.0)
///     .with_cap(Duration::from_secs(2))
///     .with_reset_after(Duration::from_secs(30));
/// assert!(backoff.validate().is_ok());
/// assert_eq!(backoff.base(), Duration::from_millis(50));
/// assert_eq!("base=50ms, factor=3, cap=2s, reset_after=30s".parse(), Ok(backoff));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub(super) base: Duration,
    pub(super) factor: f64,
    pub(super) cap: Duration,
    pub(super) reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            factor: 2.0,
            cap: Duration::from_secs(5),
            reset_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The defaults: base 100 ms, factor 2, cap 5 s, reset after 10 s.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The delay before the second consecutive restart (the first is immediate). Zero makes
    /// every restart immediate.
    #[must_use]
    pub fn with_base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The growth of the delay from one consecutive failure to the next; 1.0 keeps it constant.
    #[must_use]
    pub fn with_factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// The longest delay.
    #[must_use]
    pub fn with_cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// How long a worker must stay up for its failure streak to be forgotten.
    #[must_use]
    pub fn with_reset_after(mut self, reset_after: Duration) -> Self {
        self.reset_after = reset_after;
        self
    }

    /// See [`Backoff::with_base`].
    #[must_use]
    pub fn base(&self) -> Duration {
        self.base
    }

    /// See [`Backoff::with_factor`].
    #[must_use]
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// See [`Backoff::with_cap`].
    #[must_use]
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// See [`Backoff::with_reset_after`].
    #[must_use]
    pub fn reset_after(&self) -> Duration {
        self.reset_after
    }

    /// Checks that the factor is finite and at least 1, that `cap >= base`, and that
    /// `reset_after` is not zero.
    ///
    /// # Errors
    ///
    /// an error of kind [`InvalidOption`](crate::ErrorKind::InvalidOption) with option `backoff`; the reason names the field.
    pub fn validate(&self) -> Result<(), Error> {
        check::backoff(self).map_err(|reason| Error::invalid_option("backoff", reason))
    }
}

/// How often workers may crash before the master gives up, and how restarts are paced.
///
/// Like an Erlang/OTP supervisor's intensity: if more than `max_restarts` unexpected exits
/// happen within any `max_restarts_interval`, the cluster is shut down with
/// an error of kind [`RestartLimit`](crate::ErrorKind::RestartLimit) instead of restarting in a loop. The defaults are those of the
/// options of the same names (see [`Options`](super::Options)).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cluster_core::{RestartMode, RestartPolicy};
///
/// let policy = RestartPolicy::new()
///     .with_max_restarts(5)
///     .with_max_restarts_interval_ms(30_000)
///     .with_mode(RestartMode::Transient);
/// assert_eq!(policy.max_restarts_interval(), Duration::from_secs(30));
/// assert!(policy.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    pub(super) max_restarts: u32,
    pub(super) max_restarts_interval: Duration,
    pub(super) backoff: Backoff,
    pub(super) mode: RestartMode,
}

impl RestartPolicy {
    /// A start for [`Options`](super::Options)' policy, whose every field is an option of the
    /// table that sets it; never in force as it stands.
    pub(super) const UNSET: RestartPolicy = RestartPolicy {
        max_restarts: 0,
        max_restarts_interval: Duration::ZERO,
        backoff: Backoff {
            base: Duration::ZERO,
            factor: 1.0,
            cap: Duration::ZERO,
            reset_after: Duration::ZERO,
        },
        mode: RestartMode::Permanent,
    };
}

impl Default for RestartPolicy {
    /// The cluster's default policy: the defaults of the options table.
    fn default() -> Self {
        *super::Options::default().restart()
    }
}

impl RestartPolicy {
    /// The defaults: at most 3 restarts within 10 s, default [`Backoff`], [`RestartMode::Permanent`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many unexpected exits are tolerated within `max_restarts_interval`; one more gives
    /// up. Zero gives up at the first crash.
    #[must_use]
    pub fn with_max_restarts(mut self, max_restarts: u32) -> Self {
        self.max_restarts = max_restarts;
        self
    }

    /// The sliding window over which `max_restarts` is counted.
    #[must_use]
    pub fn with_max_restarts_interval(mut self, interval: Duration) -> Self {
        self.max_restarts_interval = interval;
        self
    }

    /// [`RestartPolicy::with_max_restarts_interval`] in milliseconds, as the origin took it.
    #[must_use]
    pub fn with_max_restarts_interval_ms(self, ms: u64) -> Self {
        self.with_max_restarts_interval(Duration::from_millis(ms))
    }

    /// The pacing of consecutive restarts of one worker slot.
    #[must_use]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Which exits are restarted.
    #[must_use]
    pub fn with_mode(mut self, mode: RestartMode) -> Self {
        self.mode = mode;
        self
    }

    /// See [`RestartPolicy::with_max_restarts`].
    #[must_use]
    pub fn max_restarts(&self) -> u32 {
        self.max_restarts
    }

    /// See [`RestartPolicy::with_max_restarts_interval`].
    #[must_use]
    pub fn max_restarts_interval(&self) -> Duration {
        self.max_restarts_interval
    }

    /// See [`RestartPolicy::with_backoff`].
    #[must_use]
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// See [`RestartPolicy::with_mode`].
    #[must_use]
    pub fn mode(&self) -> RestartMode {
        self.mode
    }

    /// Checks the interval (positive, at most a year) and the backoff, as the options of the
    /// same names are checked.
    ///
    /// # Errors
    ///
    /// an error of kind [`InvalidOption`](crate::ErrorKind::InvalidOption) with option `max_restarts_interval` or `backoff`.
    pub fn validate(&self) -> Result<(), Error> {
        check::max_restarts_interval(&self.max_restarts_interval)
            .map_err(|reason| Error::invalid_option("max_restarts_interval", reason))?;
        self.backoff.validate()
    }
}
