//! Telling systemd how the cluster is doing: the `sd_notify` protocol of `Type=notify` and
//! `Type=notify-reload` services, spoken only when systemd gave the master a `NOTIFY_SOCKET`.
//!
//! The supervisor reports what happens (a reload starts or ends, the shutdown begins) and,
//! after each turn of its loop, a [`Summary`] of the workers; [`Notifier`] decides what to
//! send: `READY=1` once `min_ready` workers are ready, `RELOADING=1` + `MONOTONIC_USEC` and
//! `READY=1` around each reload, `STOPPING=1`, `STATUS=` when the one-line summary changes.
//! The loop also asks it when its next timer is due ([`Notifier::next_timer`]): the watchdog
//! ping (`WATCHDOG=1` every half `WATCHDOG_USEC`) and `EXTEND_TIMEOUT_USEC` during a long
//! drain are sent from the loop's own turn, so a master whose loop is stuck (or stopped with
//! SIGSTOP) stops pinging and systemd sees it.
//!
//! Messages go through [`NoteSink`]: the real one is the `sd-notify` crate, the unit tests'
//! one records what was sent and when, on tokio's paused clock.

use std::io;
use std::time::Duration;

use tokio::time::Instant;

use super::process::Launcher;
use super::slot::Phase;
use super::{Supervisor, notice};

/// One state change for the service manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    Ready,
    /// A reload began; `CLOCK_MONOTONIC` in microseconds when it did (systemd matches the
    /// reload it asked for by this timestamp).
    Reloading {
        monotonic_usec: Option<i128>,
    },
    Stopping,
    Status(String),
    Watchdog,
    /// The current start, reload or stop needs this much longer than systemd would wait.
    ExtendTimeout(Duration),
    /// The service's main process is now this pid (an upgrade's new master).
    MainPid(u32),
}

/// Where notes go: a datagram to systemd, or a test's record.
pub(crate) trait NoteSink: Send + 'static {
    /// Sends `notes` as one message.
    fn send(&mut self, notes: &[Note]) -> io::Result<()>;
}

/// The service manager, through the `sd-notify` crate (it reads `NOTIFY_SOCKET` from this
/// process's environment at each send, which is why the master keeps that variable and only
/// its workers lose it).
struct Systemd;

impl NoteSink for Systemd {
    fn send(&mut self, notes: &[Note]) -> io::Result<()> {
        use sd_notify::NotifyState;
        let mut states = Vec::with_capacity(notes.len() + 1);
        for note in notes {
            match note {
                Note::Ready => states.push(NotifyState::Ready),
                Note::Reloading { monotonic_usec } => {
                    states.push(NotifyState::Reloading);
                    if let Some(usec) = monotonic_usec {
                        states.push(NotifyState::MonotonicUsec(*usec));
                    }
                }
                Note::Stopping => states.push(NotifyState::Stopping),
                Note::Status(text) => states.push(NotifyState::Status(text)),
                Note::Watchdog => states.push(NotifyState::Watchdog),
                Note::ExtendTimeout(by) => states.push(NotifyState::ExtendTimeoutUsec(
                    u32::try_from(by.as_micros()).unwrap_or(u32::MAX),
                )),
                Note::MainPid(pid) => states.push(NotifyState::MainPid(*pid)),
            }
        }
        sd_notify::notify(&states)
    }
}

/// The variable that says systemd listens for notifications.
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The variables of the protocol that concern the master alone: a worker that inherited
/// them would send `READY=1` for the whole service, or be taken for the watchdog's pinger.
pub(crate) const MASTER_ONLY_VARS: [&str; 3] = [NOTIFY_SOCKET, "WATCHDOG_USEC", "WATCHDOG_PID"];

/// How long each `EXTEND_TIMEOUT_USEC` grants, and (at a third of it) how often it is sent
/// while a drain lasts: a loop that stops turning stops extending within this time.
const EXTEND_WINDOW: Duration = Duration::from_secs(15);

