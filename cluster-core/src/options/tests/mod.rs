//! The options' defaults, builders and rules; text.rs has their text forms.

mod config;
mod text;

use std::time::Duration;

use super::check::MAX_DURATION;
use super::*;
use Signal::*;

fn option_of(result: Result<(), Error>) -> (&'static str, String) {
    let error = match result {
        Err(error) => error,
        Ok(()) => panic!("expected an invalid option"),
    };
    let option = error
        .option()
        .unwrap_or_else(|| panic!("expected an invalid option, got {error:?}"));
    let prefix = format!("invalid option `{option}`: ");
    let message = error.to_string();
    let reason = message.strip_prefix(&prefix).unwrap_or(&message).to_owned();
    (option, reason)
}

#[test]
fn defaults_equal_the_origin() {
    let o = Options::new();
    assert_eq!(o.count(), Count::Fixed(2));
    assert_eq!(o.count().resolve(), 2);
    assert_eq!(o.max_restarts(), 3);
    assert_eq!(o.max_restarts_interval(), Duration::from_secs(10));
    assert_eq!(o.grace(), Duration::from_secs(5));
    assert_eq!(o.signals(), [SIGINT, SIGTERM]);
    assert_eq!(o.reload_signals(), [SIGUSR2]);
    assert_eq!(o.ready_timeout(), Duration::from_secs(30));
    assert!(o.worker_prefix_logs());
    assert_eq!(o.restart_mode(), RestartMode::Permanent);
    assert_eq!(o.backoff(), Backoff::new());
    assert_eq!(o, Options::default());
    assert!(o.validate().is_ok());
}

#[test]
fn accept_coalescing_is_bounded() {
    assert_eq!(Options::new().accept_coalescing(), Duration::from_millis(1));
    for ok in [Duration::ZERO, Duration::from_millis(100)] {
        assert!(Options::new().with_accept_coalescing(ok).validate().is_ok());
    }
    let long = Options::new().with_accept_coalescing(Duration::from_secs(1));
    let (option, reason) = option_of(long.validate());
    assert_eq!(option, "accept_coalescing");
    assert!(reason.contains("at most 100ms"), "{reason}");
}

#[test]
fn backoff_defaults() {
    let b = Backoff::default();
    assert_eq!(b.base(), Duration::from_millis(100));
    assert_eq!(b.factor(), 2.0);
    assert_eq!(b.cap(), Duration::from_secs(5));
    assert_eq!(b.reset_after(), Duration::from_secs(10));
    assert!(b.validate().is_ok());
}

#[test]
fn builder_sets_everything() {
    let backoff = Backoff::new()
        .with_base(Duration::from_millis(10))
        .with_factor(1.5);
    let o = Options::new()
        .with_count(4)
        .with_max_restarts(5)
        .with_max_restarts_interval(Duration::from_secs(15))
        .with_grace(Duration::from_secs(3))
        .with_signals([SIGINT, SIGTERM, SIGHUP])
        .with_reload_signals([SIGUSR1])
        .with_ready_timeout_ms(1500)
        .with_worker_prefix_logs(false)
        .with_backoff(backoff)
        .with_restart_mode(RestartMode::Transient);
    assert_eq!(o.count(), Count::Fixed(4));
    assert_eq!(o.max_restarts(), 5);
    assert_eq!(o.max_restarts_interval(), Duration::from_secs(15));
    assert_eq!(o.grace(), Duration::from_secs(3));
    assert_eq!(o.signals(), [SIGINT, SIGTERM, SIGHUP]);
    assert_eq!(o.reload_signals(), [SIGUSR1]);
    assert_eq!(o.ready_timeout(), Duration::from_millis(1500));
    assert!(!o.worker_prefix_logs());
    assert_eq!(o.backoff(), backoff);
    assert_eq!(o.restart_mode(), RestartMode::Transient);
    assert!(o.validate().is_ok());

    let ms = Options::new()
        .with_grace_ms(3000)
        .with_max_restarts_interval_ms(15_000);
    assert_eq!(ms.grace(), Duration::from_secs(3));
    assert_eq!(ms.max_restarts_interval(), Duration::from_secs(15));

    let policy = RestartPolicy::new()
        .with_max_restarts(0)
        .with_mode(RestartMode::Temporary);
    let o = Options::new().with_restart(policy).with_count_cpus();
    assert_eq!(o.restart(), &policy);
    assert_eq!(o.count(), Count::Cpus);
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
    let (option, reason) = option_of(Options::new().with_count(0).validate());
    assert_eq!(option, "count");
    assert!(reason.contains("at least 1"), "{reason}");
}

#[test]
fn zero_interval_is_rejected() {
    let (option, reason) = option_of(Options::new().with_max_restarts_interval_ms(0).validate());
    assert_eq!(option, "max_restarts_interval");
    assert!(reason.contains("positive"), "{reason}");
    let (option, _) = option_of(
        RestartPolicy::new()
            .with_max_restarts_interval(Duration::ZERO)
            .validate(),
    );
    assert_eq!(option, "max_restarts_interval");
}

#[test]
fn huge_durations_are_rejected() {
    let huge = Duration::from_secs(u64::MAX);
    assert_eq!(
        option_of(Options::new().with_grace(huge).validate()).0,
        "grace"
    );
    assert_eq!(
        option_of(Options::new().with_ready_timeout(huge).validate()).0,
        "ready_timeout"
    );
    assert_eq!(
        option_of(Options::new().with_max_restarts_interval(huge).validate()).0,
        "max_restarts_interval"
    );
    let b = Backoff::new().with_cap(huge);
    assert_eq!(option_of(b.validate()).0, "backoff");
    assert!(Options::new().with_grace(MAX_DURATION).validate().is_ok());
}

