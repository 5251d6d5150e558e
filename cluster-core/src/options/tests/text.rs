//! The table, the text forms of every option, and the README's copy of the table.

use std::time::Duration;

use super::option_of;
use crate::options::*;
use Signal::*;

#[test]
fn every_default_text_reads_back_as_the_default() {
    let defaults = Options::default();
    for spec in OPTIONS {
        assert_eq!(
            spec.value_text(&defaults),
            spec.default_text(),
            "{}: the documented default is the default's text",
            spec.name()
        );
        let mut o = Options::default();
        spec.set(&mut o, spec.default_text())
            .unwrap_or_else(|e| panic!("{}: {e}", spec.name()));
        assert_eq!(o, defaults, "{}", spec.name());
        assert!(
            spec.rust_expr(spec.default_text()).is_ok(),
            "{}",
            spec.name()
        );
        assert!(spec.doc().ends_with('.'), "{}: {}", spec.name(), spec.doc());
        assert!(spec.setter() == format!("with_{}", spec.name()));
    }
    let mut names: Vec<&str> = OPTIONS.iter().map(OptionSpec::name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), OPTIONS.len(), "each option once");
}

#[test]
fn every_option_round_trips_through_its_text() {
    let o = Options::new()
        .with_count_cpus()
        .with_max_restarts(7)
        .with_max_restarts_interval(Duration::from_secs(90))
        .with_grace(Duration::from_millis(1500))
        .with_signals([SIGTERM, SIGQUIT])
        .with_reload_signals([])
        .with_upgrade_signals([Signal::SIGWINCH])
        .with_upgrade_timeout(Duration::from_secs(90))
        .with_reload_parallelism(4)
        .with_watch(true)
        .with_watch_debounce(Duration::from_millis(1250))
        .with_scale_signals(false)
        .with_balance(Balance::LeastConnections)
        .with_accept_coalescing(Duration::from_micros(2500))
        .with_ack_timeout(Duration::from_millis(250))
        .with_sticky_cookie(Some(KeyName::new("sid")))
        .with_sticky_header(Some(KeyName::new("x-session-id")))
        .with_sticky_proxy(true)
        .with_sticky_peek_timeout(Duration::from_millis(300))
        .with_restart_mode(RestartMode::Transient)
        .with_backoff(
            Backoff::new()
                .with_factor(1.5)
                .with_cap(Duration::from_secs(60)),
        )
        .with_ready_timeout(Duration::from_secs(3600))
        .with_heartbeat_interval(Duration::from_millis(250))
        .with_heartbeat_timeout(None)
        .with_max_memory(Some(1536 << 20))
        .with_memory_samples(5)
        .with_sample_interval(Duration::from_secs(2))
        .with_status_addr(Some("[::1]:9000".parse().unwrap()))
        .with_status_token(Some(StatusToken::new("abc-DEF_123.~+/==")))
        .with_min_ready(0)
        .with_worker_prefix_logs(false)
        .with_user(Some(Account::from("www-data")))
        .with_group(Some(Account::Id(33)))
        .with_umask(Umask::new(0o027))
        .with_rlimits(
            Rlimits::new()
                .with(Limit::Nofile, Some(1024), Some(65536))
                .with(Limit::Core, Some(0), Some(0))
                .with(Limit::As, None, None),
        )
        .with_nice(Nice::new(5))
        .with_cpu_affinity(CpuAffinity::Cpus(vec![0, 1, 2, 5]))
        .with_no_new_privs(true)
        .with_env_clear(true)
        .with_env_allow(["PATH", "LC_*"].into_iter().collect::<EnvAllow>())
        .with_log_lines(50)
        .with_max_requests(Some(10_000))
        .with_max_requests_jitter(500)
        .with_max_lifetime(Some(Duration::from_secs(3600)))
        .with_max_lifetime_jitter(Duration::from_secs(300))
        .with_autoscale(Some(crate::Autoscale::new(2, 8)))
        .with_autoscale_up_cpu(Some(150))
        .with_autoscale_up_lag(None)
        .with_autoscale_up_connections(Some(200))
        .with_autoscale_up_window(Duration::from_secs(5))
        .with_autoscale_down_window(Duration::from_secs(120))
        .with_autoscale_cooldown(Duration::from_secs(30))
        .with_store_max_keys(10)
        .with_store_max_bytes(3 << 30)
        .with_store_subscriptions(2)
        .with_store_queue(16)
        .with_store_snapshot(Some("/var/lib/app/store.snap".into()))
        .with_store_snapshot_interval(None)
        .with_name("shop")
        .with_control_path(std::path::PathBuf::from("/run/shop/ctl.sock"))
        .with_config_file(Some("/etc/app/cluster.toml".into()));
    assert!(o.validate().is_ok());
    let mut copy = Options::default();
    for spec in OPTIONS {
        let text = spec.value_text(&o);
        assert_ne!(
            text,
            spec.default_text(),
            "{}: every value differs",
            spec.name()
        );
        copy.set_from_str(spec.name(), &text)
            .unwrap_or_else(|e| panic!("{}: {e}", spec.name()));
    }
    assert_eq!(copy, o);
    assert_eq!(
        OPTIONS
            .iter()
            .find(|s| s.name() == "max_memory")
            .map(|s| s.value_text(&o)),
        Some("1536MiB".to_owned())
    );
}

