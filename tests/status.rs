//! The master's status server, driven as real processes (tests/fixture/ops_fixture.rs):
//! `/status` JSON and how it follows a restart, `/metrics` merging every worker's own metrics
//! with the cluster's, a stopped worker not stalling `/metrics`, `/healthz` and `/readyz`.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use support::ops::{self, Continue, Fixture, local, must_get, sample};
use support::{WAIT, free_port, poll, proc_state};

/// Starts `count` workers with the status server on a free port; returns the fixture, the
/// status address and the first workers' pids by slot.
fn start(count: usize, extra: &[(&str, String)]) -> (Fixture, std::net::SocketAddr, Vec<i32>) {
    let port = free_port();
    let mut env = vec![
        ("OPS_COUNT", count.to_string()),
        ("OPS_STATUS_PORT", port.to_string()),
        ("OPS_SAMPLE_MS", "100".to_string()),
    ];
    env.extend(extra.iter().cloned());
    let mut fx = Fixture::start(&env);
    let ready = fx.wait_ready(count);
    let pids = (0..count)
        .map(|slot| ready[&format!("worker/{slot}#1")])
        .collect();
    (fx, local(port), pids)
}

fn field<'a>(value: &'a Value, key: &str) -> &'a Value {
    value
        .get(key)
        .unwrap_or_else(|| panic!("no `{key}` in {value}"))
}

#[test]
fn status_json_has_every_field_and_follows_a_sigkill_restart() {
    let (mut fx, addr, pids) = start(2, &[("OPS_MAX_RESTARTS", "5".into())]);

    // Once sampled, every field is there with its type.
    let before = poll("both workers ready and sampled", WAIT, || {
        let status = ops::status(addr);
        let workers = status["workers"].as_array().cloned().unwrap_or_default();
        let sampled = workers.len() == 2
            && workers
                .iter()
                .all(|w| w["state"] == "ready" && w["rss_bytes"].is_u64());
        if sampled {
            Ok(status)
        } else {
            Err(status.to_string())
        }
    });
    let master = field(&before, "master");
    assert_eq!(field(master, "pid").as_i64(), Some(i64::from(fx.pid())));
    assert!(field(master, "uptime_ms").is_u64(), "{before}");
    assert_eq!(
        field(master, "restarts_total").as_u64(),
        Some(0),
        "{before}"
    );
    assert_eq!(field(master, "reloads_total").as_u64(), Some(0), "{before}");
    for slot in 0..2u64 {
        let w = ops::slot_status(&before, slot).expect("the slot is listed");
        assert_eq!(field(&w, "group"), "worker");
        assert_eq!(field(&w, "slot").as_u64(), Some(slot));
        assert_eq!(
            field(&w, "pid").as_i64(),
            Some(i64::from(pids[slot as usize]))
        );
        assert_eq!(field(&w, "generation").as_u64(), Some(1));
        assert_eq!(field(&w, "state"), "ready");
        assert_eq!(field(&w, "restarts").as_u64(), Some(0));
        assert!(field(&w, "uptime_ms").is_u64(), "{w}");
        assert!(
            field(&w, "rss_bytes").as_u64().is_some_and(|b| b > 0),
            "{w}"
        );
        assert!(field(&w, "cpu_seconds").is_number(), "{w}");
        assert!(field(&w, "connections").is_u64(), "{w}");
    }

    kill(Pid::from_raw(pids[0]), Signal::SIGKILL).unwrap();

    let after = poll("slot 0 restarted in /status", WAIT, || {
        let status = ops::status(addr);
        match ops::slot_status(&status, 0) {
            Some(w) if w["pid"] != pids[0] && w["state"] == "ready" => Ok(status),
            _ => Err(status.to_string()),
        }
    });
    let w = ops::slot_status(&after, 0).unwrap();
    assert_eq!(field(&w, "generation").as_u64(), Some(2), "{after}");
    assert_eq!(field(&w, "restarts").as_u64(), Some(1), "{after}");
    let new_pid = field(&w, "pid").as_i64().unwrap();
    let spawned = fx.wait_line("SPAWNED", &[("id", "worker/0#2")]);
    assert_eq!(i64::from(spawned.pid()), new_pid);
    let master = field(&after, "master");
    assert_eq!(field(master, "restarts_total").as_u64(), Some(1), "{after}");
    assert!(
        field(master, "uptime_ms").as_u64() >= before["master"]["uptime_ms"].as_u64(),
        "{after}"
    );
    assert_eq!(ops::restarts_for(&after, 0, "crash"), 1, "{after}");
    // The other slot is untouched.
    let other = ops::slot_status(&after, 1).unwrap();
    assert_eq!(field(&other, "pid").as_i64(), Some(i64::from(pids[1])));
    assert_eq!(field(&other, "generation").as_u64(), Some(1));
    assert_eq!(field(&other, "restarts").as_u64(), Some(0));
    assert_eq!(
        field(&after, "workers").as_array().map(Vec::len),
        Some(2),
        "{after}"
    );

    fx.stop_cleanly();
}

