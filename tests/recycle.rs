//! Recycling of the main job (examples/http) configured from the environment, as an operator
//! would: `max_requests` under load replaces workers again and again without one failed
//! request, none of it counted as a restart, and recycles come one at a time, never two in the
//! same second; `max_lifetime` replaces idle workers once they have run long enough.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::http::{HttpCluster, Load};
use support::ops;
use support::{example, poll};

/// Recycles of every slot and reason in a `/status` snapshot.
fn recycles(status: &serde_json::Value, reason: &str) -> u64 {
    status["recycles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["reason"] == reason)
        .filter_map(|r| r["count"].as_u64())
        .sum()
}

#[test]
fn max_requests_recycles_under_load_lose_nothing_and_come_one_at_a_time() {
    const RECYCLES: u64 = 10;
    let cluster = HttpCluster::start_with_env(
        &example("http"),
        2,
        "round-robin",
        &[
            ("CLUSTER_MAX_REQUESTS", "1500"),
            ("CLUSTER_MAX_REQUESTS_JITTER", "1500"),
        ],
    );
    let status = cluster.status_addr();
    let load = Load::start(cluster.addr(), 4, 1);
    // When each recycle was first seen in /status, polled every 25 ms: the count goes up as
    // the replacement is started.
    let mut seen_at: Vec<Instant> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while (seen_at.len() as u64) < RECYCLES {
        assert!(
            Instant::now() < deadline,
            "only {} recycles within 90 s ({} requests served)\n{}",
            seen_at.len(),
            load.tally().ok(),
            cluster.dump()
        );
        let now = recycles(&ops::status(status), "max_requests");
        while (seen_at.len() as u64) < now {
            seen_at.push(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    // Traffic goes on after the last recycle, so that its replacement serves too.
    load.wait_more_ok(200);
    let tally = load.stop();
    tally.assert_none_failed(&format!("{RECYCLES} recycles by max_requests"), &cluster);

    let json = ops::status(status);
    assert_eq!(json["master"]["restarts_total"], 0, "{json}");
    assert_eq!(json["restarts"], serde_json::json!([]), "{json}");
    // Several processes per slot served: each slot was recycled, not just one of them.
    let pids = tally.pids();
    let slots: BTreeSet<usize> = pids.values().map(|(slot, _)| *slot).collect();
    assert_eq!(slots.len(), 2, "{pids:?}");
    assert!(
        pids.len() >= 8,
        "only {} worker processes answered",
        pids.len()
    );
    // One at a time (reload_parallelism 1), checked once per sample: never two recycles
    // within the same second. Seen with 25 ms polling, so allow that much.
    let gaps: Vec<Duration> = seen_at.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().enumerate() {
        // Two recycles counted in the same poll show as a zero gap: the same second.
        assert!(
            *gap >= Duration::from_millis(900),
            "recycles {i} and {} came {gap:?} apart: {gaps:?}",
            i + 1
        );
    }
    let metrics = ops::must_get(status, "/metrics").body;
    let counted: f64 = (0..2)
        .filter_map(|slot| {
            ops::sample(
                &metrics,
                &format!(
                    r#"cluster_worker_recycles_total{{group="worker",slot="{slot}",reason="max_requests"}}"#
                ),
            )
        })
        .sum();
    assert!(counted >= RECYCLES as f64, "{metrics}");
    eprintln!(
        "{} requests, 0 failed, {} recycles by max_requests, gaps {gaps:?}",
        tally.ok(),
        recycles(&json, "max_requests")
    );
}

#[test]
fn max_lifetime_recycles_idle_workers() {
    let cluster = HttpCluster::start_with_env(
        &example("http"),
        2,
        "shared",
        &[
            ("CLUSTER_MAX_LIFETIME", "2s"),
            ("CLUSTER_MAX_LIFETIME_JITTER", "1s"),
        ],
    );
    let status = cluster.status_addr();
    let before: BTreeSet<u32> = cluster.serving_slots().into_values().collect();
    let json = poll(
        "both slots recycled by max_lifetime",
        Duration::from_secs(30),
        || {
            let json = ops::status(status);
            let by_slot = |slot| ops::recycles_for(&json, slot, "max_lifetime");
            if by_slot(0) >= 1 && by_slot(1) >= 1 {
                Ok(json)
            } else {
                Err(json.to_string())
            }
        },
    );
    assert_eq!(json["master"]["restarts_total"], 0, "{json}");
    // The pids that serve now are new ones.
    let after = cluster.serving_slots_except(&before);
    assert!(
        after.values().all(|pid| !before.contains(pid)),
        "{before:?} -> {after:?}"
    );
    assert!(
        cluster.stderr().contains("max_lifetime"),
        "the recycle is explained in the master's log\n{}",
        cluster.dump()
    );
}
