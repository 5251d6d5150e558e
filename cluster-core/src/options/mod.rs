//! Cluster and group options, their defaults and their validation.
//!
//! The defaults are those of the Node `manage_cluster` helper this crate replaces: two workers,
//! at most 3 restarts within 10 s, a 5 s grace period, shutdown on `SIGINT` and `SIGTERM`.
//! Nothing here starts a process: [`Options::validate`] runs before any worker is forked, so
//! that a typo fails at start-up with a message that says what would have been accepted.

use std::fmt;
use std::time::Duration;

use crate::Error;

/// The signal type used throughout the public API (re-exported from `nix`).
pub use nix::sys::signal::Signal;

pub use crate::protocol::Balance;

/// The longest duration accepted for any option. The engine adds these durations to
/// `Instant`s, which panics on overflow; a year is far beyond any sensible timeout.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Parses a signal name: `"SIGINT"`, `"INT"`, `"sigint"` and `"int"` all give
/// [`Signal::SIGINT`].
///
/// The name is matched case-insensitively, with or without the `SIG` prefix. Surrounding
/// whitespace is ignored, so values read from a config file or an environment variable work.
///
/// # Errors
///
/// [`Error::InvalidOption`] (option `signals`) naming the input when it is not a signal name
/// this platform knows.
///
/// # Examples
///
/// ```
/// use cluster_core::{parse_signal, Signal};
///
/// assert_eq!(parse_signal("SIGTERM").unwrap(), Signal::SIGTERM);
/// assert_eq!(parse_signal("hup").unwrap(), Signal::SIGHUP);
/// assert!(parse_signal("SIGNOPE").is_err());
/// ```
pub fn parse_signal(name: &str) -> Result<Signal, Error> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>().map_err(|_| Error::InvalidOption {
        option: "signals",
        reason: format!(
            "unknown signal name {name:?}; expected a name such as \"SIGTERM\", \"TERM\" or \"sigterm\""
        ),
    })
}

/// Why a signal cannot be used as a shutdown or reload signal, or `None` if it can.
fn unfit_signal(signal: Signal) -> Option<&'static str> {
    match signal {
        Signal::SIGKILL | Signal::SIGSTOP => Some("it cannot be caught or ignored by any process"),
        // A handler that merely records these and returns re-executes the faulting
        // instruction forever; tokio refuses to register them for that reason.
        Signal::SIGILL | Signal::SIGFPE | Signal::SIGSEGV | Signal::SIGBUS | Signal::SIGTRAP => {
            Some("it reports a synchronous fault (crash) and cannot be handled asynchronously")
        }
        Signal::SIGCHLD => Some(
            "the master receives it every time a worker exits, so it would stop the cluster at the first exit",
        ),
        Signal::SIGPIPE => Some(
            "it is raised by writes to a closed pipe or socket (the Rust runtime ignores it), not sent by operators",
        ),
        _ => None,
    }
}

/// Checks one signal list: every signal catchable and fit, none twice.
fn validate_signal_list(option: &'static str, signals: &[Signal]) -> Result<(), Error> {
    for (i, &signal) in signals.iter().enumerate() {
        if let Some(why) = unfit_signal(signal) {
            return Err(Error::InvalidOption {
                option,
                reason: format!(
                    "{signal} cannot be used: {why}; use signals such as SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 or SIGUSR2"
                ),
            });
        }
        if signals[..i].contains(&signal) {
            return Err(Error::InvalidOption {
                option,
                reason: format!("{signal} is listed twice; list each signal once"),
            });
        }
    }
    Ok(())
}

/// Rejects durations the engine could not add to an `Instant`.
/// The longest `accept_coalescing` window: beyond it the wait, not the work, would decide a
/// connection's latency.
const MAX_ACCEPT_COALESCING: Duration = Duration::from_millis(100);

fn validate_not_huge(option: &'static str, value: Duration) -> Result<(), Error> {
    if value > MAX_DURATION {
        return Err(Error::InvalidOption {
            option,
            reason: format!("{value:?} is too long; use at most 365 days"),
        });
    }
    Ok(())
}

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
    /// One worker per CPU available to this process (see
    /// [`std::thread::available_parallelism`]), at least one.
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

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::Fixed(n) => write!(f, "{n}"),
            Count::Cpus => f.write_str("one per CPU"),
        }
    }
}

