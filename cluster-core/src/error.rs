//! The crate's one error type: what went wrong as a [`ErrorKind`] to match on, a message that
//! says what happened, and the lower-level error behind it as its `source()`.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

/// An error returned by app code (worker, master or hook functions).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Exit code of a master that gave up after too many restarts (EX_TEMPFAIL), distinct from a
/// crash of the master itself (101 for a Rust panic, 128+n for a signal).
pub const EXIT_RESTART_LIMIT: i32 = 75;
/// Exit code of a worker whose environment names no usable channel (EX_CONFIG).
pub const EXIT_BOOTSTRAP: i32 = 78;
/// Exit code of a worker whose master vanished.
pub const EXIT_MASTER_GONE: i32 = 69;

/// Everything that can go wrong in a cluster, in the master or in a worker.
///
/// Match on [`Error::kind`]; the set of kinds grows over time (it is `#[non_exhaustive]`), so a
/// match keeps a `_` arm. The message (`Display`) says what happened and what to do; the error
/// that caused it, if any, is [`source()`](std::error::Error::source), and is *not* repeated in
/// the message. Format with `{:#}` to get the message followed by each source, `: `-separated,
/// as `anyhow` does:
///
/// ```
/// use cluster_core::{Cluster, ErrorKind};
///
/// let error = Cluster::<(), ()>::new().validate().unwrap_err();
/// assert_eq!(error.kind(), ErrorKind::InvalidOption);
/// assert_eq!(error.option(), Some("worker"));
/// println!("{error:#}");
/// ```
pub struct Error {
    // Boxed: a `Result<T, Error>` costs one pointer more than `T`, whatever the error holds.
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    detail: Detail,
    /// The option at fault, for [`ErrorKind::InvalidOption`].
    option: Option<&'static str>,
}

enum Detail {
    /// Our own message, and the error that caused it.
    Message {
        message: Cow<'static, str>,
        source: Option<BoxError>,
    },
    /// Another error that says it all: shown as this error, its sources as this error's.
    Transparent(BoxError),
}

/// What kind of thing went wrong: see [`Error::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An option, or the shape of the cluster (no worker function, two groups of one name), was
    /// rejected before anything started; [`Error::option`] names the option as the builder
    /// spells it. [`Cluster::run`](crate::Cluster::run) exits with code 2.
    InvalidOption,
    /// This process was started with the cluster's worker variables, but is not a worker a
    /// master started: a variable is missing or malformed, or no master answered on the
    /// channel. [`Cluster::run`](crate::Cluster::run) exits with
    /// [`EXIT_BOOTSTRAP`](crate::EXIT_BOOTSTRAP).
    Bootstrap,
    /// A system call failed: starting a worker process or the runtime, installing a signal
    /// handler, registering a socket. The source is the [`std::io::Error`].
    Io,
    /// An address could not be listened on (in use, permission denied, a policy that differs
    /// from the one the address already has).
    Listen,
    /// The other side is gone: the master (from a worker), the worker (from the master), or the
    /// master's supervisor, which stops once the cluster has stopped. Nothing more can be sent
    /// to it or answered by it.
    Disconnected,
    /// The channel between master and worker broke for another reason than the peer leaving
    /// (a message too large, a peer that broke the protocol); the source is the
    /// [`cluster_ipc::Error`].
    Ipc,
    /// A message could not be encoded (nothing was sent), or what arrived did not decode as the
    /// expected type (the two sides use different message types).
    Codec,
    /// A request got no answer in time, or a worker did not take a message from the master in
    /// time.
    Timeout,
    /// No worker in that slot, or no group by that name.
    NoWorker,
    /// More workers crashed than the restart policy allows: the master gave up and shut the
    /// cluster down. [`Cluster::run`](crate::Cluster::run) exits with
    /// [`EXIT_RESTART_LIMIT`](crate::EXIT_RESTART_LIMIT).
    RestartLimit,
    /// The master's function or `before_fork` returned an error or panicked; a failure of the
    /// master's function shuts the cluster down.
    MasterFailed,
    /// The worker's function returned an error or panicked (reported by
    /// [`Cluster::try_run`](crate::Cluster::try_run) in a worker).
    WorkerFailed,
    /// An error of the app's own, made with [`Error::other`].
    Other,
    /// The master's store refused an operation: it is full (`store_max_keys`,
    /// `store_max_bytes`), a subscription would pass `store_subscriptions`, `incr` found a
    /// value that is not a decimal integer or would overflow; or the master could not load
    /// its `store_snapshot` at start. The message says which, and the limit.
    Store,
}

