//! The entry points: a master function that panics or fails shuts the cluster down gracefully
//! and makes the master exit non-zero, and `Cluster::try_run` hands the caller what `run`
//! would have printed.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cluster::{Cluster, ErrorKind};
use nix::sys::signal::Signal;
use support::{Exit, Fixture, WAIT, id, parse_id, pid_alive};

/// Every worker stopped once, cleanly, because the master asked it to, and none was restarted.
/// Needs the complete output ([`Fixture::finish`]).
fn assert_each_worker_stopped_once(fx: &Fixture, count: usize) {
    for slot in 0..count {
        let id = id("worker", slot, 1);
        let stops = fx.lines("STOPPING", &[("id", &id)]);
        assert_eq!(stops.len(), 1, "{id} was asked to stop once\n{}", fx.dump());
        let exits = fx.lines("EXIT", &[("id", &id)]);
        assert_eq!(exits.len(), 1, "{id} exited once\n{}", fx.dump());
        assert_eq!(
            exits[0].get("how"),
            "code:0",
            "{id} exited by itself, not killed\n{}",
            fx.dump()
        );
        assert_eq!(exits[0].get("expected"), "true", "{}", fx.dump());
        assert_eq!(exits[0].get("restarting"), "false", "{}", fx.dump());
    }
    let spawns = fx.lines("SPAWNED", &[]);
    assert_eq!(spawns.len(), count, "nothing was restarted\n{}", fx.dump());
    assert!(
        spawns.iter().all(|l| parse_id(l.get("id")).2 == 1),
        "{}",
        fx.dump()
    );
}

#[test]
fn a_master_function_that_panics_or_fails_stops_the_cluster_and_the_master_exits_non_zero() {
    for (how, said) in [("panic", "panicked"), ("fail", "failed")] {
        let grace = Duration::from_secs(20);
        let mut fx = Fixture::start(&[
            ("FIXTURE_COUNT", "2"),
            ("FIXTURE_GRACE_MS", &grace.as_millis().to_string()),
        ]);
        let workers = fx.wait_hellos("worker/", 2);

        let asked = Instant::now();
        fx.command(how);
        fx.wait_line("MASTER_ENDING", &[("how", how)]);
        let code = fx.wait_exit_code(WAIT);
        let took = asked.elapsed();
        fx.finish(WAIT);
        assert_eq!(code, 1, "{how}: the master exits non-zero\n{}", fx.dump());
        assert!(
            took < grace,
            "{how}: the workers stopped when asked, nobody waited out the grace: {took:?}\n{}",
            fx.dump()
        );
        let stderr = fx.stderr();
        let line = format!(
            "cluster: the master function {said}: the fixture master was told to {how}; \
             shutting the cluster down"
        );
        assert!(
            stderr.contains(&line),
            "{how}: the master says why it stops: {stderr}"
        );
        assert_each_worker_stopped_once(&fx, 2);
        for (id, pid) in &workers {
            assert!(!pid_alive(*pid), "{how}: worker {id} (pid {pid}) is gone");
        }
    }
}

#[test]
fn try_run_returns_when_the_cluster_stopped_and_in_each_worker_when_its_function_ended() {
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "2"), ("FIXTURE_TRY_RUN", "1")]);
    fx.wait_hellos("worker/", 2);
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
    fx.finish(WAIT);
    assert_each_worker_stopped_once(&fx, 2);
    let master = fx.lines("TRY_RUN", &[("role", "master")]);
    assert_eq!(master.len(), 1, "{}", fx.dump());
    assert_eq!(master[0].get("ok"), "success", "{}", fx.dump());
    for slot in 0..2 {
        let worker = fx.lines(
            "TRY_RUN",
            &[("role", "worker"), ("id", &id("worker", slot, 1))],
        );
        assert_eq!(worker.len(), 1, "worker {slot} returned\n{}", fx.dump());
        assert_eq!(worker[0].get("ok"), "success", "{}", fx.dump());
    }
    // The master's own line comes last: its try_run returned after every worker's.
    let last = fx.history.iter().rposition(|l| l.kind == "TRY_RUN");
    let master_at = fx
        .history
        .iter()
        .position(|l| l.is("TRY_RUN", &[("role", "master")]));
    assert_eq!(last, master_at, "{}", fx.dump());
}

#[test]
fn try_run_gives_the_master_function_failure_to_the_caller_instead_of_printing_it() {
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "2"), ("FIXTURE_TRY_RUN", "1")]);
    fx.wait_hellos("worker/", 2);
    fx.command("fail");
    // 42 is the fixture's own code for an error from try_run: not one `run` would choose.
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(42), "{}", fx.dump());
    fx.finish(WAIT);
    let line = fx.wait_line("TRY_RUN", &[("role", "master")]);
    assert_eq!(line.get("kind"), "MasterFailed", "{}", fx.dump());
    assert!(
        line.get("err")
            .contains("the_master_function_failed:_the_fixture_master_was_told_to_fail"),
        "{}",
        fx.dump()
    );
    assert_each_worker_stopped_once(&fx, 2);
    // The master said once that it is shutting down, and nothing printed the error again.
    let stderr = fx.stderr();
    assert_eq!(
        stderr.matches("the master function failed").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn try_run_gives_the_restart_limit_to_the_caller() {
    let mut fx = Fixture::start(&[
        ("FIXTURE_COUNT", "1"),
        ("FIXTURE_CRASH_SLOT", "all"),
        ("FIXTURE_MAX_RESTARTS", "1"),
        ("FIXTURE_TRY_RUN", "1"),
    ]);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(42), "{}", fx.dump());
    fx.finish(WAIT);
    let line = fx.wait_line("TRY_RUN", &[("role", "master")]);
    assert_eq!(line.get("kind"), "RestartLimit", "{}", fx.dump());
    assert!(
        line.get("err").contains("restart_limit_reached"),
        "{}",
        fx.dump()
    );
}

#[test]
fn try_run_in_a_process_that_is_no_real_worker_is_a_bootstrap_error() {
    let mut fx = Fixture::start_with(
        &[
            ("CLUSTER_WORKER_GROUP", "worker"),
            ("CLUSTER_WORKER_SLOT", "0"),
            ("CLUSTER_WORKER_GENERATION", "1"),
            ("FIXTURE_TRY_RUN", "1"),
        ],
        |cmd| {
            cmd.stdin(Stdio::null());
        },
    );
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(42), "{}", fx.dump());
    fx.finish(WAIT);
    let line = fx.wait_line("TRY_RUN", &[("role", "worker")]);
    assert_eq!(line.get("kind"), "Bootstrap", "{}", fx.dump());
    assert!(line.get("err").contains("CLUSTER_IPC_FD"), "{}", fx.dump());
    assert!(fx.stderr().is_empty(), "nothing printed: {}", fx.stderr());
}

#[test]
fn try_run_with_an_invalid_cluster_starts_nothing_and_names_the_option() {
    // This test process is no worker, so try_run takes the master's side: it validates first.
    let error = Cluster::<(), ()>::new().try_run().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidOption, "{error:?}");
    assert_eq!(error.option(), Some("worker"), "{error:?}");
    let error = Cluster::<(), ()>::new()
        .worker(|_ctx| async {})
        .count(0)
        .try_run()
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidOption, "{error:?}");
    assert_eq!(error.option(), Some("count"), "{error:?}");
}