#[test]
fn set_from_str_applies_the_rules_and_names_the_option() {
    let mut o = Options::new();
    o.set_from_str("grace", "3s").unwrap();
    o.set_from_str("count", "4").unwrap();
    o.set_from_str("signals", "int, TERM,sighup").unwrap();
    o.set_from_str("max_memory", "512MiB").unwrap();
    o.set_from_str("status_addr", "127.0.0.1:8001").unwrap();
    o.set_from_str("balance", "round-robin").unwrap();
    o.set_from_str("backoff", "base=50ms, cap=2s").unwrap();
    assert_eq!(o.grace(), Duration::from_secs(3));
    assert_eq!(o.count(), Count::Fixed(4));
    assert_eq!(o.signals(), [SIGINT, SIGTERM, SIGHUP]);
    assert_eq!(o.max_memory(), Some(512 << 20));
    assert_eq!(o.status_addr(), Some("127.0.0.1:8001".parse().unwrap()));
    assert_eq!(o.balance(), Balance::RoundRobin);
    assert_eq!(
        o.backoff(),
        Backoff::new()
            .with_base(Duration::from_millis(50))
            .with_cap(Duration::from_secs(2))
    );

    let before = o.clone();
    for (key, text, option, says) in [
        ("count", "0", "count", "at least 1"),
        ("count", "four", "count", "`cpus`"),
        ("grace", "3x", "grace", "unknown unit \"x\""),
        ("grace", "9000h", "grace", "at most 365 days"),
        (
            "accept_coalescing",
            "1s",
            "accept_coalescing",
            "1s would hold",
        ),
        (
            "accept_coalescing",
            "9000h",
            "accept_coalescing",
            "at most 100ms, or 0",
        ),
        ("signals", "", "signals", "no shutdown signal"),
        ("signals", "INT, KILL", "signals", "SIGKILL cannot be used"),
        ("signals", "INT, SIGINT", "signals", "listed twice"),
        ("reload_signals", "USR2, NOPE", "reload_signals", "\"NOPE\""),
        ("max_memory", "0", "max_memory", "0 bytes"),
        ("max_memory", "1.5GiB", "max_memory", "fractions"),
        ("heartbeat_timeout", "of", "heartbeat_timeout", "or \"off\""),
        (
            "ready_timeout",
            "0ms",
            "ready_timeout",
            "no time to report ready",
        ),
        (
            "worker_prefix_logs",
            "yes",
            "worker_prefix_logs",
            "true or false",
        ),
        ("min_ready", "-1", "min_ready", "whole number"),
        (
            "status_addr",
            "localhost:8001",
            "status_addr",
            "IP address and port",
        ),
        ("balance", "round_robin", "balance", "\"round-robin\""),
        ("restart_mode", "sometimes", "restart_mode", "transient"),
        ("backoff", "factor=0.5", "backoff", "factor 0.5"),
        ("cout", "4", "unknown", "the options are: count, "),
    ] {
        let (got, reason) = option_of(o.set_from_str(key, text));
        assert_eq!(got, option, "{key} = {text:?}: {reason}");
        assert!(reason.contains(says), "{key} = {text:?}: {reason}");
        assert_eq!(o, before, "{key} = {text:?}: nothing changed");
    }
}