/// Beyond the master's own deadline for a stop (`grace`), the time it asks for to kill what
/// is left and collect the exits.
const EXTEND_MARGIN: Duration = Duration::from_secs(5);

/// The workers as the supervisor sees them after one turn of its loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Summary {
    /// Workers ready in their slots.
    pub(crate) ready: usize,
    /// Slots the groups have.
    pub(crate) slots: usize,
    pub(crate) restarts: u64,
    /// A reload under way: slots replaced, slots to replace in all.
    pub(crate) reload: Option<(usize, usize)>,
    /// During the shutdown: processes still alive, and the deadline after which they are
    /// killed.
    pub(crate) stopping: Option<(usize, Instant)>,
}

impl Summary {
    /// The `STATUS=` line: "2/2 workers ready, 0 restarts, reloading 1/2".
    fn line(&self) -> String {
        if let Some((left, _)) = self.stopping {
            return format!(
                "stopping: {left} worker{} left, {} restarts",
                if left == 1 { "" } else { "s" },
                self.restarts
            );
        }
        let mut line = format!(
            "{}/{} workers ready, {} restart{}",
            self.ready,
            self.slots,
            self.restarts,
            if self.restarts == 1 { "" } else { "s" }
        );
        if let Some((done, total)) = self.reload {
            line.push_str(&format!(", reloading {done}/{total}"));
        }
        line
    }
}

/// What has been told to systemd, and when to tell it more.
pub(crate) struct Notifier {
    /// `None` without `NOTIFY_SOCKET`: the state is kept all the same (the supervisor asks
    /// whether the cluster became ready), nothing is sent.
    sink: Option<Box<dyn NoteSink>>,
    min_ready: usize,
    ready_sent: bool,
    reloading: bool,
    stopping: bool,
    status: String,
    /// Half of `WATCHDOG_USEC`, and when the next ping is due.
    watchdog: Option<(Duration, Instant)>,
    /// During a shutdown: when the next `EXTEND_TIMEOUT_USEC` is due.
    next_extend: Option<Instant>,
    /// A failed send was logged: later failures are not (a socket gone stays gone).
    failed: bool,
    /// The new master of an upgrade before it took over: systemd hears nothing from it (the
    /// service's main process is still the old master) until [`Notifier::take_over`].
    held: bool,
}

impl Notifier {
    /// A notifier that sends nothing: no `NOTIFY_SOCKET`, or a test that does not look.
    pub(crate) fn silent(min_ready: usize) -> Self {
        Notifier {
            sink: None,
            min_ready,
            ready_sent: false,
            reloading: false,
            stopping: false,
            status: String::new(),
            watchdog: None,
            next_extend: None,
            failed: false,
            held: false,
        }
    }

    /// Sends to `sink`, pinging every `watchdog` if set.
    pub(crate) fn with_sink(
        min_ready: usize,
        sink: Box<dyn NoteSink>,
        watchdog: Option<Duration>,
    ) -> Self {
        let now = Instant::now();
        Notifier {
            sink: Some(sink),
            watchdog: watchdog.map(|every| (every, now)),
            ..Notifier::silent(min_ready)
        }
    }

    /// The notifier this process's environment asks for: systemd's, when `NOTIFY_SOCKET` is
    /// set, with the watchdog at half of `WATCHDOG_USEC` when that is set for this process
    /// (`WATCHDOG_PID` unset or this pid).
    pub(crate) fn from_env(min_ready: usize) -> Self {
        if std::env::var_os(NOTIFY_SOCKET).is_none() {
            return Notifier::silent(min_ready);
        }
        let watchdog = sd_notify::watchdog_enabled().map(|usec| usec / 2);
        if let Some(every) = watchdog {
            notice!(
                info,
                "systemd watchdog: pinging every {} ms from the supervisor's loop",
                every.as_millis()
            );
        }
        Notifier::with_sink(min_ready, Box::new(Systemd), watchdog)
    }