#[test]
fn metrics_merge_each_workers_own_metrics_with_the_clusters() {
    let (mut fx, addr, _) = start(2, &[]);
    let response = must_get(addr, "/metrics");
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{response:?}"
    );
    let text = &response.body;
    for (slot, jobs, queue) in [(0, 1000.0, 7.0), (1, 1001.0, 14.0)] {
        let labels = format!(r#"group="worker",slot="{slot}""#);
        assert_eq!(
            sample(text, &format!("ops_jobs_total{{{labels}}}")),
            Some(jobs),
            "{text}"
        );
        assert_eq!(
            sample(text, &format!("ops_queue_depth{{{labels}}}")),
            Some(queue),
            "{text}"
        );
    }
    // One header per family, however many workers report it.
    assert_eq!(
        text.matches("# TYPE ops_jobs counter\n").count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches("# TYPE ops_queue_depth gauge\n").count(),
        1,
        "{text}"
    );
    // The cluster's own metrics.
    assert_eq!(
        sample(text, r#"cluster_workers{state="ready"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(text, r#"cluster_workers{state="starting"}"#),
        Some(0.0),
        "{text}"
    );
    assert_eq!(sample(text, "cluster_reloads_total"), Some(0.0), "{text}");
    assert!(
        sample(text, "cluster_master_uptime_seconds").is_some(),
        "{text}"
    );
    assert!(text.ends_with("\n# EOF\n"), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    fx.stop_cleanly();
}

#[test]
fn a_stopped_worker_does_not_stall_metrics() {
    let (mut fx, addr, pids) = start(2, &[]);
    let both = must_get(addr, "/metrics").body;
    assert!(
        both.contains(r#"ops_jobs_total{group="worker",slot="1"}"#),
        "{both}"
    );

    let stopped = pids[1];
    kill(Pid::from_raw(stopped), Signal::SIGSTOP).unwrap();
    let _resume = Continue(stopped);
    poll("the worker to be stopped", WAIT, || {
        match proc_state(stopped) {
            Some('T') => Ok(()),
            other => Err(format!("state {other:?}")),
        }
    });

    for _ in 0..2 {
        let started = Instant::now();
        let response = must_get(addr, "/metrics");
        let took = started.elapsed();
        assert_eq!(response.status, 200, "{response:?}");
        assert!(
            took < Duration::from_secs(2),
            "/metrics took {took:?} with a stopped worker"
        );
        let text = &response.body;
        assert_eq!(
            sample(text, r#"ops_jobs_total{group="worker",slot="0"}"#),
            Some(1000.0),
            "the running worker's metrics are served\n{text}"
        );
        assert!(
            !text.contains(r#"slot="1"} 1001"#)
                && !text.contains("ops_queue_depth{group=\"worker\",slot=\"1\"}"),
            "the stopped worker cannot have answered\n{text}"
        );
        assert!(text.ends_with("\n# EOF\n"), "{text}");
        // /status does not wait for workers at all.
        let started = Instant::now();
        let status = ops::status(addr);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(status["workers"].as_array().map(Vec::len), Some(2));
    }

    kill(Pid::from_raw(stopped), Signal::SIGCONT).unwrap();
    // Resumed, it answers scrapes again (its late answers to the earlier ones are dropped).
    poll("the resumed worker's metrics", WAIT, || {
        let text = must_get(addr, "/metrics").body;
        match sample(&text, r#"ops_jobs_total{group="worker",slot="1"}"#) {
            Some(1001.0) => Ok(()),
            _ => Err(text),
        }
    });
    assert!(fx.lines("EXIT", &[]).is_empty(), "{}", fx.dump());
    fx.stop_cleanly();
}

#[test]
fn healthz_and_readyz_follow_min_ready() {
    let (mut fx, addr, _) = start(2, &[("OPS_MIN_READY", "2".into())]);
    let health = must_get(addr, "/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    let ready = must_get(addr, "/readyz");
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(must_get(addr, "/nope").status, 404);
    fx.stop_cleanly();

    let (mut fx, addr, _) = start(2, &[("OPS_MIN_READY", "3".into())]);
    let health = must_get(addr, "/healthz");
    assert_eq!(health.status, 200, "{health:?}");
    let ready = must_get(addr, "/readyz");
    assert_eq!(
        ready.status, 503,
        "two ready workers of three required: {ready:?}"
    );
    assert!(ready.body.contains("2 of the 3"), "{ready:?}");
    fx.stop_cleanly();
}
