//! The arguments of `#[cluster::main(...)]`: parsed, then checked one by one, so that every
//! mistake is reported on the token that caused it.

use std::net::SocketAddr;

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned as _;
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Token};

/// Every option, in the order the error for an unknown option lists them.
const OPTIONS: &[&str] = &[
    "count",
    "max_restarts",
    "max_restarts_interval",
    "grace",
    "signals",
    "runtime",
    "balance",
    "accept_coalescing",
    "reload_signals",
    "reload_parallelism",
    "ready_timeout",
    "heartbeat_interval",
    "heartbeat_timeout",
    "max_memory",
    "memory_samples",
    "sample_interval",
    "status_addr",
    "min_ready",
    "worker_prefix_logs",
    "worker",
    "master",
    "crate",
];

/// The longest duration the engine accepts (it adds durations to `Instant`s, which panics on
/// overflow): checking it here turns a start-up failure into a compile error.
const MAX_DURATION_MS: u64 = 365 * 24 * 60 * 60 * 1000;

/// The longest `accept_coalescing` window cluster-core accepts (it refuses more at start-up):
/// beyond it the wait, not the work, would decide a connection's latency.
const MAX_ACCEPT_COALESCING_MS: u64 = 100;

/// Signals this platform may name, for the error on an unknown one. `SIGSTKFLT` and `SIGPWR`
/// are Linux's; elsewhere rustc reports them as missing variants of `cluster::Signal`.
const SIGNALS: &[&str] = &[
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGILL",
    "SIGTRAP",
    "SIGABRT",
    "SIGBUS",
    "SIGFPE",
    "SIGKILL",
    "SIGUSR1",
    "SIGSEGV",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

/// One `key = value` pair as written.
struct Pair {
    key: Ident,
    value: Expr,
}

/// The raw argument list; [`Args::from_pairs`] gives it meaning.
pub(crate) struct RawArgs(Vec<Pair>);

impl Parse for RawArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut pairs = Vec::new();
        while !input.is_empty() {
            // `parse_any` so that `crate`, a keyword, is accepted as a key.
            let key = Ident::parse_any(input)?;
            if !input.peek(Token![=]) {
                return Err(syn::Error::new(
                    key.span(),
                    format!(
                        "expected `{key} = <value>`: every option of `#[cluster::main]` takes a value"
                    ),
                ));
            }
            input.parse::<Token![=]>()?;
            let value: Expr = input.parse()?;
            pairs.push(Pair { key, value });
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(RawArgs(pairs))
    }
}

/// How many workers: a number, or one per CPU.
pub(crate) enum Count {
    Fixed(usize),
    Cpus,
}

/// The workers' tokio runtime.
pub(crate) enum Runtime {
    MultiThread,
    CurrentThread,
}

/// How connections are spread over the workers: the variants of `cluster::Balance`.
#[derive(Clone, Copy)]
pub(crate) enum Balance {
    Shared,
    RoundRobin,
    LeastConnections,
    Sticky,
    ReusePort,
}

impl Balance {
    /// The variant's name in `cluster::Balance`.
    pub(crate) fn variant(self) -> &'static str {
        match self {
            Balance::Shared => "Shared",
            Balance::RoundRobin => "RoundRobin",
            Balance::LeastConnections => "LeastConnections",
            Balance::Sticky => "Sticky",
            Balance::ReusePort => "ReusePort",
        }
    }
}

/// A value together with the span of what the user wrote, for rustc's errors on the
/// generated call.
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: Span,
}

