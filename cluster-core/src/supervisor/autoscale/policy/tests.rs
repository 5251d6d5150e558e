//! The policy's rules on a clock made of milliseconds: one sample every 100 ms.

use super::*;

const TICK: Duration = Duration::from_millis(100);

fn settings() -> Settings {
    Settings {
        min: 1,
        max: 4,
        up_cpu: Some(0.8),
        up_lag: Some(Duration::from_millis(100)),
        up_connections: None,
        up_window: Duration::from_millis(1000),
        down_window: Duration::from_millis(3000),
        cooldown: Duration::from_millis(500),
    }
}

fn cpu(cores: f64) -> Sample {
    Sample {
        cpu: cores,
        ..Sample::default()
    }
}

/// Feeds `sample` every tick from `*now` for `for_`, at `size`; the first decision, and when.
fn feed(
    policy: &mut Policy,
    now: &mut Instant,
    for_: Duration,
    size: usize,
    sample: Sample,
) -> Option<(Duration, Decision)> {
    let start = *now;
    while *now <= start + for_ {
        let at = *now;
        *now += TICK;
        if let Some(d) = policy.observe(at, size, sample) {
            return Some((at - start, d));
        }
    }
    None
}

#[test]
fn up_after_the_window_not_before() {
    let mut p = Policy::new(settings());
    let mut now = Instant::now();
    // 0.9 of a core for one worker (over 0.8): not before the window is covered.
    assert_eq!(
        feed(&mut p, &mut now, Duration::from_millis(900), 1, cpu(0.9)),
        None
    );
    let (after, d) = feed(&mut p, &mut now, Duration::from_millis(500), 1, cpu(0.9)).unwrap();
    assert_eq!(after, Duration::ZERO, "at 1000 ms from the first sample");
    assert_eq!((d.from, d.to, d.direction()), (1, 2, "up"));
    assert_eq!(d.reason, "cpu 0.90 cores avg over 1s > 0.80 x 1");
}

#[test]
fn up_goes_by_the_average_and_grows_proportionally_at_most_doubling() {
    let mut p = Policy::new(settings());
    let mut now = Instant::now();
    // One sample far over, the rest under: the average decides, not a spike.
    p.observe(now, 2, cpu(10.0));
    now += TICK;
    assert_eq!(
        feed(&mut p, &mut now, Duration::from_millis(2000), 2, cpu(0.2)),
        None
    );
    // 2.0 cores over 2 workers at 0.8 each: ceil(2 x 2.0 / 1.6) = 3.
    let mut p = Policy::new(settings());
    let (_, d) = feed(&mut p, &mut now, Duration::from_millis(1500), 2, cpu(2.0)).unwrap();
    assert_eq!((d.from, d.to), (2, 3));
    // A runtime 10x over its lag bound wants 10 workers: twice as many at most, and never
    // past max.
    let lag = Sample {
        lag: Duration::from_millis(1000),
        ..Sample::default()
    };
    let mut p = Policy::new(settings());
    let (_, d) = feed(&mut p, &mut now, Duration::from_millis(1500), 1, lag).unwrap();
    assert_eq!((d.from, d.to), (1, 2));
    assert_eq!(d.reason, "event-loop lag 1000 ms avg over 1s > 100 ms");
    let mut p = Policy::new(settings());
    let (_, d) = feed(&mut p, &mut now, Duration::from_millis(1500), 3, lag).unwrap();
    assert_eq!((d.from, d.to), (3, 4), "max is 4");
}

#[test]
fn never_above_max_never_below_min() {
    let mut p = Policy::new(settings());
    let mut now = Instant::now();
    assert_eq!(
        feed(&mut p, &mut now, Duration::from_secs(10), 4, cpu(100.0)),
        None
    );
    let mut p = Policy::new(settings());
    assert_eq!(
        feed(&mut p, &mut now, Duration::from_secs(10), 1, cpu(0.0)),
        None
    );
}

