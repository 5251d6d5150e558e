//! Autoscaling driven as real processes (tests/fixture/ops_fixture.rs), configured from the
//! environment as an operator would, with windows of a second or so: a CPU load that
//! saturates one worker grows the group to its max; taking it off shrinks the group back to
//! its min without a failed request; a scale-down never stops a worker that has a request
//! in flight.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use support::http::{Conn, Load};
use support::ops::{self, Fixture, local};
use support::{free_port, poll};

/// The autoscaled group's entry in `/status`: (workers, decisions up, decisions down).
fn autoscale_state(status: SocketAddr) -> (u64, u64, u64) {
    let json = ops::status(status);
    let group = &json["autoscale"][0];
    let n = |key: &str| group[key].as_u64().unwrap_or(0);
    (n("workers"), n("decisions_up"), n("decisions_down"))
}

/// Waits until the group has `workers` slots, failing after `within`; returns how long it
/// took.
fn wait_workers(status: SocketAddr, workers: u64, within: Duration) -> Duration {
    let start = Instant::now();
    poll(&format!("{workers} workers"), within, || {
        let state = autoscale_state(status);
        if state.0 == workers {
            Ok(())
        } else {
            Err(format!("{state:?}"))
        }
    });
    start.elapsed()
}

/// The fixture on the current-thread runtime (a worker uses at most one core) serving HTTP,
/// with `/status`, autoscaled by `env` on top of these short windows.
fn start(count: usize, env: &[(&str, &str)]) -> (Fixture, SocketAddr, SocketAddr) {
    let (http, status) = (free_port(), free_port());
    let mut vars: Vec<(&str, String)> = vec![
        ("OPS_COUNT", count.to_string()),
        ("OPS_HTTP_PORT", http.to_string()),
        ("OPS_STATUS_PORT", status.to_string()),
        ("OPS_CURRENT_THREAD", "1".into()),
        ("OPS_HEARTBEAT_MS", "200".into()),
        ("CLUSTER_SAMPLE_INTERVAL", "250ms".into()),
        ("CLUSTER_AUTOSCALE_UP_WINDOW", "1s".into()),
        ("CLUSTER_AUTOSCALE_DOWN_WINDOW", "3s".into()),
        ("CLUSTER_AUTOSCALE_COOLDOWN", "1s".into()),
    ];
    vars.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let mut fx = Fixture::start(&vars);
    fx.wait_ready(count);
    (fx, local(http), local(status))
}

