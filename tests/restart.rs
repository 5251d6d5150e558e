//! Restarts: a killed worker comes back in its slot; a worker that keeps crashing makes the
//! master give up with EXIT_RESTART_LIMIT instead of forking forever.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{Exit, Fixture, WAIT, id, parse_id, pid_alive, wait_until};

#[test]
fn sigkill_of_a_worker_restarts_its_slot_with_a_new_pid_and_the_next_generation() {
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "2")]);
    let workers = fx.wait_hellos("worker/", 2);
    let old = workers[&id("worker", 0, 1)];
    let other = workers[&id("worker", 1, 1)];

    kill(Pid::from_raw(old), Signal::SIGKILL).unwrap();

    let exit = fx.wait_line("EXIT", &[("id", &id("worker", 0, 1))]);
    assert_eq!(exit.get("how"), "sig:9", "{}", fx.dump());
    assert_eq!(exit.get("expected"), "false", "{}", fx.dump());
    assert_eq!(exit.get("restarting"), "true", "{}", fx.dump());
    let spawned = fx.wait_line("SPAWNED", &[("id", &id("worker", 0, 2))]);
    let hello = fx.wait_line("HELLO", &[("id", &id("worker", 0, 2))]);
    assert_eq!(
        hello.get("self"),
        id("worker", 0, 2),
        "the new process knows its generation"
    );
    assert_eq!(hello.pid(), spawned.pid());
    assert_ne!(hello.pid(), old, "the slot got a new process");
    assert!(pid_alive(hello.pid()));
    assert!(!pid_alive(old), "the killed worker is reaped");

    // The master kept running and the other slot was left alone.
    assert_eq!(
        fx.try_exit(),
        None,
        "the master must survive a worker's death\n{}",
        fx.dump()
    );
    assert!(pid_alive(other));
    assert!(
        fx.lines("EXIT", &[("id", &id("worker", 1, 1))]).is_empty(),
        "{}",
        fx.dump()
    );

    // Still a healthy cluster: it stops cleanly, and nothing else was restarted.
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
    fx.finish(WAIT);
    let spawns: Vec<_> = fx
        .lines("SPAWNED", &[])
        .iter()
        .map(|l| l.get("id").to_owned())
        .collect();
    assert_eq!(
        spawns.len(),
        3,
        "two workers and one restart: {spawns:?}\n{}",
        fx.dump()
    );
}

#[test]
fn a_worker_crashing_at_start_hits_the_restart_limit_without_a_fork_storm() {
    let max_restarts: u64 = 3;
    let started = Instant::now();
    let mut fx = Fixture::start(&[
        ("FIXTURE_COUNT", "2"),
        ("FIXTURE_CRASH_SLOT", "1"),
        ("FIXTURE_MAX_RESTARTS", "3"),
        ("FIXTURE_RESTART_WINDOW_MS", "10000"),
    ]);
    let code = fx.wait_exit_code(Duration::from_secs(15));
    let elapsed = started.elapsed();
    assert_eq!(
        code,
        cluster::master::EXIT_RESTART_LIMIT,
        "after {elapsed:?}\n{}",
        fx.dump()
    );
    fx.finish(WAIT);

    // The limit is reported on stderr, naming the slot, how it exited and the limit.
    let stderr = fx.stderr();
    assert!(stderr.contains("restart limit reached"), "{stderr}");
    assert!(stderr.contains("worker/1"), "the slot is named: {stderr}");
    assert!(
        stderr.contains("exited with code 3"),
        "the last exit is named: {stderr}"
    );
    assert!(
        stderr.contains("max_restarts = 3"),
        "the limit is named: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // No fork storm: the crashing slot was started max_restarts + 1 times, no more, counted
    // both by the master's events and by the processes themselves.
    let slot = |lines: Vec<support::Line>| -> Vec<u64> {
        lines
            .iter()
            .map(|l| parse_id(l.get("id")))
            .filter(|(_, s, _)| *s == 1)
            .map(|(_, _, g)| g)
            .collect()
    };
    let spawned = slot(fx.lines("SPAWNED", &[]));
    let started_processes = slot(fx.lines("WSTART", &[]));
    let expected: Vec<u64> = (1..=max_restarts + 1).collect();
    assert_eq!(spawned, expected, "spawns of worker/1\n{}", fx.dump());
    assert_eq!(
        started_processes,
        expected,
        "processes of worker/1\n{}",
        fx.dump()
    );
    fx.wait_line("LIMIT", &[("id", &id("worker", 1, 4)), ("how", "code:3")]);

    // The healthy worker was stopped gracefully on the way out, and every process is gone.
    let exit = fx.wait_line("EXIT", &[("id", &id("worker", 0, 1))]);
    assert_eq!(
        (exit.get("how"), exit.get("expected")),
        ("code:0", "true"),
        "{}",
        fx.dump()
    );
    for line in fx.lines("SPAWNED", &[]) {
        wait_until("every worker to be gone", Duration::from_secs(5), || {
            !pid_alive(line.pid())
        });
    }
}

/// How the first worker of slot 0 ended when its function panicked `when` (`early`: before
/// its first `.await`, `late`: after it): its exit as the master saw it, and the lines of its
/// stderr (without their `[worker/0 pid N] ` prefix).
fn panicking_worker(when: &str) -> (String, Vec<String>) {
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "1"), ("FIXTURE_PANIC", when)]);
    let first = id("worker", 0, 1);
    let pid = fx.wait_line("SPAWNED", &[("id", &first)]).pid();
    let exit = fx.wait_line("EXIT", &[("id", &first)]);
    assert_eq!(exit.get("expected"), "false", "{}", fx.dump());
    assert_eq!(exit.get("restarting"), "true", "{}", fx.dump());
    // A panic is a crash like any other: the slot comes back, and the cluster stops as usual.
    fx.wait_hellos("worker/", 1);
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
    fx.finish(WAIT);
    let prefix = format!("[worker/0 pid {pid}] ");
    let lines = fx
        .stderr()
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    (exit.get("how").to_owned(), lines)
}

#[test]
fn a_panic_before_the_first_await_is_reported_like_one_after_it() {
    let (early_exit, early) = panicking_worker("early");
    let (late_exit, late) = panicking_worker("late");
    let report = "cluster worker worker/0#1: the worker function panicked: \
                  the fixture worker was told to panic";
    for (when, exit, lines) in [("early", &early_exit, &early), ("late", &late_exit, &late)] {
        assert_eq!(exit, "code:1", "{when}: {lines:#?}");
        // The panic hook printed the panic once, then the worker said why it failed, once.
        let said = |text: &str| lines.iter().filter(|l| l.contains(text)).count();
        assert_eq!(said("panicked at"), 1, "{when}: {lines:#?}");
        assert_eq!(said(report), 1, "{when}: {lines:#?}");
        assert_eq!(
            said("the fixture worker was told to panic"),
            2,
            "{when}: {lines:#?}"
        );
    }
    assert_eq!(early_exit, late_exit);
}
