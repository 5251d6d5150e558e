//! SIGTTIN and SIGTTOU (`scale_signals`): one worker more or less in the default group.

use super::*;
use crate::supervisor::SCALED_GROUP;

#[test]
fn the_scaled_group_is_the_default_group() {
    assert_eq!(SCALED_GROUP, crate::DEFAULT_GROUP);
}

#[tokio::test(start_paused = true)]
async fn sigttin_adds_a_worker_and_sigttou_removes_one_but_never_the_last() {
    let mut h = Harness::start(options(), vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.signal(Signal::SIGTTIN);
    h.expect("ready worker/2#1").await;
    h.assert_settled(&[0, 1, 2]).await;

    // The highest slots go first, each stopped gracefully and not restarted.
    h.signal(Signal::SIGTTOU);
    h.expect("exit worker/2#1").await;
    h.signal(Signal::SIGTTOU);
    h.expect("exit worker/1#1").await;
    h.assert_settled(&[0]).await;
    h.signal(Signal::SIGTTOU);
    h.signal(Signal::SIGTTOU);
    // Nothing to wait for but time: a removal would stop slot 0 at once.
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.assert_never("exit worker/0#1");
    h.assert_settled(&[0]).await;

    // Back up from one, into the lowest free slot, at its next generation.
    h.signal(Signal::SIGTTIN);
    h.expect("ready worker/1#2").await;
    h.assert_settled(&[0, 1]).await;
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn sigttin_scales_only_the_default_group() {
    let groups = vec![group(1), GroupOptions::new("jobs").with_count(1)];
    let mut h = Harness::start(options(), groups, &[]);
    h.expect("ready worker/0#1").await;
    h.signal(Signal::SIGTTIN);
    h.expect("ready worker/1#1").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let jobs = h
        .workers()
        .await
        .iter()
        .filter(|w| &*w.id.group == "jobs")
        .count();
    assert_eq!(jobs, 1);
    assert_eq!(h.shutdown().await.0, 0);
}

#[tokio::test(start_paused = true)]
async fn a_scale_signal_listed_as_a_shutdown_signal_shuts_down() {
    let options = options().with_signals([Signal::SIGTERM, Signal::SIGTTOU]);
    let mut h = Harness::start(options, vec![group(2)], &[]);
    h.expect("ready worker/1#1").await;
    h.signal(Signal::SIGTTOU);
    let (code, _) = h.finished().await;
    assert_eq!(code, 0);
    h.assert_never("spawned worker/2#1");
}

#[tokio::test(start_paused = true)]
async fn scale_signals_during_the_shutdown_change_nothing() {
    let options = options().with_grace(Duration::from_secs(5));
    let mut h = Harness::start(options, vec![group(1)], &[Behaviour::STUBBORN]);
    h.expect("ready worker/0#1").await;
    h.signal(Signal::SIGTERM);
    h.signal(Signal::SIGTTIN);
    // One queue: the TTIN is taken after the TERM, during the shutdown.
    let (code, _) = h.finished().await;
    // Killed after the grace (it ignores the request to stop), and nothing was started.
    assert_eq!(code, crate::supervisor::EXIT_KILLED_AFTER_GRACE);
    assert_eq!(h.launched(), vec![wid(0, 1)]);
}
