//! What systemd hears (`sd_notify`) across a start, reloads by every path, and a shutdown,
//! in the order and at the times the loop sends it.

use std::time::Duration;

use super::*;
use crate::supervisor::notify::Notifier;
use crate::supervisor::notify::tests::Recorder;

/// A harness whose notifier records what it sends, pinging the watchdog every `watchdog`.
fn notified(count: usize, watchdog: Option<Duration>) -> (Harness, Recorder) {
    let rec = Recorder::new();
    let options = options().with_min_ready(count);
    let notifier = Notifier::with_sink(count, Box::new(rec.clone()), watchdog);
    let h = Harness::start_notifying(options, vec![group(count)], &[], Some(notifier));
    (h, rec)
}

/// The messages without their times and without watchdog pings.
fn messages(rec: &Recorder) -> Vec<String> {
    rec.lines()
        .iter()
        .filter_map(|l| l.split_once(": ").map(|(_, m)| m.to_owned()))
        .filter(|m| m != "WATCHDOG")
        .collect()
}

/// Asserts that `want` appear in `got` in this order (others may stand between).
fn assert_in_order(got: &[String], want: &[&str]) {
    let mut at = 0;
    for w in want {
        match got[at..].iter().position(|g| g == w) {
            Some(i) => at += i + 1,
            None => panic!("{w:?} not sent after position {at}; sent {got:#?}"),
        }
    }
}

/// No `STATUS=` repeats the one before it: it is sent on change only.
fn assert_status_changes_only(got: &[String]) {
    let statuses: Vec<&String> = got.iter().filter(|m| m.contains("STATUS=")).collect();
    for pair in statuses.windows(2) {
        let status = |m: &str| m.split("STATUS=").nth(1).map(str::to_owned);
        assert_ne!(status(pair[0]), status(pair[1]), "repeated: {got:#?}");
    }
}

#[tokio::test(start_paused = true)]
async fn start_reload_and_stop_are_told_in_order_with_status_on_change_only() {
    let (mut h, rec) = notified(2, None);
    h.expect("ready worker/1#1").await;
    h.settle().await;
    h.signal(Signal::SIGUSR2);
    h.expect("reload-finished").await;
    h.settle().await;
    h.shutdown().await;
    let got = messages(&rec);
    assert_in_order(
        &got,
        &[
            "READY;STATUS=2/2 workers ready, 0 restarts",
            "RELOADING+MONOTONIC_USEC",
            "STATUS=2/2 workers ready, 0 restarts, reloading 0/2",
            "STATUS=2/2 workers ready, 0 restarts, reloading 1/2",
            "READY",
            "STATUS=2/2 workers ready, 0 restarts",
            "STOPPING",
            "STATUS=stopping: 2 workers left, 0 restarts",
        ],
    );
    assert_eq!(
        got.iter().filter(|m| m.starts_with("READY")).count(),
        2,
        "{got:#?}"
    );
    assert!(
        got.iter().position(|m| m.starts_with("READY;"))
            < got.iter().position(|m| m.starts_with("RELOADING")),
        "{got:#?}"
    );
    assert_status_changes_only(&got);
}

#[tokio::test(start_paused = true)]
async fn ready_waits_for_min_ready_workers() {
    let rec = Recorder::new();
    let options = options().with_min_ready(2);
    let notifier = Notifier::with_sink(2, Box::new(rec.clone()), None);
    let mut h = Harness::start_notifying(
        options,
        vec![group(2)],
        &[Behaviour::HEALTHY, Behaviour::NEVER_READY],
        Some(notifier),
    );
    h.expect("ready worker/0#1").await;
    // Well within `ready_timeout`: worker/1#1 is still starting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !messages(&rec).iter().any(|m| m.starts_with("READY")),
        "{:#?}",
        messages(&rec)
    );
    h.act(&wid(1, 1), Act::Ready);
    h.expect("ready worker/1#1").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        messages(&rec).last().map(String::as_str),
        Some("READY;STATUS=2/2 workers ready, 0 restarts")
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn every_reload_path_is_bracketed_by_reloading_and_ready() {
    let (mut h, rec) = notified(1, None);
    h.expect("ready worker/0#1").await;
    // The reload signal, the control socket's (and the app's) reload, a new build.
    h.signal(Signal::SIGUSR2);
    h.expect("reload-finished").await;
    h.reload();
    h.expect("reload-finished").await;
    h.new_build(2);
    h.expect("reload-finished").await;
    // A reload that fails ends too: the old worker serves, and READY says so.
    h.plan(&[Behaviour::SPAWN_FAILS]);
    h.reload();
    h.expect("reload-failed").await;
    h.settle().await;
    let got: Vec<String> = messages(&rec)
        .into_iter()
        .filter(|m| !m.starts_with("STATUS="))
        .collect();
    assert_eq!(
        got,
        [
            "READY;STATUS=1/1 workers ready, 0 restarts",
            "RELOADING+MONOTONIC_USEC",
            "READY",
            "RELOADING+MONOTONIC_USEC",
            "READY",
            "RELOADING+MONOTONIC_USEC",
            "READY",
            "RELOADING+MONOTONIC_USEC",
            "READY",
        ]
    );
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_is_pinged_from_the_loop_at_its_interval_until_the_end() {
    let (mut h, rec) = notified(1, Some(Duration::from_millis(500)));
    h.expect("ready worker/0#1").await;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    h.shutdown().await;
    let pings: Vec<u64> = rec
        .lines()
        .iter()
        .filter(|l| l.ends_with(": WATCHDOG"))
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect();
    assert!(pings.len() >= 5, "{pings:?}");
    for pair in pings.windows(2) {
        assert_eq!(pair[1] - pair[0], 500, "{pings:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_drain_longer_than_systemds_window_extends_the_stop_timeout() {
    let rec = Recorder::new();
    let options = options().with_grace(Duration::from_secs(40));
    let notifier = Notifier::with_sink(1, Box::new(rec.clone()), None);
    let mut h = Harness::start_notifying(
        options,
        vec![group(1)],
        &[Behaviour::STUBBORN],
        Some(notifier),
    );
    h.expect("ready worker/0#1").await;
    let start = rec.lines().len();
    h.shutdown().await;
    let lines = rec.lines();
    let extends: Vec<&String> = lines[start..]
        .iter()
        .filter(|l| l.contains("EXTEND="))
        .collect();
    // Every 5 s while the 40 s drain lasts, 15 s at most each time.
    assert!(extends.len() >= 8, "{lines:#?}");
    assert!(extends[0].ends_with(": EXTEND=15000ms"), "{lines:#?}");
    assert!(extends[7].starts_with("35000: "), "{lines:#?}");
}