/// The checked options.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) count: Option<Spanned<Count>>,
    pub(crate) max_restarts: Option<Spanned<u32>>,
    /// Milliseconds.
    pub(crate) max_restarts_interval: Option<Spanned<u64>>,
    /// Milliseconds.
    pub(crate) grace: Option<Spanned<u64>>,
    pub(crate) signals: Option<Spanned<Vec<Ident>>>,
    pub(crate) runtime: Option<Spanned<Runtime>>,
    pub(crate) balance: Option<Spanned<Balance>>,
    /// Milliseconds, at most [`MAX_ACCEPT_COALESCING_MS`]; zero turns coalescing off.
    pub(crate) accept_coalescing: Option<Spanned<u64>>,
    pub(crate) reload_signals: Option<Spanned<Vec<Ident>>>,
    pub(crate) reload_parallelism: Option<Spanned<usize>>,
    /// Milliseconds, more than zero.
    pub(crate) ready_timeout: Option<Spanned<u64>>,
    /// Milliseconds, more than zero.
    pub(crate) heartbeat_interval: Option<Spanned<u64>>,
    /// Milliseconds, more than zero; `None` for `"off"`.
    pub(crate) heartbeat_timeout: Option<Spanned<Option<u64>>>,
    /// Bytes, more than zero; `None` for `"off"`.
    pub(crate) max_memory: Option<Spanned<Option<u64>>>,
    pub(crate) memory_samples: Option<Spanned<u32>>,
    /// Milliseconds, more than zero.
    pub(crate) sample_interval: Option<Spanned<u64>>,
    /// `None` for `"off"`.
    pub(crate) status_addr: Option<Spanned<Option<SocketAddr>>>,
    pub(crate) min_ready: Option<Spanned<usize>>,
    pub(crate) worker_prefix_logs: Option<Spanned<bool>>,
    /// The app written as types: a value implementing `cluster::Worker`.
    pub(crate) worker: Option<(Ident, Expr)>,
    /// The app written as types: a value implementing `cluster::Master`.
    pub(crate) master: Option<(Ident, Expr)>,
    pub(crate) krate: Option<syn::Path>,
}

impl<T> Spanned<T> {
    fn new(value: T, span: Span) -> Self {
        Spanned { value, span }
    }
}