#[test]
fn a_saturated_worker_grows_the_group_to_max_and_quiet_shrinks_it_to_min_without_a_failure() {
    // 30% of a core per worker: one worker spinning on the load uses a whole core, and two
    // still use more than 0.6 between them on a machine shared with other builds.
    let (mut fx, http, status) = start(
        1,
        &[
            ("CLUSTER_AUTOSCALE", "1..3"),
            ("CLUSTER_AUTOSCALE_UP_CPU", "30"),
        ],
    );
    assert_eq!(autoscale_state(status), (1, 0, 0));
    // Every request computes for 5 ms on the worker's only thread; fresh connections, so
    // that new workers get their share.
    let loaded = Instant::now();
    let heavy = Load::start_on(http, 1, 3, "/spin-5", Duration::ZERO);
    let grew = wait_workers(status, 3, Duration::from_secs(20));
    let up = fx.wait_line("AUTOSCALED", &[("from", "1"), ("to", "2")]);
    fx.wait_line("AUTOSCALED", &[("from", "2"), ("to", "3")]);
    heavy.wait_more_ok(50);
    let heavy = heavy.stop();
    heavy.assert_none_failed_in("the scale-up", || fx.dump());
    let log = fx.wait_for(
        "the autoscaler's log line",
        Duration::from_secs(5),
        |lines| {
            lines
                .iter()
                .find(|l| l.text.contains("autoscale worker: 1 -> 2"))
                .map(|l| l.text.clone())
        },
    );
    assert!(
        log.contains("autoscale worker: 1 -> 2 workers: cpu ")
            && log.contains("cores avg over 1s > 0.30 x 1"),
        "{log}"
    );

    // A light load goes on while the group shrinks: one keep-alive client and one
    // connection-per-request client, each pausing 50 ms between requests.
    let light = Load::start_on(http, 1, 1, "/", Duration::from_millis(50));
    let shrank = wait_workers(status, 1, Duration::from_secs(25));
    light.wait_more_ok(20);
    let light = light.stop();
    light.assert_none_failed_in("the scale-down", || fx.dump());
    // One worker at a time, each stopped gracefully, never restarted.
    fx.wait_line("AUTOSCALED", &[("from", "3"), ("to", "2")]);
    fx.wait_line("AUTOSCALED", &[("from", "2"), ("to", "1")]);
    let exits = fx.wait_for("two workers stopped", Duration::from_secs(5), |lines| {
        let exits: Vec<ops::Line> = lines
            .iter()
            .filter(|l| l.is("EXIT", &[]))
            .cloned()
            .collect();
        (exits.len() >= 2).then_some(exits)
    });
    assert_eq!(exits.len(), 2, "{}", fx.dump());
    assert!(
        exits
            .iter()
            .all(|l| l.get("expected") == "true" && l.get("restarting") == "false"),
        "{}",
        fx.dump()
    );
    assert_eq!(autoscale_state(status), (1, 2, 2));
    let json = ops::status(status);
    assert_eq!(json["master"]["restarts_total"], 0, "{json}");
    let metrics = ops::must_get(status, "/metrics").body;
    for (direction, n) in [("up", 2.0), ("down", 2.0)] {
        let series = format!(
            r#"cluster_autoscale_decisions_total{{group="worker",direction="{direction}"}}"#
        );
        assert_eq!(ops::sample(&metrics, &series), Some(n), "{metrics}");
    }
    eprintln!(
        "grew 1 -> 3 in {grew:?} (1 -> 2 seen {:?} after the load began), shrank 3 -> 1 in {shrank:?}; {} + {} requests, 0 failed",
        up.at.duration_since(loaded),
        heavy.ok(),
        light.ok()
    );
    fx.stop_cleanly();
}

#[test]
fn a_scale_down_never_stops_a_worker_with_a_request_in_flight() {
    // Sticky routes by the client's IP, so the test can find a client address whose
    // connections go to the highest slot: the one a scale-down removed before it looked at
    // what each worker had under way.
    let (mut fx, http, status) = start(
        3,
        &[("CLUSTER_AUTOSCALE", "1..3"), ("CLUSTER_BALANCE", "sticky")],
    );
    let ready = fx.wait_ready(3);
    let highest = ready["worker/2#1"];
    let from = (2..=250)
        .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .find(|&ip| {
            let mut conn = Conn::connect_from(ip, http).expect("connect");
            let answer = conn.get_path("/", true).expect("an answer");
            answer.body.ends_with(&format!("pid={highest}"))
        })
        .expect("a loopback address routed to slot 2");
    // A request of 10 s on slot 2, under way while the group is quiet enough to shrink.
    let held = std::thread::spawn(move || {
        let mut conn = Conn::connect_from(from, http)?;
        conn.get_path("/await-10000", true)
    });
    let shrank = wait_workers(status, 1, Duration::from_secs(20));
    let exited: Vec<i32> = fx.wait_for("two workers stopped", Duration::from_secs(5), |lines| {
        let exits: Vec<&ops::Line> = lines.iter().filter(|l| l.is("EXIT", &[])).collect();
        (exits.len() >= 2).then(|| exits.iter().map(|l| ready[l.get("id")]).collect())
    });
    assert_eq!(exited.len(), 2, "{}", fx.dump());
    assert!(
        !exited.contains(&highest),
        "stopped {exited:?}, slot 2 is {highest}\n{}",
        fx.dump()
    );
    let answer = held
        .join()
        .expect("the request's thread")
        .unwrap_or_else(|e| panic!("the held request failed: {e}\n{}", fx.dump()));
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(
        answer.body.ends_with(&format!("pid={highest}")),
        "{answer:?}"
    );
    eprintln!(
        "shrank 3 -> 1 in {shrank:?}, stopping {exited:?} and keeping {highest}, which served its 10 s request"
    );
    fx.stop_cleanly();
}
