//! The builder: shortcuts and `configure` compose in order, and the default group's name.

use std::time::Duration;

use super::*;
use crate::options::{Balance, Count, OPTIONS, OptionSpec};

fn cluster() -> Cluster<(), ()> {
    Cluster::new().worker(|_ctx| async {})
}

#[test]
fn shortcuts_and_configure_compose_in_order() {
    let c = cluster()
        .count(3)
        .configure(|o| {
            // `configure` sees what was set before it.
            assert_eq!(o.count(), Count::Fixed(3));
            o.with_balance(Balance::RoundRobin).with_min_ready(2)
        })
        .grace_ms(1500)
        .configure(|o| o.with_max_memory(Some(1 << 30)));
    let expected = Options::new()
        .with_count(3)
        .with_balance(Balance::RoundRobin)
        .with_min_ready(2)
        .with_grace(Duration::from_millis(1500))
        .with_max_memory(Some(1 << 30));
    assert_eq!(c.options, expected);
    assert!(c.validate().is_ok());
}

#[test]
fn an_option_set_twice_keeps_the_later_value() {
    let c = cluster().count(3).configure(|o| o.with_count(5));
    assert_eq!(c.options.count(), Count::Fixed(5));
    let c = c.count(7);
    assert_eq!(c.options.count(), Count::Fixed(7));
    let c = c.configure(|o| o.with_count_cpus());
    assert_eq!(c.options.count(), Count::Cpus);
    // The shortcut takes what the setter takes.
    let c = c.count(2).count(Count::Cpus);
    assert_eq!(c.options.count(), Count::Cpus);
}

/// A function of the options so far (shared settings, a configuration file) keeps what was
/// set before it, as a closure does.
#[test]
fn configure_takes_a_function_of_the_options_so_far() {
    fn production(o: Options) -> Options {
        o.with_grace(Duration::from_secs(30))
    }
    let c = cluster().count(3).configure(production).max_restarts(9);
    assert_eq!(c.options.count(), Count::Fixed(3));
    assert_eq!(c.options.grace(), Duration::from_secs(30));
    assert_eq!(c.options.max_restarts(), 9);
}

/// Each shortcut the README's table names is an option, and sets exactly what `configure`
/// with the option's setter would.
#[test]
fn every_shortcut_is_configure_with_its_setter() {
    for name in SHORTCUTS {
        assert!(OptionSpec::find(name).is_some(), "{name} is not an option");
        let (shortcut, configured) = match *name {
            "count" => (cluster().count(5), cluster().configure(|o| o.with_count(5))),
            "max_restarts" => (
                cluster().max_restarts(9),
                cluster().configure(|o| o.with_max_restarts(9)),
            ),
            "max_restarts_interval" => (
                cluster().max_restarts_interval(Duration::from_secs(60)),
                cluster().configure(|o| o.with_max_restarts_interval(Duration::from_secs(60))),
            ),
            "grace" => (
                cluster().grace(Duration::from_secs(9)),
                cluster().configure(|o| o.with_grace(Duration::from_secs(9))),
            ),
            "signals" => (
                cluster().signals([Signal::SIGTERM]),
                cluster().configure(|o| o.with_signals([Signal::SIGTERM])),
            ),
            other => panic!("no test for the shortcut {other}"),
        };
        assert_ne!(shortcut.options, Options::default(), "{name} changes it");
        assert_eq!(shortcut.options, configured.options, "{name}");
    }
    // The variants in other units set the same options.
    assert_eq!(
        cluster().count_cpus().options,
        cluster().configure(|o| o.with_count(Count::Cpus)).options
    );
    assert_eq!(
        cluster().grace_ms(9000).options,
        cluster().grace(Duration::from_secs(9)).options
    );
    assert_eq!(
        cluster().max_restarts_interval_ms(60_000).options,
        cluster()
            .max_restarts_interval(Duration::from_secs(60))
            .options
    );
    assert!(SHORTCUTS.len() < OPTIONS.len());
}

struct Boss;

#[async_trait::async_trait]
impl Master for Boss {
    type Down = ();
    type Up = ();
    fn options(&self) -> Options {
        Options::new()
            .with_grace(Duration::from_secs(1))
            .with_count(4)
    }
}

struct App;

#[async_trait::async_trait]
impl Worker for App {
    type Down = ();
    type Up = ();
    async fn run(&self, _ctx: WorkerContext) -> Result<(), BoxError> {
        Ok(())
    }
}

/// `Master::options()` are the app's starting options; the builder's calls after
/// `from_app` (and `#[cluster::main]`'s arguments) adjust them.
#[test]
fn from_app_starts_from_the_masters_options() {
    let c = Cluster::from_app(Boss, App);
    assert_eq!(c.options, Boss.options());
    let c = c.count(2).configure(|o| o.with_min_ready(2));
    assert_eq!(c.options.grace(), Duration::from_secs(1));
    assert_eq!(c.options.count(), Count::Fixed(2));
    assert_eq!(c.options.min_ready(), 2);
}

#[test]
fn the_default_group_is_named_by_the_constant() {
    assert_eq!(DEFAULT_GROUP, "worker");
    let c = cluster();
    let names: Vec<&str> = c.groups.iter().map(|g| g.options.name()).collect();
    assert_eq!(names, [DEFAULT_GROUP]);
    // A group of that name besides `.worker(...)` is two groups of one name.
    let c = cluster().group(GroupOptions::new(DEFAULT_GROUP), |_ctx| async {});
    assert!(c.validate().is_err());
}

// Here rather than with the options' own tests: the table says how the `Cluster` builder
// sets each option, and `options` must not import the builder above it.
/// The README's option table is the table's: each row's name, default, attribute, how the
/// `Cluster` builder sets it (its shortcut, or `configure` with the option's setter), accepted
/// values and meaning. On a mismatch the message holds the table to paste.
#[test]
fn readme_lists_every_option() {
    let readme = include_str!("../../../README.md");
    let header = "| option | default | `#[cluster::main]` | `Cluster` builder | environment | options file | accepts | meaning |";
    let mut expected = vec![
        header.to_owned(),
        "|---|---|---|---|---|---|---|---|".to_owned(),
    ];
    for spec in OPTIONS {
        // A pipe in a cell, even in a code span, is written `\|` (GitHub's tables).
        let builder = if SHORTCUTS.contains(&spec.name()) {
            format!(".{}(…)", spec.name())
        } else {
            format!(".configure(\\|o\\| o.{}(…))", spec.setter())
        };
        let mut env = format!("`{}`", spec.env_var());
        if spec.name() == "count" {
            env.push_str(", `WEB_CONCURRENCY`");
        }
        let file = match spec.toml_example() {
            Some(example) => format!("`{example}`"),
            None => "—".to_owned(),
        };
        expected.push(format!(
            "| `{}` | `{}` | `{}` | `{builder}` | {env} | {file} | {} | {} |",
            spec.name(),
            spec.default_text(),
            spec.attribute_example(),
            spec.accepts(),
            spec.doc()
        ));
    }
    let found: Vec<&str> = readme
        .lines()
        .skip_while(|line| *line != header)
        .take_while(|line| line.starts_with('|'))
        .collect();
    assert_eq!(
        found,
        expected,
        "README.md's option table differs from the options table; the table should read:\n{}\n",
        expected.join("\n")
    );
}
