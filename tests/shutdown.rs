//! Shutdown: graceful on a signal, SIGKILL after `grace`, a second signal skips the grace
//! however soon it comes, a terminal's Ctrl-C to the whole process group stops each worker
//! once, and killing the master leaves no worker behind.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{Exit, Fixture, WAIT, id, parse_id, pid_alive, proc_state, wait_until};

/// Every worker that ever ran stopped exactly once, cleanly, because the master asked it to;
/// none was restarted. Needs the complete output ([`Fixture::finish`]).
fn assert_each_worker_stopped_once(fx: &Fixture, count: usize) {
    for slot in 0..count {
        let id = id("worker", slot, 1);
        let stops = fx.lines("STOPPING", &[("id", &id)]);
        assert_eq!(stops.len(), 1, "{id} stopped once\n{}", fx.dump());
        let exits = fx.lines("EXIT", &[("id", &id)]);
        assert_eq!(exits.len(), 1, "{id} exited once\n{}", fx.dump());
        let exit = &exits[0];
        assert_eq!(
            exit.get("how"),
            "code:0",
            "{id} exited by itself, cleanly\n{}",
            fx.dump()
        );
        assert_eq!(exit.get("expected"), "true", "{}", fx.dump());
        assert_eq!(exit.get("restarting"), "false", "{}", fx.dump());
    }
    let spawns = fx.lines("SPAWNED", &[]);
    assert_eq!(
        spawns.len(),
        count,
        "no worker was restarted\n{}",
        fx.dump()
    );
    assert!(
        spawns.iter().all(|l| parse_id(l.get("id")).2 == 1),
        "{}",
        fx.dump()
    );
    fx.history
        .iter()
        .find(|l| l.kind == "MASTER_DONE")
        .expect("the master function returned");
}

#[test]
fn a_cooperating_cluster_exits_zero_on_sigterm() {
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "2"), ("FIXTURE_GRACE_MS", "10000")]);
    let workers = fx.wait_hellos("worker/", 2);

    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
    fx.finish(WAIT);
    assert_each_worker_stopped_once(&fx, 2);
    for pid in workers.values() {
        assert!(!pid_alive(*pid), "worker {pid} is gone");
    }
}

#[test]
fn a_worker_ignoring_shutdown_is_killed_after_grace() {
    let grace = Duration::from_millis(500);
    let mut fx = Fixture::start(&[
        ("FIXTURE_COUNT", "2"),
        ("FIXTURE_GRACE_MS", "500"),
        ("FIXTURE_IGNORE_SHUTDOWN", "1"),
    ]);
    fx.wait_hellos("worker/", 2);

    let asked = Instant::now();
    fx.signal(Signal::SIGTERM);
    let code = fx.wait_exit_code(WAIT);
    let took = asked.elapsed();
    assert_eq!(
        code,
        cluster::master::EXIT_KILLED_AFTER_GRACE,
        "{}",
        fx.dump()
    );
    assert!(
        took >= grace,
        "the master waited the grace period, not less: {took:?}\n{}",
        fx.dump()
    );
    assert!(
        took < grace + Duration::from_secs(10),
        "and not much more: {took:?}\n{}",
        fx.dump()
    );
    fx.finish(WAIT);
    for slot in 0..2 {
        let id = id("worker", slot, 1);
        // The worker was asked (it said it ignores it), then killed.
        assert_eq!(
            fx.lines("IGNORING", &[("id", &id)]).len(),
            1,
            "{}",
            fx.dump()
        );
        let exit = fx.wait_line("EXIT", &[("id", &id)]);
        assert_eq!(
            exit.get("how"),
            "sig:9",
            "{id} was SIGKILLed\n{}",
            fx.dump()
        );
        assert_eq!(exit.get("restarting"), "false", "{}", fx.dump());
    }
}

/// With a 30 s grace and workers that ignore shutdown, a second signal ends it at once.
fn second_signal_skips_the_grace(first: Signal, second: Signal) {
    let mut fx = Fixture::start(&[
        ("FIXTURE_COUNT", "2"),
        ("FIXTURE_GRACE_MS", "30000"),
        ("FIXTURE_IGNORE_SHUTDOWN", "1"),
    ]);
    fx.wait_hellos("worker/", 2);
    fx.signal(first);
    // Both workers were asked to stop: the first signal was handled.
    fx.wait_line("IGNORING", &[("id", &id("worker", 0, 1))]);
    fx.wait_line("IGNORING", &[("id", &id("worker", 1, 1))]);
    assert_eq!(
        fx.try_exit(),
        None,
        "the grace period is still running\n{}",
        fx.dump()
    );
    let again = Instant::now();
    fx.signal(second);
    let code = fx.wait_exit_code(Duration::from_secs(10));
    let took = again.elapsed();
    assert_eq!(
        code,
        cluster::master::EXIT_KILLED_AFTER_GRACE,
        "{}",
        fx.dump()
    );
    assert!(
        took < Duration::from_secs(5),
        "the second signal skipped the 30 s grace: {took:?}\n{}",
        fx.dump()
    );
    fx.finish(WAIT);
    for slot in 0..2 {
        let exit = fx.wait_line("EXIT", &[("id", &id("worker", slot, 1))]);
        assert_eq!(exit.get("how"), "sig:9", "{}", fx.dump());
    }
}