/// Accumulates errors so that one compilation reports every bad option, not just the first.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Records the error of `result`, if any, and passes its value on.
    pub(crate) fn check<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                self.push(e);
                None
            }
        }
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Args {
    /// Checks every pair; the errors of all bad pairs are returned together.
    pub(crate) fn from_raw(raw: RawArgs, errors: &mut Errors) -> Args {
        let mut args = Args::default();
        let mut seen: Vec<String> = Vec::new();
        // Where `signals` and `reload_signals` stand in the list: a signal in both is
        // reported in whichever of the two comes second.
        let mut signals_at = None;
        let mut reload_signals_at = None;
        for (index, Pair { key, value }) in raw.0.into_iter().enumerate() {
            let name = key.unraw().to_string();
            if !OPTIONS.contains(&name.as_str()) {
                errors.push(syn::Error::new(
                    key.span(),
                    format!(
                        "unknown option `{name}`; the options of `#[cluster::main]` are: {}",
                        OPTIONS.join(", ")
                    ),
                ));
                continue;
            }
            if seen.contains(&name) {
                let hint = match name.as_str() {
                    "worker" => "; a cluster has exactly one worker",
                    "master" => "; a cluster has at most one master",
                    _ => "",
                };
                errors.push(syn::Error::new(
                    key.span(),
                    format!("duplicate option `{name}`{hint}"),
                ));
                continue;
            }
            seen.push(name.clone());
            let span = value.span();
            match name.as_str() {
                "count" => {
                    args.count = errors
                        .check(parse_count(&value))
                        .map(|c| Spanned::new(c, span))
                }
                "max_restarts" => {
                    args.max_restarts = errors
                        .check(parse_int::<u32>(&value, "max_restarts"))
                        .map(|n| Spanned::new(n, span))
                }
                "max_restarts_interval" => {
                    args.max_restarts_interval = errors
                        .check(parse_duration(&value))
                        .map(|ms| Spanned::new(ms, span))
                }
                "grace" => {
                    args.grace = errors
                        .check(parse_duration(&value))
                        .map(|ms| Spanned::new(ms, span))
                }
                "signals" => {
                    signals_at = Some(index);
                    args.signals = errors
                        .check(parse_signals(&value, "signals"))
                        .map(|s| Spanned::new(s, span))
                }
                "runtime" => {
                    args.runtime = errors
                        .check(parse_runtime(&value))
                        .map(|r| Spanned::new(r, span))
                }
                "balance" => args.balance = spanned(errors, parse_balance(&value), span),
                "accept_coalescing" => {
                    args.accept_coalescing = spanned(errors, parse_accept_coalescing(&value), span)
                }
                "reload_signals" => {
                    reload_signals_at = Some(index);
                    args.reload_signals =
                        spanned(errors, parse_signals(&value, "reload_signals"), span)
                }
                "reload_parallelism" => {
                    args.reload_parallelism = spanned(
                        errors,
                        parse_nonzero(
                            &value,
                            "reload_parallelism",
                            "`reload_parallelism` is how many slots a rolling reload replaces at once: 0 would replace none; use at least 1",
                        ),
                        span,
                    )
                }
                "ready_timeout" => {
                    args.ready_timeout = spanned(
                        errors,
                        parse_positive_duration(
                            &value,
                            "a zero `ready_timeout` leaves a worker no time to report ready; use a positive duration such as \"30s\"",
                        ),
                        span,
                    )
                }
                "heartbeat_interval" => {
                    args.heartbeat_interval = spanned(
                        errors,
                        parse_positive_duration(
                            &value,
                            "a zero `heartbeat_interval` would have workers report without pause; use a positive duration such as \"1s\"",
                        ),
                        span,
                    )
                }
                "heartbeat_timeout" => {
                    args.heartbeat_timeout = spanned(errors, parse_heartbeat_timeout(&value), span)
                }
                "max_memory" => args.max_memory = spanned(errors, parse_max_memory(&value), span),
                "memory_samples" => {
                    args.memory_samples = spanned(
                        errors,
                        parse_nonzero(
                            &value,
                            "memory_samples",
                            "`memory_samples` is how many consecutive samples over `max_memory` replace a worker: use at least 1",
                        ),
                        span,
                    )
                }
                "sample_interval" => {
                    args.sample_interval = spanned(
                        errors,
                        parse_positive_duration(
                            &value,
                            "a zero `sample_interval` would read /proc without pause; use a positive duration such as \"1s\"",
                        ),
                        span,
                    )
                }
                "status_addr" => {
                    args.status_addr = spanned(errors, parse_status_addr(&value), span)
                }
                "min_ready" => {
                    args.min_ready = spanned(errors, parse_int(&value, "min_ready"), span)
                }
                "worker_prefix_logs" => {
                    args.worker_prefix_logs =
                        spanned(errors, parse_bool(&value, "worker_prefix_logs"), span)
                }
                "worker" => args.worker = Some((key, value)),
                "master" => args.master = Some((key, value)),
                // The only option left in OPTIONS.
                _ => args.krate = errors.check(parse_crate(&value)),
            }
        }
        args.check_signal_overlap(signals_at < reload_signals_at, errors);
        args.check_heartbeat(errors);
        args
    }

    /// A signal cannot both stop and reload the cluster (cluster-core refuses it at
    /// start-up). `signals_first` tells which list the user wrote first; the error goes on
    /// the occurrence in the other, the second.
    fn check_signal_overlap(&self, signals_first: bool, errors: &mut Errors) {
        let (Some(signals), Some(reload)) = (&self.signals, &self.reload_signals) else {
            return;
        };
        let (first, second, other) = if signals_first {
            (
                &signals.value,
                &reload.value,
                "a shutdown signal in `signals`",
            )
        } else {
            (
                &reload.value,
                &signals.value,
                "a reload signal in `reload_signals`",
            )
        };
        for signal in second.iter().filter(|s| first.contains(s)) {
            errors.push(syn::Error::new(
                signal.span(),
                format!(
                    "{signal} is also {other}; a signal can either stop or reload the cluster, not both"
                ),
            ));
        }
    }

    /// A timeout no longer than the interval would find every worker hung (cluster-core
    /// refuses it at start-up). Checked only when both are written: otherwise one of them
    /// comes from the defaults or from `Master::options()`, which the macro cannot see.
    fn check_heartbeat(&self, errors: &mut Errors) {
        let (Some(interval), Some(timeout)) = (&self.heartbeat_interval, &self.heartbeat_timeout)
        else {
            return;
        };
        if let Some(ms) = timeout.value {
            if ms <= interval.value {
                errors.push(syn::Error::new(
                    timeout.span,
                    format!(
                        "`heartbeat_timeout` ({ms} ms) must be longer than `heartbeat_interval` ({} ms), or every worker would look hung; use a longer timeout, or \"off\" to turn the watchdog off",
                        interval.value
                    ),
                ));
            }
        }
    }
}

/// Records the error of `result`, or keeps its value with the span of what was written.
fn spanned<T>(errors: &mut Errors, result: syn::Result<T>, span: Span) -> Option<Spanned<T>> {
    errors.check(result).map(|v| Spanned::new(v, span))
}

fn lit_str(value: &Expr) -> Option<&LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Some(s),
        _ => None,
    }
}

