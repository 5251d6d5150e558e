//! The arguments of `#[cluster::main(...)]`: parsed, then checked one by one, so that every
//! mistake is reported on the token that caused it.
//!
//! The options, what each accepts, its rule and its default are cluster-core's table
//! (`cluster_core::options::OPTIONS`), checked here by the same parsers the master uses. What
//! is left to this module is the attribute's syntax: a value written as a number, a string,
//! a name or a list becomes the table's text, and each error goes on the token at fault. The
//! arguments that are not options (`runtime`, `worker`, `master`, `crate`) are this module's.

use cluster_core::options::{OptionSpec, Options, heartbeat_conflict, in_both_lists};
use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned as _;
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, LitStr, Token, UnOp};

/// The arguments that are not options of the table, after them in the list of valid keys.
const NOT_OPTIONS: &[&str] = &["runtime", "worker", "master", "crate"];

/// One `key = value` pair as written.
struct Pair {
    key: Ident,
    value: Expr,
}

/// The raw argument list; [`Args::from_raw`] gives it meaning.
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

/// An option of the table as written and checked.
pub(crate) struct OptionArg {
    pub(crate) spec: &'static OptionSpec,
    /// The checked value as a Rust expression, its paths to the crate starting with `$crate`.
    pub(crate) expr: String,
    /// What was written.
    pub(crate) span: Span,
    /// The value as the table's text.
    text: String,
    /// A list's items as text, each with the span of what was written.
    items: Vec<(String, Span)>,
}

/// The checked arguments.
#[derive(Default)]
pub(crate) struct Args {
    /// The options of the table, in the order written.
    pub(crate) options: Vec<OptionArg>,
    pub(crate) runtime: Option<Spanned<Runtime>>,
    /// The app written as types: a value implementing `cluster::Worker`.
    pub(crate) worker: Option<(Ident, Expr)>,
    /// The app written as types: a value implementing `cluster::Master`.
    pub(crate) master: Option<(Ident, Expr)>,
    pub(crate) krate: Option<syn::Path>,
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
            let spec = OptionSpec::find(&name);
            if spec.is_none() && !NOT_OPTIONS.contains(&name.as_str()) {
                errors.push(syn::Error::new(key.span(), unknown_option(&name)));
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
            match (spec, name.as_str()) {
                (Some(spec), _) => {
                    if let Some(option) = option_arg(spec, &value, errors) {
                        args.options.push(option);
                    }
                }
                (None, "runtime") => {
                    let span = value.span();
                    args.runtime = errors
                        .check(parse_runtime(&value))
                        .map(|value| Spanned { value, span });
                }
                (None, "worker") => args.worker = Some((key, value)),
                (None, "master") => args.master = Some((key, value)),
                // The only key left in NOT_OPTIONS.
                (None, _) => args.krate = errors.check(parse_crate(&value)),
            }
        }
        args.check_signal_overlap(errors);
        args.check_heartbeat(errors);
        args
    }

    fn option(&self, name: &str) -> Option<&OptionArg> {
        self.options.iter().find(|o| o.spec.name() == name)
    }

    /// A signal cannot both stop and reload the cluster (cluster-core refuses it at
    /// start-up). The error goes on each such signal in the list written second.
    fn check_signal_overlap(&self, errors: &mut Errors) {
        let (Some(at_signals), Some(at_reload)) = (
            self.options.iter().position(|o| o.spec.name() == "signals"),
            self.options
                .iter()
                .position(|o| o.spec.name() == "reload_signals"),
        ) else {
            return;
        };
        let (first, second, other) = if at_signals < at_reload {
            (at_signals, at_reload, "a shutdown signal in `signals`")
        } else {
            (at_reload, at_signals, "a reload signal in `reload_signals`")
        };
        let signals = |at: usize| {
            self.options[at]
                .items
                .iter()
                .filter_map(|(text, span)| Some((cluster_core::parse_signal(text).ok()?, *span)))
                .collect::<Vec<_>>()
        };
        let first_signals: Vec<_> = signals(first).into_iter().map(|(s, _)| s).collect();
        let second_name = self.options[second].spec.name();
        for (signal, span) in signals(second) {
            if first_signals.contains(&signal) {
                errors.push(syn::Error::new(
                    span,
                    format!(
                        "invalid option `{second_name}`: {}",
                        in_both_lists(signal, other)
                    ),
                ));
            }
        }
    }

    /// A timeout no longer than the interval would find every worker hung (cluster-core
    /// refuses it at start-up). Checked only when both are written: otherwise one of them
    /// comes from the defaults or from `Master::options()`, which the macro cannot see.
    fn check_heartbeat(&self, errors: &mut Errors) {
        let (Some(interval), Some(timeout)) = (
            self.option("heartbeat_interval"),
            self.option("heartbeat_timeout"),
        ) else {
            return;
        };
        let mut both = Options::default();
        if interval.spec.set(&mut both, &interval.text).is_err()
            || timeout.spec.set(&mut both, &timeout.text).is_err()
        {
            return;
        }
        if let Err(reason) = heartbeat_conflict(both.heartbeat_interval(), both.heartbeat_timeout())
        {
            errors.push(syn::Error::new(
                timeout.span,
                format!("invalid option `heartbeat_timeout`: {reason}"),
            ));
        }
    }
}

