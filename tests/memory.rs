//! Memory recycling, driven as real processes (tests/fixture/ops_fixture.rs): a worker whose
//! memory keeps growing past `max_memory` is replaced by a new process that takes over once
//! ready, without a single failed request, and without counting toward `max_restarts`.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::ops::{self, Fixture, local, must_get, sample};
use support::{WAIT, free_port, pid_alive, poll};

/// What a request loop saw.
#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    failures: Vec<String>,
    /// Answers by body (`slot=.. gen=.. pid=..`).
    by_worker: BTreeMap<String, u64>,
}

/// Sends requests back to back, each on a new connection, until `stop`.
fn request_loop(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        match ops::get(addr, "/", Duration::from_secs(10)) {
            Ok(response) if response.status == 200 => {
                tally.ok += 1;
                *tally.by_worker.entry(response.body).or_default() += 1;
            }
            Ok(response) => tally.failures.push(format!("{response:?}")),
            Err(e) => tally.failures.push(e.to_string()),
        }
    }
    tally
}

#[test]
fn a_leaking_worker_is_replaced_without_failed_requests_or_counting_as_a_restart() {
    let (http_port, status_port) = (free_port(), free_port());
    let mut fx = Fixture::start(&[
        ("OPS_COUNT", "2".into()),
        ("OPS_HTTP_PORT", http_port.to_string()),
        ("OPS_STATUS_PORT", status_port.to_string()),
        ("OPS_LEAK_SLOT", "0".into()),
        ("OPS_MAX_MEMORY_MB", "64".into()),
        ("OPS_MEMORY_SAMPLES", "2".into()),
        ("OPS_SAMPLE_MS", "200".into()),
        ("OPS_LEAK_CAP_MB", "160".into()),
        // No crash is tolerated: a memory replacement counted as one would stop the cluster.
        ("OPS_MAX_RESTARTS", "0".into()),
    ]);
    let (http, status) = (local(http_port), local(status_port));
    let ready = fx.wait_ready(2);
    let leaking = ready["worker/0#1"];
    let other = ready["worker/1#1"];

    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || request_loop(http, stop))
        })
        .collect();
    // Whatever happens below, the request loops end.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());

    fx.wait_line("LEAK", &[("id", "worker/0#1")]);
    // The replacement starts, becomes ready and takes over; the leaking worker drains and
    // exits as an expected exit, without a restart.
    let spawned = fx.wait_line("SPAWNED", &[("id", "worker/0#2")]);
    fx.wait_line("READY", &[("id", "worker/0#2")]);
    let exit = fx.wait_line("EXIT", &[("id", "worker/0#1")]);
    assert_eq!(exit.get("expected"), "true", "{}", fx.dump());
    assert_eq!(exit.get("restarting"), "false", "{}", fx.dump());
    // Requests keep flowing to the new worker after the old one is gone.
    let new_body = format!("slot=0 gen=2 pid={}", spawned.pid());
    poll("requests served by the replacement", WAIT, || {
        let response = ops::get(http, "/", Duration::from_secs(10)).map_err(|e| e.to_string())?;
        if response.body == new_body {
            Ok(())
        } else {
            Err(response.body)
        }
    });

    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for handle in loops {
        let t = handle.join().expect("a request loop");
        tally.ok += t.ok;
        tally.failures.extend(t.failures);
        for (body, n) in t.by_worker {
            *tally.by_worker.entry(body).or_default() += n;
        }
    }
    assert!(
        tally.failures.is_empty(),
        "{} of {} requests failed: {:?}\n{}",
        tally.failures.len(),
        tally.ok + tally.failures.len() as u64,
        &tally.failures[..tally.failures.len().min(10)],
        fx.dump()
    );
    eprintln!(
        "requests: {} ok, {} failed, by worker {:?}",
        tally.ok,
        tally.failures.len(),
        tally.by_worker
    );
    let old_body = format!("slot=0 gen=1 pid={leaking}");
    assert!(
        tally.by_worker.contains_key(&old_body) && tally.ok > 20,
        "the loop ran while the leaking worker served: {tally:?}"
    );

    // The master did not give up, although max_restarts is 0: the replacement is reported
    // with its reason and is not a restart after an unexpected exit.
    assert_eq!(fx.try_exit(), None, "{}", fx.dump());
    let json = ops::status(status);
    assert_eq!(ops::recycles_for(&json, 0, "memory"), 1, "{json}");
    assert_eq!(ops::restarts_for(&json, 0, "crash"), 0, "{json}");
    // `restarts_total` counts restarts after unexpected exits, like each slot's `restarts`.
    assert_eq!(json["master"]["restarts_total"], 0, "{json}");
    let slot0 = ops::slot_status(&json, 0).expect("slot 0");
    assert_eq!(slot0["generation"], 2, "{json}");
    assert_eq!(slot0["pid"], spawned.pid(), "{json}");
    assert_eq!(slot0["restarts"], 0, "{json}");
    let slot1 = ops::slot_status(&json, 1).expect("slot 1");
    assert_eq!(
        slot1["pid"], other,
        "the other worker was left alone: {json}"
    );
    let metrics = must_get(status, "/metrics").body;
    assert_eq!(
        sample(
            &metrics,
            r#"cluster_worker_recycles_total{group="worker",slot="0",reason="memory"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(!pid_alive(leaking), "the leaking worker is gone");
    let output: Vec<_> = fx.history.iter().map(|l| l.text.as_str()).collect();
    assert!(
        output
            .iter()
            .any(|l| l.contains("worker/0#1") && l.contains("max_memory")),
        "the replacement is explained\n{}",
        fx.dump()
    );

    fx.stop_cleanly();
}