fn parse_int<T>(value: &Expr, option: &str) -> syn::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(n), ..
        }) => n
            .base10_parse::<T>()
            .map_err(|e| syn::Error::new(n.span(), format!("invalid `{option}`: {e}"))),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("`{option}` takes a whole number, such as `{option} = 5`"),
        )),
    }
}

fn parse_count(value: &Expr) -> syn::Result<Count> {
    let is_cpus = match value {
        Expr::Path(p) => p.qself.is_none() && p.path.is_ident("cpus"),
        _ => lit_str(value).is_some_and(|s| s.value() == "cpus"),
    };
    if is_cpus {
        return Ok(Count::Cpus);
    }
    if !matches!(
        value,
        Expr::Lit(ExprLit {
            lit: Lit::Int(_),
            ..
        })
    ) {
        return Err(syn::Error::new_spanned(
            value,
            "`count` takes a number of workers, such as `count = 4`, or `cpus` for one per CPU",
        ));
    }
    match parse_int::<usize>(value, "count")? {
        0 => Err(syn::Error::new_spanned(
            value,
            "0 workers would run nothing; use at least 1, or `count = cpus` for one per CPU",
        )),
        n => Ok(Count::Fixed(n)),
    }
}

/// What a duration may be written as, for the errors on one.
const DURATION_HINT: &str = "expected milliseconds as a whole number (`3000`) or a string with a unit: \"500ms\", \"3s\", \"1m\" or \"2h\"";

/// Parses integer milliseconds (`3000`, as the origin wrote them) or a string with a unit
/// (`"3s"`, `"500ms"`, `"1m"`, `"2h"`), into milliseconds.
fn parse_duration(value: &Expr) -> syn::Result<u64> {
    duration_with_hint(value, DURATION_HINT)
}

/// [`parse_duration`], rejecting zero with `zero` (which says why zero cannot work).
fn parse_positive_duration(value: &Expr, zero: &str) -> syn::Result<u64> {
    match parse_duration(value)? {
        0 => Err(syn::Error::new_spanned(value, zero)),
        ms => Ok(ms),
    }
}

/// A duration of at most [`MAX_ACCEPT_COALESCING_MS`]; zero (coalescing off) is fine.
fn parse_accept_coalescing(value: &Expr) -> syn::Result<u64> {
    // Unbounded, so that a huge value gets this option's limit rather than the 365 days
    // every other duration may reach.
    match unbounded_duration(value, DURATION_HINT)? {
        ms if ms > MAX_ACCEPT_COALESCING_MS => Err(syn::Error::new_spanned(
            value,
            format!(
                "an `accept_coalescing` of {ms} ms would hold new connections in the queue that long under load; use at most {MAX_ACCEPT_COALESCING_MS} ms, or 0 to hand each connection out at once"
            ),
        )),
        ms => Ok(ms),
    }
}

/// `"off"` (no watchdog) or a positive duration.
fn parse_heartbeat_timeout(value: &Expr) -> syn::Result<Option<u64>> {
    if lit_str(value).is_some_and(|s| s.value().trim() == "off") {
        return Ok(None);
    }
    let hint = format!("{DURATION_HINT}, or \"off\" to turn the watchdog off");
    match duration_with_hint(value, &hint)? {
        0 => Err(syn::Error::new_spanned(
            value,
            "a zero `heartbeat_timeout` would find every worker hung; use a duration longer than `heartbeat_interval`, or \"off\" to turn the watchdog off",
        )),
        ms => Ok(Some(ms)),
    }
}

fn duration_with_hint(value: &Expr, hint: &str) -> syn::Result<u64> {
    let ms = unbounded_duration(value, hint)?;
    if ms > MAX_DURATION_MS {
        return Err(syn::Error::new_spanned(
            value,
            "this duration is too long; use at most 365 days",
        ));
    }
    Ok(ms)
}

/// [`duration_with_hint`] without the 365-day limit, for an option with a limit of its own.
fn unbounded_duration(value: &Expr, hint: &str) -> syn::Result<u64> {
    Ok(match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(n), ..
        }) => n
            .base10_parse::<u64>()
            .map_err(|e| syn::Error::new(n.span(), format!("invalid duration: {e}; {hint}")))?,
        _ => {
            let Some(s) = lit_str(value) else {
                return Err(syn::Error::new_spanned(
                    value,
                    format!("invalid duration; {hint}"),
                ));
            };
            duration_str_ms(&s.value()).ok_or_else(|| {
                syn::Error::new(
                    s.span(),
                    format!("invalid duration {:?}; {hint}", s.value()),
                )
            })?
        }
    })
}

