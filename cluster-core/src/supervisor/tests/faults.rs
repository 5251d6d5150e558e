//! Starting, crashing, restarting, giving up, the watchdogs, scaling and messages.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::*;
use crate::options::RestartMode;
use crate::supervisor::EXIT_RESTART_LIMIT;

#[tokio::test(start_paused = true)]
async fn every_slot_gets_a_worker_that_becomes_ready() {
    let mut h = Harness::start(options(), vec![group(3)], &[]);
    for slot in 0..3 {
        h.expect(&format!("ready worker/{slot}#1")).await;
    }
    h.assert_settled(&[0, 1, 2]).await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_crash_restarts_the_slot_with_the_next_generation() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.act(&wid(0, 1), Act::Exit(3));
    h.expect("ready worker/0#2").await;
    h.assert_order(&[
        "exit worker/0#1 unexpected restarting",
        "spawned worker/0#2",
        "ready worker/0#2",
    ]);
    h.assert_settled(&[0, 1]).await;
    let workers = h.workers().await;
    assert_eq!(workers.iter().find(|w| w.id.slot == 0).unwrap().restarts, 1);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_clean_exit_is_restarted_but_not_counted() {
    let mut h = Harness::start(options(), vec![group(1)], &[]);
    h.expect("ready worker/0#1").await;
    h.act(&wid(0, 1), Act::Exit(0));
    h.expect("ready worker/0#2").await;
    h.assert_order(&["exit worker/0#1 restarting", "ready worker/0#2"]);
    assert_eq!(h.workers().await[0].restarts, 0);
    h.assert_settled(&[0]).await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn the_fourth_crash_within_the_window_gives_up_and_stops_everything() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    for generation in 1..=4 {
        h.expect(&format!("ready worker/0#{generation}")).await;
        h.act(&wid(0, generation), Act::Exit(1));
    }
    h.expect("restart-limit worker/0#4").await;
    let (code, error) = h.finished().await;
    assert_eq!(code, EXIT_RESTART_LIMIT);
    let error = error.unwrap();
    assert_eq!(error.kind(), crate::ErrorKind::RestartLimit);
    assert!(error.to_string().contains("4 unexpected exits"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn crashes_spread_beyond_the_window_keep_restarting() {
    let mut h = Harness::start(options(), vec![group(1)], &[]);
    for generation in 1..=6 {
        h.expect(&format!("ready worker/0#{generation}")).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        h.act(&wid(0, generation), Act::Exit(1));
    }
    h.expect("ready worker/0#7").await;
    h.assert_never("restart-limit worker/0#6");
    h.assert_settled(&[0]).await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn transient_does_not_restart_a_clean_exit_but_does_a_crash() {
    let options = options().with_restart_mode(RestartMode::Transient);
    let mut h = Harness::start(options, vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.act(&wid(0, 1), Act::Exit(0));
    h.act(&wid(1, 1), Act::Exit(2));
    h.expect("ready worker/1#2").await;
    h.assert_order(&["exit worker/0#1"]);
    assert!(!h.launched().contains(&wid(0, 2)));
    h.assert_settled(&[1]).await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn temporary_restarts_nothing_and_the_cluster_runs_on_empty() {
    let options = options().with_restart_mode(RestartMode::Temporary);
    let mut h = Harness::start(options, vec![group(1)], &[]);
    h.expect("ready worker/0#1").await;
    h.act(&wid(0, 1), Act::Exit(9));
    h.expect("exit worker/0#1 unexpected").await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.launched().len(), 1);
    h.assert_settled(&[]).await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_worker_never_ready_is_killed_at_ready_timeout_and_restarted() {
    let options = options().with_ready_timeout(Duration::from_secs(3));
    let mut h = Harness::start(options, vec![group(1)], &[Behaviour::NEVER_READY]);
    let t0 = Instant::now();
    h.expect("exit worker/0#1 unexpected restarting").await;
    assert_eq!(t0.elapsed().as_secs(), 3);
    h.expect("ready worker/0#2").await;
    h.assert_settled(&[0]).await;
    let status = h.status().await;
    assert_eq!(status.restarts[0].reason, "failed_start");
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_hung_worker_is_killed_by_the_watchdog_and_restarted() {
    let options = options().with_heartbeat_timeout(Some(Duration::from_secs(10)));
    let mut h = Harness::start(options, vec![group(2)], &[Behaviour::HANGS]);
    let t0 = Instant::now();
    h.expect("exit worker/0#1 unexpected restarting").await;
    assert_eq!(t0.elapsed().as_secs(), 10);
    h.expect("ready worker/0#2").await;
    // The healthy worker beats and is left alone.
    h.assert_never("exit worker/1#1 unexpected restarting");
    h.assert_settled(&[0, 1]).await;
    assert_eq!(h.status().await.restarts[0].reason, "hung");
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn failed_spawns_back_off_are_reported_and_never_count_as_restarts() {
    // Ten failures in a row, far beyond max_restarts (3) within its window (10 s).
    let mut h = Harness::start(options(), vec![group(1)], &[Behaviour::SPAWN_FAILS; 10]);
    let mut at = Vec::new();
    for generation in 1..=10 {
        at.push(
            h.expect_at(&format!("spawn-failed worker/0#{generation}"))
                .await,
        );
    }
    let waits: Vec<u128> = at.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    assert_eq!(
        waits,
        [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000],
        "the retry doubles from 100 ms up to 10 s"
    );
    let status = h.status().await;
    assert_eq!(status.master.spawn_failures_total, 10);
    assert!(status.master.spawn_error.is_some());
    h.expect("ready worker/0#11").await;
    h.assert_never("restart-limit worker/0#10");
    let status = h.status().await;
    assert_eq!(status.master.restarts_total, 0);
    assert_eq!(status.master.spawn_error, None);
    h.assert_settled(&[0]).await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_worker_over_max_memory_is_replaced_before_it_stops() {
    let options = options()
        .with_max_memory(Some(100 << 20))
        .with_memory_samples(2)
        .with_sample_interval(Duration::from_secs(1));
    let mut h = Harness::start(options, vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    let pid = h.workers().await[0].pid.unwrap();
    h.set_rss(pid, 200 << 20);
    h.expect("exit worker/0#1").await;
    h.assert_order(&["spawned worker/0#2", "ready worker/0#2", "exit worker/0#1"]);
    h.assert_settled(&[0, 1]).await;
    let status = h.status().await;
    assert_eq!(status.master.restarts_total, 0);
    assert!(status.restarts.is_empty());
    assert_eq!(status.recycles[0].reason, "memory");
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_does_not_read_its_channel_is_replaced_though_it_beats() {
    let options = options().with_sample_interval(Duration::from_secs(1));
    let mut h = Harness::start(options, vec![group(2)], &[Behaviour::DEAF]);
    h.expect("ready worker/1#1").await;
    // Enough to fill the socket, the channel's write buffer and then the outbox. A send is
    // answered once written, which for this worker is never: the answers are not awaited.
    for _ in 0..2000 {
        let (reply, _never) = oneshot::channel();
        h.command(Command::Send {
            to: key(0),
            msg: ToWorker::User(vec![0; 4096]),
            reply,
        });
    }
    // Replaced the reload way: its successor is ready before it goes.
    h.expect("exit worker/0#1").await;
    h.assert_order(&["spawned worker/0#2", "ready worker/0#2", "exit worker/0#1"]);
    h.assert_settled(&[0, 1]).await;
    let status = h.status().await;
    assert_eq!(status.master.restarts_total, 0);
    assert!(status.restarts.is_empty());
    assert_eq!(status.recycles[0].reason, "unread_channel");
    assert_eq!(status.master.violations["unread_channel"], 1);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn scale_up_fills_the_lowest_free_slots() {
    let mut h = Harness::start(options(), vec![group(1)], &[]);
    h.expect("ready worker/0#1").await;
    h.scale(3).await;
    h.expect("ready worker/2#1").await;
    h.assert_settled(&[0, 1, 2]).await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn scale_down_stops_the_highest_slots_and_does_not_restart_them() {
    let mut h = Harness::start(options(), vec![group(3)], &[]);
    h.expect("ready worker/2#1").await;
    h.scale(1).await;
    h.expect("exit worker/2#1").await;
    h.expect("exit worker/1#1").await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h.launched().len(), 3);
    h.assert_settled(&[0]).await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_slot_added_back_while_its_old_worker_drains_gets_a_new_generation() {
    let mut h = Harness::start(
        options(),
        vec![group(2)],
        &[Behaviour::HEALTHY, Behaviour::STUBBORN],
    );
    h.expect("ready worker/1#1").await;
    h.scale(1).await;
    h.scale(2).await;
    h.expect("ready worker/1#2").await;
    // The old worker of slot 1 still drains beside its successor.
    let workers = h.workers().await;
    assert_eq!(workers.len(), 3, "{workers:#?}");
    h.assert_settled(&[0, 1]).await;
    // It is killed at the end of its grace, and nothing restarts it.
    h.expect("exit worker/1#1").await;
    h.assert_settled(&[0, 1]).await;
    assert_eq!(h.workers().await.len(), 2);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn send_reaches_the_slots_worker_and_broadcast_counts_the_workers() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    let (reply, rx) = oneshot::channel();
    h.command(Command::Send {
        to: key(1),
        msg: ToWorker::User(vec![42]),
        reply,
    });
    rx.await.unwrap().unwrap();
    let (reply, rx) = oneshot::channel();
    h.command(Command::Broadcast {
        group: None,
        msg: ToWorker::User(vec![7]),
        reply,
    });
    assert_eq!(rx.await.unwrap(), 2);
    h.wait_received(&wid(1, 1), 2).await;
    h.wait_received(&wid(0, 1), 1).await;
    assert_eq!(
        h.received(&wid(1, 1)),
        vec![ToWorker::User(vec![42]), ToWorker::User(vec![7])]
    );
    assert_eq!(h.received(&wid(0, 1)), vec![ToWorker::User(vec![7])]);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn send_to_a_slot_without_a_worker_is_an_error() {
    let mut h = Harness::start(options(), vec![group(1)], &[]);
    h.expect("ready worker/0#1").await;
    let (reply, rx) = oneshot::channel();
    h.command(Command::Send {
        to: key(5),
        msg: ToWorker::User(vec![1]),
        reply,
    });
    let error = rx.await.unwrap().unwrap_err();
    assert_eq!(error.kind(), crate::ErrorKind::NoWorker);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_master_function_stops_the_cluster_with_code_1() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.master_done(true);
    let (code, _) = h.finished().await;
    assert_eq!(code, 1);
}

#[tokio::test(start_paused = true)]
async fn a_master_function_that_returns_leaves_the_cluster_running() {
    let mut h = Harness::start(options(), vec![group(1)], &[]);
    h.expect("ready worker/0#1").await;
    h.master_done(false);
    tokio::time::sleep(Duration::from_secs(60)).await;
    h.assert_settled(&[0]).await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn an_answer_counts_only_from_the_process_that_was_asked() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    let (guard, mut answer) = h.pending.register();
    let (reply, written) = oneshot::channel();
    h.command(Command::Send {
        to: key(0),
        msg: ToWorker::Request {
            id: guard.id,
            payload: vec![1],
        },
        reply,
    });
    written.await.unwrap().unwrap();
    // Another worker answers for worker 0: ignored.
    h.act(
        &wid(1, 1),
        Act::Say(ToMaster::Response {
            id: guard.id,
            payload: vec![66],
        }),
    );
    h.settle().await;
    assert!(
        answer.try_recv().is_err(),
        "another worker's answer counted"
    );
    h.act(
        &wid(0, 1),
        Act::Say(ToMaster::Response {
            id: guard.id,
            payload: vec![2],
        }),
    );
    let got = tokio::time::timeout(WAIT, &mut answer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, vec![2]);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn the_masters_answer_goes_to_the_asking_process_never_to_its_successor() {
    let mut h = Harness::start(options(), vec![group(1)], &[]);
    h.expect("ready worker/0#1").await;
    h.act(&wid(0, 1), Act::Exit(1));
    h.expect("ready worker/0#2").await;
    let (reply, rx) = oneshot::channel();
    h.command(Command::Answer {
        to: wid(0, 1),
        msg: ToWorker::Response {
            id: 0,
            payload: vec![9],
        },
        reply,
    });
    let error = rx.await.unwrap().unwrap_err();
    assert_eq!(error.kind(), crate::ErrorKind::NoWorker);
    h.settle().await;
    assert!(
        h.received(&wid(0, 2)).is_empty(),
        "the successor got the answer"
    );
    // While the asker lives, the answer reaches it.
    let (reply, rx) = oneshot::channel();
    h.command(Command::Answer {
        to: wid(0, 2),
        msg: ToWorker::Response {
            id: 1,
            payload: vec![8],
        },
        reply,
    });
    rx.await.unwrap().unwrap();
    assert_eq!(h.shutdown().await.0, 0);
    assert_eq!(
        h.received(&wid(0, 2))[0],
        ToWorker::Response {
            id: 1,
            payload: vec![8]
        }
    );
}