/// `status_addr`: a bare port is loopback, anything else is written out in full. `status_token`:
/// the token, trimmed, checked for a bearer token's characters, and never quoted back.
#[test]
fn status_addr_and_status_token_as_text() {
    let mut o = Options::new();
    o.set_from_str("status_addr", "9100").unwrap();
    assert_eq!(o.status_addr(), Some("127.0.0.1:9100".parse().unwrap()));
    o.set_from_str("status_addr", " 8001 ").unwrap();
    assert_eq!(o.status_addr(), Some("127.0.0.1:8001".parse().unwrap()));
    o.set_from_str("status_addr", "0.0.0.0:8001").unwrap();
    assert_eq!(o.status_addr(), Some("0.0.0.0:8001".parse().unwrap()));
    o.set_from_str("status_addr", "[::1]:8001").unwrap();
    assert_eq!(o.status_addr(), Some("[::1]:8001".parse().unwrap()));
    o.set_from_str("status_addr", "off").unwrap();
    assert_eq!(o.status_addr(), None);
    let spec = OptionSpec::find("status_addr").unwrap();
    // The macro's expression for a bare port is the loopback address.
    assert_eq!(
        spec.rust_expr("9100").unwrap(),
        OptionSpec::find("status_addr")
            .unwrap()
            .rust_expr("127.0.0.1:9100")
            .unwrap()
    );
    for (bad, says) in [
        ("65536", "at most 65535"),
        ("127.0.0.1", "a port such as \"8001\" (on 127.0.0.1)"),
        ("localhost", "IP address and port"),
        ("", "IP address and port"),
    ] {
        let (option, reason) = option_of(o.set_from_str("status_addr", bad));
        assert_eq!(option, "status_addr");
        assert!(reason.contains(says), "{bad:?}: {reason}");
    }

    let secret = "Zm9vYmFyYmF6-._~+/==";
    assert_eq!(o.status_token(), None);
    o.set_from_str("status_token", &format!(" {secret}\n"))
        .unwrap();
    assert_eq!(o.status_token().map(StatusToken::as_str), Some(secret));
    assert!(o.validate().is_ok());
    // Neither the options' Debug nor an error shows the token.
    assert!(!format!("{o:?}").contains(secret));
    for bad in [
        "s3cr3t token",
        "s3cr3t\"quote",
        "s3cr3t$crate",
        "a=b",
        "==",
        "s3cr3t\u{e9}",
    ] {
        let (option, reason) = option_of(o.set_from_str("status_token", bad));
        assert_eq!(option, "status_token", "{bad:?}");
        assert!(reason.contains("bearer token"), "{bad:?}: {reason}");
        assert!(!reason.contains("s3cr3t"), "{reason}");
        assert_eq!(o.status_token().map(StatusToken::as_str), Some(secret));
    }
    // The builder takes anything; the master's validation refuses it before starting.
    let (option, reason) = option_of(
        Options::new()
            .with_status_token(Some(StatusToken::new("")))
            .validate(),
    );
    assert_eq!(option, "status_token");
    assert!(reason.contains("empty"), "{reason}");
    o.set_from_str("status_token", "off").unwrap();
    assert_eq!(o.status_token(), None);
    let spec = OptionSpec::find("status_token").unwrap();
    assert_eq!(
        spec.rust_expr("abc==").unwrap(),
        "::std::option::Option::Some($crate::options::StatusToken::new(\"abc==\"))"
    );
    assert!(spec.rust_expr("a\"b").is_err());
}

#[test]
fn list_errors_say_which_item() {
    let spec = OptionSpec::find("signals").unwrap();
    assert_eq!(spec.parse("INT, NOPE, TERM").unwrap_err().item(), Some(1));
    assert_eq!(spec.parse("INT, TERM, KILL").unwrap_err().item(), Some(2));
    assert_eq!(spec.parse("INT, TERM, INT").unwrap_err().item(), Some(2));
    assert_eq!(spec.parse("").unwrap_err().item(), None);
    assert!(
        OptionSpec::find("reload_signals")
            .unwrap()
            .parse("")
            .is_ok()
    );
    assert!(spec.is_list());
    assert!(!OptionSpec::find("grace").unwrap().is_list());
}