/// When a worker that exited on its own is restarted (the restart types of Erlang/OTP).
///
/// Exits the master caused itself (shutdown, reload, scale-down) are never restarted by the
/// restart policy, whatever the mode.
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
/// a worker has stayed up for `reset_after`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cluster_core::Backoff;
///
/// let backoff = Backoff::new()
///     .base(Duration::from_millis(50))
///     .factor(3.0)
///     .cap(Duration::from_secs(2))
///     .reset_after(Duration::from_secs(30));
/// assert!(backoff.validate().is_ok());
/// assert_eq!(backoff.get_base(), Duration::from_millis(50));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    factor: f64,
    cap: Duration,
    reset_after: Duration,
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
    pub fn base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The growth of the delay from one consecutive failure to the next; 1.0 keeps it constant.
    #[must_use]
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// The longest delay.
    #[must_use]
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// How long a worker must stay up for its failure streak to be forgotten.
    #[must_use]
    pub fn reset_after(mut self, reset_after: Duration) -> Self {
        self.reset_after = reset_after;
        self
    }

    /// See [`Backoff::base`].
    #[must_use]
    pub fn get_base(&self) -> Duration {
        self.base
    }

    /// See [`Backoff::factor`].
    #[must_use]
    pub fn get_factor(&self) -> f64 {
        self.factor
    }

    /// See [`Backoff::cap`].
    #[must_use]
    pub fn get_cap(&self) -> Duration {
        self.cap
    }

    /// See [`Backoff::reset_after`].
    #[must_use]
    pub fn get_reset_after(&self) -> Duration {
        self.reset_after
    }

    /// Checks that the factor is finite and at least 1, that `cap >= base`, and that
    /// `reset_after` is not zero.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] with option `backoff`; the reason names the field.
    pub fn validate(&self) -> Result<(), Error> {
        let err = |reason: String| {
            Err(Error::InvalidOption {
                option: "backoff",
                reason,
            })
        };
        if !self.factor.is_finite() || self.factor < 1.0 {
            return err(format!(
                "factor {} is invalid; use a finite factor >= 1.0 (1.0 keeps the delay constant)",
                self.factor
            ));
        }
        if self.cap < self.base {
            return err(format!(
                "cap {:?} is shorter than base {:?}; use a cap >= base",
                self.cap, self.base
            ));
        }
        if self.reset_after.is_zero() {
            return err(
                "reset_after is zero, so no failure streak could ever build up; use a positive duration such as 10 s"
                    .to_owned(),
            );
        }
        for (field, value) in [("cap", self.cap), ("reset_after", self.reset_after)] {
            if value > MAX_DURATION {
                return err(format!(
                    "{field} {value:?} is too long; use at most 365 days"
                ));
            }
        }
        Ok(())
    }
}

/// How often workers may crash before the master gives up, and how restarts are paced.
///
/// Like an Erlang/OTP supervisor's intensity: if more than `max_restarts` unexpected exits
/// happen within any `max_restarts_interval`, the cluster is shut down with
/// [`Error::RestartLimit`] instead of restarting in a loop.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cluster_core::{RestartMode, RestartPolicy};
///
/// let policy = RestartPolicy::new()
///     .max_restarts(5)
///     .max_restarts_interval_ms(30_000)
///     .mode(RestartMode::Transient);
/// assert_eq!(policy.get_max_restarts_interval(), Duration::from_secs(30));
/// assert!(policy.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    max_restarts: u32,
    max_restarts_interval: Duration,
    backoff: Backoff,
    mode: RestartMode,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 3,
            max_restarts_interval: Duration::from_secs(10),
            backoff: Backoff::default(),
            mode: RestartMode::default(),
        }
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
    pub fn max_restarts(mut self, max_restarts: u32) -> Self {
        self.max_restarts = max_restarts;
        self
    }

    /// The sliding window over which `max_restarts` is counted.
    #[must_use]
    pub fn max_restarts_interval(mut self, interval: Duration) -> Self {
        self.max_restarts_interval = interval;
        self
    }

    /// [`RestartPolicy::max_restarts_interval`] in milliseconds, as the origin took it.
    #[must_use]
    pub fn max_restarts_interval_ms(self, ms: u64) -> Self {
        self.max_restarts_interval(Duration::from_millis(ms))
    }

    /// The pacing of consecutive restarts of one worker slot.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Which exits are restarted.
    #[must_use]
    pub fn mode(mut self, mode: RestartMode) -> Self {
        self.mode = mode;
        self
    }

    /// See [`RestartPolicy::max_restarts`].
    #[must_use]
    pub fn get_max_restarts(&self) -> u32 {
        self.max_restarts
    }

    /// See [`RestartPolicy::max_restarts_interval`].
    #[must_use]
    pub fn get_max_restarts_interval(&self) -> Duration {
        self.max_restarts_interval
    }

    /// See [`RestartPolicy::backoff`].
    #[must_use]
    pub fn get_backoff(&self) -> Backoff {
        self.backoff
    }

    /// See [`RestartPolicy::mode`].
    #[must_use]
    pub fn get_mode(&self) -> RestartMode {
        self.mode
    }

    /// Checks the interval (positive, at most a year) and the backoff.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] with option `max_restarts_interval` or `backoff`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_restarts_interval.is_zero() {
            return Err(Error::InvalidOption {
                option: "max_restarts_interval",
                reason:
                    "zero would never count two exits together, so the limit could never trigger; \
                         use a positive duration such as 10 s"
                        .to_owned(),
            });
        }
        validate_not_huge("max_restarts_interval", self.max_restarts_interval)?;
        self.backoff.validate()
    }
}

