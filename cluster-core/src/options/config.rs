//! Options from outside the binary: an optional TOML file and the environment, layered over
//! the options the code set, each option's value recorded with where it came from.
//!
//! Precedence, lowest to highest: the defaults, the code (builder, `#[cluster::main]`,
//! `Master::options`), the file, the environment. Every value goes through the option's own
//! text parser and rule ([`OptionSpec::set`]), the ones `#[cluster::main]` uses, so a value
//! means the same wherever it is written.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::parse::ParseError;
use super::{OPTIONS, OptionSpec, Options};
use crate::Error;

/// The environment variable naming the options file (the `config_file` option's variable).
pub const CONFIG_VAR: &str = "CLUSTER_CONFIG";

/// Heroku's and gunicorn's variable for the number of workers: read for `count` when
/// `CLUSTER_COUNT` is not set.
pub const WEB_CONCURRENCY: &str = "WEB_CONCURRENCY";

/// The options a reload applies to the running cluster; a change of any other needs a
/// restart of the master. These are the ones the supervisor reads each time it uses them
/// (the others are captured at start: signal handlers, the status server, the listeners,
/// the process launcher, the restart policies).
pub const RELOADABLE: &[&str] = &[
    "count",
    "grace",
    "reload_parallelism",
    "heartbeat_timeout",
    "max_memory",
    "memory_samples",
    "sample_interval",
];

/// Where an option's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The option's default: nothing set it (or the code set it to its default value, which
    /// cannot be told apart).
    Default,
    /// The code: the builder, `#[cluster::main]` or `Master::options`.
    Code,
    /// The options file, at this line (from 1).
    File {
        /// The file as it was named.
        path: PathBuf,
        /// The line of the key.
        line: usize,
    },
    /// An environment variable.
    Env {
        /// Its name: `CLUSTER_GRACE`, `WEB_CONCURRENCY`, ...
        var: String,
    },
}

impl Source {
    /// Where the value was written, for errors: "from the environment variable X", "in F,
    /// line N".
    fn place(&self) -> String {
        match self {
            Source::Default => "by default".to_owned(),
            Source::Code => "in the code".to_owned(),
            Source::File { path, line } => format!("in {}, line {line}", path.display()),
            Source::Env { var } => format!("from the environment variable {var}"),
        }
    }
}

impl fmt::Display for Source {
    /// Short, for a status table: `default`, `code`, `file app.toml:3`, `env CLUSTER_GRACE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Code => f.write_str("code"),
            Source::File { path, line } => write!(f, "file {}:{line}", path.display()),
            Source::Env { var } => write!(f, "env {var}"),
        }
    }
}

/// The options in force and where each came from: the code's options with the file's and
/// the environment's laid over them. The master makes one at start, before any worker, and
/// again at each reload ([`Resolved::reload`]).
///
/// ```
/// use std::ffi::OsString;
/// use std::time::Duration;
/// use cluster_core::options::{Options, Resolved, Source};
///
/// let env = [("CLUSTER_GRACE", "3s"), ("WEB_CONCURRENCY", "6")]
///     .map(|(k, v)| (OsString::from(k), OsString::from(v)));
/// let resolved = Resolved::resolve_from(Options::new().with_max_restarts(9), env)?;
/// assert_eq!(resolved.options().grace(), Duration::from_secs(3));
/// assert_eq!(resolved.options().count().resolve(), 6);
/// assert_eq!(resolved.source("max_restarts"), Some(&Source::Code));
/// assert_eq!(
///     resolved.source("count"),
///     Some(&Source::Env { var: "WEB_CONCURRENCY".into() })
/// );
/// assert_eq!(resolved.source("balance"), Some(&Source::Default));
/// # Ok::<(), cluster_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Resolved {
    options: Options,
    /// The code's options, which a reload lays the file and environment over again.
    code: Options,
    /// One per entry of [`OPTIONS`], in its order.
    sources: Vec<Source>,
    warnings: Vec<String>,
}

/// One option as [`Resolved::sources`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionSource<'a> {
    /// The option.
    pub name: &'static str,
    /// Its value as text (`status_token`'s is shown as `(set)`, never quoted).
    pub value: String,
    /// Where the value came from.
    pub source: &'a Source,
}

/// What a reload did with the options: see [`Resolved::reload`].
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The options now in force: the running ones with the changes in [`Reloaded::applied`].
    pub resolved: Resolved,
    /// Options whose new value was applied (each in [`RELOADABLE`]).
    pub applied: Vec<&'static str>,
    /// Options whose value changed in the file or environment but that only a restart of the
    /// master applies; their running value is kept.
    pub needs_restart: Vec<&'static str>,
}

