//! Options from the file and the environment: precedence, sources, `WEB_CONCURRENCY`, and
//! each error's message (the option, where it was written, what is accepted).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::options::{Count, OPTIONS, Options, RELOADABLE, Resolved, Source};
use crate::{Error, ErrorKind};

fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    vars.iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

/// A file of `text` in a directory of its own, removed on drop.
struct File {
    dir: PathBuf,
    path: PathBuf,
}

impl File {
    fn new(text: &str) -> File {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cluster-config-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.toml");
        std::fs::write(&path, text).unwrap();
        File { dir, path }
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn var(&self) -> (&str, &str) {
        ("CLUSTER_CONFIG", self.path.to_str().unwrap())
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn error_of(result: Result<Resolved, Error>) -> Error {
    match result {
        Ok(resolved) => panic!("expected an error, got {:?}", resolved.options()),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidOption, "{e:#}");
            e
        }
    }
}

#[test]
fn default_under_code_under_file_under_environment() {
    let file = File::new("grace = \"7s\"\nmax_restarts = 8\nmin_ready = 3\n");
    let code = Options::new()
        .with_grace(Duration::from_secs(6))
        .with_max_restarts(5)
        .with_memory_samples(9)
        .with_config_file(Some(file.path().to_path_buf()));
    let resolved = Resolved::resolve_from(code, env(&[("CLUSTER_GRACE", "9s")])).unwrap();
    let o = resolved.options();
    // The environment over the file over the code over the default.
    assert_eq!(o.grace(), Duration::from_secs(9));
    assert_eq!(o.max_restarts(), 8);
    assert_eq!(o.memory_samples(), 9);
    assert_eq!(o.min_ready(), 3);
    assert_eq!(o.sample_interval(), Duration::from_secs(1));
    let path = file.path().to_path_buf();
    assert_eq!(
        resolved.source("grace"),
        Some(&Source::Env {
            var: "CLUSTER_GRACE".into()
        })
    );
    assert_eq!(
        resolved.source("max_restarts"),
        Some(&Source::File {
            path: path.clone(),
            line: 2
        })
    );
    assert_eq!(
        resolved.source("min_ready"),
        Some(&Source::File { path, line: 3 })
    );
    assert_eq!(resolved.source("memory_samples"), Some(&Source::Code));
    assert_eq!(resolved.source("config_file"), Some(&Source::Code));
    assert_eq!(resolved.source("sample_interval"), Some(&Source::Default));
    // One entry per option, in the table's order, the secret never shown.
    let listed: Vec<_> = resolved.sources().map(|o| o.name).collect();
    let names: Vec<_> = OPTIONS.iter().map(|s| s.name()).collect();
    assert_eq!(listed, names);
    let grace = resolved.sources().find(|o| o.name == "grace").unwrap();
    assert_eq!(
        (grace.value.as_str(), grace.source.to_string().as_str()),
        ("9s", "env CLUSTER_GRACE")
    );
}

#[test]
fn cluster_config_names_the_file_over_the_code() {
    let code_file = File::new("count = 5\n");
    let env_file = File::new("count = 4\n");
    let code = Options::new().with_config_file(Some(code_file.path().to_path_buf()));
    let resolved = Resolved::resolve_from(code, env(&[env_file.var()])).unwrap();
    assert_eq!(resolved.options().count(), Count::Fixed(4));
    assert_eq!(
        resolved.source("config_file"),
        Some(&Source::Env {
            var: "CLUSTER_CONFIG".into()
        })
    );
    // `off` turns the code's file off.
    let code = Options::new().with_config_file(Some(code_file.path().to_path_buf()));
    let resolved = Resolved::resolve_from(code, env(&[("CLUSTER_CONFIG", "off")])).unwrap();
    assert_eq!(resolved.options().count(), Count::Fixed(2));
}

#[test]
fn web_concurrency_sets_count_unless_cluster_count_does() {
    let resolved = Resolved::resolve_from(
        Options::new().with_count(3),
        env(&[("WEB_CONCURRENCY", "6")]),
    )
    .unwrap();
    assert_eq!(resolved.options().count(), Count::Fixed(6));
    assert_eq!(
        resolved.source("count"),
        Some(&Source::Env {
            var: "WEB_CONCURRENCY".into()
        })
    );
    let resolved = Resolved::resolve_from(
        Options::new(),
        env(&[("WEB_CONCURRENCY", "6"), ("CLUSTER_COUNT", "cpus")]),
    )
    .unwrap();
    assert_eq!(resolved.options().count(), Count::Cpus);
    // Over the file too: it is the environment.
    let file = File::new("count = 5\n");
    let resolved =
        Resolved::resolve_from(Options::new(), env(&[file.var(), ("WEB_CONCURRENCY", "7")]))
            .unwrap();
    assert_eq!(resolved.options().count(), Count::Fixed(7));
    let e = error_of(Resolved::resolve_from(
        Options::new(),
        env(&[("WEB_CONCURRENCY", "many")]),
    ));
    assert_eq!(e.option(), Some("count"));
    assert!(
        e.to_string()
            .starts_with("invalid option `count` from the environment variable WEB_CONCURRENCY: "),
        "{e}"
    );
}

#[test]
fn every_option_has_a_variable_of_its_name() {
    for spec in OPTIONS {
        let var = spec.env_var();
        let resolved = Resolved::resolve_from(Options::new(), env(&[(&var, spec.default_text())]))
            .unwrap_or_else(|e| panic!("{var}: {e:#}"));
        // An empty variable counts as unset, so an option whose default is empty (an empty
        // list) is not set by it.
        if spec.name() != "config_file" && !spec.default_text().is_empty() {
            assert_eq!(
                resolved.source(spec.name()),
                Some(&Source::Env { var: var.clone() }),
                "{var}"
            );
        }
        // None is a variable a master sets for its workers, which workers remove.
        assert!(!crate::identity::is_cluster_var(var.as_ref()), "{var}");
    }
    assert_eq!(
        OPTIONS
            .iter()
            .find(|s| s.name() == "config_file")
            .unwrap()
            .env_var(),
        "CLUSTER_CONFIG"
    );
    assert_eq!(
        OPTIONS
            .iter()
            .find(|s| s.name() == "max_memory")
            .unwrap()
            .env_var(),
        "CLUSTER_MAX_MEMORY"
    );
}

#[test]
fn environment_values_in_their_text_forms() {
    let resolved = Resolved::resolve_from(
        Options::new(),
        env(&[
            ("CLUSTER_MAX_MEMORY", "512MiB"),
            ("CLUSTER_SIGNALS", "TERM, HUP"),
            ("CLUSTER_STATUS_ADDR", "9100"),
            ("CLUSTER_HEARTBEAT_TIMEOUT", "off"),
            // Empty counts as unset.
            ("CLUSTER_GRACE", ""),
        ]),
    )
    .unwrap();
    let o = resolved.options();
    assert_eq!(o.max_memory(), Some(512 << 20));
    assert_eq!(o.signals().len(), 2);
    assert_eq!(o.status_addr().map(|a| a.port()), Some(9100));
    assert_eq!(o.heartbeat_timeout(), None);
    assert_eq!(o.grace(), Duration::from_secs(5));
    assert_eq!(resolved.source("grace"), Some(&Source::Default));
}

#[test]
fn a_bad_variable_names_the_option_the_variable_and_what_is_accepted() {
    let e = error_of(Resolved::resolve_from(
        Options::new(),
        env(&[("CLUSTER_GRACE", "abc")]),
    ));
    assert_eq!(e.option(), Some("grace"));
    let message = e.to_string();
    assert!(
        message.starts_with("invalid option `grace` from the environment variable CLUSTER_GRACE: invalid duration \"abc\""),
        "{message}"
    );
    assert!(
        message.ends_with("; `grace` accepts a duration"),
        "{message}"
    );
    // The option's own rule applies too.
    let e = error_of(Resolved::resolve_from(
        Options::new(),
        env(&[("CLUSTER_COUNT", "0")]),
    ));
    assert!(
        e.to_string()
            .starts_with("invalid option `count` from the environment variable CLUSTER_COUNT: "),
        "{e}"
    );
    // A rule between options names the variable of the option at fault.
    let e = error_of(Resolved::resolve_from(
        Options::new(),
        env(&[("CLUSTER_RELOAD_SIGNALS", "SIGTERM")]),
    ));
    assert_eq!(e.option(), Some("reload_signals"));
    assert!(
        e.to_string().ends_with(
            " (`reload_signals` was set from the environment variable CLUSTER_RELOAD_SIGNALS)"
        ),
        "{e}"
    );
    // Not UTF-8.
    use std::os::unix::ffi::OsStringExt;
    let e = error_of(Resolved::resolve_from(
        Options::new(),
        [(
            OsString::from("CLUSTER_GRACE"),
            OsString::from_vec(vec![0xff]),
        )],
    ));
    assert!(
        e.to_string()
            .starts_with("invalid option `grace` from the environment variable CLUSTER_GRACE: "),
        "{e}"
    );
}

#[test]
fn unknown_variables_are_ignored_and_typos_warned_about() {
    let resolved = Resolved::resolve_from(
        Options::new(),
        env(&[
            ("CLUSTER_GRACEE", "3s"),
            ("CLUSTER_MAXMEMORY", "1GiB"),
            // A Kubernetes service named `cluster`, and the worker variables: no warning.
            ("CLUSTER_SERVICE_HOST", "10.0.0.1"),
            ("CLUSTER_PORT", "tcp://10.0.0.1:80"),
            ("CLUSTER_IPC_FD", "3"),
            ("CLUSTER_WORKER_SLOT", "0"),
        ]),
    )
    .unwrap();
    assert_eq!(resolved.options(), &Options::new());
    assert_eq!(
        resolved.warnings(),
        [
            "CLUSTER_GRACEE is ignored: no option is named `gracee`; did you mean CLUSTER_GRACE?",
            "CLUSTER_MAXMEMORY is ignored: no option is named `maxmemory`; did you mean CLUSTER_MAX_MEMORY?",
        ]
    );
}

#[test]
fn file_values_in_toml_forms() {
    let file = File::new(
        "# the production settings\n\
         count = 4\n\
         grace = \"3s\"\n\
         max_memory = \"512MiB\"\n\
         signals = [\"SIGTERM\", \"HUP\"]\n\
         reload_signals = []\n\
         status_addr = \"9100\"\n\
         worker_prefix_logs = false\n\
         max_restarts = 1_000\n",
    );
    let resolved = Resolved::resolve_from(Options::new(), env(&[file.var()])).unwrap();
    let o = resolved.options();
    assert_eq!(o.count(), Count::Fixed(4));
    assert_eq!(o.grace(), Duration::from_secs(3));
    assert_eq!(o.max_memory(), Some(512 << 20));
    assert_eq!(o.signals().len(), 2);
    assert!(o.reload_signals().is_empty());
    assert_eq!(o.status_addr().map(|a| a.port()), Some(9100));
    assert!(!o.worker_prefix_logs());
    assert_eq!(o.max_restarts(), 1000);
    assert_eq!(
        resolved.source("signals"),
        Some(&Source::File {
            path: file.path().to_path_buf(),
            line: 5
        })
    );
}

/// The message of the error a file of `text` gives, with the file's path as `FILE`.
fn file_error(text: &str) -> (Option<&'static str>, String) {
    let file = File::new(text);
    let e = error_of(Resolved::resolve_from(Options::new(), env(&[file.var()])));
    let path = file.path().display().to_string();
    (e.option(), format!("{e:#}").replace(&path, "FILE"))
}

#[test]
fn a_bad_file_names_the_file_line_option_and_what_is_accepted() {
    assert_eq!(
        file_error("count = 4\n\ngrace = \"soon\"\n"),
        (
            Some("grace"),
            "invalid option `grace` in FILE, line 3: invalid duration \"soon\": it does not start with a whole number; expected a whole number of milliseconds (3000) or a whole number with a unit: \"500ms\", \"3s\", \"1m\" or \"2h\" (also ns, us); `grace` accepts a duration".into()
        )
    );
    let (option, message) = file_error("count = 4\ngracee = \"3s\"\n");
    assert_eq!(option, Some("config_file"));
    assert!(
        message.starts_with(
            "invalid option `config_file` in FILE, line 2: no option is named `gracee`; did you mean `grace`? the keys are the options' names: count, "
        ),
        "{message}"
    );
    assert_eq!(
        file_error("count = 0\n"),
        (
            Some("count"),
            "invalid option `count` in FILE, line 1: 0 workers would run nothing; use at least 1, or `cpus` (`count_cpus()`) for one per CPU; `count` accepts a number of workers (at least 1), or `cpus` for one per CPU".into()
        )
    );
    assert_eq!(
        file_error("\ngrace = 1.5\n"),
        (
            Some("grace"),
            "invalid option `grace` in FILE, line 2: a TOML float is not a value of `grace`; write it as a string (`grace = \"...\"`); `grace` accepts a duration".into()
        )
    );
    assert_eq!(
        file_error("signals = [15]\n").1,
        "invalid option `signals` in FILE, line 1: item 0 of the array, a TOML integer, is not a value of `signals`; write it as a string (`signals = \"...\"`) or an array of strings; `signals` accepts signal names, with or without `SIG`; at least one"
    );
    let (option, message) = file_error("count = 4\ngrace = \n");
    assert_eq!(option, Some("config_file"));
    assert!(
        message.starts_with(
            "invalid option `config_file` from the environment variable CLUSTER_CONFIG: FILE, line 2, is not TOML: "
        ),
        "{message}"
    );
    assert_eq!(
        file_error("config_file = \"other.toml\"\n").1,
        "invalid option `config_file` in FILE, line 1: the options file cannot name another; set `config_file` in the code or CLUSTER_CONFIG"
    );
    // A rule between options: the note says where the option was set.
    assert_eq!(
        file_error("heartbeat_interval = \"2s\"\nheartbeat_timeout = \"1s\"\n").1,
        format!(
            "{} (`heartbeat_timeout` was set in FILE, line 2)",
            Options::new()
                .with_heartbeat_interval(Duration::from_secs(2))
                .with_heartbeat_timeout(Some(Duration::from_secs(1)))
                .validate()
                .unwrap_err()
        )
    );
    let missing = std::env::temp_dir().join("cluster-config-test-no-such-file.toml");
    let e = error_of(Resolved::resolve_from(
        Options::new().with_config_file(Some(missing.clone())),
        env(&[]),
    ));
    assert_eq!(e.option(), Some("config_file"));
    assert!(
        format!("{e:#}").starts_with(&format!(
            "invalid option `config_file` in the code: cannot read the options file {}: ",
            missing.display()
        )),
        "{e:#}"
    );
}

#[test]
fn a_reload_applies_what_can_change_and_lists_the_rest() {
    let file = File::new("count = 2\ngrace = \"5s\"\n");
    let started = Resolved::resolve_from(
        Options::new(),
        env(&[file.var(), ("CLUSTER_MIN_READY", "2")]),
    )
    .unwrap();
    file.write("count = 4\ngrace = \"2s\"\nsignals = [\"TERM\"]\nmin_ready = 3\n");
    let reloaded = started
        .reload_from(env(&[file.var(), ("CLUSTER_MIN_READY", "2")]))
        .unwrap();
    assert_eq!(reloaded.applied, ["count", "grace"]);
    assert_eq!(reloaded.needs_restart, ["signals"]);
    let o = reloaded.resolved.options();
    assert_eq!(o.count(), Count::Fixed(4));
    assert_eq!(o.grace(), Duration::from_secs(2));
    // Kept: it needs a restart. `min_ready` is the environment's, over the file's.
    assert_eq!(o.signals(), Options::new().signals());
    assert_eq!(o.min_ready(), 2);
    assert_eq!(reloaded.resolved.source("signals"), Some(&Source::Default));
    assert_eq!(
        reloaded.resolved.source("count"),
        Some(&Source::File {
            path: file.path().to_path_buf(),
            line: 1
        })
    );
    // A bad file at a reload is an error; the caller keeps what runs.
    file.write("count = \"many\"\n");
    assert!(started.reload_from(env(&[file.var()])).is_err());
}

#[test]
fn reloadable_options_exist() {
    for name in RELOADABLE {
        assert!(OPTIONS.iter().any(|s| s.name() == *name), "{name}");
    }
}
