//! The master survives any worker (issue 12), process by process: real clusters of
//! examples/http on free loopback ports, with workers stopped (SIGSTOP), killed, or not
//! startable at all.
//!
//! - A stopped worker under `RoundRobin` holds at most the first connection handed to it
//!   before the master notices it never acknowledged (`ack_timeout`, 100 ms); every other
//!   connection goes to the running workers, and the held one is answered once it resumes.
//! - A worker that cannot be started (its binary removed) is retried, never counted as a
//!   crash, while the other workers serve; once the binary is back the slot fills again.
//! - A worker asked to stop gracefully (a rolling reload) while stopped keeps the
//!   connections it was handed and never acknowledged: each is answered exactly once, by
//!   that worker once it resumes, never by another worker as well.
//!
//! examples/http kills a worker silent for 10 s as hung (its `heartbeat_timeout`): every
//! worker here is stopped for a few seconds at most.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::faults::{Moved, Stopped};
use support::http::{Conn, HttpCluster, IO_TIMEOUT, Load, Response};
use support::ops;
use support::{Exit, TempDir, WAIT, copy_executable, example, pid_alive, poll, wait_until};

/// How long the client waits for an answer before it counts a connection as held by the
/// stopped worker: far above a running worker's answer, far below the heartbeat timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The `ack_timeout` violations in the master's `/metrics` (0 before the first).
fn ack_timeout_violations(cluster: &HttpCluster) -> f64 {
    let metrics = ops::must_get(cluster.status_addr(), "/metrics");
    assert_eq!(metrics.status, 200, "{metrics:?}");
    ops::sample(
        &metrics.body,
        r#"cluster_worker_violations_total{kind="ack_timeout"}"#,
    )
    .unwrap_or(0.0)
}

/// The worker pid in a 200 answer of examples/http; panics naming `what` otherwise.
fn hello_pid(what: &str, resp: &Result<Response, String>, cluster: &HttpCluster) -> u32 {
    match resp {
        Ok(resp) if resp.status == 200 => match resp.worker() {
            Some((_, pid)) => pid,
            None => panic!("{what}: not a worker's hello: {resp:?}"),
        },
        other => panic!("{what}: {other:?}\n{}", cluster.dump()),
    }
}

/// After the answer to a request that asked for the close, the connection must end with
/// nothing more: a second answer from another worker would show here.
fn assert_nothing_more(what: &str, conn: &mut Conn, cluster: &HttpCluster) {
    match conn.read_rest() {
        Ok(rest) if rest.is_empty() => {}
        Ok(rest) => panic!(
            "{what}: more after the answer: {:?}\n{}",
            String::from_utf8_lossy(&rest),
            cluster.dump()
        ),
        Err(e) => panic!("{what}: after the answer: {e}\n{}", cluster.dump()),
    }
}

