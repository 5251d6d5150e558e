//! Bad options are rejected before any worker starts, with an error naming the option; a
//! process started by hand with the worker variables but no channel exits with
//! EXIT_BOOTSTRAP and a clear message.

mod support;

use std::process::Stdio;
use std::time::Duration;

use cluster::{Cluster, ErrorKind, GroupOptions, Signal};
use support::{Fixture, WAIT};

#[test]
fn bad_options_stop_the_master_before_any_worker_starts() {
    for (bad, option, also) in [
        ("count0", "invalid option `count`", "at least 1"),
        ("sigkill", "invalid option `signals`", "SIGKILL"),
        ("overlap", "invalid option `reload_signals`", "SIGHUP"),
    ] {
        let marker = support::TempPath::new("marker");
        let mut fx = Fixture::start(&[("FIXTURE_BAD", bad), ("FIXTURE_MARKER", marker.as_str())]);
        let code = fx.wait_exit_code(WAIT);
        fx.finish(WAIT);
        assert_ne!(code, 0, "{bad}: the master fails\n{}", fx.dump());
        let stderr = fx.stderr();
        assert!(
            stderr.contains(option),
            "{bad}: the error names the option: {stderr}"
        );
        assert!(stderr.contains(also), "{bad}: and what is wrong: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        // Nothing ran: no worker process, no event, not even before_fork.
        assert!(
            fx.history.is_empty(),
            "{bad}: nothing started\n{}",
            fx.dump()
        );
        assert!(!marker.0.exists(), "{bad}: before_fork did not run");
    }
}

fn rejected(cluster: &Cluster<(), ()>) -> (&'static str, String) {
    match cluster.validate() {
        // The message carries the reason after the option's name.
        Err(e) if e.kind() == ErrorKind::InvalidOption => (
            e.option().expect("InvalidOption names the option"),
            e.to_string(),
        ),
        other => panic!("expected InvalidOption, got {other:?}"),
    }
}

fn with_worker() -> Cluster<(), ()> {
    Cluster::new().worker(|_ctx| async {})
}

#[test]
fn validate_rejects_bad_clusters_naming_the_option() {
    assert!(with_worker().validate().is_ok());

    assert_eq!(rejected(&with_worker().count(0)).0, "count");
    let (option, reason) = rejected(&with_worker().signals([Signal::SIGTERM, Signal::SIGKILL]));
    assert_eq!(option, "signals");
    assert!(reason.contains("SIGKILL"), "{reason}");
    assert_eq!(rejected(&with_worker().signals([])).0, "signals");
    let overlap = with_worker().configure(|o| {
        o.with_signals([Signal::SIGINT, Signal::SIGHUP])
            .with_reload_signals([Signal::SIGHUP])
    });
    assert_eq!(rejected(&overlap).0, "reload_signals");
    assert_eq!(
        rejected(&with_worker().max_restarts_interval_ms(0)).0,
        "max_restarts_interval"
    );

    // The cluster itself: a worker function, one default group, distinct valid groups.
    assert_eq!(rejected(&Cluster::new()).0, "worker");
    let twice = with_worker().worker(|_ctx| async {});
    assert_eq!(rejected(&twice).0, "worker");
    let same_name = Cluster::<(), ()>::new()
        .group(GroupOptions::new("web"), |_ctx| async {})
        .group(GroupOptions::new("web"), |_ctx| async {});
    assert_eq!(rejected(&same_name).0, "group");
    let empty_group =
        Cluster::<(), ()>::new().group(GroupOptions::new("web").with_count(0), |_ctx| async {});
    assert_eq!(rejected(&empty_group).0, "count");
    let reserved = Cluster::<(), ()>::new().group(
        GroupOptions::new("web").with_env("CLUSTER_IPC_FD", "3"),
        |_ctx| async {},
    );
    assert_eq!(rejected(&reserved).0, "env");
    let bad_name = Cluster::<(), ()>::new().group(GroupOptions::new("web server"), |_ctx| async {});
    assert_eq!(rejected(&bad_name).0, "name");
}

/// Runs the fixture by hand with the worker variables (and `extra`), as someone might.
fn run_as_fake_worker(extra: &[(&str, &str)]) -> Fixture {
    let mut env = vec![
        ("CLUSTER_WORKER_GROUP", "worker"),
        ("CLUSTER_WORKER_SLOT", "0"),
        ("CLUSTER_WORKER_GENERATION", "1"),
    ];
    env.extend_from_slice(extra);
    Fixture::start_with(&env, |cmd| {
        cmd.stdin(Stdio::null());
    })
}

#[test]
fn worker_variables_without_a_channel_exit_with_exit_bootstrap() {
    for (extra, names) in [
        (&[][..], "CLUSTER_IPC_FD"),
        (&[("CLUSTER_IPC_FD", "not-a-number")][..], "CLUSTER_IPC_FD"),
        (&[("CLUSTER_IPC_FD", "250")][..], "not open"),
        // Its stderr: open, but not a Unix socket.
        (&[("CLUSTER_IPC_FD", "2")][..], "not a socket"),
        (&[("CLUSTER_WORKER_SLOT", "abc")][..], "CLUSTER_WORKER_SLOT"),
        (
            &[("CLUSTER_WORKER_GROUP", "nosuch")][..],
            "no worker group \"nosuch\"",
        ),
    ] {
        let mut fx = run_as_fake_worker(extra);
        // Bounded well below the worker's 10 s handshake timeout: it must not wait for a
        // master that is not there.
        let code = fx.wait_exit_code(Duration::from_secs(8));
        fx.finish(WAIT);
        let stderr = fx.stderr();
        assert_eq!(
            code,
            cluster::worker::EXIT_BOOTSTRAP,
            "{extra:?}\n{}",
            fx.dump()
        );
        assert!(
            stderr.contains(names),
            "{extra:?}: the message names {names:?}: {stderr}"
        );
        assert!(
            !stderr.contains("panicked"),
            "{extra:?}: no panic: {stderr}"
        );
        assert!(
            fx.history.is_empty(),
            "{extra:?}: the worker function never ran\n{}",
            fx.dump()
        );
    }
}