/// The error for a key that is no option: the nearest one if it looks like a typo, else the
/// list. Naming one key keeps the message, and its UI test, the same when options are added.
fn unknown_option(name: &str) -> String {
    let keys = || {
        cluster_core::options::OPTIONS
            .iter()
            .map(OptionSpec::name)
            .chain(NOT_OPTIONS.iter().copied())
    };
    let nearest = keys()
        .map(|key| (edit_distance(name, key), key))
        .min()
        .filter(|(distance, key)| *distance <= 2.max(key.len() / 4));
    match nearest {
        Some((_, key)) => format!(
            "unknown option `{name}`; did you mean `{key}`? (the options are in the README's Options table)"
        ),
        None => format!(
            "unknown option `{name}`; the options of `#[cluster::main]` are: {}",
            keys().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Levenshtein distance, for the suggestion on a misspelt key.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The error of the table's parser, as the master would print it, on `span`.
fn invalid(spec: &OptionSpec, problem: &impl std::fmt::Display, span: Span) -> syn::Error {
    syn::Error::new(span, format!("invalid option `{}`: {problem}", spec.name()))
}

/// Turns the value written for `spec` into the table's text and checks it there; a list is
/// checked item by item, so that each bad item gets its own error.
fn option_arg(spec: &'static OptionSpec, value: &Expr, errors: &mut Errors) -> Option<OptionArg> {
    let span = value.span();
    if !spec.is_list() {
        let text = errors.check(scalar_text(spec, value))?;
        // Spanned on the tokens, not `span`: a negative number is two tokens.
        let expr = errors.check(spec.rust_expr(&text).map_err(|e| {
            syn::Error::new_spanned(value, format!("invalid option `{}`: {e}", spec.name()))
        }))?;
        return Some(OptionArg {
            spec,
            expr,
            span,
            text,
            items: Vec::new(),
        });
    }
    let Expr::Array(array) = value else {
        errors.push(syn::Error::new(
            span,
            format!(
                "`{}` takes a list, such as `{}`",
                spec.name(),
                spec.attribute_example()
            ),
        ));
        return None;
    };
    let mut items: Vec<(String, Span)> = Vec::new();
    let mut failed = false;
    for elem in &array.elems {
        let Some((text, span)) = item_text(elem) else {
            errors.push(syn::Error::new_spanned(
                elem,
                format!(
                    "expected an item of `{}`: a name or a string, such as `{}`",
                    spec.name(),
                    spec.attribute_example()
                ),
            ));
            failed = true;
            continue;
        };
        // The items before passed together, so a problem now is this item's (a repeat of an
        // earlier one, for example).
        let mut with: Vec<&str> = items.iter().map(|(t, _)| t.as_str()).collect();
        with.push(&text);
        match spec.parse(&with.join(", ")) {
            Ok(()) => items.push((text, span)),
            Err(e) => {
                errors.push(invalid(spec, &e, span));
                failed = true;
            }
        }
    }
    if failed {
        return None;
    }
    let text = items
        .iter()
        .map(|(t, _)| t.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let expr = errors.check(spec.rust_expr(&text).map_err(|e| invalid(spec, &e, span)))?;
    Some(OptionArg {
        spec,
        expr,
        span,
        text,
        items,
    })
}

/// A scalar value as the table's text: a number, `true`/`false` and a name as written, a
/// string's contents. A number in quotes is refused, so that `max_memory = "512"` is not
/// taken for 512 bytes when 512 MiB was meant.
fn scalar_text(spec: &OptionSpec, value: &Expr) -> syn::Result<String> {
    match value {
        Expr::Lit(ExprLit { lit, .. }) => match lit {
            Lit::Int(n) => Ok(n.base10_digits().to_owned()),
            Lit::Float(f) => Ok(f.base10_digits().to_owned()),
            Lit::Bool(b) => Ok(b.value.to_string()),
            Lit::Str(s) => {
                let text = s.value();
                if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(syn::Error::new(
                        s.span(),
                        format!(
                            "a number in quotes: write it without quotes (`{} = {text}`); `{}` takes {}",
                            spec.name(),
                            spec.name(),
                            spec.accepts()
                        ),
                    ));
                }
                Ok(text)
            }
            _ => Err(takes(spec, value)),
        },
        // A negative number: the table's parser says why it is refused.
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) => match &**expr {
            Expr::Lit(ExprLit {
                lit: Lit::Int(n), ..
            }) => Ok(format!("-{}", n.base10_digits())),
            Expr::Lit(ExprLit {
                lit: Lit::Float(f), ..
            }) => Ok(format!("-{}", f.base10_digits())),
            _ => Err(takes(spec, value)),
        },
        Expr::Path(p) if p.qself.is_none() => match p.path.get_ident() {
            Some(ident) => Ok(ident.to_string()),
            None => Err(takes(spec, value)),
        },
        _ => Err(takes(spec, value)),
    }
}

fn takes(spec: &OptionSpec, value: &Expr) -> syn::Error {
    syn::Error::new_spanned(
        value,
        format!(
            "`{}` takes {}, such as `{}`",
            spec.name(),
            spec.accepts(),
            spec.attribute_example()
        ),
    )
}

/// An item of a list: a name or a string (or a number), with its span.
fn item_text(elem: &Expr) -> Option<(String, Span)> {
    match elem {
        Expr::Path(p) if p.qself.is_none() => {
            p.path.get_ident().map(|i| (i.to_string(), elem.span()))
        }
        Expr::Lit(ExprLit {
            lit: Lit::Int(n), ..
        }) => Some((n.base10_digits().to_owned(), n.span())),
        _ => lit_str(elem).map(|s| (s.value(), s.span())),
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
    use super::{Args, Errors, RawArgs};
    use cluster_core::options::OPTIONS;

    fn parse(tokens: proc_macro2::TokenStream) -> (Args, syn::Result<()>) {
        let raw: RawArgs = syn::parse2(tokens).unwrap();
        let mut errors = Errors::default();
        let args = Args::from_raw(raw, &mut errors);
        (args, errors.finish())
    }

    /// Every option of the table is a key of the attribute, written as its README row shows
    /// it, and reaches the generated code with its default.
    #[test]
    fn every_option_of_the_table_is_accepted() {
        for spec in OPTIONS {
            let example = spec.attribute_example();
            let (args, result) = parse(example.parse().unwrap());
            assert!(result.is_ok(), "{example}: {:?}", result.err());
            assert_eq!(args.options.len(), 1, "{example}");
            assert_eq!(
                Some(&args.options[0].expr),
                spec.rust_expr(spec.default_text()).ok().as_ref(),
                "{example}"
            );
        }
    }

    #[test]
    fn accept_coalescing_option() {
        let expr = |tokens| {
            let (args, result) = parse(tokens);
            assert!(result.is_ok());
            args.options[0].expr.clone()
        };
        let ms = |ms: u32| format!("::std::time::Duration::new(0u64, {}u32)", ms * 1_000_000);
        assert_eq!(
            expr(quote::quote!(accept_coalescing = "2ms", count = 2)),
            ms(2)
        );
        assert_eq!(expr(quote::quote!(accept_coalescing = 1)), ms(1));
        assert_eq!(expr(quote::quote!(accept_coalescing = 0)), ms(0));
        assert_eq!(expr(quote::quote!(accept_coalescing = "0s")), ms(0));
        assert_eq!(expr(quote::quote!(accept_coalescing = 100)), ms(100));
        assert_eq!(expr(quote::quote!(accept_coalescing = "100ms")), ms(100));
        for (tokens, written) in [
            (quote::quote!(accept_coalescing = 250), "250ms"),
            (quote::quote!(accept_coalescing = 101), "101ms"),
            (quote::quote!(accept_coalescing = "1s"), "1s"),
            (quote::quote!(accept_coalescing = "1m"), "1m"),
            // Beyond 365 days: still this option's limit, not the general one.
            (quote::quote!(accept_coalescing = "9000h"), "9000h"),
        ] {
            let (args, result) = parse(tokens);
            assert!(args.options.is_empty());
            let error = result.unwrap_err().to_string();
            assert!(
                error.starts_with("invalid option `accept_coalescing`: "),
                "{error}"
            );
            assert!(error.contains("at most 100ms, or 0"), "{error}");
            assert!(error.contains(&format!("{written} would hold")), "{error}");
        }
        for tokens in [
            quote::quote!(accept_coalescing = "2x"),
            quote::quote!(accept_coalescing = 1.5),
            quote::quote!(accept_coalescing = -1),
        ] {
            let error = parse(tokens).1.unwrap_err().to_string();
            assert!(error.contains("invalid duration"), "{error}");
        }
        let (_, result) = parse(quote::quote!(accept_coalescing = 1, accept_coalescing = 2));
        let error = result.unwrap_err().to_string();
        assert_eq!(error, "duplicate option `accept_coalescing`");
    }

    #[test]
    fn unknown_keys() {
        let error = |tokens| parse(tokens).1.unwrap_err().to_string();
        assert!(error(quote::quote!(cout = 4)).contains("did you mean `count`?"));
        assert!(
            error(quote::quote!(heartbeat_timout = 4))
                .contains("did you mean `heartbeat_timeout`?")
        );
        assert!(error(quote::quote!(r#crate2 = 4)).contains("did you mean `crate`?"));
        let listed = error(quote::quote!(frobnicate = 4));
        assert!(listed.contains("are: count, max_restarts,"), "{listed}");
        assert!(listed.ends_with("worker, master, crate"), "{listed}");
        assert_eq!(super::edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn syntax_of_values() {
        let error = |tokens| parse(tokens).1.unwrap_err().to_string();
        assert!(
            error(quote::quote!(signals = SIGTERM))
                .contains("takes a list, such as `signals = [SIGINT, SIGTERM]`")
        );
        assert!(
            error(quote::quote!(max_memory = "512"))
                .contains("without quotes (`max_memory = 512`)")
        );
        assert!(error(quote::quote!(grace = some::path)).contains("`grace` takes a duration"));
        let (args, result) = parse(quote::quote!(
            count = cpus,
            signals = [INT, "term", SIGHUP],
            balance = RoundRobin
        ));
        assert!(result.is_ok());
        assert_eq!(args.options[0].expr, "$crate::Count::Cpus");
        assert_eq!(
            args.options[1].expr,
            "[$crate::Signal::SIGINT, $crate::Signal::SIGTERM, $crate::Signal::SIGHUP]"
        );
        assert_eq!(args.options[2].expr, "$crate::Balance::RoundRobin");
    }
}
