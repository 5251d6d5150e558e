//! Readiness and rolling reload, driven through the fixture cluster: a worker that never
//! becomes ready is killed after `ready_timeout` and counted as a failed start; a reload whose
//! replacement cannot start, or never becomes ready, aborts with a clear error and leaves the
//! old workers serving; a reload asked for during a reload runs exactly one more pass.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{Exit, Fixture, WAIT, id, pid_alive};

/// Waits (up to [`WAIT`]) for `text` on the cluster's stderr.
fn wait_stderr(fx: &Fixture, text: &str) {
    let deadline = Instant::now() + WAIT;
    while !fx.stderr().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} on stderr within {WAIT:?}\n{}",
            fx.dump()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_worker_never_ready_is_killed_after_ready_timeout_as_a_failed_start() {
    let started = Instant::now();
    let mut fx = Fixture::start(&[
        ("FIXTURE_COUNT", "1"),
        ("FIXTURE_UNREADY_FROM", "1"),
        ("FIXTURE_READY_TIMEOUT_MS", "800"),
        ("FIXTURE_MAX_RESTARTS", "100"),
    ]);
    let unready = fx.wait_line("UNREADY", &[("id", &id("worker", 0, 1))]);
    let exit = fx.wait_line("EXIT", &[("id", &id("worker", 0, 1))]);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(800),
        "killed after {elapsed:?}, before its ready_timeout\n{}",
        fx.dump()
    );
    assert_eq!(exit.get("how"), "sig:9", "{}", fx.dump());
    assert_eq!(exit.get("expected"), "false", "{}", fx.dump());
    assert_eq!(exit.get("restarting"), "true", "{}", fx.dump());
    assert!(!pid_alive(unready.pid()));
    assert!(
        fx.lines("READY", &[("id", &id("worker", 0, 1))]).is_empty(),
        "{}",
        fx.dump()
    );
    // stderr is read by a thread of its own, maybe behind stdout.
    wait_stderr(&fx, "did not become ready in time");
    // It is restarted, and the kill is counted as a failed start.
    fx.wait_line("SPAWNED", &[("id", &id("worker", 0, 2))]);
    fx.command("status");
    let status = fx.wait_line("STATUS", &[]);
    assert!(
        status.get("restarts").contains("worker/0:failed_start:"),
        "the kill is not counted as a failed start: {}\n{}",
        status.raw,
        fx.dump()
    );
}

/// Starts a two-worker fixture with `env`, asks for a reload (the `reload` command) whose
/// replacement for slot 0 fails, and checks that it aborts with an error naming the
/// replacement while the old workers keep serving.
fn failed_reload_keeps_the_old_workers(env: &[(&str, &str)], cause: &str) {
    let mut fx = Fixture::start(env);
    let old = fx.wait_hellos("worker/", 2);
    fx.wait_line("READY", &[("id", &id("worker", 0, 1))]);
    fx.wait_line("READY", &[("id", &id("worker", 1, 1))]);

    fx.command("reload");
    fx.wait_line("RELOAD_STARTED", &[]);
    let failed = fx.wait_line("RELOAD_FAILED", &[]);
    let error = failed.get("error").replace('_', " ");
    assert!(
        error.contains("replacement worker worker/0#2") && error.contains(cause),
        "an unclear error: {error:?}\n{}",
        fx.dump()
    );
    wait_stderr(&fx, "rolling reload aborted, the old workers keep serving");

    // The old workers are the same processes and still answer.
    for (slot, n) in [(0, 10), (1, 11)] {
        fx.command(&format!("send worker {slot} {n}"));
        let pong = fx.wait_line("PONG", &[("n", &n.to_string())]);
        assert_eq!(pong.get("id"), id("worker", slot, 1), "{}", fx.dump());
    }
    for (worker, &pid) in &old {
        assert!(
            pid_alive(pid),
            "{worker} (pid {pid}) is gone\n{}",
            fx.dump()
        );
    }
    fx.command("status");
    assert_eq!(
        fx.wait_line("STATUS", &[]).get("reloads"),
        "0",
        "{}",
        fx.dump()
    );

    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
    fx.finish(WAIT);
    // The old workers ran until the shutdown; nothing tried slot 1 or retried slot 0.
    for slot in 0..2 {
        let exits = fx.lines("EXIT", &[("id", &id("worker", slot, 1))]);
        assert_eq!(exits.len(), 1, "{}", fx.dump());
        assert_eq!(exits[0].get("expected"), "true", "{}", fx.dump());
    }
    let mut spawned: Vec<String> = fx
        .lines("SPAWNED", &[])
        .iter()
        .map(|l| l.get("id").to_owned())
        .collect();
    spawned.sort();
    assert_eq!(
        spawned,
        [id("worker", 0, 1), id("worker", 0, 2), id("worker", 1, 1)],
        "{}",
        fx.dump()
    );
    assert!(fx.lines("RELOAD_FINISHED", &[]).is_empty(), "{}", fx.dump());
}