impl Error {
    /// An error of kind [`ErrorKind::Other`] that shows as `error` does, for app code whose
    /// functions return [`Result`]: `Error::other(e)` wraps any error, or a message.
    ///
    /// ```
    /// let error = cluster_core::Error::other("the database is unreachable");
    /// assert_eq!(error.to_string(), "the database is unreachable");
    /// ```
    pub fn other(error: impl Into<BoxError>) -> Error {
        Error::from_detail(ErrorKind::Other, Detail::Transparent(error.into()))
    }

    /// What kind of thing went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// For [`ErrorKind::InvalidOption`], the option at fault as the builder spells it
    /// (`count`, `grace`, `signals`, ...; `worker` and `group` for the shape of the cluster).
    pub fn option(&self) -> Option<&'static str> {
        self.inner.option
    }

    fn from_detail(kind: ErrorKind, detail: Detail) -> Error {
        Error {
            inner: Box::new(Inner {
                kind,
                detail,
                option: None,
            }),
        }
    }

    /// An error of `kind` that says `message`.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Error {
        Error::from_detail(
            kind,
            Detail::Message {
                message: message.into(),
                source: None,
            },
        )
    }

    /// The same error, caused by `source` (which its message does not repeat).
    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Error {
        if let Detail::Message { source: slot, .. } = &mut self.inner.detail {
            *slot = Some(source.into());
        }
        self
    }

    /// An option was rejected: `reason` says why and what would be accepted.
    pub(crate) fn invalid_option(option: &'static str, reason: String) -> Error {
        let mut error = Error::new(
            ErrorKind::InvalidOption,
            format!("invalid option `{option}`: {reason}"),
        );
        error.inner.option = Some(option);
        error
    }

    /// An option written outside the code was rejected: `place` says where ("from the
    /// environment variable CLUSTER_GRACE", "in app.toml, line 3"), `reason` why and what
    /// would be accepted.
    pub(crate) fn invalid_option_at(option: &'static str, place: &str, reason: String) -> Error {
        let mut error = Error::new(
            ErrorKind::InvalidOption,
            format!("invalid option `{option}` {place}: {reason}"),
        );
        error.inner.option = Some(option);
        error
    }

    /// The same error with `note` added to the end of its message.
    pub(crate) fn with_note(mut self, note: String) -> Error {
        if let Detail::Message { message, .. } = &mut self.inner.detail {
            message.to_mut().push_str(&note);
        }
        self
    }

    /// A system call failed while doing `what`.
    pub(crate) fn io(what: impl Into<Cow<'static, str>>, source: io::Error) -> Error {
        Error::new(ErrorKind::Io, what).with_source(source)
    }

    /// A request to `peer` got no answer within `timeout`.
    pub(crate) fn timeout(peer: &str, timeout: Duration) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "the {peer} did not answer within {} ms",
                timeout.as_millis()
            ),
        )
    }

    /// `peer` (the master, a worker, the supervisor) is gone.
    pub(crate) fn disconnected(peer: &str) -> Error {
        Error::new(ErrorKind::Disconnected, format!("the {peer} is gone"))
    }

    /// The restart policy of `group` gave up: `restarts` unexpected exits within `window`, the
    /// last one that of `slot`, which `last_exit` describes ("exited with code 3").
    pub(crate) fn restart_limit(
        group: &str,
        slot: usize,
        last_exit: impl fmt::Display,
        restarts: usize,
        max_restarts: u32,
        window: Duration,
    ) -> Error {
        Error::new(
            ErrorKind::RestartLimit,
            format!(
                "restart limit reached: {restarts} unexpected exits within {} ms (max_restarts = \
                 {max_restarts}); last: worker {group}/{slot} {last_exit}. The cluster was shut \
                 down; fix the crash, or raise `max_restarts` / lower `max_restarts_interval`",
                window.as_millis()
            ),
        )
    }

    /// The exit code [`Cluster::run`](crate::Cluster::run) ends the process with when
    /// [`Cluster::try_run`](crate::Cluster::try_run) returns this error. `Disconnected` reaches
    /// the entry point only in a worker whose master vanished.
    pub(crate) fn exit_code(&self) -> u8 {
        let code = match self.kind() {
            ErrorKind::InvalidOption => 2,
            ErrorKind::Bootstrap => EXIT_BOOTSTRAP,
            ErrorKind::RestartLimit => EXIT_RESTART_LIMIT,
            ErrorKind::Disconnected => EXIT_MASTER_GONE,
            _ => 1,
        };
        u8::try_from(code).unwrap_or(1)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.detail {
            Detail::Message { message, .. } => f.write_str(message)?,
            // Without `f`'s flags: an inner error that prints its sources on `{:#}` would print
            // them twice, once here and once from the loop below.
            Detail::Transparent(error) => write!(f, "{error}")?,
        }
        if f.alternate() {
            let mut source = self.source();
            while let Some(error) = source {
                write!(f, ": {error}")?;
                source = error.source();
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind);
        if let Some(option) = self.inner.option {
            d.field("option", &option);
        }
        match &self.inner.detail {
            Detail::Message { message, source } => {
                d.field("message", message);
                if let Some(source) = source {
                    d.field("source", source);
                }
            }
            Detail::Transparent(error) => {
                d.field("error", error);
            }
        }
        d.finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.inner.detail {
            Detail::Message { source, .. } => source.as_deref().map(|e| e as _),
            Detail::Transparent(error) => error.source(),
        }
    }
}