impl Resolved {
    /// Lays the file and this process's environment over `code`: see [`Resolved::resolve_from`].
    ///
    /// # Errors
    ///
    /// As [`Resolved::resolve_from`].
    pub fn resolve(code: Options) -> Result<Resolved, Error> {
        Resolved::resolve_from(code, std::env::vars_os())
    }

    /// Lays over `code` the options file (named by `CLUSTER_CONFIG`, else by the code's
    /// `config_file`), then the variables of `env` (`CLUSTER_<OPTION>`, and
    /// `WEB_CONCURRENCY` for `count` when `CLUSTER_COUNT` is not set), and checks the result
    /// as [`Options::validate`] does.
    ///
    /// An empty variable counts as unset. A `CLUSTER_` variable that names no option is
    /// ignored, with a warning ([`Resolved::warnings`]) when it is close to an option's
    /// (`CLUSTER_GRACEE`): the prefix is not ours alone (Kubernetes, for one, sets
    /// `<SERVICE>_PORT` and `<SERVICE>_SERVICE_HOST` for a service named `cluster`), so an
    /// unknown one cannot be refused. The variables a master sets for its workers
    /// (`CLUSTER_WORKER_GROUP`, `CLUSTER_IPC_FD`, ...) are no option's.
    ///
    /// # Errors
    ///
    /// An error of kind [`InvalidOption`](crate::ErrorKind::InvalidOption) naming the option,
    /// where its value came from (the variable, or the file and line) and what the option
    /// accepts: for a bad value, an unknown key in the file, a file that cannot be read or is
    /// not TOML, a variable that is not UTF-8.
    pub fn resolve_from(
        code: Options,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Resolved, Error> {
        let env = Environment::read(env)?;
        let mut sources = code_sources(&code);
        let mut options = code.clone();
        // The file's name first, from the environment over the code, since the file comes
        // under the environment for every other option.
        if let Some((i, spec)) = index_of("config_file") {
            let var = spec.env_var();
            if let Some(text) = env.vars.get(&var) {
                let source = Source::Env { var };
                set(spec, &mut options, text, &source)?;
                sources[i] = source;
            }
        }
        if let Some(path) = options.config_file().map(Path::to_path_buf) {
            let named_by = sources
                .get(index_of("config_file").map_or(0, |(i, _)| i))
                .cloned()
                .unwrap_or(Source::Code);
            read_file(&path, &named_by, &mut options, &mut sources)?;
        }
        for (i, spec) in OPTIONS.iter().enumerate() {
            if spec.name() == "config_file" {
                continue;
            }
            let var = spec.env_var();
            let var = if env.vars.contains_key(&var) {
                var
            } else if spec.name() == "count" && env.vars.contains_key(WEB_CONCURRENCY) {
                WEB_CONCURRENCY.to_owned()
            } else {
                continue;
            };
            let Some(text) = env.vars.get(&var) else {
                continue;
            };
            let source = Source::Env { var };
            set(spec, &mut options, text, &source)?;
            sources[i] = source;
        }
        let resolved = Resolved {
            options,
            code,
            sources,
            warnings: env.warnings,
        };
        resolved.validate()?;
        Ok(resolved)
    }

    /// The code's options alone, without the file or the environment: for a master that was
    /// not started by `Cluster::run` (the supervisor's own tests), which has read neither.
    pub(crate) fn code_only(code: Options) -> Resolved {
        Resolved {
            sources: code_sources(&code),
            options: code.clone(),
            code,
            warnings: Vec::new(),
        }
    }

    /// The options in force.
    #[must_use]
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The options in force, without their sources.
    #[must_use]
    pub fn into_options(self) -> Options {
        self.options
    }

    /// Where the option named `name` came from, if there is such an option.
    #[must_use]
    pub fn source(&self, name: &str) -> Option<&Source> {
        index_of(name).and_then(|(i, _)| self.sources.get(i))
    }

    /// Every option with its value and source, in the order of [`OPTIONS`]: what
    /// `clusterctl status` shows.
    pub fn sources(&self) -> impl Iterator<Item = OptionSource<'_>> {
        OPTIONS
            .iter()
            .zip(&self.sources)
            .map(|(spec, source)| OptionSource {
                name: spec.name(),
                // A secret is never shown, only whether it is set.
                value: if spec.name() == "status_token" && self.options.status_token().is_some() {
                    "(set)".to_owned()
                } else {
                    spec.value_text(&self.options)
                },
                source,
            })
    }

