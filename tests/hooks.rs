//! The master's hooks: `before_fork` runs once, before the first worker is spawned;
//! `on_spawn` adjusts the environment and arguments of one worker at each of its spawns.

mod support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{Exit, Fixture, TempPath, WAIT, id};

#[test]
fn before_fork_runs_once_before_the_first_worker_is_spawned() {
    let marker = TempPath::new("before-fork");
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "2"), ("FIXTURE_MARKER", marker.as_str())]);
    let workers = fx.wait_hellos("worker/", 2);
    // Its line comes first: before the master function started and before any worker.
    assert_eq!(fx.history[0].kind, "BEFORE_FORK", "{}", fx.dump());
    assert_eq!(fx.history[0].pid(), fx.pid(), "it ran in the master");
    // It had finished (after a 200 ms pause) when each worker started: they all see its mark.
    for hello in fx.lines("HELLO", &[]) {
        assert_eq!(hello.get("marker"), "1", "{}", fx.dump());
    }

    // A restart does not run it again.
    kill(Pid::from_raw(workers[&id("worker", 0, 1)]), Signal::SIGKILL).unwrap();
    let hello = fx.wait_line("HELLO", &[("id", &id("worker", 0, 2))]);
    assert_eq!(hello.get("marker"), "1", "{}", fx.dump());
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
    fx.finish(WAIT);

    let runs = std::fs::read_to_string(&marker.0).expect("before_fork wrote its marker");
    assert_eq!(
        runs.lines().count(),
        1,
        "before_fork ran once, in the master only: {runs}"
    );
    assert_eq!(fx.lines("BEFORE_FORK", &[]).len(), 1, "{}", fx.dump());
}

#[test]
fn on_spawn_gives_one_worker_its_own_environment_and_arguments() {
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "2"), ("FIXTURE_SPAWN_HOOK", "1")]);
    let workers = fx.wait_hellos("worker/", 2);
    let first = fx.wait_line("HELLO", &[("id", &id("worker", 0, 1))]);
    assert_eq!(
        (first.get("spawnvar"), first.get("args")),
        ("-", "-"),
        "slot 0 is left alone\n{}",
        fx.dump()
    );
    let second = fx.wait_line("HELLO", &[("id", &id("worker", 1, 1))]);
    assert_eq!(
        second.get("spawnvar"),
        "spawned-worker-1-1",
        "{}",
        fx.dump()
    );
    assert_eq!(second.get("args"), "--slot-arg=1", "{}", fx.dump());

    // The hook runs again at each spawn, with the new generation.
    kill(Pid::from_raw(workers[&id("worker", 1, 1)]), Signal::SIGKILL).unwrap();
    let again = fx.wait_line("HELLO", &[("id", &id("worker", 1, 2))]);
    assert_eq!(again.get("spawnvar"), "spawned-worker-1-2", "{}", fx.dump());
    assert_eq!(again.get("args"), "--slot-arg=1", "{}", fx.dump());

    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
}

/// A worker takes the variables its master set (its identity, its channel's descriptor)
/// and removes them: a program it starts, itself built with cluster, must not take itself
/// for a worker and adopt an unrelated descriptor 3. The group's own variables stay.
#[test]
fn a_worker_leaves_no_cluster_variable_to_the_programs_it_starts() {
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "2"), ("FIXTURE_GROUP_VAR", "kept")]);
    fx.wait_hellos("worker/", 2);
    for hello in fx.lines("HELLO", &[]) {
        assert_eq!(hello.get("clusterenv"), "0", "{}", fx.dump());
        assert_eq!(hello.get("groupvar"), "kept", "{}", fx.dump());
    }
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
    fx.finish(WAIT);
}
