//! Rolling reloads and their interleavings with scaling, crashes, memory replacement and the
//! restart limit.

use std::time::Duration;

use tokio::sync::oneshot;

use super::*;
use crate::supervisor::EXIT_RESTART_LIMIT;

#[tokio::test(start_paused = true)]
async fn a_reload_replaces_one_slot_at_a_time_each_after_its_successor_is_ready() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.reload();
    h.expect("reload-finished").await;
    h.assert_order(&[
        "reload-started",
        "spawned worker/0#2",
        "ready worker/0#2",
        "spawned worker/1#2",
        "ready worker/1#2",
        "reload-finished",
    ]);
    h.expect("exit worker/1#1").await;
    h.assert_order(&["ready worker/0#2", "exit worker/0#1"]);
    h.assert_order(&["ready worker/1#2", "exit worker/1#1"]);
    h.assert_settled(&[0, 1]).await;
    assert_eq!(h.status().await.master.reloads_total, 1);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn reload_parallelism_starts_that_many_replacements_at_once() {
    let options = options().with_reload_parallelism(2);
    let mut h = Harness::start(options, vec![group(3)], &[]);
    h.expect("ready worker/2#1").await;
    h.plan(&[Behaviour::NEVER_READY, Behaviour::NEVER_READY]);
    h.reload();
    h.expect("spawned worker/1#2").await;
    assert!(
        !h.launched().contains(&wid(2, 2)),
        "a third replacement started"
    );
    h.act(&wid(0, 2), Act::Ready);
    h.expect("spawned worker/2#2").await;
    h.act(&wid(1, 2), Act::Ready);
    h.expect("reload-finished").await;
    h.settle().await;
    h.assert_settled(&[0, 1, 2]).await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_reload_asked_during_a_reload_runs_one_more_pass() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.reload();
    h.reload();
    h.expect("reload-finished").await;
    h.expect("reload-finished").await;
    h.assert_order(&[
        "ready worker/1#2",
        "reload-finished",
        "reload-started",
        "ready worker/0#3",
        "ready worker/1#3",
    ]);
    h.settle().await;
    h.assert_settled(&[0, 1]).await;
    assert_eq!(h.status().await.master.reloads_total, 2);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn scale_down_during_a_reload_leaves_exactly_count_workers() {
    let mut h = Harness::start(options(), vec![group(3)], &[]);
    h.expect("ready worker/2#1").await;
    h.reload_holding_slot_0().await;
    h.scale(1).await;
    h.act(&wid(0, 2), Act::Ready);
    h.expect("reload-finished").await;
    h.settle().await;
    h.assert_settled(&[0]).await;
    // Slots 1 and 2 were removed before their turn: never replaced.
    assert!(!h.launched().contains(&wid(1, 2)));
    assert!(!h.launched().contains(&wid(2, 2)));
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn scale_down_removes_a_slot_whose_replacement_is_starting() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.plan(&[Behaviour::HEALTHY, Behaviour::NEVER_READY]);
    h.reload();
    h.expect("spawned worker/1#2").await;
    h.scale(1).await;
    h.expect("reload-finished").await;
    h.expect("exit worker/1#2").await;
    h.expect("exit worker/1#1").await;
    // The replacement is not promoted into the removed slot, even if it says ready late.
    h.settle().await;
    h.assert_settled(&[0]).await;
    assert_eq!(h.workers().await.len(), 1);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn scale_up_during_a_reload_adds_new_workers_and_the_reload_finishes() {
    let mut h = Harness::start(options(), vec![group(1)], &[]);
    h.expect("ready worker/0#1").await;
    h.reload_holding_slot_0().await;
    h.scale(3).await;
    h.expect("ready worker/2#1").await;
    h.act(&wid(0, 2), Act::Ready);
    h.expect("reload-finished").await;
    h.settle().await;
    h.assert_settled(&[0, 1, 2]).await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_crash_of_the_replacement_rolls_the_reload_back() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.reload_holding_slot_0().await;
    h.act(&wid(0, 2), Act::Exit(1));
    h.expect("reload-failed").await;
    h.assert_never("reload-finished");
    // The old workers serve on; no second replacement is tried.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h.launched().len(), 3);
    h.assert_settled(&[0, 1]).await;
    assert_eq!(h.workers().await[0].id, wid(0, 1));
    // A later reload works.
    h.reload();
    h.expect("reload-finished").await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_replacement_never_ready_is_killed_at_ready_timeout_and_the_reload_rolls_back() {
    let options = options().with_ready_timeout(Duration::from_secs(5));
    let mut h = Harness::start(options, vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.plan(&[Behaviour::NEVER_READY]);
    h.reload();
    h.expect("exit worker/0#2 unexpected").await;
    h.expect("reload-failed").await;
    h.assert_settled(&[0, 1]).await;
    assert_eq!(h.workers().await[0].id, wid(0, 1));
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_crash_of_the_old_worker_while_its_replacement_starts_counts_and_the_replacement_takes_over()
 {
    let mut h = Harness::start(options(), vec![group(1)], &[]);
    h.expect("ready worker/0#1").await;
    h.reload_holding_slot_0().await;
    h.act(&wid(0, 1), Act::Exit(1));
    h.expect("exit worker/0#1 unexpected").await;
    h.act(&wid(0, 2), Act::Ready);
    h.expect("reload-finished").await;
    // No third process: the replacement took the slot.
    assert_eq!(h.launched().len(), 2);
    h.assert_settled(&[0]).await;
    assert_eq!(h.status().await.master.restarts_total, 1);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn when_both_the_old_worker_and_its_replacement_fail_the_slot_is_restarted() {
    let mut h = Harness::start(options(), vec![group(1)], &[]);
    h.expect("ready worker/0#1").await;
    h.reload_holding_slot_0().await;
    h.act(&wid(0, 1), Act::Exit(1));
    h.expect("exit worker/0#1 unexpected").await;
    h.act(&wid(0, 2), Act::Exit(1));
    h.expect("reload-failed").await;
    h.expect("ready worker/0#3").await;
    h.assert_settled(&[0]).await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn the_restart_limit_reached_during_a_reload_stops_the_cluster() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.reload_holding_slot_0().await;
    h.act(&wid(1, 1), Act::Exit(1));
    for generation in 2..=4 {
        h.expect(&format!("ready worker/1#{generation}")).await;
        h.act(&wid(1, generation), Act::Exit(1));
    }
    h.expect("restart-limit worker/1#4").await;
    let (code, _) = h.finished().await;
    assert_eq!(code, EXIT_RESTART_LIMIT);
}

#[tokio::test(start_paused = true)]
async fn a_reload_asked_during_a_memory_replacement_adopts_it() {
    let options = options()
        .with_max_memory(Some(100 << 20))
        .with_memory_samples(1)
        .with_sample_interval(Duration::from_secs(1));
    let mut h = Harness::start(options, vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.plan(&[Behaviour::NEVER_READY]);
    let pid = h.workers().await[0].pid.unwrap();
    h.set_rss(pid, 200 << 20);
    h.expect("spawned worker/0#2").await;
    h.reload();
    h.expect("reload-started").await;
    h.act(&wid(0, 2), Act::Ready);
    h.expect("reload-finished").await;
    // Slot 0 got one replacement, not two.
    assert!(!h.launched().contains(&wid(0, 3)));
    assert!(h.launched().contains(&wid(1, 2)));
    h.settle().await;
    h.assert_settled(&[0, 1]).await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_replacement_that_cannot_be_spawned_rolls_the_reload_back() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.plan(&[Behaviour::SPAWN_FAILS]);
    h.reload();
    h.expect("reload-failed").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    h.assert_settled(&[0, 1]).await;
    assert_eq!(h.status().await.master.restarts_total, 0);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_broadcast_during_a_reload_reaches_the_replacement_still_starting() {
    let mut h = Harness::start(options(), vec![group(1)], &[]);
    h.expect("ready worker/0#1").await;
    let late = Behaviour {
        online: false,
        ..Behaviour::HEALTHY
    };
    h.plan(&[late]);
    h.reload();
    h.expect("spawned worker/0#2").await;
    let (reply, rx) = oneshot::channel();
    h.command(Command::Broadcast {
        group: None,
        msg: ToWorker::User(vec![7]),
        reply,
    });
    assert_eq!(
        rx.await.unwrap(),
        2,
        "the old worker and its starting replacement"
    );
    h.act(&wid(0, 2), Act::Online);
    h.expect("reload-finished").await;
    h.settle().await;
    assert_eq!(h.received(&wid(0, 2)), vec![ToWorker::User(vec![7])]);
    assert_eq!(h.received(&wid(0, 1))[0], ToWorker::User(vec![7]));
    assert_eq!(h.shutdown().await.0, 0);
}
