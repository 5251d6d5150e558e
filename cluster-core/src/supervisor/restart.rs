//! Restart decisions: the restart intensity (how many crashes are too many) and the per-slot
//! backoff (how long to wait before the next start).
//!
//! Pure bookkeeping: time is passed in as `Instant`s so the engine stays the only owner of the
//! clock and the tests need not sleep.
//!
//! Accounting rules, in the order [`decide`] applies them:
//! - a deliberate exit (shutdown, reload, scale-down) is never restarted here and never counted;
//! - the group's [`RestartMode`] decides whether a worker that exited on its own is restarted;
//!   one that is not restarted is not counted either (OTP does not count temporary children);
//! - a failure (non-zero code, death by signal, worker returned `Err`, no ready report in time)
//!   that is restarted counts toward the intensity, and crossing it gives up;
//! - a clean exit (code 0, worker returned `Ok`) under [`RestartMode::Permanent`] is restarted
//!   but never counted: unlike OTP, which counts every restart, a worker returning `Ok` must not
//!   bring the cluster down. It is still paced by the backoff, so a worker that returns at once
//!   cannot fork in a tight loop.

// The supervision engine is the consumer of this module; until it is wired in, only the tests
// call these items.

use std::collections::VecDeque;
use std::time::Duration;

// tokio's clock, so that the supervisor's tests can run it paused.
use tokio::time::Instant;

use crate::options::{Backoff, RestartMode, RestartPolicy};

/// Restart intensity: a sliding window over the recent unexpected exits, like an Erlang/OTP
/// supervisor's `{intensity, period}`.
#[derive(Debug, Clone)]
pub(crate) struct Intensity {
    max_restarts: u32,
    window: Duration,
    /// Times of the exits still inside the window, oldest first; never longer than
    /// `max_restarts + 1`.
    exits: VecDeque<Instant>,
}

impl Intensity {
    pub(crate) fn new(max_restarts: u32, window: Duration) -> Self {
        // Capacity is not reserved up front: max_restarts may be u32::MAX.
        Intensity {
            max_restarts,
            window,
            exits: VecDeque::new(),
        }
    }

    pub(crate) fn from_policy(policy: &RestartPolicy) -> Self {
        Self::new(policy.max_restarts(), policy.max_restarts_interval())
    }

    /// Records one unexpected exit at `now`.
    ///
    /// Returns `Ok(n)` with the number of exits within the window (this one included), or
    /// `Err(n)` when that number exceeds `max_restarts`, i.e. the cluster must give up. The
    /// window is inclusive, as in OTP: an exit exactly `window` ago still counts.
    pub(crate) fn record(&mut self, now: Instant) -> Result<usize, usize> {
        self.prune(now);
        self.exits.push_back(now);
        let bound = usize::try_from(self.max_restarts).map_or(usize::MAX, |m| m.saturating_add(1));
        while self.exits.len() > bound {
            self.exits.pop_front();
        }
        let count = self.exits.len();
        if u32::try_from(count).map_or(true, |c| c > self.max_restarts) {
            Err(count)
        } else {
            Ok(count)
        }
    }

    /// How long ago each exit still inside the window happened, oldest first: what an
    /// upgrade hands to the next master.
    pub(crate) fn ages(&self, now: Instant) -> Vec<Duration> {
        self.exits
            .iter()
            .map(|at| now.saturating_duration_since(*at))
            .filter(|age| *age <= self.window)
            .collect()
    }

    /// Takes on exits that happened `ages` ago (a previous master's), before any of this
    /// master's own.
    pub(crate) fn restore(&mut self, ages: &[Duration], now: Instant) {
        let mut exits: Vec<Instant> = ages
            .iter()
            .filter(|age| **age <= self.window)
            .filter_map(|age| now.checked_sub(*age))
            .collect();
        exits.sort();
        let bound = usize::try_from(self.max_restarts).map_or(usize::MAX, |m| m.saturating_add(1));
        let skip = exits.len().saturating_sub(bound);
        self.exits = exits.into_iter().skip(skip).collect();
        self.prune(now);
    }

    /// The number of exits within the window ending at `now`.
    #[cfg(test)]
    pub(crate) fn count(&mut self, now: Instant) -> usize {
        self.prune(now);
        self.exits.len()
    }

    /// Forgets every recorded exit (e.g. after the operator changed the policy).
    #[cfg(test)]
    pub(crate) fn clear(&mut self) {
        self.exits.clear();
    }