/// Cluster-wide options.
///
/// Defaults: 2 workers, at most 3 restarts within 10 s, 5 s grace, shutdown on `SIGINT` and
/// `SIGTERM`, rolling reload on `SIGUSR2`, 30 s to report ready, worker output prefixed.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use cluster_core::{Options, Signal};
///
/// let options = Options::new()
///     .count(4)
///     .max_restarts(5)
///     .max_restarts_interval(Duration::from_secs(15))
///     .grace(Duration::from_secs(3))
///     .signals([Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP]);
/// options.validate()?;
/// assert_eq!(options.get_count().resolve(), 4);
///
/// // The origin's millisecond options.
/// let same = Options::new().grace_ms(3000).max_restarts_interval_ms(15_000);
/// assert_eq!(same.get_grace(), Duration::from_secs(3));
/// # Ok::<(), cluster_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    count: Count,
    restart: RestartPolicy,
    grace: Duration,
    signals: Vec<Signal>,
    reload_signals: Vec<Signal>,
    ready_timeout: Duration,
    worker_prefix_logs: bool,
    balance: Balance,
    accept_coalescing: Duration,
    reload_parallelism: usize,
    heartbeat_interval: Duration,
    heartbeat_timeout: Option<Duration>,
    max_memory: Option<u64>,
    memory_samples: u32,
    sample_interval: Duration,
    status_addr: Option<std::net::SocketAddr>,
    min_ready: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            count: Count::default(),
            restart: RestartPolicy::default(),
            grace: Duration::from_secs(5),
            signals: vec![Signal::SIGINT, Signal::SIGTERM],
            reload_signals: vec![Signal::SIGUSR2],
            ready_timeout: Duration::from_secs(30),
            worker_prefix_logs: true,
            balance: Balance::Shared,
            accept_coalescing: Duration::from_millis(1),
            reload_parallelism: 1,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Some(Duration::from_secs(30)),
            max_memory: None,
            memory_samples: 3,
            sample_interval: Duration::from_secs(1),
            status_addr: None,
            min_ready: 1,
        }
    }
}

impl Options {
    /// The defaults (see [`Options`]).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many workers to run: a number, or a [`Count`].
    #[must_use]
    pub fn count(mut self, count: impl Into<Count>) -> Self {
        self.count = count.into();
        self
    }

    /// One worker per available CPU.
    #[must_use]
    pub fn count_cpus(self) -> Self {
        self.count(Count::Cpus)
    }

    /// Replaces the whole restart policy.
    #[must_use]
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// See [`RestartPolicy::max_restarts`].
    #[must_use]
    pub fn max_restarts(mut self, max_restarts: u32) -> Self {
        self.restart = self.restart.max_restarts(max_restarts);
        self
    }

    /// See [`RestartPolicy::max_restarts_interval`].
    #[must_use]
    pub fn max_restarts_interval(mut self, interval: Duration) -> Self {
        self.restart = self.restart.max_restarts_interval(interval);
        self
    }

    /// [`Options::max_restarts_interval`] in milliseconds, as the origin took it.
    #[must_use]
    pub fn max_restarts_interval_ms(self, ms: u64) -> Self {
        self.max_restarts_interval(Duration::from_millis(ms))
    }