/// Waits (up to [`WAIT`]) for the master to exit.
fn wait_exit(cluster: &mut HttpCluster) -> Exit {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(exit) = cluster.try_exit() {
            return exit;
        }
        assert!(
            Instant::now() < deadline,
            "the master did not exit within {WAIT:?}\n{}",
            cluster.dump()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_stopped_worker_under_round_robin_holds_at_most_the_first_connection() {
    const WORKERS: usize = 3;
    const N: usize = 20;
    let cluster = HttpCluster::start_with_status(&example("http"), WORKERS, "round-robin");
    let slots = cluster.serving_slots();
    let victim = slots[&1];
    let violations_before = ack_timeout_violations(&cluster);

    let stopped = Stopped::stop(victim as i32);
    let stopped_at = Instant::now();
    // One connection after another, each with a short client timeout. The rotation reaches
    // the stopped worker within the first WORKERS connections; that one waits. From then on
    // the master knows the worker left a connection unacknowledged past `ack_timeout`.
    let mut held: Option<(usize, Conn)> = None;
    let mut by = BTreeMap::<u32, usize>::new();
    let mut slowest = Duration::ZERO;
    for i in 0..N {
        let what = format!("connection {i} of {N}");
        let mut conn = Conn::connect(cluster.addr()).unwrap_or_else(|e| panic!("{what}: {e}"));
        conn.stream()
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .expect("set the client timeout");
        let sent = Instant::now();
        conn.send_get(true)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        match conn.read_response() {
            Err(e) if e.ends_with(": timeout") => {
                if let Some((first, _)) = &held {
                    panic!(
                        "{what} waited {CLIENT_TIMEOUT:?} on the stopped worker {victim}, as \
                         connection {first} did: the master kept handing it connections \
                         (answered so far by pid: {by:?})\n{}",
                        cluster.dump()
                    );
                }
                held = Some((i, conn));
            }
            resp => {
                let pid = hello_pid(&what, &resp, &cluster);
                assert_ne!(pid, victim, "{what}: the stopped worker answered");
                assert_nothing_more(&what, &mut conn, &cluster);
                *by.entry(pid).or_default() += 1;
                slowest = slowest.max(sent.elapsed());
            }
        }
    }
    let stopped_for = stopped_at.elapsed();
    let Some((first, mut conn)) = held else {
        panic!("no connection went to the stopped worker {victim}: by pid {by:?}");
    };
    assert!(
        first < WORKERS,
        "connection {first} was the first to reach the stopped worker: the rotation should \
         have reached it within {WORKERS}"
    );
    assert_eq!(
        by.len(),
        WORKERS - 1,
        "every running worker answers: {by:?}"
    );
    assert_eq!(by.values().sum::<usize>(), N - 1);

    // Resumed, the worker answers the connection it was handed: it was never lost.
    stopped.resume();
    conn.stream()
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set the client timeout");
    let resp = conn.read_response();
    let pid = hello_pid("the held connection, once resumed", &resp, &cluster);
    assert_eq!(
        pid, victim,
        "the held connection was answered by another worker"
    );
    assert_nothing_more("the held connection", &mut conn, &cluster);

    let violations = ack_timeout_violations(&cluster);
    assert!(
        violations > violations_before,
        "no ack_timeout violation in /metrics ({violations_before} before, {violations} after)\n{}",
        cluster.dump()
    );
    eprintln!(
        "stopped worker {victim} (for {stopped_for:?}): connection {first} held and answered \
         after SIGCONT; the other {} answered by {by:?}, slowest in {slowest:?}; ack_timeout \
         violations {violations_before} -> {violations}",
        N - 1
    );
}

#[test]
fn a_missing_binary_is_retried_not_counted_while_the_others_serve() {
    const WORKERS: usize = 3;
    let dir = TempDir::new("faults-spawn");
    let app = copy_executable(&example("http"), &dir.0, "http");
    let mut cluster = HttpCluster::start_with_status(&app, WORKERS, "round-robin");
    let status_addr = cluster.status_addr();
    let slots = cluster.serving_slots();
    let victim = slots[&0];

    // No worker can be started any more: the master runs from the path it found at start.
    let moved = Moved::away(&app);
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("kill a worker");
    wait_until("the killed worker to be reaped", WAIT, || {
        !pid_alive(victim as i32)
    });
    let load = Load::start(cluster.addr(), 4, 1);

    // Its slot fails to start again and again. Counted as crashes, one kill and three
    // failed starts would be past `max_restarts` (3 in 10 s) and the master would exit 75.
    // The retries double from 100 ms: the fifth comes 1.5 s after the kill.
    let json = poll("five failed starts in /status", WAIT, || {
        let json = ops::status(status_addr);
        let failures = json["master"]["spawn_failures_total"].as_u64();
        match failures {
            Some(n) if n >= 5 => Ok(json),
            _ => Err(json["master"].to_string()),
        }
    });
    let master = &json["master"];
    let error = master["spawn_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("No such file"),
        "spawn_error does not say why: {master}"
    );
    assert_eq!(
        master["restarts_total"], 1,
        "only the kill counts: {master}"
    );
    assert_eq!(
        cluster.try_exit(),
        None,
        "the master exited\n{}",
        cluster.dump()
    );
    load.wait_more_ok(100);
    load.tally()
        .assert_none_failed("the failed starts", &cluster);
    let failures_seen = master["spawn_failures_total"].as_u64().unwrap_or(0);

    // The binary is back: the next retry starts a worker in the slot.
    moved.restore();
    let json = poll("every slot ready again in /status", WAIT, || {
        let json = ops::status(status_addr);
        let ready: BTreeSet<u64> = json["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["state"] == "ready")
            .filter_map(|w| w["slot"].as_u64())
            .collect();
        if ready.len() == WORKERS && json["master"]["spawn_error"].is_null() {
            Ok(json)
        } else {
            Err(json.to_string())
        }
    });
    let after = cluster.serving_slots_except(&BTreeSet::from([victim]));
    assert_ne!(after[&0], victim);
    load.wait_more_ok(100);
    let tally = load.stop();
    tally.assert_none_failed("the failed starts and the recovery", &cluster);
    let master = &json["master"];
    assert_eq!(master["restarts_total"], 1, "{master}");
    assert_eq!(
        cluster.try_exit(),
        None,
        "the master exited\n{}",
        cluster.dump()
    );

    cluster.signal(Signal::SIGTERM);
    assert_eq!(wait_exit(&mut cluster), Exit::Code(0), "{}", cluster.dump());
    eprintln!(
        "binary removed: {failures_seen}+ failed starts of slot 0 (not counted; restarts_total \
         1), {} requests served by the others without a failure; restored: slot 0 is pid {}",
        tally.ok(),
        after[&0]
    );
}

#[test]
fn a_graceful_stop_serves_each_unacknowledged_connection_exactly_once() {
    const N: usize = 8;
    let cluster = HttpCluster::start(&example("http"), 2, "round-robin");
    let slots = cluster.serving_slots();
    let (victim, other) = (slots[&0], slots[&1]);

    let stopped = Stopped::stop(victim as i32);
    // The master is stopped too while the connections arrive, so that it accepts them all in
    // one round and hands them out alternately: half go to the stopped worker, where they
    // wait in its channel, unacknowledged.
    let master = Stopped::stop(cluster.pid());
    let mut conns: Vec<Conn> = (0..N)
        .map(|i| {
            let mut conn =
                Conn::connect(cluster.addr()).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            conn.send_get(true)
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            conn
        })
        .collect();
    master.resume();
    wait_until("the running worker to answer its half", WAIT, || {
        conns.iter().filter(|c| c.has_input()).count() >= N / 2
    });
    let mut held = Vec::new();
    for (i, conn) in conns.iter_mut().enumerate() {
        if conn.has_input() {
            let what = format!("connection {i}");
            let pid = hello_pid(&what, &conn.read_response(), &cluster);
            assert_eq!(
                pid, other,
                "{what}: answered by another worker than the running one"
            );
            assert_nothing_more(&what, conn, &cluster);
        } else {
            held.push(i);
        }
    }
    assert_eq!(held.len(), N / 2, "the stopped worker was handed {held:?}");

    // A rolling reload: the stopped worker's replacement becomes ready, and the stopped
    // worker is asked to stop (it leaves the rotation). Its connections are still its own.
    cluster.reload();
    // For a while (the passage of time is what is tested): nobody answers them.
    let quiet = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet {
        for &i in &held {
            if conns[i].has_input() {
                let resp = conns[i].read_response();
                panic!(
                    "connection {i}, handed to the stopped worker {victim}, was answered while \
                     it was stopped (by another worker, to which the master handed it as \
                     well): {resp:?}\n{}",
                    cluster.dump()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    // Resumed, the stopping worker serves what it was handed, each connection once, and
    // exits by itself.
    stopped.resume();
    for &i in &held {
        let what = format!("held connection {i}");
        let pid = hello_pid(&what, &conns[i].read_response(), &cluster);
        assert_eq!(pid, victim, "{what}: answered by another worker");
        assert_nothing_more(&what, &mut conns[i], &cluster);
    }
    wait_until("the stopped worker to exit", WAIT, || {
        !pid_alive(victim as i32)
    });
    let after = cluster.serving_slots_except(&BTreeSet::from([victim, other]));
    eprintln!(
        "graceful stop of stopped worker {victim}: its {} unacknowledged connections {held:?} \
         answered once each by it after SIGCONT, none by another; new workers {after:?}",
        held.len()
    );
}