#[test]
fn rules_between_options() {
    let o = Options::new()
        .with_heartbeat_interval(Duration::from_secs(2))
        .with_heartbeat_timeout(Some(Duration::from_secs(2)));
    let (option, reason) = option_of(o.validate());
    assert_eq!(option, "heartbeat_timeout");
    assert!(
        reason.contains("2s is not longer than `heartbeat_interval` (2s)"),
        "{reason}"
    );
    let off = o.with_heartbeat_timeout(None);
    assert!(off.validate().is_ok());
    let (option, _) = option_of(
        Options::new()
            .with_heartbeat_interval(Duration::ZERO)
            .validate(),
    );
    assert_eq!(option, "heartbeat_interval");
    let (option, _) = option_of(Options::new().with_max_memory(Some(0)).validate());
    assert_eq!(option, "max_memory");
    for (option, o) in [
        (
            "heartbeat_interval",
            Options::new().with_heartbeat_interval(Duration::MAX),
        ),
        (
            "sample_interval",
            Options::new().with_sample_interval(Duration::MAX),
        ),
    ] {
        assert_eq!(option_of(o.validate()).0, option);
    }
}

#[test]
fn durations_as_text() {
    for (text, ms) in [
        ("500ms", 500),
        ("3s", 3000),
        (" 3 s ", 3000),
        ("1m", 60_000),
        ("2h", 7_200_000),
        ("3000", 3000),
        ("0", 0),
    ] {
        assert_eq!(
            parse_duration(text),
            Ok(Duration::from_millis(ms)),
            "{text:?}"
        );
    }
    assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
    assert_eq!(parse_duration("10ns"), Ok(Duration::from_nanos(10)));
    for bad in [
        "s",
        "3x",
        "1.5s",
        "-1",
        "",
        "99999999999999999999h",
        "9999999999999999999h",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
    for (d, text) in [
        (Duration::ZERO, "0s"),
        (Duration::from_millis(100), "100ms"),
        (Duration::from_secs(5), "5s"),
        (Duration::from_secs(90), "90s"),
        (Duration::from_secs(120), "2m"),
        (Duration::from_secs(7200), "2h"),
        (Duration::from_micros(2500), "2500us"),
        (Duration::from_nanos(7), "7ns"),
    ] {
        assert_eq!(duration_text(&d), text);
        assert_eq!(parse_duration(text), Ok(d));
    }
}

#[test]
fn byte_sizes_as_text() {
    assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
    assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
    assert_eq!(parse_bytes("100MB"), Ok(100_000_000));
    assert_eq!(parse_bytes(" 2 kb "), Ok(2000));
    assert_eq!(parse_bytes("7B"), Ok(7));
    assert_eq!(parse_bytes("1TiB"), Ok(1 << 40));
    assert_eq!(parse_bytes("512"), Ok(512));
    for bad in ["MiB", "512MiBs", "1.5GiB", "99999999999TiB", "-1"] {
        assert!(parse_bytes(bad).is_err(), "{bad:?}");
    }
    for n in [0, 7, 1000, 1024, 1536 << 20, 100_000_000, 1 << 40, u64::MAX] {
        assert_eq!(parse_bytes(&bytes_text(n)), Ok(n), "{n}");
    }
    assert_eq!(bytes_text(512 << 20), "512MiB");
    assert_eq!(bytes_text(100_000_000), "100MB");
    assert_eq!(bytes_text(7), "7B");
}

#[test]
fn types_parse_what_they_display() {
    for b in [
        Balance::Shared,
        Balance::RoundRobin,
        Balance::LeastConnections,
        Balance::Sticky,
        Balance::ReusePort,
        Balance::StickyKey,
    ] {
        assert_eq!(b.to_string().parse(), Ok(b));
        assert_eq!(format!("{b:?}").parse(), Ok(b), "the variant's name");
    }
    for c in [Count::Cpus, Count::Fixed(1), Count::Fixed(64)] {
        assert_eq!(c.to_string().parse(), Ok(c));
    }
    for m in [
        RestartMode::Permanent,
        RestartMode::Transient,
        RestartMode::Temporary,
    ] {
        assert_eq!(m.to_string().parse(), Ok(m));
    }
    let b = Backoff::new()
        .with_factor(1.25)
        .with_base(Duration::from_millis(30));
    assert_eq!(b.to_string().parse(), Ok(b));
    assert_eq!("".parse(), Ok(Backoff::default()));
    let error = "base=50ms, nope=1".parse::<Backoff>().unwrap_err();
    assert_eq!(error.item(), Some(1));
}

#[test]
fn rust_expressions_of_values() {
    let expr = |name: &str, text: &str| OptionSpec::find(name).unwrap().rust_expr(text).unwrap();
    assert_eq!(expr("count", "cpus"), "$crate::Count::Cpus");
    assert_eq!(expr("count", "4"), "$crate::Count::Fixed(4usize)");
    assert_eq!(
        expr("grace", "1500ms"),
        "::std::time::Duration::new(1u64, 500000000u32)"
    );
    assert_eq!(
        expr("reload_signals", "hup, USR2"),
        "[$crate::Signal::SIGHUP, $crate::Signal::SIGUSR2]"
    );
    assert_eq!(
        expr("balance", "round-robin"),
        "$crate::Balance::RoundRobin"
    );
    assert_eq!(expr("max_memory", "off"), "::std::option::Option::None");
    assert_eq!(
        expr("max_memory", "1KiB"),
        "::std::option::Option::Some(1024u64)"
    );
    assert_eq!(expr("min_ready", "0"), "0usize");
    assert_eq!(
        expr("autoscale", "2..8"),
        "::std::option::Option::Some($crate::options::Autoscale::new(2usize, 8usize))"
    );
    assert!(OptionSpec::find("count").unwrap().rust_expr("0").is_err());
}

#[test]
fn sticky_key_needs_a_source_and_names_that_are_tokens() {
    let o = Options::new().with_balance(Balance::StickyKey);
    let error = o.validate().unwrap_err().to_string();
    assert!(error.contains("sticky_cookie"), "{error}");
    assert!(o.clone().with_sticky_proxy(true).validate().is_ok());
    assert!(
        o.with_sticky_cookie(Some(KeyName::new("sid")))
            .validate()
            .is_ok()
    );
    let mut o = Options::new();
    for bad in ["", "my sid", "sid;", "s=d"] {
        assert!(o.set_from_str("sticky_cookie", bad).is_err(), "{bad:?}");
    }
    o.set_from_str("sticky_header", "X-Session-Id").unwrap();
    assert_eq!(o.sticky_header().map(KeyName::as_str), Some("X-Session-Id"));
    assert!(
        Options::new()
            .with_sticky_header(Some(KeyName::new("bad name")))
            .validate()
            .is_err()
    );
    assert!(o.set_from_str("sticky_peek_timeout", "0s").is_err());
    assert!(o.set_from_str("sticky_peek_timeout", "61s").is_err());
    assert_eq!(
        OptionSpec::find("sticky_cookie")
            .unwrap()
            .rust_expr("sid")
            .unwrap(),
        "::std::option::Option::Some($crate::options::KeyName::new(\"sid\"))"
    );
}

#[test]
fn autoscale_ranges_and_signals() {
    use crate::{Autoscale, GroupOptions};
    let mut o = Options::new();
    o.set_from_str("autoscale", " 2..8 ").unwrap();
    assert_eq!(o.autoscale(), Some(Autoscale::new(2, 8)));
    for (text, says) in [
        (
            "8..2",
            "minimum above its maximum; write MIN..MAX, such as 2..8",
        ),
        ("0..4", "use a minimum of at least 1"),
        ("2-8", "expected MIN..MAX such as 2..8"),
        ("..8", "expected MIN..MAX"),
    ] {
        let e = o.set_from_str("autoscale", text).unwrap_err().to_string();
        assert!(e.contains(says), "{text}: {e}");
    }
    // Every signal off: the group could never grow.
    let silent = Options::new()
        .with_autoscale(Some(Autoscale::new(1, 4)))
        .with_autoscale_up_cpu(None)
        .with_autoscale_up_lag(None);
    let (option, reason) = option_of(silent.validate());
    assert_eq!(option, "autoscale");
    assert!(reason.contains("could never grow"), "{reason}");
    assert!(
        silent
            .clone()
            .with_autoscale_up_connections(Some(50))
            .validate()
            .is_ok()
    );
    // Off, the signals' options do not matter.
    assert!(silent.with_autoscale(None).validate().is_ok());
    let (option, reason) = option_of(GroupOptions::new("web").with_autoscale(3, 2).validate());
    assert_eq!(option, "autoscale");
    assert!(
        reason.starts_with("group `web`: autoscale 3..2"),
        "{reason}"
    );
    assert_eq!(Autoscale::new(2, 4).clamp(1), 2);
    assert_eq!(Autoscale::new(2, 4).clamp(9), 4);
    assert_eq!(Autoscale::new(2, 4).clamp(3), 3);
    let (option, _) = option_of(Options::new().with_autoscale_up_cpu(Some(0)).validate());
    assert_eq!(option, "autoscale_up_cpu");
    let (option, _) = option_of(
        Options::new()
            .with_autoscale_up_window(Duration::ZERO)
            .validate(),
    );
    assert_eq!(option, "autoscale_up_window");
}