    /// See [`RestartPolicy::backoff`].
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.restart = self.restart.backoff(backoff);
        self
    }

    /// See [`RestartPolicy::mode`].
    #[must_use]
    pub fn restart_mode(mut self, mode: RestartMode) -> Self {
        self.restart = self.restart.mode(mode);
        self
    }

    /// How long workers get to finish after being asked to stop, before they are killed.
    ///
    /// Zero is accepted and means no grace: workers are killed at once.
    #[must_use]
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// [`Options::grace`] in milliseconds, as the origin took it.
    #[must_use]
    pub fn grace_ms(self, ms: u64) -> Self {
        self.grace(Duration::from_millis(ms))
    }

    /// The signals that make the master shut the cluster down gracefully.
    #[must_use]
    pub fn signals(mut self, signals: impl IntoIterator<Item = Signal>) -> Self {
        self.signals = signals.into_iter().collect();
        self
    }

    /// The signals that make the master replace its workers one by one (rolling reload).
    /// Empty disables reload by signal.
    #[must_use]
    pub fn reload_signals(mut self, signals: impl IntoIterator<Item = Signal>) -> Self {
        self.reload_signals = signals.into_iter().collect();
        self
    }

    /// How long a new worker has to report ready; one that does not is counted as a failure.
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// [`Options::ready_timeout`] in milliseconds.
    #[must_use]
    pub fn ready_timeout_ms(self, ms: u64) -> Self {
        self.ready_timeout(Duration::from_millis(ms))
    }

    /// Whether each line a worker writes is prefixed with its group and slot.
    #[must_use]
    pub fn worker_prefix_logs(mut self, prefix: bool) -> Self {
        self.worker_prefix_logs = prefix;
        self
    }

    /// See [`Options::count`].
    #[must_use]
    pub fn get_count(&self) -> Count {
        self.count
    }

    /// See [`Options::restart`].
    #[must_use]
    pub fn get_restart(&self) -> &RestartPolicy {
        &self.restart
    }

    /// See [`Options::max_restarts`].
    #[must_use]
    pub fn get_max_restarts(&self) -> u32 {
        self.restart.get_max_restarts()
    }

    /// See [`Options::max_restarts_interval`].
    #[must_use]
    pub fn get_max_restarts_interval(&self) -> Duration {
        self.restart.get_max_restarts_interval()
    }

    /// See [`Options::backoff`].
    #[must_use]
    pub fn get_backoff(&self) -> Backoff {
        self.restart.get_backoff()
    }

    /// See [`Options::restart_mode`].
    #[must_use]
    pub fn get_restart_mode(&self) -> RestartMode {
        self.restart.get_mode()
    }

    /// See [`Options::grace`].
    #[must_use]
    pub fn get_grace(&self) -> Duration {
        self.grace
    }

    /// See [`Options::signals`].
    #[must_use]
    pub fn get_signals(&self) -> &[Signal] {
        &self.signals
    }

    /// See [`Options::reload_signals`].
    #[must_use]
    pub fn get_reload_signals(&self) -> &[Signal] {
        &self.reload_signals
    }

    /// See [`Options::ready_timeout`].
    #[must_use]
    pub fn get_ready_timeout(&self) -> Duration {
        self.ready_timeout
    }

    /// How connections of the addresses workers `listen` on are spread over them (default
    /// [`Balance::Shared`]); a worker can override it per address with `listen_with`.
    #[must_use]
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }

    /// See [`Options::balance`].
    pub fn get_balance(&self) -> Balance {
        self.balance
    }

    /// With a policy where the master accepts (`RoundRobin`, `LeastConnections`, `Sticky`):
    /// while connections keep arriving, the master takes them from the kernel's queue in
    /// rounds at least this far apart (default 1 ms; zero turns it off). A connection that
    /// arrives after a quiet spell of this length is handed out at once, so an idle server
    /// adds no latency; under load each round hands every worker its share in one message,
    /// so the master and the workers wake once per round instead of once per connection.
    /// Rounds follow tokio's timer, whose resolution is 1 ms.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cluster_core::Options;
    ///
    /// let latency_first = Options::new().accept_coalescing(Duration::ZERO);
    /// assert!(latency_first.validate().is_ok());
    /// ```
    #[must_use]
    pub fn accept_coalescing(mut self, window: Duration) -> Self {
        self.accept_coalescing = window;
        self
    }

    /// See [`Options::accept_coalescing`].
    pub fn get_accept_coalescing(&self) -> Duration {
        self.accept_coalescing
    }

    /// How many slots a rolling reload replaces at once (default 1).
    #[must_use]
    pub fn reload_parallelism(mut self, slots: usize) -> Self {
        self.reload_parallelism = slots;
        self
    }

    /// See [`Options::reload_parallelism`].
    pub fn get_reload_parallelism(&self) -> usize {
        self.reload_parallelism
    }

    /// How often each worker's runtime reports that it is alive (default 1 s). The report
    /// comes from a task on the worker's own runtime, so a runtime stuck in a busy loop or a
    /// deadlock stops reporting.
    #[must_use]
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// See [`Options::heartbeat_interval`].
    pub fn get_heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// A worker whose runtime has not reported for this long is killed and restarted as
    /// hung, counted like a crash (default 30 s, like gunicorn's worker timeout; `None` turns
    /// the watchdog off).
    #[must_use]
    pub fn heartbeat_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.heartbeat_timeout = timeout;
        self
    }

    /// See [`Options::heartbeat_timeout`].
    pub fn get_heartbeat_timeout(&self) -> Option<Duration> {
        self.heartbeat_timeout
    }

    /// Replace a worker whose resident memory stays above `bytes` for
    /// [`Options::memory_samples`] consecutive samples (default: no limit). The replacement
    /// is started and ready before the old worker drains, never more than one slot at a time,
    /// and it never counts toward `max_restarts`.
    #[must_use]
    pub fn max_memory(mut self, bytes: Option<u64>) -> Self {
        self.max_memory = bytes;
        self
    }

    /// See [`Options::max_memory`].
    pub fn get_max_memory(&self) -> Option<u64> {
        self.max_memory
    }

    /// Consecutive samples over `max_memory` before a worker is replaced (default 3), so a
    /// short spike does not recycle it.
    #[must_use]
    pub fn memory_samples(mut self, samples: u32) -> Self {
        self.memory_samples = samples;
        self
    }

    /// See [`Options::memory_samples`].
    pub fn get_memory_samples(&self) -> u32 {
        self.memory_samples
    }

    /// How often the master reads each worker's memory and CPU from /proc (default 1 s).
    #[must_use]
    pub fn sample_interval(mut self, interval: Duration) -> Self {
        self.sample_interval = interval;
        self
    }

    /// See [`Options::sample_interval`].
    pub fn get_sample_interval(&self) -> Duration {
        self.sample_interval
    }

    /// Serve `/status`, `/metrics`, `/healthz` and `/readyz` from the master on this address
    /// (default: off).
    #[must_use]
    pub fn status_addr(mut self, addr: Option<std::net::SocketAddr>) -> Self {
        self.status_addr = addr;
        self
    }

    /// See [`Options::status_addr`].
    pub fn get_status_addr(&self) -> Option<std::net::SocketAddr> {
        self.status_addr
    }

    /// `/readyz` answers 200 when at least this many workers are ready (default 1).
    #[must_use]
    pub fn min_ready(mut self, workers: usize) -> Self {
        self.min_ready = workers;
        self
    }

    /// See [`Options::min_ready`].
    pub fn get_min_ready(&self) -> usize {
        self.min_ready
    }

    /// See [`Options::worker_prefix_logs`].
    #[must_use]
    pub fn get_worker_prefix_logs(&self) -> bool {
        self.worker_prefix_logs
    }

    /// Checks every option; the master calls this before forking anything.
    ///
    /// Rejected: a count of 0; a zero or over-long `max_restarts_interval`; a bad
    /// [`Backoff`]; an over-long `grace` (zero is fine: kill at once); no shutdown signal; a
    /// signal that cannot serve (`SIGKILL`, `SIGSTOP`, the synchronous faults `SIGILL`,
    /// `SIGFPE`, `SIGSEGV`, `SIGBUS`, `SIGTRAP`, and `SIGCHLD`, `SIGPIPE`); a signal listed
    /// twice, or both in `signals` and `reload_signals`; a zero or over-long `ready_timeout`.
    ///
    /// # Errors
    ///
    /// The first problem found, as [`Error::InvalidOption`] naming the option as the builder
    /// spells it, with a reason that says what would be accepted.
    pub fn validate(&self) -> Result<(), Error> {
        if self.heartbeat_interval.is_zero() {
            return Err(Error::InvalidOption {
                option: "heartbeat_interval",
                reason: "must be more than zero".into(),
            });
        }
        if let Some(timeout) = self.heartbeat_timeout {
            if timeout <= self.heartbeat_interval {
                return Err(Error::InvalidOption {
                    option: "heartbeat_timeout",
                    reason: format!(
                        "{} ms is not longer than heartbeat_interval ({} ms): every worker would look hung",
                        timeout.as_millis(),
                        self.heartbeat_interval.as_millis()
                    ),
                });
            }
        }
        if self.memory_samples == 0 {
            return Err(Error::InvalidOption {
                option: "memory_samples",
                reason: "must be at least 1".into(),
            });
        }
        if self.sample_interval.is_zero() {
            return Err(Error::InvalidOption {
                option: "sample_interval",
                reason: "must be more than zero".into(),
            });
        }
        if self.accept_coalescing > MAX_ACCEPT_COALESCING {
            return Err(Error::InvalidOption {
                option: "accept_coalescing",
                reason: format!(
                    "{:?} would hold new connections in the queue that long under load; use at \
                     most {MAX_ACCEPT_COALESCING:?} (or zero to hand each one out at once)",
                    self.accept_coalescing
                ),
            });
        }
        if self.reload_parallelism == 0 {
            return Err(Error::InvalidOption {
                option: "reload_parallelism",
                reason: "must be at least 1 (slots replaced at once during a rolling reload)"
                    .into(),
            });
        }
        validate_count("count", self.count, None)?;
        self.restart.validate()?;
        validate_not_huge("grace", self.grace)?;
        if self.signals.is_empty() {
            return Err(Error::InvalidOption {
                option: "signals",
                reason: "no shutdown signal, so the cluster could only be stopped with SIGKILL; \
                         list at least one, e.g. SIGINT and SIGTERM"
                    .to_owned(),
            });
        }
        validate_signal_list("signals", &self.signals)?;
        validate_signal_list("reload_signals", &self.reload_signals)?;
        if let Some(signal) = self
            .reload_signals
            .iter()
            .find(|s| self.signals.contains(s))
        {
            return Err(Error::InvalidOption {
                option: "reload_signals",
                reason: format!(
                    "{signal} is also a shutdown signal in `signals`; a signal can either stop or reload the cluster, not both"
                ),
            });
        }
        if self.ready_timeout.is_zero() {
            return Err(Error::InvalidOption {
                option: "ready_timeout",
                reason: "zero leaves a worker no time to report ready; use a positive duration such as 30 s"
                    .to_owned(),
            });
        }
        validate_not_huge("ready_timeout", self.ready_timeout)
    }
}