    /// What the master should warn about: `CLUSTER_` variables ignored though close to an
    /// option's (a likely typo).
    #[must_use]
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Reads the file and this process's environment again: see [`Resolved::reload_from`].
    ///
    /// # Errors
    ///
    /// As [`Resolved::reload_from`].
    pub fn reload(&self) -> Result<Reloaded, Error> {
        self.reload_from(std::env::vars_os())
    }

    /// Lays the file and `env` over the code's options again, as at start, and applies to
    /// the options in force the changes a running cluster can take ([`RELOADABLE`]); the
    /// other changes are listed as needing a restart and their running values kept.
    ///
    /// A master's environment cannot be changed from outside, so for a running master it is
    /// the file's changes that count; the environment still takes precedence over them.
    ///
    /// # Errors
    ///
    /// As [`Resolved::resolve_from`]; also when the applied changes break a rule between
    /// options with the values kept. The options in force are then unchanged.
    pub fn reload_from(
        &self,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Reloaded, Error> {
        let new = Resolved::resolve_from(self.code.clone(), env)?;
        let mut resolved = self.clone();
        resolved.warnings = new.warnings.clone();
        let mut applied = Vec::new();
        let mut needs_restart = Vec::new();
        for (i, spec) in OPTIONS.iter().enumerate() {
            let then = spec.value_text(&new.options);
            if spec.value_text(&self.options) == then {
                resolved.sources[i] = new.sources[i].clone();
            } else if RELOADABLE.contains(&spec.name()) {
                spec.set(&mut resolved.options, &then)?;
                resolved.sources[i] = new.sources[i].clone();
                applied.push(spec.name());
            } else {
                needs_restart.push(spec.name());
            }
        }
        resolved.validate()?;
        Ok(Reloaded {
            resolved,
            applied,
            needs_restart,
        })
    }

    /// [`Options::validate`], its error saying where the option at fault was set when that
    /// was outside the code.
    fn validate(&self) -> Result<(), Error> {
        self.options.validate().map_err(|e| {
            match e.option().and_then(|name| Some((name, self.source(name)?))) {
                Some((name, source @ (Source::File { .. } | Source::Env { .. }))) => {
                    e.with_note(format!(" (`{name}` was set {})", source.place()))
                }
                _ => e,
            }
        })
    }
}

/// Each option's source when only the code has set options: `Code` where its value is not
/// the default's.
fn code_sources(code: &Options) -> Vec<Source> {
    let defaults = Options::default();
    OPTIONS
        .iter()
        .map(|spec| {
            if spec.value_text(code) == spec.value_text(&defaults) {
                Source::Default
            } else {
                Source::Code
            }
        })
        .collect()
}

/// The option named `name` and its index in [`OPTIONS`].
fn index_of(name: &str) -> Option<(usize, &'static OptionSpec)> {
    OPTIONS
        .iter()
        .enumerate()
        .find(|(_, spec)| spec.name() == name)
}

/// Sets `spec` in `options` from `text`, an error naming where the text came from.
fn set(spec: &OptionSpec, options: &mut Options, text: &str, source: &Source) -> Result<(), Error> {
    spec.set_text(options, text)
        .map_err(|problem| bad_value(spec, source, &problem))
}

fn bad_value(spec: &OptionSpec, source: &Source, problem: &dyn fmt::Display) -> Error {
    Error::invalid_option_at(
        spec.name(),
        &source.place(),
        format!("{problem}; `{}` accepts {}", spec.name(), spec.accepts()),
    )
}

/// The variables of the environment that concern the options.
struct Environment {
    /// `CLUSTER_<OPTION>` and `WEB_CONCURRENCY`, non-empty.
    vars: BTreeMap<String, String>,
    warnings: Vec<String>,
}

impl Environment {
    fn read(env: impl IntoIterator<Item = (OsString, OsString)>) -> Result<Environment, Error> {
        let mut vars = BTreeMap::new();
        let mut warnings = Vec::new();
        for (key, value) in env {
            // A name that is not UTF-8 is none of ours, which are ASCII.
            let Some(key) = key.to_str() else { continue };
            let spec = OPTIONS
                .iter()
                .find(|spec| spec.env_var() == key)
                .or_else(|| OptionSpec::find("count").filter(|_| key == WEB_CONCURRENCY));
            let Some(spec) = spec else {
                if let Some(warning) = unknown_var(key) {
                    warnings.push(warning);
                }
                continue;
            };
            let value = value.into_string().map_err(|value| {
                bad_value(
                    spec,
                    &Source::Env {
                        var: key.to_owned(),
                    },
                    &format!("{value:?} is not UTF-8"),
                )
            })?;
            if !value.trim().is_empty() {
                vars.insert(key.to_owned(), value);
            }
        }
        Ok(Environment { vars, warnings })
    }
}

/// A warning for a `CLUSTER_` variable that is no option's but close to one's.
fn unknown_var(key: &str) -> Option<String> {
    let rest = key.strip_prefix("CLUSTER_")?;
    if crate::identity::is_cluster_var(key.as_ref()) {
        return None;
    }
    let (closest, distance) = closest_option(&rest.to_ascii_lowercase())?;
    // Two edits: a letter doubled or missing, two letters swapped, `_` left out.
    (distance <= 2).then(|| {
        format!(
            "{key} is ignored: no option is named `{}`; did you mean {}?",
            rest.to_ascii_lowercase(),
            closest.env_var()
        )
    })
}

/// The option whose name is closest to `name`, and how many edits away.
fn closest_option(name: &str) -> Option<(&'static OptionSpec, usize)> {
    OPTIONS
        .iter()
        .map(|spec| (spec, edit_distance(name, spec.name())))
        .min_by_key(|&(_, d)| d)
}

/// Levenshtein distance, counting an adjacent swap as one edit (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// Reads the options file at `path` (named by `named_by`) into `options`.
fn read_file(
    path: &Path,
    named_by: &Source,
    options: &mut Options,
    sources: &mut [Source],
) -> Result<(), Error> {
    let file_error =
        |reason: String| Error::invalid_option_at("config_file", &named_by.place(), reason);
    let text = std::fs::read_to_string(path).map_err(|e| {
        file_error(format!("cannot read the options file {}", path.display())).with_source(e)
    })?;
    let line_of = |offset: usize| {
        text.get(..offset)
            .map_or(1, |before| before.matches('\n').count() + 1)
    };
    let table = DeTable::parse(&text).map_err(|e| {
        let line = e.span().map_or(1, |span| line_of(span.start));
        file_error(format!(
            "{}, line {line}, is not TOML: {}",
            path.display(),
            e.message().trim_end()
        ))
    })?;
    // In the file's order, so that the first error is the first in the file.
    let mut entries: Vec<_> = table.get_ref().iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    for (key, value) in entries {
        let line = line_of(key.span().start);
        let name: &str = key.get_ref();
        let source = Source::File {
            path: path.to_path_buf(),
            line,
        };
        let Some((i, spec)) = index_of(name) else {
            let hint = match closest_option(name) {
                Some((spec, d)) if d <= 2 => format!("did you mean `{}`? ", spec.name()),
                _ => String::new(),
            };
            return Err(Error::invalid_option_at(
                "config_file",
                &source.place(),
                format!(
                    "no option is named `{name}`; {hint}the keys are the options' names: {}",
                    OPTIONS
                        .iter()
                        .map(OptionSpec::name)
                        .filter(|n| *n != "config_file")
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        if spec.name() == "config_file" {
            return Err(Error::invalid_option_at(
                "config_file",
                &source.place(),
                format!(
                    "the options file cannot name another; set `config_file` in the code or {CONFIG_VAR}"
                ),
            ));
        }
        let text = toml_text(spec, value.get_ref())
            .map_err(|problem| bad_value(spec, &source, &problem))?;
        set(spec, options, &text, &source)?;
        sources[i] = source;
    }
    Ok(())
}

/// A TOML value as the option's text form: a string as it is, a decimal integer's digits, a
/// boolean, or, for a list, an array of strings joined with commas.
fn toml_text(spec: &OptionSpec, value: &DeValue<'_>) -> Result<String, ParseError> {
    let what = |found: String| {
        ParseError::new(format!(
            "{found} is not a value of `{}`; write it as a string (`{} = \"...\"`){}",
            spec.name(),
            spec.name(),
            if spec.is_list() {
                " or an array of strings"
            } else {
                ""
            }
        ))
    };
    match value {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(n) if n.radix() == 10 => Ok(n.as_str().replace('_', "")),
        DeValue::Boolean(b) => Ok(b.to_string()),
        DeValue::Array(items) if spec.is_list() => {
            let mut texts = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                match item.get_ref() {
                    DeValue::String(s) => texts.push(s.to_string()),
                    other => {
                        return Err(what(format!(
                            "item {i} of the array, a TOML {},",
                            kind(other)
                        ))
                        .at_item(i));
                    }
                }
            }
            Ok(texts.join(", "))
        }
        DeValue::Integer(_) => Err(what("a TOML integer not in decimal".to_owned())),
        other => Err(what(format!("a TOML {}", kind(other)))),
    }
}

fn kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "string",
        DeValue::Integer(_) => "integer",
        DeValue::Float(_) => "float",
        DeValue::Boolean(_) => "boolean",
        DeValue::Datetime(_) => "date",
        DeValue::Array(_) => "array",
        DeValue::Table(_) => "table",
    }
}