#[test]
fn a_second_sigterm_skips_the_grace() {
    second_signal_skips_the_grace(Signal::SIGTERM, Signal::SIGTERM);
}

#[test]
fn sigint_after_sigterm_skips_the_grace() {
    second_signal_skips_the_grace(Signal::SIGTERM, Signal::SIGINT);
}

/// A second signal 50 ms after the first, far sooner than a worker could drain: the master
/// stops at once and says why, instead of waiting out a 30 s grace.
fn a_quick_second_signal_stops_at_once(signal: impl Fn(&Fixture)) {
    let mut fx = Fixture::start(&[
        ("FIXTURE_COUNT", "2"),
        ("FIXTURE_GRACE_MS", "30000"),
        ("FIXTURE_IGNORE_SHUTDOWN", "1"),
    ]);
    fx.wait_hellos("worker/", 2);
    let first = Instant::now();
    signal(&fx);
    std::thread::sleep(Duration::from_millis(50));
    signal(&fx);
    let code = fx.wait_exit_code(Duration::from_secs(20));
    let took = first.elapsed();
    assert_eq!(
        code,
        cluster::master::EXIT_KILLED_AFTER_GRACE,
        "{}",
        fx.dump()
    );
    assert!(
        took < Duration::from_secs(5),
        "the second signal skipped the 30 s grace: {took:?}\n{}",
        fx.dump()
    );
    fx.finish(WAIT);
    for slot in 0..2 {
        let exit = fx.wait_line("EXIT", &[("id", &id("worker", slot, 1))]);
        assert_eq!(exit.get("how"), "sig:9", "{}", fx.dump());
        assert_eq!(exit.get("restarting"), "false", "{}", fx.dump());
    }
    let stderr = fx.stderr();
    assert_eq!(
        stderr.matches("second signal: stopping now").count(),
        1,
        "{stderr}"
    );
    assert!(
        !stderr.contains("did not stop within the grace period"),
        "{stderr}"
    );
}

#[test]
fn a_second_sigterm_50_ms_after_the_first_stops_at_once() {
    a_quick_second_signal_stops_at_once(|fx| fx.signal(Signal::SIGTERM));
}

/// A quick double Ctrl-C in a terminal: SIGINT twice to the whole process group.
#[test]
fn a_double_ctrl_c_50_ms_apart_stops_at_once() {
    a_quick_second_signal_stops_at_once(|fx| fx.signal_group(Signal::SIGINT));
}

#[test]
fn ctrl_c_to_the_process_group_shuts_down_exactly_once() {
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "2"), ("FIXTURE_GRACE_MS", "10000")]);
    fx.wait_hellos("worker/", 2);

    // What a terminal does on Ctrl-C: SIGINT to every process of the foreground group.
    fx.signal_group(Signal::SIGINT);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
    fx.finish(WAIT);
    // Workers did not die of SIGINT, nor stop on their own: each stopped once because the
    // master asked, and exited 0.
    assert_each_worker_stopped_once(&fx, 2);
}

#[test]
fn ctrl_c_while_workers_are_still_starting_neither_kills_nor_restarts_them() {
    // Workers that are busy in `main` for a while, before the cluster's own code runs.
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "2"), ("FIXTURE_WORKER_DELAY_MS", "1000")]);
    fx.wait_line("SPAWNED", &[("id", &id("worker", 0, 1))]);
    fx.wait_line("SPAWNED", &[("id", &id("worker", 1, 1))]);

    fx.signal_group(Signal::SIGINT);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
    fx.finish(WAIT);
    // The master alone handles the terminal's Ctrl-C: no worker died of it (which the master
    // could take for a crash, and restart), none was restarted.
    for slot in 0..2 {
        let exit = fx.wait_line("EXIT", &[("id", &id("worker", slot, 1))]);
        assert_ne!(
            exit.get("how"),
            "sig:2",
            "worker/{slot} was killed by the Ctrl-C\n{}",
            fx.dump()
        );
        assert_eq!(exit.get("expected"), "true", "{}", fx.dump());
    }
    assert_eq!(
        fx.lines("SPAWNED", &[]).len(),
        2,
        "no worker was restarted\n{}",
        fx.dump()
    );
}

#[test]
fn sigkill_of_the_master_leaves_no_orphan_worker() {
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "3")]);
    let workers = fx.wait_hellos("worker/", 3);
    for pid in workers.values() {
        assert!(pid_alive(*pid));
    }
    // A stopped worker cannot notice that its channel to the master closed; only the kernel's
    // parent-death signal can end it.
    let stopped = workers[&id("worker", 0, 1)];
    kill(Pid::from_raw(stopped), Signal::SIGSTOP).unwrap();
    wait_until("the worker to be stopped", WAIT, || {
        proc_state(stopped) == Some('T')
    });

    fx.signal(Signal::SIGKILL);
    assert_eq!(fx.wait_exit(WAIT), Exit::Signal(Signal::SIGKILL));
    // The master cannot clean up after a SIGKILL: the workers' parent-death signal must.
    let gone = Instant::now();
    wait_until(
        "every worker to die with its master",
        Duration::from_secs(1),
        || workers.values().all(|pid| !pid_alive(*pid)),
    );
    eprintln!("workers gone {:?} after the master's death", gone.elapsed());
}