/// `None` for anything but `<digits><unit>`, and on overflow.
fn duration_str_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let factor = match unit.trim_start() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 60 * 60 * 1000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// Checks each signal name of `signals` or `reload_signals` (`option`) and returns it in its
/// canonical `SIGxxx` spelling, keeping the span of what the user wrote so rustc's errors on
/// the generated path land there.
fn parse_signals(value: &Expr, option: &str) -> syn::Result<Vec<Ident>> {
    let shutdown = option == "signals";
    let Expr::Array(array) = value else {
        let example = if shutdown {
            "[SIGINT, SIGTERM]"
        } else {
            "[SIGUSR2]"
        };
        return Err(syn::Error::new_spanned(
            value,
            format!("`{option}` takes a list, such as `{option} = {example}`"),
        ));
    };
    // No reload signal is fine (reload by signal is then off); no shutdown signal is not.
    if shutdown && array.elems.is_empty() {
        return Err(syn::Error::new_spanned(
            value,
            "no shutdown signal, so the cluster could only be stopped with SIGKILL; list at least one, e.g. [SIGINT, SIGTERM]",
        ));
    }
    let mut errors = Errors::default();
    let mut signals: Vec<Ident> = Vec::new();
    for elem in &array.elems {
        let (name, span) = match elem {
            Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => (
                p.path
                    .segments
                    .iter()
                    .map(|s| s.ident.to_string())
                    .collect::<String>(),
                elem.span(),
            ),
            _ => match lit_str(elem) {
                Some(s) => (s.value(), s.span()),
                None => {
                    errors.push(syn::Error::new_spanned(
                        elem,
                        "expected a signal name such as `SIGTERM`, `TERM` or \"SIGTERM\"",
                    ));
                    continue;
                }
            },
        };
        let upper = name.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        if !SIGNALS.contains(&full.as_str()) {
            errors.push(syn::Error::new(
                span,
                format!(
                    "unknown signal `{name}`; expected one of {} (with or without `SIG`)",
                    SIGNALS.join(", ")
                ),
            ));
            continue;
        }
        if let Some(why) = unfit_signal(&full) {
            errors.push(syn::Error::new(
                span,
                format!(
                    "{full} cannot be used: {why}; use signals such as SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 or SIGUSR2"
                ),
            ));
            continue;
        }
        if signals.iter().any(|s| *s == full) {
            errors.push(syn::Error::new(
                span,
                format!("{full} is listed twice; list each signal once"),
            ));
            continue;
        }
        signals.push(Ident::new(&full, span));
    }
    errors.finish()?;
    Ok(signals)
}

/// Mirrors cluster-core's check at start-up, so the same mistake fails at compile time.
fn unfit_signal(name: &str) -> Option<&'static str> {
    match name {
        "SIGKILL" | "SIGSTOP" => Some("it cannot be caught or ignored by any process"),
        // A handler that merely records these and returns re-executes the faulting
        // instruction forever; tokio refuses to register them for that reason.
        "SIGILL" | "SIGFPE" | "SIGSEGV" | "SIGBUS" | "SIGTRAP" => {
            Some("it reports a synchronous fault (crash) and cannot be handled asynchronously")
        }
        "SIGCHLD" => Some(
            "the master receives it every time a worker exits, so it would stop the cluster at the first exit",
        ),
        "SIGPIPE" => {
            Some("it is raised by writes to a closed pipe or socket, not sent by operators")
        }
        _ => None,
    }
}

/// A count that must be at least 1; `zero` says why.
fn parse_nonzero<T>(value: &Expr, option: &str, zero: &str) -> syn::Result<T>
where
    T: std::str::FromStr + Default + PartialEq,
    T::Err: std::fmt::Display,
{
    let n = parse_int::<T>(value, option)?;
    if n == T::default() {
        return Err(syn::Error::new_spanned(value, zero));
    }
    Ok(n)
}

fn parse_bool(value: &Expr, option: &str) -> syn::Result<bool> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("`{option}` takes `true` or `false`"),
        )),
    }
}