    #[cfg(test)]
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    #[cfg(test)]
    pub(crate) fn max_restarts(&self) -> u32 {
        self.max_restarts
    }

    fn prune(&mut self, now: Instant) {
        // saturating: an Instant from before an entry (not expected, but not worth a panic)
        // counts as "just now".
        while let Some(&oldest) = self.exits.front() {
            if now.saturating_duration_since(oldest) > self.window {
                self.exits.pop_front();
            } else {
                break;
            }
        }
    }
}

/// The pacing of restarts in one worker slot.
#[derive(Debug, Clone)]
pub(crate) struct SlotBackoff {
    backoff: Backoff,
    started_at: Option<Instant>,
    /// Consecutive failures of short-lived workers in this slot.
    failures: u32,
    /// Consecutive clean exits of short-lived workers in this slot; paced like failures so
    /// that a worker returning `Ok` at once does not fork in a tight loop.
    quick_clean_exits: u32,
}

impl SlotBackoff {
    pub(crate) fn new(backoff: Backoff) -> Self {
        SlotBackoff {
            backoff,
            started_at: None,
            failures: 0,
            quick_clean_exits: 0,
        }
    }

    /// A worker process started in this slot at `now`.
    pub(crate) fn on_start(&mut self, now: Instant) {
        self.started_at = Some(now);
    }

    /// The worker of this slot exited on its own at `now`; returns how long to wait before
    /// starting the next one.
    ///
    /// The first failure after a stable period (or ever) restarts at once, so a killed worker
    /// is replaced within milliseconds; each further consecutive failure waits `base`,
    /// `base * factor`, ... up to `cap`. A worker that stayed up at least `reset_after` ends the
    /// streak; so does a clean exit. Quick clean exits follow the same curve on a streak of
    /// their own. An exit with no recorded start (the spawn itself failed) counts as quick.
    pub(crate) fn on_exit(&mut self, now: Instant, failure: bool) -> Duration {
        let stable = self.started_at.take().is_some_and(|start| {
            now.saturating_duration_since(start) >= self.backoff.reset_after()
        });
        if stable {
            self.failures = 0;
            self.quick_clean_exits = 0;
        }
        if failure {
            self.quick_clean_exits = 0;
            self.failures = self.failures.saturating_add(1);
            self.delay(self.failures)
        } else {
            self.failures = 0;
            if !stable {
                self.quick_clean_exits = self.quick_clean_exits.saturating_add(1);
            }
            self.delay(self.quick_clean_exits)
        }
    }

    /// Forgets the streaks, e.g. when a reload puts new code in the slot.
    #[cfg(test)]
    pub(crate) fn reset(&mut self) {
        self.started_at = None;
        self.failures = 0;
        self.quick_clean_exits = 0;
    }

    /// The current failure streak.
    #[cfg(test)]
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay for the `n`-th exit of a streak: 0 for the first, then base, base*factor, ...
    fn delay(&self, n: u32) -> Duration {
        let (base, cap, factor) = (
            self.backoff.base(),
            self.backoff.cap(),
            self.backoff.factor(),
        );
        if n <= 1 || base.is_zero() {
            return Duration::ZERO;
        }
        // powi with a clamped exponent keeps this O(1) however long the streak: a factor just
        // above 1 would otherwise need millions of steps to reach the cap.
        let exponent = i32::try_from(n - 2).unwrap_or(i32::MAX);
        let secs = base.as_secs_f64() * factor.powi(exponent);
        // try_from rejects NaN, negative and overflowing values (a factor validation would have
        // refused): fall back to the cap rather than panic.
        Duration::try_from_secs_f64(secs).unwrap_or(cap).min(cap)
    }
}

/// How a worker's exit came about, as far as restarting is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The master caused it: shutdown, rolling reload, scale-down.
    Deliberate,
    /// Exit code 0, or the worker function returned `Ok`.
    Clean,
    /// Non-zero exit code, killed by a signal, the worker function returned `Err` or panicked,
    /// or the worker did not report ready in time.
    Failure,
}

/// What the engine should do about an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Start a new worker in the slot after this delay.
    Restart { after: Duration },
    /// Leave the slot empty (deliberate exit, or the restart mode says so).
    DoNotRestart,
    /// The restart intensity was exceeded: `count` unexpected exits within the window. Shut the
    /// cluster down with `ErrorKind::RestartLimit`.
    GiveUp { count: usize },
}