    /// Says nothing until [`Notifier::take_over`]: this is the new master of an upgrade.
    pub(crate) fn hold(&mut self) {
        self.held = true;
    }

    /// This new master took over from the old one, which has told systemd this pid: it says
    /// so itself too (`MAINPID=`, which systemd accepts from it only under
    /// `NotifyAccess=all`, hence the old one's), then `READY=1` and the status line.
    pub(crate) fn take_over(&mut self, summary: &Summary) {
        self.held = false;
        self.ready_sent = true;
        let line = summary.line();
        self.status = line.clone();
        self.send(&[
            Note::MainPid(std::process::id()),
            Note::Ready,
            Note::Status(line),
        ]);
    }

    /// The new master `pid` of an upgrade is ready: systemd is told it is the main process
    /// now, and hears nothing more from this one (its drain and exit are not the service's:
    /// a `STOPPING=1` from it would stop the service).
    pub(crate) fn hand_over(&mut self, pid: u32) {
        self.send(&[
            Note::MainPid(pid),
            Note::Status(format!("upgrading: new master {pid} takes over")),
        ]);
        self.sink = None;
        self.watchdog = None;
        self.next_extend = None;
    }

    fn send(&mut self, notes: &[Note]) {
        if self.held {
            return;
        }
        let Some(sink) = &mut self.sink else { return };
        if let Err(e) = sink.send(notes) {
            if !self.failed {
                self.failed = true;
                notice!(
                    warn,
                    "cannot notify systemd through {NOTIFY_SOCKET} ({e}); the cluster runs on, later failures are not logged"
                );
            }
        }
    }

    /// After a turn of the loop: `READY=1` the first time `min_ready` workers are ready,
    /// `STATUS=` when the summary line changed. Returns true on the turn the cluster became
    /// ready.
    pub(crate) fn update(&mut self, summary: &Summary) -> bool {
        if self.held {
            return false;
        }
        let line = summary.line();
        let became_ready = !self.ready_sent && !self.stopping && summary.ready >= self.min_ready;
        if became_ready {
            self.ready_sent = true;
            self.status = line.clone();
            self.send(&[Note::Ready, Note::Status(line)]);
            return true;
        }
        if line != self.status {
            self.status = line.clone();
            self.send(&[Note::Status(line)]);
        }
        false
    }

    /// A rolling reload began (signal, control socket or watch). Before the first `READY=1`
    /// systemd is still starting the service and hears nothing of it.
    pub(crate) fn reload_started(&mut self) {
        if !self.ready_sent || self.reloading || self.stopping {
            return;
        }
        self.reloading = true;
        let monotonic_usec = match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(sd_notify::NotifyState::MonotonicUsec(usec)) => Some(usec),
            _ => None,
        };
        self.send(&[Note::Reloading { monotonic_usec }]);
    }

    /// The reload ended, done or given up: either way the cluster serves (on the old workers
    /// if it failed), which is what `READY=1` says.
    pub(crate) fn reload_ended(&mut self) {
        if !self.reloading || self.stopping {
            return;
        }
        self.reloading = false;
        self.send(&[Note::Ready]);
    }

    /// The shutdown began.
    pub(crate) fn stopping(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.reloading = false;
        self.next_extend = Some(Instant::now());
        self.send(&[Note::Stopping]);
    }

    /// When [`Notifier::on_timer`] wants to run next.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.sink.as_ref()?;
        let ping = self.watchdog.map(|(_, at)| at);
        match (ping, self.next_extend) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends what is due at `now`: the watchdog's ping, and during a drain an extension of
    /// systemd's stop timeout up to the master's own deadline (`stop_deadline`: the end of
    /// `grace`) plus the time to kill and collect what is left. "The timeout" systemd applies
    /// (`TimeoutStopSec`) is not known to the master; each message grants
    /// [`EXTEND_WINDOW`] at most and is sent again at a third of it, so systemd waits for a
    /// drain that makes progress, up to `grace`, and no longer for a loop that is stuck.
    pub(crate) fn on_timer(&mut self, now: Instant, stop_deadline: Option<Instant>) {
        if let Some((every, at)) = self.watchdog {
            if at <= now {
                self.watchdog = Some((every, now + every));
                self.send(&[Note::Watchdog]);
            }
        }
        if let Some(at) = self.next_extend {
            if at <= now {
                let until =
                    stop_deadline.map(|d| (d + EXTEND_MARGIN).saturating_duration_since(now));
                match until {
                    Some(left) if !left.is_zero() => {
                        self.send(&[Note::ExtendTimeout(left.min(EXTEND_WINDOW))]);
                        self.next_extend = Some(now + EXTEND_WINDOW / 3);
                    }
                    _ => self.next_extend = None,
                }
            }
        }
    }
}