/// The strategy as the kebab-case string the docs use, or as the variant's name.
fn parse_balance(value: &Expr) -> syn::Result<Balance> {
    const HINT: &str = "`balance` is \"shared\" (the default), \"round-robin\", \"least-connections\", \"sticky\" or \"reuseport\", or the variant: Shared, RoundRobin, LeastConnections, Sticky, ReusePort";
    let (name, span) = match value {
        Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => (
            p.path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect::<String>(),
            value.span(),
        ),
        _ => match lit_str(value) {
            Some(s) => (s.value(), s.span()),
            None => return Err(syn::Error::new_spanned(value, HINT)),
        },
    };
    match name.as_str() {
        "shared" | "Shared" => Ok(Balance::Shared),
        "round-robin" | "RoundRobin" => Ok(Balance::RoundRobin),
        "least-connections" | "LeastConnections" => Ok(Balance::LeastConnections),
        "sticky" | "Sticky" => Ok(Balance::Sticky),
        "reuseport" | "ReusePort" => Ok(Balance::ReusePort),
        other => Err(syn::Error::new(
            span,
            format!("unknown balance `{other}`; {HINT}"),
        )),
    }
}

/// Bytes as a whole number, a string with a unit (`"512MiB"`, `"100MB"`), or `"off"`.
fn parse_max_memory(value: &Expr) -> syn::Result<Option<u64>> {
    const HINT: &str = "expected bytes as a whole number (`536870912`), a string with a unit such as \"512MiB\", \"1GiB\" or \"100MB\" (B, kB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB of 1024), or \"off\"";
    let bytes = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(n), ..
        }) => n
            .base10_parse::<u64>()
            .map_err(|e| syn::Error::new(n.span(), format!("invalid `max_memory`: {e}; {HINT}")))?,
        _ => {
            let Some(s) = lit_str(value) else {
                return Err(syn::Error::new_spanned(
                    value,
                    format!("invalid `max_memory`; {HINT}"),
                ));
            };
            let text = s.value();
            if text.trim() == "off" {
                return Ok(None);
            }
            memory_bytes(&text).map_err(|why| {
                syn::Error::new(
                    s.span(),
                    format!("invalid `max_memory` {text:?}: {why}; {HINT}"),
                )
            })?
        }
    };
    if bytes == 0 {
        return Err(syn::Error::new_spanned(
            value,
            "a `max_memory` of 0 bytes would replace every worker as soon as it is sampled; give a limit such as \"512MiB\", or \"off\"",
        ));
    }
    Ok(Some(bytes))
}

/// `<digits><unit>`, the unit case-insensitive and optionally after spaces, into bytes; the
/// error says what is wrong.
fn memory_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err("it does not start with a whole number".to_owned());
    }
    let unit = unit.trim_start();
    if unit.starts_with(['.', ',']) {
        return Err(
            "fractions are not accepted; use a smaller unit, such as \"1536MiB\" for 1.5 GiB"
                .to_owned(),
        );
    }
    if unit.is_empty() {
        return Err(
            "a string needs a unit (a plain number of bytes is written without quotes)".to_owned(),
        );
    }
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(format!("unknown unit {unit:?}")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| "it does not fit in 64 bits".to_owned())
}

/// An IP address and port, checked here so that a typo fails the build, not the start-up;
/// or `"off"`.
fn parse_status_addr(value: &Expr) -> syn::Result<Option<SocketAddr>> {
    const HINT: &str =
        "expected an IP address and port such as \"127.0.0.1:8001\" or \"[::1]:8001\", or \"off\"";
    let Some(s) = lit_str(value) else {
        return Err(syn::Error::new_spanned(
            value,
            format!("`status_addr` takes a string; {HINT}"),
        ));
    };
    let text = s.value();
    if text.trim() == "off" {
        return Ok(None);
    }
    // Host names are not accepted: resolving one is a run-time matter, and the option
    // takes a `SocketAddr`.
    text.trim().parse::<SocketAddr>().map(Some).map_err(|e| {
        syn::Error::new(
            s.span(),
            format!("invalid `status_addr` {text:?}: {e}; {HINT}"),
        )
    })
}

fn parse_runtime(value: &Expr) -> syn::Result<Runtime> {
    const HINT: &str = "`runtime` is \"multi_thread\" (the default) or \"current_thread\"";
    let Some(s) = lit_str(value) else {
        return Err(syn::Error::new_spanned(value, HINT));
    };
    match s.value().as_str() {
        "multi_thread" => Ok(Runtime::MultiThread),
        "current_thread" => Ok(Runtime::CurrentThread),
        other => Err(syn::Error::new(
            s.span(),
            format!("unknown runtime {other:?}; {HINT}"),
        )),
    }
}

