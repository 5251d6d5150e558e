//! The arguments of `#[cluster::main(...)]`: parsed, then checked one by one, so that every
//! mistake is reported on the token that caused it.

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
    "worker",
    "master",
    "crate",
];

/// The longest duration the engine accepts (it adds durations to `Instant`s, which panics on
/// overflow): checking it here turns a start-up failure into a compile error.
const MAX_DURATION_MS: u64 = 365 * 24 * 60 * 60 * 1000;

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
        for Pair { key, value } in raw.0 {
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
                    args.signals = errors
                        .check(parse_signals(&value))
                        .map(|s| Spanned::new(s, span))
                }
                "runtime" => {
                    args.runtime = errors
                        .check(parse_runtime(&value))
                        .map(|r| Spanned::new(r, span))
                }
                "worker" => args.worker = Some((key, value)),
                "master" => args.master = Some((key, value)),
                // The only option left in OPTIONS.
                _ => args.krate = errors.check(parse_crate(&value)),
            }
        }
        args
    }
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

/// Parses integer milliseconds (`3000`, as the origin wrote them) or a string with a unit
/// (`"3s"`, `"500ms"`, `"1m"`, `"2h"`), into milliseconds.
fn parse_duration(value: &Expr) -> syn::Result<u64> {
    const HINT: &str = "expected milliseconds as a whole number (`3000`) or a string with a unit: \"500ms\", \"3s\", \"1m\" or \"2h\"";
    let ms = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(n), ..
        }) => n
            .base10_parse::<u64>()
            .map_err(|e| syn::Error::new(n.span(), format!("invalid duration: {e}; {HINT}")))?,
        _ => {
            let Some(s) = lit_str(value) else {
                return Err(syn::Error::new_spanned(
                    value,
                    format!("invalid duration; {HINT}"),
                ));
            };
            duration_str_ms(&s.value()).ok_or_else(|| {
                syn::Error::new(
                    s.span(),
                    format!("invalid duration {:?}; {HINT}", s.value()),
                )
            })?
        }
    };
    if ms > MAX_DURATION_MS {
        return Err(syn::Error::new_spanned(
            value,
            "this duration is too long; use at most 365 days",
        ));
    }
    Ok(ms)
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

/// Checks each signal name and returns it in its canonical `SIGxxx` spelling, keeping the
/// span of what the user wrote so rustc's errors on the generated path land there.
fn parse_signals(value: &Expr) -> syn::Result<Vec<Ident>> {
    let Expr::Array(array) = value else {
        return Err(syn::Error::new_spanned(
            value,
            "`signals` takes a list, such as `signals = [SIGINT, SIGTERM]`",
        ));
    };
    if array.elems.is_empty() {
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
    use super::duration_str_ms;

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
}