#[test]
fn cooldown_after_a_decision_then_a_fresh_window() {
    let mut p = Policy::new(settings());
    let mut now = Instant::now();
    let (_, d) = feed(&mut p, &mut now, Duration::from_secs(2), 1, cpu(5.0)).unwrap();
    assert_eq!(d.to, 2);
    // Still saturated at 2: not within the 500 ms cooldown plus a new 1 s window.
    let (after, d) = feed(&mut p, &mut now, Duration::from_secs(3), 2, cpu(5.0)).unwrap();
    assert_eq!(d.to, 4);
    assert!(
        after >= Duration::from_millis(1400) && after <= Duration::from_millis(1600),
        "{after:?}"
    );
}

#[test]
fn down_one_at_a_time_only_after_the_long_quiet_window() {
    let mut p = Policy::new(settings());
    let mut now = Instant::now();
    let quiet = cpu(0.1);
    let (after, d) = feed(&mut p, &mut now, Duration::from_secs(5), 3, quiet).unwrap();
    assert_eq!(after, Duration::from_millis(3000));
    assert_eq!((d.from, d.to, d.direction()), (3, 2, "down"));
    assert_eq!(
        d.reason,
        "quiet for 3s: cpu at most 0.10 cores < 0.5 x 0.80 x 2, event-loop lag at most 0 ms < 50 ms"
    );
    let (after, d) = feed(&mut p, &mut now, Duration::from_secs(5), 2, quiet).unwrap();
    assert_eq!((d.from, d.to), (2, 1));
    assert_eq!(
        after,
        Duration::from_millis(3400),
        "cooldown, then the window"
    );
}

#[test]
fn hysteresis_one_busy_sample_keeps_the_size() {
    let mut p = Policy::new(settings());
    let mut now = Instant::now();
    // 0.5 cores over 2 workers: below the up bound (1.6) but one worker less would run at
    // 0.5 of its 0.8, over half: it stays at 2 for good.
    assert_eq!(
        feed(&mut p, &mut now, Duration::from_secs(10), 2, cpu(0.5)),
        None
    );
    // Quiet but for one sample in the window: the window counts from after it.
    let mut p = Policy::new(settings());
    feed(&mut p, &mut now, Duration::from_millis(2000), 2, cpu(0.1));
    p.observe(now, 2, cpu(0.6));
    now += TICK;
    let (after, _) = feed(&mut p, &mut now, Duration::from_secs(5), 2, cpu(0.1)).unwrap();
    assert!(after >= Duration::from_millis(2900), "{after:?}");
}

#[test]
fn nothing_is_decided_while_held_and_the_window_starts_again_after() {
    let mut p = Policy::new(settings());
    let mut now = Instant::now();
    let start = now;
    while now < start + Duration::from_secs(3) {
        // A reload under way: every other tick the supervisor holds.
        if (now - start).as_millis().is_multiple_of(200) {
            p.hold();
        } else {
            assert_eq!(p.observe(now, 1, cpu(5.0)), None);
        }
        now += TICK;
    }
    // The reload is over: the window starts now.
    p.hold();
    let (after, _) = feed(&mut p, &mut now, Duration::from_secs(2), 1, cpu(5.0)).unwrap();
    assert_eq!(after, Duration::from_millis(1000));
}

#[test]
fn a_size_set_by_hand_is_brought_into_range_after_the_cooldown() {
    let mut p = Policy::new(settings());
    let mut now = Instant::now();
    assert_eq!(p.observe(now, 2, cpu(0.5)), None);
    now += TICK;
    // The operator scaled to 7: past max, brought back once the cooldown is over.
    let (after, d) = feed(&mut p, &mut now, Duration::from_secs(1), 7, cpu(0.5)).unwrap();
    assert_eq!(after, Duration::from_millis(500));
    assert_eq!((d.from, d.to), (7, 4));
    assert_eq!(d.reason, "outside autoscale 1..4");
}

#[test]
fn connections_per_worker_as_a_signal() {
    let mut s = settings();
    s.up_cpu = None;
    s.up_lag = None;
    s.up_connections = Some(100);
    let mut p = Policy::new(s);
    let mut now = Instant::now();
    let busy = Sample {
        connections: 450,
        ..Sample::default()
    };
    let (_, d) = feed(&mut p, &mut now, Duration::from_secs(2), 2, busy).unwrap();
    assert_eq!(
        (d.to, d.reason.as_str()),
        (4, "450 connections avg over 1s > 100 x 2")
    );
}
