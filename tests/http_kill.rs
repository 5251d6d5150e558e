//! A worker of the main job (examples/http) killed with SIGKILL loses only what it had in
//! hand: under load, only requests on connections that worker was serving fail (at most one
//! per client loop, none on the other worker); and connections still waiting to be accepted
//! (in the kernel's queue with `Shared`, in the master or on their way to a worker with
//! `RoundRobin`) are all served by the other workers.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::example;
use support::http::{Conn, HttpCluster, Load};
use support::{WAIT, proc_state, wait_until};

const KEEP_ALIVE: usize = 16;
const FRESH: usize = 1;

fn sigkill_under_load_fails_only_the_victims_requests(policy: &str) {
    let cluster = HttpCluster::start(&example("http"), 2, policy);
    let slots = cluster.serving_slots();
    let (victim, survivor) = (slots[&0], slots[&1]);

    let load = Load::start(cluster.addr(), KEEP_ALIVE, FRESH);
    load.wait_more_ok(300);
    let killed_at = Instant::now();
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("kill the worker");

    // Slot 0 comes back with a new process, which serves the load along with the survivor.
    let deadline = Instant::now() + WAIT;
    loop {
        let pids = load.tally().pids();
        let replaced = pids
            .iter()
            .any(|(&pid, &(slot, _))| slot == 0 && pid != victim);
        if replaced {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{policy}: slot 0 was not replaced within {WAIT:?}\n{}",
            cluster.dump()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    load.wait_more_ok(300);
    let tally = load.stop();

    let failures = tally.failures();
    let mut per_lane = BTreeMap::<usize, usize>::new();
    for f in &failures {
        *per_lane.entry(f.lane).or_default() += 1;
    }
    let context = || {
        format!(
            "{policy}: victim {victim}, survivor {survivor}; {} ok, {} failed: {failures:#?}\n{}",
            tally.ok(),
            failures.len(),
            cluster.dump()
        )
    };
    for f in &failures {
        assert!(
            f.at >= killed_at,
            "a request failed before the kill: {}",
            context()
        );
        assert!(
            f.last_pid.is_none_or(|pid| pid == victim),
            "a connection served by another worker failed: {}",
            context()
        );
    }
    assert!(
        per_lane.values().all(|&n| n <= 1),
        "a client loop failed more than once: {}",
        context()
    );
    assert!(failures.len() <= KEEP_ALIVE + FRESH, "{}", context());
    let survivor_seen = tally.pids().get(&survivor).map(|&(_, at)| at);
    assert!(
        survivor_seen.is_some_and(|at| at > killed_at),
        "the survivor stopped serving: {}",
        context()
    );
    eprintln!(
        "{policy}: {} requests ok, {} failed (all on the killed worker's connections)",
        tally.ok(),
        failures.len()
    );
}

#[test]
fn sigkill_under_load_fails_only_the_victims_requests_shared() {
    sigkill_under_load_fails_only_the_victims_requests("shared");
}

#[test]
fn sigkill_under_load_fails_only_the_victims_requests_round_robin() {
    sigkill_under_load_fails_only_the_victims_requests("round-robin");
}

/// Open descriptors of `pid`.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// The master's descriptors without the transient ones: it opens /proc files for a moment
/// each time it samples its workers, and a base that caught one made the wait below
/// overshoot past the heartbeat timeout, which killed the stopped workers (a CI run: ESRCH
/// on resuming one). The smallest of a few reads over 50 ms.
fn fd_floor(pid: i32) -> usize {
    (0..10)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            fd_count(pid)
        })
        .min()
        .unwrap_or(0)
}

/// With `burst`, the master is stopped too while the connections arrive, so that it accepts
/// them all in one wake-up and hands them out several to a message (`Connections`); without,
/// one at a time (`Connection`).
fn queued_connections_survive_a_killed_worker(policy: &str, burst: bool) {
    const N: usize = 8;
    let cluster = HttpCluster::start(&example("http"), 2, policy);
    let slots = cluster.serving_slots();
    let (victim, other) = (slots[&0] as i32, slots[&1] as i32);
    let master = cluster.pid();

    // No worker can take a connection now: they all wait in the kernel's accept queue
    // (`Shared`) or are accepted by the master and handed to a stopped worker (`RoundRobin`).
    for pid in [victim, other] {
        kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("stop a worker");
    }
    for pid in [victim, other] {
        wait_until("a worker to stop", WAIT, || proc_state(pid) == Some('T'));
    }
    let base = fd_floor(master);
    if burst {
        kill(Pid::from_raw(master), Signal::SIGSTOP).expect("stop the master");
        wait_until("the master to stop", WAIT, || {
            proc_state(master) == Some('T')
        });
    }
    let mut conns: Vec<Conn> = (0..N)
        .map(|i| {
            let mut conn = Conn::connect(cluster.addr())
                .unwrap_or_else(|e| panic!("{policy}: connection {i}: {e}"));
            conn.send_get(true)
                .unwrap_or_else(|e| panic!("{policy}: connection {i}: {e}"));
            conn
        })
        .collect();
    if burst {
        // The kernel completed every handshake: all N wait in the listening socket's queue.
        kill(Pid::from_raw(master), Signal::SIGCONT).expect("resume the master");
    }
    if policy != "shared" {
        // The master holds a copy of each connection until a worker acknowledges it: once it
        // holds all N, every one was accepted and handed out (about half to the victim).
        // Well within examples/http's heartbeat timeout (10 s), after which the master
        // would kill the stopped workers as hung.
        wait_until(
            "the master to hold every connection it handed out",
            Duration::from_secs(5),
            || fd_count(master) >= base + N,
        );
    }

    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill a worker");
    kill(Pid::from_raw(other), Signal::SIGCONT).expect("resume a worker");

    let mut by = BTreeMap::<u32, usize>::new();
    for (i, conn) in conns.iter_mut().enumerate() {
        match conn.read_response() {
            Ok(resp) if resp.status == 200 => {
                let (_, pid) = resp.worker().expect("a worker's hello");
                assert_ne!(pid, victim as u32, "the killed worker answered");
                *by.entry(pid).or_default() += 1;
            }
            other => panic!(
                "{policy}: queued connection {i} of {N} was lost: {other:?}\n{}",
                cluster.dump()
            ),
        }
    }
    eprintln!("{policy} (burst: {burst}): all {N} queued connections answered, by pid: {by:?}");
}

#[test]
fn queued_connections_survive_a_killed_worker_shared() {
    queued_connections_survive_a_killed_worker("shared", false);
}

#[test]
fn queued_connections_survive_a_killed_worker_round_robin() {
    queued_connections_survive_a_killed_worker("round-robin", false);
}

#[test]
fn a_burst_of_queued_connections_survives_a_killed_worker_round_robin() {
    queued_connections_survive_a_killed_worker("round-robin", true);
}

#[test]
fn a_burst_of_queued_connections_survives_a_killed_worker_least_connections() {
    queued_connections_survive_a_killed_worker("least-connections", true);
}