#[test]
fn zero_grace_is_allowed() {
    assert!(Options::new().with_grace(Duration::ZERO).validate().is_ok());
}

#[test]
fn zero_ready_timeout_is_rejected() {
    let (option, _) = option_of(Options::new().with_ready_timeout_ms(0).validate());
    assert_eq!(option, "ready_timeout");
}

#[test]
fn empty_signals_are_rejected_but_empty_reload_signals_are_not() {
    let (option, reason) = option_of(Options::new().with_signals([]).validate());
    assert_eq!(option, "signals");
    assert!(reason.contains("SIGINT"), "{reason}");
    assert!(Options::new().with_reload_signals([]).validate().is_ok());
}

#[test]
fn unfit_signals_are_rejected_in_both_lists() {
    for bad in [
        SIGKILL, SIGSTOP, SIGILL, SIGFPE, SIGSEGV, SIGBUS, SIGTRAP, SIGCHLD, SIGPIPE,
    ] {
        let (option, reason) = option_of(Options::new().with_signals([SIGTERM, bad]).validate());
        assert_eq!(option, "signals");
        assert!(reason.contains(bad.as_str()), "{reason}");
        assert!(reason.contains("use signals such as"), "{reason}");
        let (option, _) = option_of(Options::new().with_reload_signals([bad]).validate());
        assert_eq!(option, "reload_signals");
    }
    for good in [SIGHUP, SIGQUIT, SIGUSR1, SIGALRM, SIGWINCH] {
        assert!(
            Options::new().with_signals([good]).validate().is_ok(),
            "{good}"
        );
    }
}

#[test]
fn duplicated_signals_are_rejected() {
    let (option, reason) = option_of(
        Options::new()
            .with_signals([SIGINT, SIGTERM, SIGINT])
            .validate(),
    );
    assert_eq!(option, "signals");
    assert!(reason.contains("twice"), "{reason}");
    let (option, _) = option_of(
        Options::new()
            .with_reload_signals([SIGUSR2, SIGUSR2])
            .validate(),
    );
    assert_eq!(option, "reload_signals");
}

#[test]
fn a_signal_cannot_both_stop_and_reload() {
    let o = Options::new()
        .with_signals([SIGINT, SIGHUP])
        .with_reload_signals([SIGHUP]);
    let (option, reason) = option_of(o.validate());
    assert_eq!(option, "reload_signals");
    assert!(reason.contains("SIGHUP"), "{reason}");
}

#[test]
fn bad_backoff_is_rejected() {
    for (backoff, field) in [
        (Backoff::new().with_factor(0.5), "factor"),
        (Backoff::new().with_factor(f64::NAN), "factor"),
        (Backoff::new().with_factor(f64::INFINITY), "factor"),
        (Backoff::new().with_cap(Duration::from_millis(50)), "cap"),
        (
            Backoff::new().with_reset_after(Duration::ZERO),
            "reset_after",
        ),
    ] {
        let (option, reason) = option_of(Options::new().with_backoff(backoff).validate());
        assert_eq!(option, "backoff");
        assert!(reason.contains(field), "{reason}");
    }
    let constant = Backoff::new()
        .with_factor(1.0)
        .with_base(Duration::ZERO)
        .with_cap(Duration::ZERO);
    assert!(constant.validate().is_ok());
}

#[test]
fn group_builder_and_defaults() {
    let policy = RestartPolicy::new().with_max_restarts(9);
    let g = GroupOptions::new("web")
        .with_count(3)
        .with_env("K", "V")
        .with_env("A", "1")
        .with_env("K", "W")
        .with_restart(policy);
    assert_eq!(g.name(), "web");
    assert_eq!(g.count(), Count::Fixed(3));
    assert_eq!(
        g.env(),
        [
            ("K".to_owned(), "W".to_owned()),
            ("A".to_owned(), "1".to_owned())
        ]
    );
    assert_eq!(g.restart(), Some(&policy));
    assert!(g.validate().is_ok());
    let cluster = Options::new();
    assert_eq!(g.effective_restart(&cluster), &policy);

    let plain = GroupOptions::new("jobs_2-x").with_count_cpus();
    assert_eq!(plain.count(), Count::Cpus);
    assert_eq!(plain.restart(), None);
    assert_eq!(plain.effective_restart(&cluster), cluster.restart());
    assert!(plain.validate().is_ok());
    assert_eq!(GroupOptions::new("a").count(), Count::Fixed(2));
}

#[test]
fn group_validation_names_its_option() {
    for name in ["", "web server", "wéb", "a/b", "a.b"] {
        let (option, reason) = option_of(GroupOptions::new(name).validate());
        assert_eq!(option, "name");
        assert!(reason.contains("A-Z"), "{reason}");
    }
    let (option, reason) = option_of(GroupOptions::new("web").with_count(0).validate());
    assert_eq!(option, "count");
    assert!(reason.contains("web"), "{reason}");
    for g in [
        GroupOptions::new("web").with_env("", "v"),
        GroupOptions::new("web").with_env("A=B", "v"),
        GroupOptions::new("web").with_env("A", "v\0"),
        GroupOptions::new("web").with_env("CLUSTER_WORKER_SLOT", "3"),
    ] {
        assert_eq!(option_of(g.validate()).0, "env");
    }
    let bad_policy = RestartPolicy::new().with_max_restarts_interval(Duration::ZERO);
    let (option, _) = option_of(GroupOptions::new("web").with_restart(bad_policy).validate());
    assert_eq!(option, "max_restarts_interval");
}