impl From<cluster_ipc::Error> for Error {
    /// Sorts a channel error by what the caller can do about it: a peer that left is
    /// `Disconnected`, a message that does not encode or decode is `Codec`, a bad environment is
    /// `Bootstrap`, the rest is `Ipc`. The channel error is shown as it is.
    fn from(error: cluster_ipc::Error) -> Self {
        use cluster_ipc::Error as E;
        let kind = match &error {
            E::Closed | E::Truncated { .. } => ErrorKind::Disconnected,
            E::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::NotConnected
                        | io::ErrorKind::UnexpectedEof
                ) =>
            {
                ErrorKind::Disconnected
            }
            E::Encode { .. } | E::Decode { .. } => ErrorKind::Codec,
            E::Bootstrap { .. } => ErrorKind::Bootstrap,
            E::Config { .. } => ErrorKind::InvalidOption,
            _ => ErrorKind::Ipc,
        };
        let option = match &error {
            E::Config { option, .. } => Some(*option),
            _ => None,
        };
        let mut error = Error::from_detail(kind, Detail::Transparent(Box::new(error)));
        error.inner.option = option;
        error
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shows `error` followed by each of its sources, `: `-separated: for logging errors whose
/// `Display` leaves the cause to `source()` (ours, the channel's).
pub(crate) fn chain<'a>(error: &'a (dyn StdError + 'static)) -> impl fmt::Display + 'a {
    struct Chain<'a>(&'a (dyn StdError + 'static));
    impl fmt::Display for Chain<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.0)?;
            let mut source = self.0.source();
            while let Some(error) = source {
                write!(f, ": {error}")?;
                source = error.source();
            }
            Ok(())
        }
    }
    Chain(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every error in `error`'s chain, outermost first.
    fn chain_of(error: &(dyn StdError + 'static)) -> Vec<String> {
        let mut messages = vec![error.to_string()];
        let mut source = error.source();
        while let Some(e) = source {
            messages.push(e.to_string());
            source = e.source();
        }
        messages
    }

    /// No message in the chain repeats the message of the error that caused it.
    fn assert_no_repeats(error: &(dyn StdError + 'static)) {
        let messages = chain_of(error);
        for pair in messages.windows(2) {
            assert!(
                !pair[0].contains(&pair[1]),
                "{:?} repeats its source {:?}",
                pair[0],
                pair[1]
            );
        }
    }

    /// EADDRINUSE on Linux: an OS error, whose message the kernel's `strerror` gives.
    fn os_error() -> io::Error {
        io::Error::from_raw_os_error(98)
    }

    fn representative() -> Vec<Error> {
        let encode = cluster_ipc::Error::Encode {
            type_name: "Msg",
            codec: "bincode",
            reason: "a map with a key that is not a string".into(),
        };
        vec![
            Error::invalid_option("count", "must be at least 1".into()),
            Error::io("cannot start /usr/bin/app", os_error()),
            Error::new(
                ErrorKind::Listen,
                "cannot listen on 127.0.0.1:80 with SO_REUSEPORT",
            )
            .with_source(os_error()),
            Error::from(cluster_ipc::Error::Io(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the peer hung up",
            ))),
            Error::from(cluster_ipc::Error::Io(os_error())),
            Error::from(encode),
            Error::new(ErrorKind::Bootstrap, "cannot reach the master").with_source(
                cluster_ipc::Error::Io(io::Error::new(io::ErrorKind::NotFound, "no such socket")),
            ),
            Error::timeout("worker", Duration::from_millis(300)),
            Error::disconnected("master"),
            Error::other(Error::io("cannot read the configuration", os_error())),
            Error::other("a message"),
        ]
    }

    #[test]
    fn no_message_repeats_its_source() {
        for error in representative() {
            assert_no_repeats(&error);
        }
        // The channel's own errors, each variant that has a source.
        assert_no_repeats(&cluster_ipc::Error::Io(os_error()));
    }

    #[test]
    fn the_cause_is_the_source_and_alternate_display_shows_it() {
        let error = Error::new(ErrorKind::Bootstrap, "cannot reach the master").with_source(
            cluster_ipc::Error::Io(io::Error::new(io::ErrorKind::NotFound, "no such socket")),
        );
        assert_eq!(
            chain_of(&error),
            [
                "cannot reach the master",
                "I/O error on the IPC socket",
                "no such socket"
            ]
        );
        assert_eq!(error.to_string(), "cannot reach the master");
        assert_eq!(
            format!("{error:#}"),
            "cannot reach the master: I/O error on the IPC socket: no such socket"
        );
        assert_eq!(chain(&error).to_string(), format!("{error:#}"));
        // Wrapped again, the chain is shown once, not once per layer.
        let wrapped = Error::other(error);
        assert_eq!(
            format!("{wrapped:#}"),
            "cannot reach the master: I/O error on the IPC socket: no such socket"
        );
    }

    #[test]
    fn a_transparent_error_shows_as_itself_with_its_sources() {
        let io = Error::io("cannot read the configuration", os_error());
        let other = Error::other(io);
        assert_eq!(other.kind(), ErrorKind::Other);
        assert_eq!(other.to_string(), "cannot read the configuration");
        assert!(other.source().is_some_and(|s| s.is::<io::Error>()));
    }

    #[test]
    fn channel_errors_are_sorted_by_what_the_caller_can_do() {
        let kind = |e: cluster_ipc::Error| Error::from(e).kind();
        assert_eq!(kind(cluster_ipc::Error::Closed), ErrorKind::Disconnected);
        assert_eq!(
            kind(cluster_ipc::Error::Io(io::ErrorKind::BrokenPipe.into())),
            ErrorKind::Disconnected
        );
        assert_eq!(
            kind(cluster_ipc::Error::Io(
                io::ErrorKind::PermissionDenied.into()
            )),
            ErrorKind::Ipc
        );
        assert_eq!(
            kind(cluster_ipc::Error::Decode {
                type_name: "Msg",
                len: 3,
                codec: "bincode",
                reason: "unexpected end".into()
            }),
            ErrorKind::Codec
        );
        assert_eq!(kind(cluster_ipc::Error::EmptyFrame), ErrorKind::Ipc);
    }

    #[test]
    fn invalid_option_names_the_option() {
        let error =
            Error::invalid_option("grace", "366 days is too long; use at most 365 days".into());
        assert_eq!(error.kind(), ErrorKind::InvalidOption);
        assert_eq!(error.option(), Some("grace"));
        assert_eq!(
            error.to_string(),
            "invalid option `grace`: 366 days is too long; use at most 365 days"
        );
        assert_eq!(error.exit_code(), 2);
        assert!(error.source().is_none());
    }

    #[test]
    fn an_error_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }
}