#[test]
fn a_reload_whose_new_workers_exit_at_start_aborts_and_keeps_the_old_workers() {
    failed_reload_keeps_the_old_workers(
        &[("FIXTURE_COUNT", "2"), ("FIXTURE_FAIL_FROM", "2")],
        "exited with code 3 before it became ready",
    );
}

#[test]
fn a_reload_whose_new_workers_never_become_ready_aborts_and_keeps_the_old_workers() {
    failed_reload_keeps_the_old_workers(
        &[
            ("FIXTURE_COUNT", "2"),
            ("FIXTURE_UNREADY_FROM", "2"),
            ("FIXTURE_READY_TIMEOUT_MS", "2000"),
        ],
        // The fixture's line has `_` for spaces, read back as spaces: `ready_timeout` too.
        "was not ready within ready timeout (2s) and was killed",
    );
}

#[test]
fn reloads_asked_for_during_a_reload_coalesce_into_one_more_pass() {
    // Each replacement takes 700 ms to become ready: the first reload lasts over a second.
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "2"), ("FIXTURE_READY_DELAY_MS", "700")]);
    fx.wait_hellos("worker/", 2);
    fx.wait_line("READY", &[("id", &id("worker", 0, 1))]);
    fx.wait_line("READY", &[("id", &id("worker", 1, 1))]);

    fx.signal(Signal::SIGUSR2);
    fx.wait_line("RELOAD_STARTED", &[]);
    // Two more requests while it runs, one by signal and one from the master's code.
    fx.signal(Signal::SIGUSR2);
    fx.command("reload");
    assert!(
        fx.lines("RELOAD_FINISHED", &[]).is_empty(),
        "the first reload was already over\n{}",
        fx.dump()
    );
    fx.wait_for("two finished reloads", WAIT, |lines| {
        (lines.iter().filter(|l| l.kind == "RELOAD_FINISHED").count() >= 2).then_some(())
    });

    // A third pass would start at the very moment the second finished: stop, and read all.
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
    fx.finish(WAIT);
    let reloads: Vec<&str> = fx
        .history
        .iter()
        .filter(|l| l.kind.starts_with("RELOAD_"))
        .map(|l| l.kind.as_str())
        .collect();
    assert_eq!(
        reloads,
        [
            "RELOAD_STARTED",
            "RELOAD_FINISHED",
            "RELOAD_STARTED",
            "RELOAD_FINISHED"
        ],
        "{}",
        fx.dump()
    );
    // Two passes: each slot went through generations 2 and 3, and no further.
    for slot in 0..2 {
        for generation in 2..=3 {
            assert_eq!(
                fx.lines("READY", &[("id", &id("worker", slot, generation))])
                    .len(),
                1,
                "{}",
                fx.dump()
            );
        }
        assert!(
            fx.lines("SPAWNED", &[("id", &id("worker", slot, 4))])
                .is_empty(),
            "{}",
            fx.dump()
        );
    }
}