/// Decides what follows an exit at `now`, updating the group's `intensity` and the slot's
/// `backoff` only when the exit is restarted (see the module docs for the rules).
pub(crate) fn decide(
    mode: RestartMode,
    exit: Exit,
    now: Instant,
    intensity: &mut Intensity,
    slot: &mut SlotBackoff,
) -> Decision {
    let failure = match exit {
        Exit::Deliberate => return Decision::DoNotRestart,
        Exit::Clean => false,
        Exit::Failure => true,
    };
    if !mode.restarts_after(failure) {
        return Decision::DoNotRestart;
    }
    if failure && let Err(count) = intensity.record(now) {
        return Decision::GiveUp { count };
    }
    Decision::Restart {
        after: slot.on_exit(now, failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn exits_handed_to_the_next_master_count_in_its_window() {
        let t0 = Instant::now();
        let mut old = Intensity::new(3, secs(10.0));
        assert_eq!(old.record(t0), Ok(1));
        assert_eq!(old.record(t0 + secs(4.0)), Ok(2));
        let now = t0 + secs(6.0);
        let ages = old.ages(now);
        assert_eq!(ages, [secs(6.0), secs(2.0)]);
        // The new master's clock is its own: only the ages cross.
        let later = now + secs(100.0);
        let mut new = Intensity::new(3, secs(10.0));
        new.restore(&ages, later);
        assert_eq!(new.count(later), 2);
        assert_eq!(new.record(later + secs(1.0)), Ok(3));
        assert_eq!(new.record(later + secs(2.0)), Err(4));
        // Past the window, an exit is forgotten as it would have been; at most
        // max_restarts + 1 are kept.
        let mut other = Intensity::new(2, secs(10.0));
        other.restore(
            &[secs(11.0), secs(3.0), secs(2.0), secs(1.0), secs(0.5)],
            later,
        );
        assert_eq!(other.count(later), 3);
        assert_eq!(other.ages(later), [secs(2.0), secs(1.0), secs(0.5)]);
    }

    #[test]
    fn three_exits_in_ten_seconds_are_fine_the_fourth_gives_up() {
        let t0 = Instant::now();
        let mut i = Intensity::new(3, secs(10.0));
        assert_eq!(i.record(t0), Ok(1));
        assert_eq!(i.record(t0 + secs(3.0)), Ok(2));
        assert_eq!(i.record(t0 + secs(6.0)), Ok(3));
        assert_eq!(i.record(t0 + secs(9.999)), Err(4));
    }

    #[test]
    fn the_window_is_inclusive_at_exactly_the_interval() {
        let t0 = Instant::now();
        let mut i = Intensity::new(3, secs(10.0));
        for k in 0..3 {
            assert!(i.record(t0 + secs(f64::from(k))).is_ok());
        }
        assert_eq!(i.record(t0 + secs(10.0)), Err(4));
    }

    #[test]
    fn the_fourth_exit_after_the_window_does_not_give_up() {
        let t0 = Instant::now();
        let mut i = Intensity::new(3, secs(10.0));
        assert_eq!(i.record(t0), Ok(1));
        assert_eq!(i.record(t0 + secs(1.0)), Ok(2));
        assert_eq!(i.record(t0 + secs(2.0)), Ok(3));
        assert_eq!(i.record(t0 + secs(10.001)), Ok(3));
        assert_eq!(i.count(t0 + secs(11.5)), 2);
    }

    #[test]
    fn a_steady_trickle_never_gives_up() {
        let t0 = Instant::now();
        let mut i = Intensity::new(3, secs(10.0));
        for k in 0..1000u32 {
            // One exit every 3.34 s: at most 3 in any 10 s window.
            assert!(i.record(t0 + secs(3.34 * f64::from(k))).is_ok(), "exit {k}");
        }
    }

    #[test]
    fn memory_stays_bounded() {
        let t0 = Instant::now();
        let mut i = Intensity::new(3, secs(10.0));
        for k in 0..100 {
            let _ = i.record(t0 + MS * k);
            assert!(i.exits.len() <= 4);
        }
        assert_eq!(i.record(t0 + MS * 100), Err(4));
        let mut huge = Intensity::new(u32::MAX, secs(10.0));
        assert_eq!(huge.record(t0), Ok(1));
    }

    #[test]
    fn zero_max_restarts_gives_up_at_the_first_exit() {
        let mut i = Intensity::new(0, secs(10.0));
        assert_eq!(i.record(Instant::now()), Err(1));
    }

    #[test]
    fn clear_and_accessors() {
        let t0 = Instant::now();
        let mut i = Intensity::from_policy(&RestartPolicy::new());
        assert_eq!((i.max_restarts(), i.window()), (3, secs(10.0)));
        for k in 0..3 {
            assert!(i.record(t0 + MS * k).is_ok());
        }
        i.clear();
        assert_eq!(i.record(t0 + MS * 4), Ok(1));
    }

    #[test]
    fn an_instant_before_the_last_entry_does_not_panic() {
        let t0 = Instant::now();
        let mut i = Intensity::new(3, secs(10.0));
        assert_eq!(i.record(t0 + secs(5.0)), Ok(1));
        assert_eq!(i.record(t0), Ok(2));
    }

    /// Starts a worker at `t` that fails after `up`; returns the delay and the next start.
    fn fail_after(slot: &mut SlotBackoff, t: Instant, up: Duration) -> (Duration, Instant) {
        slot.on_start(t);
        let delay = slot.on_exit(t + up, true);
        (delay, t + up + delay)
    }

    #[test]
    fn backoff_sequence_is_zero_then_doubling_then_capped() {
        let mut slot = SlotBackoff::new(Backoff::new());
        let mut t = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..10 {
            let (d, next) = fail_after(&mut slot, t, MS * 50);
            delays.push(d);
            t = next;
        }
        let expected: Vec<Duration> = [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
            .iter()
            .map(|&ms| MS * ms)
            .collect();
        assert_eq!(delays, expected);
        assert_eq!(slot.failures(), 10);
    }

    #[test]
    fn the_streak_resets_after_a_stable_period() {
        let mut slot = SlotBackoff::new(Backoff::new());
        let mut t = Instant::now();
        for _ in 0..4 {
            t = fail_after(&mut slot, t, MS * 10).1;
        }
        // Up 9.999 s: still short-lived, the streak goes on.
        let (d, next) = fail_after(&mut slot, t, secs(9.999));
        assert_eq!(d, MS * 800);
        // Up exactly reset_after: stable, so the next failure restarts at once.
        let (d, next) = fail_after(&mut slot, next, secs(10.0));
        assert_eq!(d, Duration::ZERO);
        let (d, _) = fail_after(&mut slot, next, MS);
        assert_eq!(d, MS * 100);
    }

    #[test]
    fn a_clean_exit_resets_the_failure_streak() {
        let mut slot = SlotBackoff::new(Backoff::new());
        let mut t = Instant::now();
        for _ in 0..3 {
            t = fail_after(&mut slot, t, MS * 10).1;
        }
        slot.on_start(t);
        assert_eq!(slot.on_exit(t + MS, false), Duration::ZERO);
        assert_eq!(slot.failures(), 0);
        assert_eq!(fail_after(&mut slot, t + MS, MS).0, Duration::ZERO);
    }

    #[test]
    fn quick_clean_exits_are_paced_but_stable_ones_are_not() {
        let mut slot = SlotBackoff::new(Backoff::new());
        let t = Instant::now();
        let mut delays = Vec::new();
        for k in 0..4 {
            slot.on_start(t + secs(f64::from(k)));
            delays.push(slot.on_exit(t + secs(f64::from(k)) + MS, false));
        }
        assert_eq!(delays, [Duration::ZERO, MS * 100, MS * 200, MS * 400]);
        // A worker that served its 10 s and exited 0 (e.g. recycling itself) comes back at once.
        slot.on_start(t);
        assert_eq!(slot.on_exit(t + secs(10.0), false), Duration::ZERO);
        slot.on_start(t);
        assert_eq!(slot.on_exit(t + secs(30.0), false), Duration::ZERO);
    }

    #[test]
    fn an_exit_without_a_start_counts_as_quick() {
        let mut slot = SlotBackoff::new(Backoff::new());
        let t = Instant::now();
        assert_eq!(slot.on_exit(t, true), Duration::ZERO);
        assert_eq!(slot.on_exit(t, true), MS * 100);
        slot.reset();
        assert_eq!(slot.on_exit(t, true), Duration::ZERO);
    }

    #[test]
    fn odd_backoffs_do_not_panic() {
        let t = Instant::now();
        for backoff in [
            Backoff::new().with_factor(f64::NAN),
            Backoff::new().with_factor(-2.0),
            Backoff::new().with_factor(f64::MAX).with_cap(Duration::MAX),
            Backoff::new().with_base(Duration::ZERO),
            Backoff::new().with_factor(1.0),
        ] {
            let mut slot = SlotBackoff::new(backoff);
            for _ in 0..200 {
                let d = slot.on_exit(t, true);
                assert!(d <= backoff.cap().max(backoff.base()));
            }
        }
        let mut constant = SlotBackoff::new(Backoff::new().with_factor(1.0));
        let delays: Vec<_> = (0..4).map(|_| constant.on_exit(t, true)).collect();
        assert_eq!(delays, [Duration::ZERO, MS * 100, MS * 100, MS * 100]);
    }

    fn fresh() -> (Intensity, SlotBackoff) {
        let policy = RestartPolicy::new();
        (
            Intensity::from_policy(&policy),
            SlotBackoff::new(policy.backoff()),
        )
    }

    #[test]
    fn deliberate_exits_are_never_restarted_nor_counted() {
        let t = Instant::now();
        for mode in [
            RestartMode::Permanent,
            RestartMode::Transient,
            RestartMode::Temporary,
        ] {
            let (mut i, mut s) = fresh();
            for k in 0..10 {
                assert_eq!(
                    decide(mode, Exit::Deliberate, t + MS * k, &mut i, &mut s),
                    Decision::DoNotRestart
                );
            }
            assert_eq!(i.count(t + MS * 10), 0);
            assert_eq!(s.failures(), 0);
        }
    }

    #[test]
    fn permanent_restarts_everything_but_counts_only_failures() {
        let t = Instant::now();
        let (mut i, mut s) = fresh();
        let p = RestartMode::Permanent;
        // Clean exits: restarted, never counted, however many.
        for k in 0..10 {
            assert!(matches!(
                decide(p, Exit::Clean, t + MS * k, &mut i, &mut s),
                Decision::Restart { .. }
            ));
        }
        assert_eq!(i.count(t + MS * 10), 0);
        // Failures: the first restarts at once, then backoff; the fourth within 10 s gives up.
        assert_eq!(
            decide(p, Exit::Failure, t + MS * 20, &mut i, &mut s),
            Decision::Restart {
                after: Duration::ZERO
            }
        );
        assert_eq!(
            decide(p, Exit::Failure, t + MS * 30, &mut i, &mut s),
            Decision::Restart { after: MS * 100 }
        );
        assert_eq!(
            decide(p, Exit::Failure, t + MS * 40, &mut i, &mut s),
            Decision::Restart { after: MS * 200 }
        );
        assert_eq!(
            decide(p, Exit::Failure, t + MS * 50, &mut i, &mut s),
            Decision::GiveUp { count: 4 }
        );
    }

    #[test]
    fn transient_restarts_only_failures() {
        let t = Instant::now();
        let (mut i, mut s) = fresh();
        let m = RestartMode::Transient;
        assert_eq!(
            decide(m, Exit::Clean, t, &mut i, &mut s),
            Decision::DoNotRestart
        );
        assert_eq!(
            decide(m, Exit::Failure, t, &mut i, &mut s),
            Decision::Restart {
                after: Duration::ZERO
            }
        );
        assert_eq!(i.count(t), 1);
    }

    #[test]
    fn temporary_restarts_nothing_and_counts_nothing() {
        let t = Instant::now();
        let (mut i, mut s) = fresh();
        let m = RestartMode::Temporary;
        for k in 0..10 {
            assert_eq!(
                decide(m, Exit::Failure, t + MS * k, &mut i, &mut s),
                Decision::DoNotRestart
            );
            assert_eq!(
                decide(m, Exit::Clean, t + MS * k, &mut i, &mut s),
                Decision::DoNotRestart
            );
        }
        assert_eq!(i.count(t + MS * 10), 0);
    }

    #[test]
    fn failures_spread_beyond_the_window_keep_restarting() {
        let t = Instant::now();
        let (mut i, mut s) = fresh();
        let p = RestartMode::Permanent;
        for k in [0.0, 1.0, 2.0, 10.001, 11.5, 12.5] {
            assert!(
                matches!(
                    decide(p, Exit::Failure, t + secs(k), &mut i, &mut s),
                    Decision::Restart { .. }
                ),
                "exit at {k} s"
            );
        }
    }
}
