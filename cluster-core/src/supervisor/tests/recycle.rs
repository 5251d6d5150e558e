//! Recycling by `max_requests` and `max_lifetime`: the reload way, `reload_parallelism` at a
//! time, never a restart, and never during a reload.

use std::time::Duration;

use super::*;

#[tokio::test(start_paused = true)]
async fn a_worker_past_max_requests_is_recycled_the_reload_way() {
    let options = options()
        .with_max_requests(Some(100))
        .with_sample_interval(Duration::from_secs(1));
    let mut h = Harness::start(options, vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.act(&wid(0, 1), Act::Say(ToMaster::Served { requests: 99 }));
    h.settle().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.settle().await;
    h.assert_never("recycling worker/0#1 max_requests");
    h.act(&wid(0, 1), Act::Say(ToMaster::Served { requests: 100 }));
    h.expect("recycling worker/0#1 max_requests").await;
    h.expect("exit worker/0#1").await;
    h.assert_order(&[
        "recycling worker/0#1 max_requests",
        "spawned worker/0#2",
        "ready worker/0#2",
        "exit worker/0#1",
    ]);
    h.assert_settled(&[0, 1]).await;
    let status = h.status().await;
    assert_eq!(status.master.restarts_total, 0);
    assert!(status.restarts.is_empty());
    let recycles: Vec<_> = status
        .recycles
        .iter()
        .map(|r| (r.slot, r.reason, r.count))
        .collect();
    assert_eq!(recycles, [(0, "max_requests", 1)]);
    // The count is the new process's own: its predecessor's requests do not carry over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    h.settle().await;
    h.assert_never("recycling worker/0#2 max_requests");
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_worker_cannot_lower_its_request_count() {
    let options = options().with_max_requests(Some(100));
    let mut h = Harness::start(options, vec![group(1)], &[]);
    h.expect("ready worker/0#1").await;
    h.act(&wid(0, 1), Act::Say(ToMaster::Served { requests: 100 }));
    h.act(&wid(0, 1), Act::Say(ToMaster::Served { requests: 1 }));
    h.expect("recycling worker/0#1 max_requests").await;
    h.expect("exit worker/0#1").await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_recycles_one_slot_at_a_time_and_never_counts_as_a_restart() {
    let options = options()
        .with_max_lifetime(Some(Duration::from_secs(60)))
        .with_max_restarts(0)
        .with_sample_interval(Duration::from_secs(1));
    let mut h = Harness::start(options, vec![group(3)], &[]);
    h.expect("ready worker/2#1").await;
    let started = tokio::time::Instant::now();
    let at = h.expect_at("recycling worker/0#1 max_lifetime").await;
    assert!(
        at - started >= Duration::from_secs(59),
        "{:?}",
        at - started
    );
    h.expect("exit worker/2#1").await;
    // reload_parallelism 1: each slot's replacement is ready and its old worker told to go
    // before the next slot's recycle starts.
    h.assert_order(&[
        "recycling worker/0#1 max_lifetime",
        "ready worker/0#2",
        "recycling worker/1#1 max_lifetime",
        "ready worker/1#2",
        "recycling worker/2#1 max_lifetime",
        "ready worker/2#2",
    ]);
    h.assert_settled(&[0, 1, 2]).await;
    let status = h.status().await;
    assert_eq!(status.master.restarts_total, 0);
    assert_eq!(status.recycles.len(), 3);
    // With max_restarts 0 a single counted restart would have stopped the cluster.
    h.assert_never("restart-limit worker/0#1");
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn reload_parallelism_bounds_concurrent_recycles() {
    let options = options()
        .with_max_requests(Some(10))
        .with_reload_parallelism(2)
        .with_sample_interval(Duration::from_secs(1));
    let mut h = Harness::start(options, vec![group(3)], &[]);
    h.expect("ready worker/2#1").await;
    // The two replacements never become ready, so both recycles stay under way.
    h.plan(&[Behaviour::NEVER_READY, Behaviour::NEVER_READY]);
    for slot in 0..3 {
        h.act(&wid(slot, 1), Act::Say(ToMaster::Served { requests: 10 }));
    }
    h.expect("recycling worker/0#1 max_requests").await;
    h.expect("recycling worker/1#1 max_requests").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    h.assert_never("recycling worker/2#1 max_requests");
    h.assert_never("exit worker/0#1");
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn no_recycle_starts_during_a_reload() {
    let options = options()
        .with_max_requests(Some(10))
        .with_sample_interval(Duration::from_secs(1));
    let mut h = Harness::start(options, vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.reload_holding_slot_0().await;
    h.act(&wid(1, 1), Act::Say(ToMaster::Served { requests: 10 }));
    tokio::time::sleep(Duration::from_secs(5)).await;
    h.settle().await;
    h.assert_never("recycling worker/1#1 max_requests");
    h.assert_never("recycling worker/0#1 max_requests");
    assert_eq!(h.shutdown().await.0, 0);
}
