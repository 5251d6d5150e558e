//! Autoscaling against fake processes whose CPU the test sets: the decisions, their timing,
//! which worker a scale-down stops, and none during a reload.

use super::*;
use crate::protocol::SlowRequest;

/// Windows in seconds, so that the paused clock runs them in no time.
fn autoscaled() -> (Options, GroupOptions) {
    let options = options()
        .with_autoscale_up_window(Duration::from_secs(2))
        .with_autoscale_down_window(Duration::from_secs(5))
        .with_autoscale_cooldown(Duration::from_secs(1));
    (options, group(1).with_autoscale(1, 3))
}

#[tokio::test(start_paused = true)]
async fn grows_to_max_under_load_and_shrinks_to_min_one_worker_at_a_time() {
    let (options, group) = autoscaled();
    let mut h = Harness::start(options, vec![group], &[]);
    h.expect("ready worker/0#1").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.assert_never("autoscaled worker 1 -> 2");

    // One core per worker, over the 0.8 default.
    h.set_cpu(1.0);
    let loaded = tokio::time::Instant::now();
    let up = h.expect_at("autoscaled worker 1 -> 2").await;
    assert!(
        up - loaded >= Duration::from_secs(2) && up - loaded <= Duration::from_secs(4),
        "{:?}",
        up - loaded
    );
    h.expect("ready worker/1#1").await;
    h.expect("autoscaled worker 2 -> 3").await;
    h.expect("ready worker/2#1").await;
    let status = h.status().await;
    let scaled = &status.autoscale[0];
    assert_eq!(
        (scaled.min, scaled.max, scaled.workers, scaled.decisions_up),
        (1, 3, 3, 2)
    );
    let last = scaled.last_decision.as_ref().unwrap();
    assert_eq!((last.from, last.to), (2, 3));
    assert!(
        last.reason
            .starts_with("cpu 2.00 cores avg over 2s > 0.80 x 2"),
        "{}",
        last.reason
    );
    // Still loaded, at max: no more.
    tokio::time::sleep(Duration::from_secs(20)).await;
    h.assert_never("autoscaled worker 3 -> 4");

    h.set_cpu(0.0);
    let unloaded = tokio::time::Instant::now();
    let down = h.expect_at("autoscaled worker 3 -> 2").await;
    assert!(
        down - unloaded >= Duration::from_secs(5),
        "{:?}",
        down - unloaded
    );
    // All equally idle: the highest slot goes, gracefully (an expected exit, no restart).
    h.expect("exit worker/2#1").await;
    h.expect("autoscaled worker 2 -> 1").await;
    h.expect("exit worker/1#1").await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    h.assert_never("autoscaled worker 1 -> 0");
    h.assert_settled(&[0]).await;
    let status = h.status().await;
    assert_eq!(
        (
            status.autoscale[0].decisions_up,
            status.autoscale[0].decisions_down
        ),
        (2, 2)
    );
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn no_decision_while_a_reload_of_the_group_runs() {
    let (options, group) = autoscaled();
    let mut h = Harness::start(options, vec![group], &[]);
    h.expect("ready worker/0#1").await;
    h.reload_holding_slot_0().await;
    h.set_cpu(1.0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.assert_never("autoscaled worker 1 -> 2");
    h.act(&wid(0, 2), Act::Ready);
    let reloaded = h.expect_at("reload-finished").await;
    // A fresh window after the reload, not the figures from during it.
    let up = h.expect_at("autoscaled worker 1 -> 2").await;
    assert!(
        up - reloaded >= Duration::from_secs(2),
        "{:?}",
        up - reloaded
    );
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_scale_down_stops_the_least_busy_worker_not_the_highest() {
    let mut h = Harness::start(options(), vec![group(3)], &[]);
    h.expect("ready worker/2#1").await;
    // Slot 2 has a request under way: slot 1 goes instead.
    h.act(
        &wid(2, 1),
        Act::Say(ToMaster::InFlight {
            requests: vec![SlowRequest {
                method: "GET".into(),
                path: "/report".into(),
                age_ms: 1500,
            }],
        }),
    );
    let reported = async {
        while h
            .status()
            .await
            .workers
            .iter()
            .all(|w| w.slow_requests.is_empty())
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, reported).await.unwrap();
    h.scale(2).await;
    h.expect("exit worker/1#1").await;
    h.assert_settled(&[0, 2]).await;
    h.assert_never("exit worker/2#1");
    assert_eq!(h.shutdown().await.0, 0);
}
