//! The `watch` option as the loop sees it: each new build the watch reports starts a rolling
//! reload, once no replacement is under way.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_new_build_starts_a_rolling_reload() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.new_build(2);
    h.expect("reload-finished").await;
    h.assert_order(&[
        "reload-started",
        "ready worker/0#2",
        "ready worker/1#2",
        "reload-finished",
    ]);
    h.settle().await;
    h.assert_settled(&[0, 1]).await;
    assert_eq!(h.status().await.master.reloads_total, 1);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_build_seen_during_a_reload_is_reloaded_onto_after_it() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.reload_holding_slot_0().await;
    // Two builds while the reload waits: the last one counts, once.
    h.new_build(2);
    h.new_build(3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.act(&wid(0, 2), Act::Ready);
    h.expect("reload-finished").await;
    h.expect("reload-finished").await;
    h.settle().await;
    h.assert_settled(&[0, 1]).await;
    let generations: Vec<u64> = h.workers().await.iter().map(|w| w.id.generation).collect();
    assert_eq!(generations, [3, 3]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.status().await.master.reloads_total, 2);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_build_that_fixes_a_failed_one_is_reloaded_onto_after_the_roll_back() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    // Build 2 never gets ready; build 3 comes while its first replacement is starting.
    h.plan(&[Behaviour::NEVER_READY]);
    h.new_build(2);
    h.expect("spawned worker/0#2").await;
    h.new_build(3);
    h.act(&wid(0, 2), Act::Exit(3));
    h.expect("reload-failed").await;
    h.expect("reload-finished").await;
    h.assert_order(&["reload-failed", "reload-started", "ready worker/0#3"]);
    h.settle().await;
    h.assert_settled(&[0, 1]).await;
    let generations: Vec<u64> = h.workers().await.iter().map(|w| w.id.generation).collect();
    assert_eq!(generations, [3, 2]);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_build_seen_during_the_shutdown_starts_nothing() {
    let options = options().with_grace(Duration::from_secs(5));
    let mut h = Harness::start(options, vec![group(1)], &[Behaviour::STUBBORN]);
    h.expect("ready worker/0#1").await;
    h.signal(Signal::SIGTERM);
    // Once the worker was asked to stop, the shutdown has begun.
    h.wait_received(&wid(0, 1), 1).await;
    h.new_build(2);
    let _ = h.finished().await;
    h.assert_never("reload-started");
    assert_eq!(h.launched(), vec![wid(0, 1)]);
}
