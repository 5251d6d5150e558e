//! The hang watchdog, driven as real processes (tests/fixture/ops_fixture.rs): a worker whose
//! runtime is stuck in a busy loop stops sending heartbeats, is killed and replaced within
//! `heartbeat_timeout` plus an interval, reported as hung, and counted like a crash.

mod support;

use std::time::Duration;

use support::ops::{self, Fixture, local, must_get, sample};
use support::{Exit, WAIT, free_port, pid_alive, poll};

const HEARTBEAT_MS: u64 = 200;
const TIMEOUT_MS: u64 = 1000;
/// Scheduling slack on a loaded 2-core machine: the kill, the exit's delivery, the spawn and
/// start-up of the replacement.
const SLACK: Duration = Duration::from_millis(1500);

fn start(max_restarts: u32, status_port: Option<u16>) -> Fixture {
    let mut env = vec![
        ("OPS_COUNT", "2".to_string()),
        ("OPS_SPIN_SLOT", "0".into()),
        ("OPS_HEARTBEAT_MS", HEARTBEAT_MS.to_string()),
        ("OPS_HEARTBEAT_TIMEOUT_MS", TIMEOUT_MS.to_string()),
        ("OPS_MAX_RESTARTS", max_restarts.to_string()),
    ];
    if let Some(port) = status_port {
        env.push(("OPS_STATUS_PORT", port.to_string()));
    }
    Fixture::start(&env)
}

#[test]
fn a_worker_stuck_in_a_busy_loop_is_killed_and_replaced_as_hung() {
    let port = free_port();
    let mut fx = start(3, Some(port));
    let status = local(port);
    let ready = fx.wait_ready(2);
    let stuck = ready["worker/0#1"];

    let spin = fx.wait_line("SPIN", &[("id", "worker/0#1")]);
    assert_eq!(spin.pid(), stuck);
    let replaced = fx.wait_line("READY", &[("id", "worker/0#2")]);
    let took = replaced.at.duration_since(spin.at);
    let bound = Duration::from_millis(TIMEOUT_MS + HEARTBEAT_MS) + SLACK;
    eprintln!("stuck worker replaced {took:?} after it started spinning (bound {bound:?})");
    assert!(
        took <= bound,
        "the stuck worker was replaced after {took:?}, more than {bound:?}\n{}",
        fx.dump()
    );
    // Not before its heartbeats were overdue (less a beat: the last one came before the spin).
    assert!(
        took >= Duration::from_millis(TIMEOUT_MS - HEARTBEAT_MS),
        "replaced after only {took:?}\n{}",
        fx.dump()
    );

    // Killed (it could not have exited by itself), as an unexpected exit, and restarted.
    let exit = fx.wait_line("EXIT", &[("id", "worker/0#1")]);
    assert_eq!(exit.get("how"), "sig:9", "{}", fx.dump());
    assert_eq!(exit.get("expected"), "false", "{}", fx.dump());
    assert_eq!(exit.get("restarting"), "true", "{}", fx.dump());
    assert!(!pid_alive(stuck));
    assert!(
        fx.history
            .iter()
            .any(|l| l.text.contains("worker/0#1 is hung")),
        "the kill is explained\n{}",
        fx.dump()
    );

    // Reported as hung, counted as a restart of its slot; the other worker is untouched.
    let json = poll("the restart in /status", WAIT, || {
        let json = ops::status(status);
        match ops::slot_status(&json, 0) {
            Some(w) if w["generation"] == 2 && w["state"] == "ready" => Ok(json),
            _ => Err(json.to_string()),
        }
    });
    assert_eq!(ops::restarts_for(&json, 0, "hung"), 1, "{json}");
    assert_eq!(ops::restarts_for(&json, 0, "crash"), 0, "{json}");
    assert_eq!(json["master"]["restarts_total"], 1, "{json}");
    assert_eq!(ops::slot_status(&json, 0).unwrap()["restarts"], 1, "{json}");
    let slot1 = ops::slot_status(&json, 1).unwrap();
    assert_eq!(slot1["pid"], ready["worker/1#1"], "{json}");
    assert_eq!(slot1["restarts"], 0, "{json}");
    let metrics = must_get(status, "/metrics").body;
    assert_eq!(
        sample(
            &metrics,
            r#"cluster_worker_restarts_total{group="worker",slot="0",reason="hung"}"#
        ),
        Some(1.0),
        "{metrics}"
    );

    fx.stop_cleanly();
}

#[test]
fn a_hung_worker_counts_toward_max_restarts_like_a_crash() {
    let mut fx = start(0, None);
    fx.wait_line("SPIN", &[("id", "worker/0#1")]);
    let exit = fx.wait_exit(WAIT);
    assert_eq!(
        exit,
        Exit::Code(cluster::master::EXIT_RESTART_LIMIT),
        "{}",
        fx.dump()
    );
    fx.finish(WAIT);
    fx.wait_line("LIMIT", &[("id", "worker/0#1")]);
    assert!(
        fx.lines("SPAWNED", &[("id", "worker/0#2")]).is_empty(),
        "no restart past the limit\n{}",
        fx.dump()
    );
    assert!(
        fx.history
            .iter()
            .any(|l| l.text.contains("restart limit reached")),
        "{}",
        fx.dump()
    );
}