fn validate_count(option: &'static str, count: Count, group: Option<&str>) -> Result<(), Error> {
    if count == Count::Fixed(0) {
        let whose = group.map_or_else(String::new, |g| format!("group `{g}`: "));
        return Err(Error::InvalidOption {
            option,
            reason: format!("{whose}0 workers would run nothing; use at least 1, or count_cpus()"),
        });
    }
    Ok(())
}

/// Options of one group of workers: workers of a group run the same worker function under
/// their own name, count and environment.
///
/// # Examples
///
/// ```
/// use cluster_core::{GroupOptions, RestartMode, RestartPolicy};
///
/// let web = GroupOptions::new("web")
///     .count(3)
///     .env("PORT", "8080")
///     .restart(RestartPolicy::new().mode(RestartMode::Transient));
/// web.validate()?;
/// assert_eq!(web.get_name(), "web");
/// assert_eq!(web.get_env(), [("PORT".to_owned(), "8080".to_owned())]);
/// # Ok::<(), cluster_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GroupOptions {
    name: String,
    count: Count,
    env: Vec<(String, String)>,
    restart: Option<RestartPolicy>,
}

impl GroupOptions {
    /// A group with the given name, the default count (2), no extra environment, and the
    /// cluster's restart policy.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        GroupOptions {
            name: name.into(),
            count: Count::default(),
            env: Vec::new(),
            restart: None,
        }
    }

    /// How many workers this group runs.
    #[must_use]
    pub fn count(mut self, count: impl Into<Count>) -> Self {
        self.count = count.into();
        self
    }

    /// One worker per available CPU.
    #[must_use]
    pub fn count_cpus(self) -> Self {
        self.count(Count::Cpus)
    }

    /// Adds an environment variable to this group's workers; a later value for the same key
    /// replaces the earlier one.
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        let value = value.into();
        match self.env.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.env.push((key, value)),
        }
        self
    }

    /// A restart policy for this group instead of the cluster's.
    #[must_use]
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = Some(policy);
        self
    }

    /// See [`GroupOptions::new`].
    #[must_use]
    pub fn get_name(&self) -> &str {
        &self.name
    }

    /// See [`GroupOptions::count`].
    #[must_use]
    pub fn get_count(&self) -> Count {
        self.count
    }

    /// See [`GroupOptions::env`]; in insertion order.
    #[must_use]
    pub fn get_env(&self) -> &[(String, String)] {
        &self.env
    }

    /// This group's own policy; `None` means the cluster's.
    #[must_use]
    pub fn get_restart(&self) -> Option<&RestartPolicy> {
        self.restart.as_ref()
    }

    /// The policy that applies to this group: its own, or else `cluster`'s.
    #[must_use]
    pub fn effective_restart<'a>(&'a self, cluster: &'a Options) -> &'a RestartPolicy {
        self.restart.as_ref().unwrap_or(&cluster.restart)
    }

    /// Checks the name (non-empty, only `A-Z a-z 0-9 _ -`, since it appears in log prefixes
    /// and in the worker's environment), the count (at least 1), the environment keys and
    /// values, and the group's own restart policy if any.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] with option `name`, `count`, `env`, or one of the restart
    /// policy's options.
    pub fn validate(&self) -> Result<(), Error> {
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::InvalidOption {
                option: "name",
                reason: format!(
                    "group name {:?} is invalid; use a non-empty name made of A-Z, a-z, 0-9, `_` and `-`",
                    self.name
                ),
            });
        }
        validate_count("count", self.count, Some(&self.name))?;
        for (key, value) in &self.env {
            let reason = if key.is_empty() || key.contains('=') || key.contains('\0') {
                Some(format!(
                    "key {key:?} is not a valid variable name; use a non-empty name without `=` or NUL"
                ))
            } else if key.starts_with("CLUSTER_WORKER_") || key.starts_with("CLUSTER_IPC_") {
                // The master uses these to tell a worker who it is (see identity.rs).
                Some(format!(
                    "key {key:?} is reserved for the cluster itself; use another name"
                ))
            } else if value.contains('\0') {
                Some(format!(
                    "the value of {key:?} contains a NUL byte, which no environment can hold"
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(Error::InvalidOption {
                    option: "env",
                    reason: format!("group `{}`: {reason}", self.name),
                });
            }
        }
        match &self.restart {
            Some(policy) => policy.validate(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Signal::*;

    fn option_of(result: Result<(), Error>) -> (&'static str, String) {
        match result {
            Err(Error::InvalidOption { option, reason }) => (option, reason),
            other => panic!("expected InvalidOption, got {other:?}"),
        }
    }

    #[test]
    fn defaults_equal_the_origin() {
        let o = Options::new();
        assert_eq!(o.get_count(), Count::Fixed(2));
        assert_eq!(o.get_count().resolve(), 2);
        assert_eq!(o.get_max_restarts(), 3);
        assert_eq!(o.get_max_restarts_interval(), Duration::from_secs(10));
        assert_eq!(o.get_grace(), Duration::from_secs(5));
        assert_eq!(o.get_signals(), [SIGINT, SIGTERM]);
        assert_eq!(o.get_reload_signals(), [SIGUSR2]);
        assert_eq!(o.get_ready_timeout(), Duration::from_secs(30));
        assert!(o.get_worker_prefix_logs());
        assert_eq!(o.get_restart_mode(), RestartMode::Permanent);
        assert_eq!(o.get_backoff(), Backoff::new());
        assert_eq!(o, Options::default());
        assert!(o.validate().is_ok());
    }

    #[test]
    fn accept_coalescing_is_bounded() {
        assert_eq!(
            Options::new().get_accept_coalescing(),
            Duration::from_millis(1)
        );
        for ok in [Duration::ZERO, MAX_ACCEPT_COALESCING] {
            assert!(Options::new().accept_coalescing(ok).validate().is_ok());
        }
        let long = Options::new().accept_coalescing(Duration::from_secs(1));
        let (option, reason) = option_of(long.validate());
        assert_eq!(option, "accept_coalescing");
        assert!(reason.contains("at most 100ms"), "{reason}");
    }

    #[test]
    fn backoff_defaults() {
        let b = Backoff::default();
        assert_eq!(b.get_base(), Duration::from_millis(100));
        assert_eq!(b.get_factor(), 2.0);
        assert_eq!(b.get_cap(), Duration::from_secs(5));
        assert_eq!(b.get_reset_after(), Duration::from_secs(10));
        assert!(b.validate().is_ok());
    }

    #[test]
    fn builder_sets_everything() {
        let backoff = Backoff::new().base(Duration::from_millis(10)).factor(1.5);
        let o = Options::new()
            .count(4)
            .max_restarts(5)
            .max_restarts_interval(Duration::from_secs(15))
            .grace(Duration::from_secs(3))
            .signals([SIGINT, SIGTERM, SIGHUP])
            .reload_signals([SIGUSR1])
            .ready_timeout_ms(1500)
            .worker_prefix_logs(false)
            .backoff(backoff)
            .restart_mode(RestartMode::Transient);
        assert_eq!(o.get_count(), Count::Fixed(4));
        assert_eq!(o.get_max_restarts(), 5);
        assert_eq!(o.get_max_restarts_interval(), Duration::from_secs(15));
        assert_eq!(o.get_grace(), Duration::from_secs(3));
        assert_eq!(o.get_signals(), [SIGINT, SIGTERM, SIGHUP]);
        assert_eq!(o.get_reload_signals(), [SIGUSR1]);
        assert_eq!(o.get_ready_timeout(), Duration::from_millis(1500));
        assert!(!o.get_worker_prefix_logs());
        assert_eq!(o.get_backoff(), backoff);
        assert_eq!(o.get_restart_mode(), RestartMode::Transient);
        assert!(o.validate().is_ok());

        let ms = Options::new()
            .grace_ms(3000)
            .max_restarts_interval_ms(15_000);
        assert_eq!(ms.get_grace(), Duration::from_secs(3));
        assert_eq!(ms.get_max_restarts_interval(), Duration::from_secs(15));

        let policy = RestartPolicy::new()
            .max_restarts(0)
            .mode(RestartMode::Temporary);
        let o = Options::new().restart(policy).count_cpus();
        assert_eq!(o.get_restart(), &policy);
        assert_eq!(o.get_count(), Count::Cpus);
        assert!(
            o.validate().is_ok(),
            "max_restarts 0 means give up at the first crash"
        );
    }

    #[test]
    fn count_resolves() {
        assert_eq!(Count::from(7), Count::Fixed(7));
        assert_eq!(Count::Fixed(3).resolve(), 3);
        let cpus = Count::Cpus.resolve();
        assert!(cpus >= 1);
        if let Ok(n) = std::thread::available_parallelism() {
            assert_eq!(cpus, n.get());
        }
        assert_eq!(Count::Fixed(2).to_string(), "2");
    }

    #[test]
    fn restart_modes() {
        assert!(RestartMode::Permanent.restarts_after(true));
        assert!(RestartMode::Permanent.restarts_after(false));
        assert!(RestartMode::Transient.restarts_after(true));
        assert!(!RestartMode::Transient.restarts_after(false));
        assert!(!RestartMode::Temporary.restarts_after(true));
        assert!(!RestartMode::Temporary.restarts_after(false));
        assert_eq!(RestartMode::default(), RestartMode::Permanent);
    }

    #[test]
    fn parse_signal_accepts_all_spellings() {
        for name in ["SIGINT", "INT", "sigint", "int", "SigInt", " SIGINT\n"] {
            assert_eq!(parse_signal(name).unwrap(), SIGINT, "{name:?}");
        }
        assert_eq!(parse_signal("term").unwrap(), SIGTERM);
        assert_eq!(parse_signal("SIGUSR2").unwrap(), SIGUSR2);
        assert_eq!(parse_signal("hup").unwrap(), SIGHUP);
    }

    #[test]
    fn parse_signal_rejects_unknown_names_naming_them() {
        for name in ["", "SIG", "SIGFOO", "foo", "9", "SIGSIGINT", "INT TERM"] {
            let (option, reason) = option_of(parse_signal(name).map(|_| ()));
            assert_eq!(option, "signals");
            assert!(reason.contains(&format!("{name:?}")), "{reason}");
        }
    }

    #[test]
    fn zero_count_is_rejected() {
        let (option, reason) = option_of(Options::new().count(0).validate());
        assert_eq!(option, "count");
        assert!(reason.contains("at least 1"), "{reason}");
    }

    #[test]
    fn zero_interval_is_rejected() {
        let (option, reason) = option_of(Options::new().max_restarts_interval_ms(0).validate());
        assert_eq!(option, "max_restarts_interval");
        assert!(reason.contains("positive"), "{reason}");
        let (option, _) = option_of(
            RestartPolicy::new()
                .max_restarts_interval(Duration::ZERO)
                .validate(),
        );
        assert_eq!(option, "max_restarts_interval");
    }

    #[test]
    fn huge_durations_are_rejected() {
        let huge = Duration::from_secs(u64::MAX);
        assert_eq!(option_of(Options::new().grace(huge).validate()).0, "grace");
        assert_eq!(
            option_of(Options::new().ready_timeout(huge).validate()).0,
            "ready_timeout"
        );
        assert_eq!(
            option_of(Options::new().max_restarts_interval(huge).validate()).0,
            "max_restarts_interval"
        );
        let b = Backoff::new().cap(huge);
        assert_eq!(option_of(b.validate()).0, "backoff");
        assert!(Options::new().grace(MAX_DURATION).validate().is_ok());
    }

    #[test]
    fn zero_grace_is_allowed() {
        assert!(Options::new().grace(Duration::ZERO).validate().is_ok());
    }

    #[test]
    fn zero_ready_timeout_is_rejected() {
        let (option, _) = option_of(Options::new().ready_timeout_ms(0).validate());
        assert_eq!(option, "ready_timeout");
    }

    #[test]
    fn empty_signals_are_rejected_but_empty_reload_signals_are_not() {
        let (option, reason) = option_of(Options::new().signals([]).validate());
        assert_eq!(option, "signals");
        assert!(reason.contains("SIGINT"), "{reason}");
        assert!(Options::new().reload_signals([]).validate().is_ok());
    }

    #[test]
    fn unfit_signals_are_rejected_in_both_lists() {
        for bad in [
            SIGKILL, SIGSTOP, SIGILL, SIGFPE, SIGSEGV, SIGBUS, SIGTRAP, SIGCHLD, SIGPIPE,
        ] {
            let (option, reason) = option_of(Options::new().signals([SIGTERM, bad]).validate());
            assert_eq!(option, "signals");
            assert!(reason.contains(bad.as_str()), "{reason}");
            assert!(reason.contains("use signals such as"), "{reason}");
            let (option, _) = option_of(Options::new().reload_signals([bad]).validate());
            assert_eq!(option, "reload_signals");
        }
        for good in [SIGHUP, SIGQUIT, SIGUSR1, SIGALRM, SIGWINCH] {
            assert!(Options::new().signals([good]).validate().is_ok(), "{good}");
        }
    }

    #[test]
    fn duplicated_signals_are_rejected() {
        let (option, reason) =
            option_of(Options::new().signals([SIGINT, SIGTERM, SIGINT]).validate());
        assert_eq!(option, "signals");
        assert!(reason.contains("twice"), "{reason}");
        let (option, _) = option_of(Options::new().reload_signals([SIGUSR2, SIGUSR2]).validate());
        assert_eq!(option, "reload_signals");
    }

    #[test]
    fn a_signal_cannot_both_stop_and_reload() {
        let o = Options::new()
            .signals([SIGINT, SIGHUP])
            .reload_signals([SIGHUP]);
        let (option, reason) = option_of(o.validate());
        assert_eq!(option, "reload_signals");
        assert!(reason.contains("SIGHUP"), "{reason}");
    }

    #[test]
    fn bad_backoff_is_rejected() {
        for (backoff, field) in [
            (Backoff::new().factor(0.5), "factor"),
            (Backoff::new().factor(f64::NAN), "factor"),
            (Backoff::new().factor(f64::INFINITY), "factor"),
            (Backoff::new().cap(Duration::from_millis(50)), "cap"),
            (Backoff::new().reset_after(Duration::ZERO), "reset_after"),
        ] {
            let (option, reason) = option_of(Options::new().backoff(backoff).validate());
            assert_eq!(option, "backoff");
            assert!(reason.contains(field), "{reason}");
        }
        let constant = Backoff::new()
            .factor(1.0)
            .base(Duration::ZERO)
            .cap(Duration::ZERO);
        assert!(constant.validate().is_ok());
    }

    #[test]
    fn group_builder_and_defaults() {
        let policy = RestartPolicy::new().max_restarts(9);
        let g = GroupOptions::new("web")
            .count(3)
            .env("K", "V")
            .env("A", "1")
            .env("K", "W")
            .restart(policy);
        assert_eq!(g.get_name(), "web");
        assert_eq!(g.get_count(), Count::Fixed(3));
        assert_eq!(
            g.get_env(),
            [
                ("K".to_owned(), "W".to_owned()),
                ("A".to_owned(), "1".to_owned())
            ]
        );
        assert_eq!(g.get_restart(), Some(&policy));
        assert!(g.validate().is_ok());
        let cluster = Options::new();
        assert_eq!(g.effective_restart(&cluster), &policy);

        let plain = GroupOptions::new("jobs_2-x").count_cpus();
        assert_eq!(plain.get_count(), Count::Cpus);
        assert_eq!(plain.get_restart(), None);
        assert_eq!(plain.effective_restart(&cluster), cluster.get_restart());
        assert!(plain.validate().is_ok());
        assert_eq!(GroupOptions::new("a").get_count(), Count::Fixed(2));
    }

    #[test]
    fn group_validation_names_its_option() {
        for name in ["", "web server", "wéb", "a/b", "a.b"] {
            let (option, reason) = option_of(GroupOptions::new(name).validate());
            assert_eq!(option, "name");
            assert!(reason.contains("A-Z"), "{reason}");
        }
        let (option, reason) = option_of(GroupOptions::new("web").count(0).validate());
        assert_eq!(option, "count");
        assert!(reason.contains("web"), "{reason}");
        for g in [
            GroupOptions::new("web").env("", "v"),
            GroupOptions::new("web").env("A=B", "v"),
            GroupOptions::new("web").env("A", "v\0"),
            GroupOptions::new("web").env("CLUSTER_WORKER_SLOT", "3"),
        ] {
            assert_eq!(option_of(g.validate()).0, "env");
        }
        let bad_policy = RestartPolicy::new().max_restarts_interval(Duration::ZERO);
        let (option, _) = option_of(GroupOptions::new("web").restart(bad_policy).validate());
        assert_eq!(option, "max_restarts_interval");
    }
}