impl<L: Launcher> Supervisor<L> {
    /// After each turn of the loop: what systemd should hear now, and, on the turn the
    /// cluster first became ready, the inherited sockets no worker asked for.
    pub(super) fn after_turn(&mut self) {
        let summary = self.summary();
        self.upgrade_after_turn(summary.ready);
        if self.notify.update(&summary) {
            self.listeners.report_unclaimed();
        }
    }

    /// The workers after this turn, as systemd's status line tells them.
    pub(super) fn summary(&self) -> Summary {
        let slots = self.groups.iter().map(|g| g.slots.len()).sum();
        let ready = self
            .groups
            .iter()
            .flat_map(|g| g.slots.values())
            .filter_map(|s| s.current.as_ref())
            .filter(|p| matches!(p.phase, Phase::Ready { .. }))
            .count();
        Summary {
            ready,
            slots,
            restarts: self.restart_reasons.values().sum(),
            reload: self.reload.as_ref().map(|r| {
                (
                    r.total.saturating_sub(r.queue.len() + r.active.len()),
                    r.total,
                )
            }),
            stopping: self
                .stop_deadline
                .filter(|_| self.stopping.is_some())
                .map(|deadline| (self.live_count(), deadline)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Each message sent, with the milliseconds since the recorder was made.
    type Sent = Arc<Mutex<Vec<(u64, Vec<Note>)>>>;

    /// Records every message with the paused clock's milliseconds since it was made.
    #[derive(Clone)]
    pub(crate) struct Recorder {
        sent: Sent,
        start: Instant,
        pub(crate) fail: bool,
    }

    impl Recorder {
        pub(crate) fn new() -> Self {
            Recorder {
                sent: Arc::default(),
                start: Instant::now(),
                fail: false,
            }
        }

        /// Every message so far as text, one `ms: NOTE;NOTE` per message.
        pub(crate) fn lines(&self) -> Vec<String> {
            let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            sent.iter()
                .map(|(ms, notes)| {
                    let notes: Vec<String> = notes.iter().map(describe).collect();
                    format!("{ms}: {}", notes.join(";"))
                })
                .collect()
        }
    }

    /// A note without what changes from run to run (the monotonic clock).
    pub(crate) fn describe(note: &Note) -> String {
        match note {
            Note::Ready => "READY".into(),
            Note::Reloading { monotonic_usec } => format!(
                "RELOADING{}",
                if monotonic_usec.is_some_and(|u| u > 0) {
                    "+MONOTONIC_USEC"
                } else {
                    ""
                }
            ),
            Note::Stopping => "STOPPING".into(),
            Note::Status(s) => format!("STATUS={s}"),
            Note::Watchdog => "WATCHDOG".into(),
            Note::ExtendTimeout(d) => format!("EXTEND={}ms", d.as_millis()),
            Note::MainPid(pid) => format!("MAINPID={pid}"),
        }
    }

    impl NoteSink for Recorder {
        fn send(&mut self, notes: &[Note]) -> io::Result<()> {
            let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.sent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((ms, notes.to_vec()));
            if self.fail {
                return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
            }
            Ok(())
        }
    }

    fn summary(ready: usize, slots: usize) -> Summary {
        Summary {
            ready,
            slots,
            restarts: 0,
            reload: None,
            stopping: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ready_waits_for_min_ready_and_status_is_sent_on_change_only() {
        let rec = Recorder::new();
        let mut n = Notifier::with_sink(2, Box::new(rec.clone()), None);
        assert!(!n.update(&summary(1, 2)));
        assert!(!n.update(&summary(1, 2)));
        assert!(n.update(&summary(2, 2)));
        assert!(!n.update(&summary(2, 2)));
        // A reload before the first READY would confuse a starting unit: nothing is sent.
        assert_eq!(
            rec.lines(),
            [
                "0: STATUS=1/2 workers ready, 0 restarts",
                "0: READY;STATUS=2/2 workers ready, 0 restarts",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_master_is_silent_until_it_takes_over_and_the_old_one_after_handing_over() {
        let rec = Recorder::new();
        let every = Some(Duration::from_secs(1));
        let mut new = Notifier::with_sink(1, Box::new(rec.clone()), every);
        new.hold();
        assert!(!new.update(&summary(2, 2)));
        new.on_timer(Instant::now(), None);
        assert!(rec.lines().is_empty(), "{:?}", rec.lines());
        new.take_over(&summary(2, 2));
        assert_eq!(
            rec.lines(),
            [format!(
                "0: MAINPID={};READY;STATUS=2/2 workers ready, 0 restarts",
                std::process::id()
            )]
        );

        let rec = Recorder::new();
        let mut old = Notifier::with_sink(1, Box::new(rec.clone()), every);
        old.update(&summary(1, 1));
        old.hand_over(42);
        // Its drain is not the service's stop.
        old.stopping();
        old.on_timer(Instant::now() + Duration::from_secs(5), None);
        assert_eq!(old.next_timer(), None);
        assert_eq!(
            rec.lines(),
            [
                "0: READY;STATUS=1/1 workers ready, 0 restarts",
                "0: MAINPID=42;STATUS=upgrading: new master 42 takes over",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_socket_is_not_fatal_and_every_note_is_still_tried() {
        let mut rec = Recorder::new();
        rec.fail = true;
        let mut n = Notifier::with_sink(1, Box::new(rec.clone()), None);
        n.update(&summary(1, 1));
        n.stopping();
        assert_eq!(rec.lines().len(), 2);
        assert!(n.failed);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_pings_at_its_interval_only_when_its_timer_runs() {
        let rec = Recorder::new();
        let mut n = Notifier::with_sink(1, Box::new(rec.clone()), Some(Duration::from_millis(100)));
        for _ in 0..3 {
            let at = n.next_timer().unwrap();
            tokio::time::sleep_until(at).await;
            n.on_timer(Instant::now(), None);
        }
        // Time passing without the timer running (a stuck loop) sends nothing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            rec.lines(),
            ["0: WATCHDOG", "100: WATCHDOG", "200: WATCHDOG"]
        );
        // The next turn pings once, not once per missed interval.
        n.on_timer(Instant::now(), None);
        assert_eq!(rec.lines().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_drain_extends_the_stop_timeout_up_to_the_grace_deadline() {
        let rec = Recorder::new();
        let mut n = Notifier::with_sink(1, Box::new(rec.clone()), None);
        n.update(&summary(1, 1));
        let deadline = Instant::now() + Duration::from_secs(30);
        n.stopping();
        while let Some(at) = n.next_timer() {
            tokio::time::sleep_until(at).await;
            n.on_timer(Instant::now(), Some(deadline));
        }
        let lines = rec.lines();
        assert_eq!(
            lines[1..],
            [
                "0: STOPPING",
                "0: EXTEND=15000ms",
                "5000: EXTEND=15000ms",
                "10000: EXTEND=15000ms",
                "15000: EXTEND=15000ms",
                "20000: EXTEND=15000ms",
                "25000: EXTEND=10000ms",
                "30000: EXTEND=5000ms",
            ],
            "{lines:#?}"
        );
    }
}
