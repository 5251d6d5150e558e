//! Graceful shutdown: grace, the second signal, and shutdown racing the other work.

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::supervisor::EXIT_KILLED_AFTER_GRACE;

#[tokio::test(start_paused = true)]
async fn a_shutdown_stops_every_worker_and_exits_0() {
    let mut h = Harness::start(options(), vec![group(3)], &[]);
    h.expect("ready worker/2#1").await;
    let t0 = Instant::now();
    let (code, error) = h.shutdown().await;
    assert_eq!(code, 0);
    assert!(error.is_none());
    assert!(t0.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_ignores_the_request_is_killed_at_grace_and_the_code_says_so() {
    let options = options().with_grace(Duration::from_secs(4));
    let mut h = Harness::start(options, vec![group(2)], &[Behaviour::STUBBORN]);
    h.expect("ready worker/1#1").await;
    let t0 = Instant::now();
    let (code, _) = h.shutdown().await;
    assert_eq!(code, EXIT_KILLED_AFTER_GRACE);
    assert_eq!(t0.elapsed().as_secs(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_kills_at_once() {
    let mut h = Harness::start(options(), vec![group(1)], &[Behaviour::STUBBORN]);
    h.expect("ready worker/0#1").await;
    let t0 = Instant::now();
    h.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.signal(Signal::SIGINT);
    let (code, _) = h.finished().await;
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // Killed before it stopped, as when the grace runs out.
    assert_eq!(code, EXIT_KILLED_AFTER_GRACE);
}

/// A quick double Ctrl-C means "now": no repeat is taken for the first one, however soon.
#[tokio::test(start_paused = true)]
async fn a_second_signal_50_ms_after_the_first_kills_at_once() {
    let options = options().with_grace(Duration::from_secs(30));
    let mut h = Harness::start(
        options,
        vec![group(2)],
        &[Behaviour::STUBBORN, Behaviour::STUBBORN],
    );
    h.expect("ready worker/1#1").await;
    let t0 = Instant::now();
    h.signal(Signal::SIGINT);
    h.wait_state(WorkerState::Stopping).await;
    tokio::time::sleep_until(t0 + Duration::from_millis(50)).await;
    h.signal(Signal::SIGINT);
    let (code, _) = h.finished().await;
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(code, EXIT_KILLED_AFTER_GRACE);
    assert_eq!(h.launched().len(), 2);
}

/// Two signals in the same instant (a script that sends SIGTERM twice) are two requests too.
#[tokio::test(start_paused = true)]
async fn a_repeat_in_the_same_instant_kills_at_once() {
    let options = options().with_grace(Duration::from_secs(3));
    let mut h = Harness::start(options, vec![group(1)], &[Behaviour::STUBBORN]);
    h.expect("ready worker/0#1").await;
    let t0 = Instant::now();
    h.signal(Signal::SIGTERM);
    h.signal(Signal::SIGTERM);
    let (code, _) = h.finished().await;
    assert!(t0.elapsed() < Duration::from_millis(100));
    assert_eq!(code, EXIT_KILLED_AFTER_GRACE);
}

/// A thousand signals at once: the first asks, the second kills, the rest change nothing;
/// the master neither restarts anything nor falls behind.
#[tokio::test(start_paused = true)]
async fn a_storm_of_signals_stops_at_once_and_nothing_else() {
    let options = options().with_grace(Duration::from_secs(30));
    let mut h = Harness::start(
        options,
        vec![group(3)],
        &[Behaviour::STUBBORN, Behaviour::HEALTHY, Behaviour::STUBBORN],
    );
    h.expect("ready worker/2#1").await;
    let t0 = Instant::now();
    for i in 0..1_000 {
        h.signal(if i % 2 == 0 {
            Signal::SIGTERM
        } else {
            Signal::SIGINT
        });
    }
    let (code, _) = h.finished().await;
    assert!(t0.elapsed() < Duration::from_millis(100));
    assert_eq!(code, EXIT_KILLED_AFTER_GRACE);
    assert_eq!(h.launched().len(), 3, "nothing was restarted");
    for slot in 0..3 {
        h.assert_never(&format!("exit worker/{slot}#1 unexpected restarting"));
    }
}

/// The reload signal is not a shutdown signal: during a shutdown it does not cut the grace.
#[tokio::test(start_paused = true)]
async fn a_reload_signal_during_a_shutdown_changes_nothing() {
    let options = options().with_grace(Duration::from_secs(3));
    let mut h = Harness::start(options, vec![group(1)], &[Behaviour::STUBBORN]);
    h.expect("ready worker/0#1").await;
    let t0 = Instant::now();
    h.signal(Signal::SIGTERM);
    h.wait_state(WorkerState::Stopping).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.signal(Signal::SIGUSR2);
    let (code, _) = h.finished().await;
    assert_eq!(t0.elapsed().as_secs(), 3);
    assert_eq!(code, EXIT_KILLED_AFTER_GRACE);
    assert_eq!(h.launched().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_during_a_reload_stops_old_and_new_workers() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.reload_holding_slot_0().await;
    let (code, _) = h.shutdown().await;
    assert_eq!(code, 0);
    h.assert_never("reload-finished");
    assert_eq!(h.launched().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_hung_worker_during_shutdown_is_killed_at_grace_not_at_the_watchdog() {
    let options = options()
        .with_grace(Duration::from_secs(2))
        .with_heartbeat_timeout(Some(Duration::from_secs(30)));
    let stuck = Behaviour {
        beats: false,
        obeys: false,
        ..Behaviour::HEALTHY
    };
    let mut h = Harness::start(options, vec![group(2)], &[stuck]);
    h.expect("ready worker/1#1").await;
    let t0 = Instant::now();
    let (code, _) = h.shutdown().await;
    assert_eq!(code, EXIT_KILLED_AFTER_GRACE);
    assert_eq!(t0.elapsed().as_secs(), 2);
    // Killed for the grace, not counted as hung.
    h.assert_never("exit worker/0#1 unexpected restarting");
}

#[tokio::test(start_paused = true)]
async fn a_worker_still_starting_at_shutdown_is_killed_at_once() {
    let starting = Behaviour {
        online: false,
        ..Behaviour::HEALTHY
    };
    let mut h = Harness::start(options(), vec![group(2)], &[starting]);
    h.expect("ready worker/1#1").await;
    let t0 = Instant::now();
    let (code, _) = h.shutdown().await;
    assert_eq!(code, 0);
    assert!(t0.elapsed() < Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_crash_during_shutdown_is_not_restarted() {
    let mut h = Harness::start(options(), vec![group(2)], &[Behaviour::STUBBORN]);
    h.expect("ready worker/1#1").await;
    h.signal(Signal::SIGTERM);
    h.expect("exit worker/1#1").await;
    h.act(&wid(0, 1), Act::Exit(1));
    let (code, _) = h.finished().await;
    assert_eq!(code, 0);
    assert_eq!(h.launched().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn scaling_and_reloading_after_shutdown_began_do_nothing() {
    let mut h = Harness::start(options(), vec![group(1)], &[Behaviour::STUBBORN]);
    h.expect("ready worker/0#1").await;
    h.signal(Signal::SIGTERM);
    // Signals and commands are separate queues: wait until the shutdown has begun.
    h.wait_state(WorkerState::Stopping).await;
    h.reload();
    h.scale(4).await;
    let (code, _) = h.finished().await;
    assert_eq!(code, EXIT_KILLED_AFTER_GRACE);
    assert_eq!(h.launched().len(), 1);
}