fn parse_crate(value: &Expr) -> syn::Result<syn::Path> {
    let Some(s) = lit_str(value) else {
        return Err(syn::Error::new_spanned(
            value,
            "`crate` takes the path of the cluster crate as a string, such as `crate = \"::my_cluster\"`",
        ));
    };
    s.parse::<syn::Path>()
        .map_err(|e| syn::Error::new(s.span(), format!("`crate` is not a path: {e}")))
}

#[cfg(test)]
mod tests {
    use super::{Args, Errors, RawArgs, duration_str_ms, memory_bytes, parse_accept_coalescing};
    use syn::{Expr, parse_quote};

    #[test]
    fn memory_sizes() {
        assert_eq!(memory_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(memory_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(memory_bytes("100MB"), Ok(100_000_000));
        assert_eq!(memory_bytes(" 2 kb "), Ok(2000));
        assert_eq!(memory_bytes("7B"), Ok(7));
        assert_eq!(memory_bytes("1TiB"), Ok(1 << 40));
        assert!(memory_bytes("512").is_err());
        assert!(memory_bytes("MiB").is_err());
        assert!(memory_bytes("512MiBs").is_err());
        assert!(memory_bytes("1.5GiB").is_err());
        assert!(memory_bytes("99999999999TiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration_str_ms("500ms"), Some(500));
        assert_eq!(duration_str_ms("3s"), Some(3000));
        assert_eq!(duration_str_ms(" 3 s "), Some(3000));
        assert_eq!(duration_str_ms("1m"), Some(60_000));
        assert_eq!(duration_str_ms("2h"), Some(7_200_000));
        assert_eq!(duration_str_ms("3"), None);
        assert_eq!(duration_str_ms("s"), None);
        assert_eq!(duration_str_ms("3x"), None);
        assert_eq!(duration_str_ms("1.5s"), None);
        assert_eq!(duration_str_ms("99999999999999999999h"), None);
    }

    #[test]
    fn accept_coalescing_values() {
        let ms = |value: Expr| parse_accept_coalescing(&value).unwrap();
        assert_eq!(ms(parse_quote!(1)), 1);
        assert_eq!(ms(parse_quote!("2ms")), 2);
        assert_eq!(ms(parse_quote!(0)), 0);
        assert_eq!(ms(parse_quote!("0s")), 0);
        assert_eq!(ms(parse_quote!(100)), 100);
        assert_eq!(ms(parse_quote!("100ms")), 100);
        let too_long: [Expr; 4] = [
            parse_quote!(101),
            parse_quote!("1s"),
            parse_quote!("1m"),
            // Beyond 365 days: still this option's limit, not the general one.
            parse_quote!("9000h"),
        ];
        for value in too_long {
            let error = parse_accept_coalescing(&value).unwrap_err().to_string();
            assert!(error.contains("at most 100 ms, or 0"), "{error}");
        }
        let error = parse_accept_coalescing(&parse_quote!("1s"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("of 1000 ms would hold"), "{error}");
        for value in [parse_quote!("2x"), parse_quote!(1.5), parse_quote!(-1)] {
            let error = parse_accept_coalescing(&value).unwrap_err().to_string();
            assert!(error.starts_with("invalid duration"), "{error}");
        }
    }

    #[test]
    fn accept_coalescing_option() {
        let parse = |tokens: proc_macro2::TokenStream| {
            let raw: RawArgs = syn::parse2(tokens).unwrap();
            let mut errors = Errors::default();
            let args = Args::from_raw(raw, &mut errors);
            (args, errors.finish())
        };
        let (args, result) = parse(quote::quote!(accept_coalescing = "2ms", count = 2));
        assert!(result.is_ok());
        assert_eq!(args.accept_coalescing.map(|ms| ms.value), Some(2));
        let (args, result) = parse(quote::quote!(accept_coalescing = 0));
        assert!(result.is_ok());
        assert_eq!(args.accept_coalescing.map(|ms| ms.value), Some(0));
        let (args, result) = parse(quote::quote!(accept_coalescing = 250));
        assert!(args.accept_coalescing.is_none());
        let error = result.unwrap_err().to_string();
        assert!(error.contains("accept_coalescing` of 250 ms"), "{error}");
        let (_, result) = parse(quote::quote!(accept_coalescing = 1, accept_coalescing = 2));
        let error = result.unwrap_err().to_string();
        assert_eq!(error, "duplicate option `accept_coalescing`");
    }
}
