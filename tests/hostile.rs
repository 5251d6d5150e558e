//! The hostile-worker suite (issue 12, "the master survives any worker"): a real cluster
//! (tests/fixture/hostile_fixture.rs) in which the first worker of slot 0 speaks the
//! master-worker protocol by hand and misbehaves, one way per test. For each act:
//!
//! - the master stays alive: its process, and `/healthz` answering throughout;
//! - the other workers keep serving: a client load (keep-alive and connection-per-request
//!   loops) runs from before the act until after it, and none of its requests that reached a
//!   healthy worker fails (see [`Blame`] for the requests a hostile worker may have taken);
//!   the master's own requests to healthy workers are answered, by the worker asked;
//! - the master's open descriptors and resident memory stay under [`MAX_FDS`] and
//!   [`MAX_RSS_KIB`] (sampled every 20 ms from /proc);
//! - the offender is reported: a line of the master's own log (not a worker's) names it and is
//!   not one of the generic lifecycle lines, and `/metrics` counts
//!   `cluster_worker_violations_total{kind="..."}` for what it did; and it is replaced where the
//!   rule says so (`no_read`).
//!
//! Each test prints one line `HOSTILE_SUMMARY act=... requests_ok=... requests_failed=...`
//! (run with `--nocapture` to see them all), before its assertions, so the figures exist for
//! a failing test too. The tests run one at a time (a lock): several flooding clusters at once
//! on a 2-core machine would measure each other.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::http::{Failure, IO_TIMEOUT, Load};
use support::ops::{Fixture, Line, Stream, get, local, strip_prefix};
use support::{TempDir, free_port, pid_alive};

const FIXTURE: &str = env!("CARGO_BIN_EXE_cluster-hostile-fixture");

/// Workers in the cluster: the hostile one and two healthy ones.
const COUNT: usize = 3;
/// The hostile worker's slot, its id, and its replacement's.
const SLOT: usize = 0;
const OFFENDER: &str = "worker/0#1";
const REPLACEMENT: &str = "worker/0#2";

/// Bound on the master's open descriptors. At rest it holds about 40 (stdio, the runtime's
/// epoll and wakers, the status server's and the HTTP listening sockets, and per worker its
/// channel and two output pipes); the client load adds at most 5 connections in flight (one
/// per client loop), and a worker sending descriptors at most one message's worth (64, the
/// channel's limit per message) until the master closes them. 256 leaves room for all of that
/// at once; a master that keeps what a worker makes it hold (descriptors, listening sockets,
/// unacknowledged connections) passes it within seconds.
const MAX_FDS: u64 = 256;
/// Bound on the master's resident memory, in KiB. About 15 MiB at rest (a debug build); a
/// metrics answer may be as large as the channel's frame limit (16 MiB) and is held while it
/// is read and decoded: 64 MiB leaves room for one such answer being read, not for a master
/// that keeps, copies or merges several.
const MAX_RSS_KIB: u64 = 64 << 10;
/// How long an act may take to show its effect (its output, the offender's report or
/// replacement): each test stays around 20 s even when it fails.
const ACT_WAIT: Duration = Duration::from_secs(10);
/// Lines of the master's log that name a worker without saying what it did.
const GENERIC: &[&str] = &[
    "unexpectedly",
    "is hung",
    "did not stop within the grace period",
    "did not become ready in time",
    "after being replaced",
];

/// One test at a time (see the module's doc).
static SERIAL: Mutex<()> = Mutex::new(());

/// Samples the master's open descriptors and resident memory every 20 ms, keeping the maxima.
struct Sampler {
    stop: Arc<AtomicBool>,
    max_fds: Arc<AtomicU64>,
    max_rss_kib: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

fn open_fds(pid: i32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Sampler {
    fn start(pid: i32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max_fds = Arc::new(AtomicU64::new(0));
        let max_rss_kib = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, max_fds, max_rss_kib) = (stop.clone(), max_fds.clone(), max_rss_kib.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(fds) = open_fds(pid) {
                        max_fds.fetch_max(fds, Ordering::SeqCst);
                    }
                    if let Some(rss) = rss_kib(pid) {
                        max_rss_kib.fetch_max(rss, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Sampler {
            stop,
            max_fds,
            max_rss_kib,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns (most descriptors, most resident KiB).
    fn stop(&mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        (
            self.max_fds.load(Ordering::SeqCst),
            self.max_rss_kib.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Asks the status server for `/healthz` and `/metrics` every 200 ms, counting what did not
/// answer 200 and noting whether `/metrics` ever showed the spoofed family.
#[derive(Default)]
struct Probes {
    healthz_ok: AtomicU64,
    healthz_failed: Mutex<Vec<String>>,
    metrics_ok: AtomicU64,
    metrics_failed: Mutex<Vec<String>>,
    max_metrics_bytes: AtomicU64,
    spoof_seen: AtomicBool,
}

struct Prober {
    stop: Arc<AtomicBool>,
    probes: Arc<Probes>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    fn start(status: SocketAddr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(Probes::default());
        let thread = {
            let (stop, probes) = (stop.clone(), probes.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match get(status, "/healthz", Duration::from_secs(5)) {
                        Ok(r) if r.status == 200 => {
                            probes.healthz_ok.fetch_add(1, Ordering::SeqCst);
                        }
                        other => probes
                            .healthz_failed
                            .lock()
                            .unwrap()
                            .push(format!("{other:?}")),
                    }
                    match get(status, "/metrics", IO_TIMEOUT) {
                        Ok(r) if r.status == 200 => {
                            probes.metrics_ok.fetch_add(1, Ordering::SeqCst);
                            probes
                                .max_metrics_bytes
                                .fetch_max(r.body.len() as u64, Ordering::SeqCst);
                            if r.body.contains("hostile_spoof") {
                                probes.spoof_seen.store(true, Ordering::SeqCst);
                            }
                        }
                        Ok(r) => probes
                            .metrics_failed
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status)),
                        Err(e) => probes.metrics_failed.lock().unwrap().push(e.to_string()),
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        Prober {
            stop,
            probes,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) -> Arc<Probes> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.probes.clone()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Which failed client requests a hostile worker may have taken, so that they do not count
/// against the healthy workers.
#[derive(Clone, Copy)]
enum Blame {
    /// None: the hostile worker takes no connection (it does not listen on the HTTP address),
    /// so every failure is a failure of the cluster.
    Nobody,
    /// It serves HTTP itself (by hand): a failure on a connection it answered last is its own.
    Serves,
    /// It is handed connections and never reads them (`no_read`, round-robin). The client
    /// cannot tell which worker holds a connection that never answers, so a failure on a
    /// connection that no worker had answered yet, until [`IO_TIMEOUT`] after the hostile
    /// worker's exit (or the end, if it never exits), counts as swallowed by it. Every other
    /// failure (on a connection a healthy worker answered before, or later) counts.
    Swallows,
}

/// A running act: the cluster, its load, and what watches it.
struct Act {
    name: &'static str,
    fx: Fixture,
    status: SocketAddr,
    offender_pid: Option<u32>,
    load: Option<Load>,
    sampler: Sampler,
    prober: Prober,
    _dir: TempDir,
    _serial: MutexGuard<'static, ()>,
}

/// What an act showed.
struct Outcome {
    name: &'static str,
    requests_ok: u64,
    failed: Vec<Failure>,
    swallowed: usize,
    master_alive: bool,
    healthz_now: bool,
    probes: Arc<Probes>,
    max_fds: u64,
    max_rss_kib: u64,
    /// `kind -> count` of `cluster_worker_violations_total`, from the last scrape.
    violations: Vec<(String, f64)>,
    /// The master's log lines about the offender (not generic ones).
    reports: Vec<String>,
    replaced: bool,
    req_fail: Vec<String>,
    req_wrong: Vec<String>,
    healthy_exits: Vec<String>,
    dump: String,
}

/// Every `cluster_worker_violations_total` sample as `(kind, value)`.
fn violations(metrics: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter_map(|line| {
            let labels = line.strip_prefix("cluster_worker_violations_total{")?;
            let (labels, rest) = labels.split_once('}')?;
            let kind = labels
                .split(',')
                .find_map(|l| l.strip_prefix("kind=\""))?
                .trim_end_matches('"');
            let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
            Some((kind.to_owned(), value))
        })
        .collect()
}

fn count_of(violations: &[(String, f64)], kinds: &[&str]) -> f64 {
    violations
        .iter()
        .filter(|(k, _)| kinds.contains(&k.as_str()))
        .map(|(_, v)| v)
        .fold(0.0, |sum, v| sum + v)
}

/// The master's own log lines (stderr, without a worker's prefix) that name the offender and
/// are not generic lifecycle lines.
fn reports(lines: &[Line]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.stream == Stream::Err && strip_prefix(&l.text).0.is_none())
        .filter(|l| l.text.contains(OFFENDER))
        .filter(|l| !GENERIC.iter().any(|g| l.text.contains(g)))
        .map(|l| l.text.clone())
        .collect()
}

fn scrape(status: SocketAddr) -> String {
    get(status, "/metrics", IO_TIMEOUT)
        .map(|r| r.body)
        .unwrap_or_default()
}

impl Act {
    /// Starts the fixture with act `name` (and `extra` variables), waits for every slot to be
    /// ready, then starts the watchers and the client load and waits for it to flow.
    fn start(name: &'static str, extra: &[(&str, String)]) -> Act {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = TempDir::new(&format!("hostile-{name}"));
        let (http_port, status_port) = (free_port(), free_port());
        let mut env = vec![
            ("HOSTILE_ACT", name.to_owned()),
            ("HOSTILE_HTTP_PORT", http_port.to_string()),
            ("HOSTILE_STATUS_PORT", status_port.to_string()),
            ("HOSTILE_COUNT", COUNT.to_string()),
            ("HOSTILE_SLOT", SLOT.to_string()),
            (
                "HOSTILE_DIR",
                dir.0.to_str().expect("a UTF-8 path").to_owned(),
            ),
        ];
        env.extend(extra.iter().cloned());
        let mut fx = Fixture::start_program(Path::new(FIXTURE), &["CLUSTER_", "HOSTILE_"], &env);
        let sampler = Sampler::start(fx.pid());
        let ready = fx.wait_ready(COUNT);
        let offender_pid = ready.get(OFFENDER).map(|&pid| pid as u32);
        let status = local(status_port);
        let prober = Prober::start(status);
        let load = Load::start(local(http_port), 3, 2);
        load.wait_more_ok(100);
        Act {
            name,
            fx,
            status,
            offender_pid,
            load: Some(load),
            sampler,
            prober,
            _dir: dir,
            _serial: serial,
        }
    }

    fn load(&self) -> &Load {
        self.load.as_ref().expect("the load runs until finish")
    }

    /// Reads output until `check` finds something, for at most `within`; `None` then.
    fn watch<T>(
        &mut self,
        what: &str,
        within: Duration,
        mut check: impl FnMut(&[Line]) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + within;
        // The fixture prints `REQS` lines every second, so `check` runs at least that often.
        self.fx
            .wait_for(what, within + Duration::from_secs(5), |lines| {
                match check(lines) {
                    Some(found) => Some(Some(found)),
                    None if Instant::now() >= deadline => Some(None),
                    None => None,
                }
            })
    }

    /// Waits (up to [`ACT_WAIT`]) for the act's line `kind` with `fields`, or for the
    /// offender's exit; the line if it came.
    fn act_line(&mut self, kind: &str, fields: &[(&str, &str)]) -> Option<Line> {
        let what = format!("{kind} {fields:?} or the offender's exit");
        self.watch(&what, ACT_WAIT, |lines| {
            if let Some(line) = lines.iter().find(|l| l.is(kind, fields)) {
                return Some(Some(line.clone()));
            }
            lines
                .iter()
                .any(|l| l.is("EXIT", &[("id", OFFENDER)]))
                .then_some(None)
        })
        .flatten()
    }

    /// Waits (up to [`ACT_WAIT`]) until the offender is reported: a log line, and (if
    /// `kinds` is not empty) a violation counter of one of `kinds`.
    fn wait_reported(&mut self, kinds: &[&str]) {
        let status = self.status;
        let mut next_scrape = Instant::now();
        let mut counted = kinds.is_empty();
        self.watch("the offender's report", ACT_WAIT, |lines| {
            if !counted && Instant::now() >= next_scrape {
                next_scrape = Instant::now() + Duration::from_millis(250);
                counted = count_of(&violations(&scrape(status)), kinds) > 0.0;
            }
            (counted && !reports(lines).is_empty()).then_some(())
        });
    }

    /// Waits (up to [`ACT_WAIT`]) for the offender's replacement to be ready.
    fn wait_replaced(&mut self) -> bool {
        self.watch("the offender's replacement", ACT_WAIT, |lines| {
            lines
                .iter()
                .any(|l| l.is("READY", &[("id", REPLACEMENT)]))
                .then_some(())
        })
        .is_some()
    }

    /// Stops the load and the watchers and collects what the act showed; prints the summary.
    fn finish(mut self, kinds: &[&str], blame: Blame) -> Outcome {
        let metrics = scrape(self.status);
        let master_alive = self.fx.try_exit().is_none() && pid_alive(self.fx.pid());
        let healthz_now =
            get(self.status, "/healthz", Duration::from_secs(5)).is_ok_and(|r| r.status == 200);
        let tally = self.load.take().expect("the load").stop();
        let probes = self.prober.stop();
        let (max_fds, max_rss_kib) = self.sampler.stop();
        let lines = &self.fx.history;
        let offender_exit = lines
            .iter()
            .find(|l| l.is("EXIT", &[("id", OFFENDER)]))
            .map(|l| l.at);
        let (mut failed, mut swallowed) = (Vec::new(), 0);
        for failure in tally.failures() {
            let hostiles = match blame {
                Blame::Nobody => false,
                Blame::Serves => {
                    failure.last_pid.is_some() && failure.last_pid == self.offender_pid
                }
                Blame::Swallows => {
                    failure.last_pid.is_none()
                        && offender_exit.is_none_or(|exit| failure.at <= exit + IO_TIMEOUT)
                }
            };
            if hostiles {
                swallowed += 1;
            } else {
                failed.push(failure);
            }
        }
        let texts = |kind: &str, fields: &[(&str, &str)]| -> Vec<String> {
            lines
                .iter()
                .filter(|l| l.is(kind, fields))
                .map(|l| l.text.clone())
                .collect()
        };
        let healthy_exits = lines
            .iter()
            .filter(|l| l.is("EXIT", &[("expected", "false")]))
            .filter(|l| l.get("id") != OFFENDER)
            .map(|l| l.text.clone())
            .collect();
        let outcome = Outcome {
            name: self.name,
            requests_ok: tally.ok(),
            failed,
            swallowed,
            master_alive,
            healthz_now,
            probes,
            max_fds,
            max_rss_kib,
            violations: violations(&metrics),
            reports: reports(lines),
            replaced: lines.iter().any(|l| l.is("READY", &[("id", REPLACEMENT)])),
            req_fail: texts("REQ_FAIL", &[]),
            req_wrong: texts("REQ_WRONG", &[]),
            healthy_exits,
            dump: self.fx.dump(),
        };
        println!(
            "HOSTILE_SUMMARY act={} requests_ok={} requests_failed={} swallowed_by_hostile={} master_alive={} healthz_failed={} max_fds={} max_rss_mib={:.1} violations={:?} reported_in_log={} replaced={} master_requests_failed={} wrong_answers={}",
            outcome.name,
            outcome.requests_ok,
            outcome.failed.len(),
            outcome.swallowed,
            outcome.master_alive,
            outcome.probes.healthz_failed.lock().unwrap().len(),
            outcome.max_fds,
            outcome.max_rss_kib as f64 / 1024.0,
            count_of(&outcome.violations, kinds),
            !outcome.reports.is_empty(),
            outcome.replaced,
            outcome.req_fail.len(),
            outcome.req_wrong.len(),
        );
        outcome
    }
}

impl Outcome {
    /// What every act must show: the master alive and answering, no failed request to a
    /// healthy worker (clients' or the master's), no wrong answer, no healthy worker lost,
    /// descriptors and memory under their bounds.
    fn assert_survived(&self) {
        let dump = &self.dump;
        let name = self.name;
        assert!(self.master_alive, "{name}: the master died\n{dump}");
        assert!(self.healthz_now, "{name}: /healthz does not answer\n{dump}");
        let healthz_failed = self.probes.healthz_failed.lock().unwrap().clone();
        assert!(
            healthz_failed.is_empty(),
            "{name}: /healthz failed {} times during the act: {healthz_failed:?}\n{dump}",
            healthz_failed.len()
        );
        assert!(
            self.failed.is_empty(),
            "{name}: {} client requests to healthy workers failed (of {}): {:#?}\n{dump}",
            self.failed.len(),
            self.requests_ok + self.failed.len() as u64,
            self.failed
        );
        assert!(
            self.req_fail.is_empty(),
            "{name}: the master's requests to healthy workers failed: {:#?}\n{dump}",
            self.req_fail
        );
        assert!(
            self.req_wrong.is_empty(),
            "{name}: the master's requests to healthy workers were answered by someone else: {:#?}\n{dump}",
            self.req_wrong
        );
        assert!(
            self.healthy_exits.is_empty(),
            "{name}: healthy workers exited: {:#?}\n{dump}",
            self.healthy_exits
        );
        assert!(
            self.max_fds < MAX_FDS,
            "{name}: the master held {} descriptors (bound {MAX_FDS})\n{dump}",
            self.max_fds
        );
        assert!(
            self.max_rss_kib < MAX_RSS_KIB,
            "{name}: the master's resident memory reached {} KiB (bound {MAX_RSS_KIB} KiB)\n{dump}",
            self.max_rss_kib
        );
    }

    /// The offender was reported: a line of the master's log names it (beyond the generic
    /// lifecycle lines), and `/metrics` counts a violation of one of `kinds` (none: the log
    /// only).
    fn assert_reported(&self, kinds: &[&str]) {
        let (dump, name) = (&self.dump, self.name);
        assert!(
            !self.reports.is_empty(),
            "{name}: no line of the master's log names {OFFENDER} and what it did\n{dump}"
        );
        if !kinds.is_empty() {
            assert!(
                count_of(&self.violations, kinds) > 0.0,
                "{name}: /metrics counts no cluster_worker_violations_total of kind {kinds:?} (found {:?})\n{dump}",
                self.violations
            );
        }
    }
}

/// No hostile worker at all: the suite's own yardstick (the bounds and the accounting hold
/// for a healthy cluster under the same load and the master's requests).
#[test]
fn baseline_without_a_hostile_worker() {
    let act = Act::start("none", &[]);
    act.load().wait_more_ok(500);
    let out = act.finish(&[], Blame::Nobody);
    out.assert_survived();
}

/// Descriptors the master has no use for: through the channel (announced, attached to
/// heartbeats), then by hand without any frame announcing them, then with garbage. The
/// master must close them as they come (the descriptor bound), and a channel that breaks the
/// framing is the worker's fault: reported as `bad_frame`, and the worker is killed at once
/// (nothing past a bad frame can be read), so it may not live to send its garbage.
#[test]
fn descriptor_spam_without_frames() {
    let mut act = Act::start("fd_spam", &[]);
    let claimed = act.act_line("FD_SPAM", &[("phase", "claimed")]);
    act.wait_reported(&["bad_frame"]);
    act.load().wait_more_ok(200);
    let out = act.finish(&["bad_frame"], Blame::Nobody);
    assert!(
        claimed.is_some(),
        "the hostile worker did not get through its first spam\n{}",
        out.dump
    );
    out.assert_survived();
    out.assert_reported(&["bad_frame"]);
}

/// A worker that shrinks, grows or writes past the shared load table: the memfd is sealed,
/// so every attempt fails with EPERM, and the other workers, which map the table, keep
/// serving. The master cannot see an `ftruncate`, so there is nothing to report: the seal is
/// the defence. The hostile worker then serves HTTP by hand (its failures are its own).
#[test]
fn ftruncate_of_the_load_table() {
    let mut act = Act::start("ftruncate", &[("HOSTILE_BALANCE", "shared".into())]);
    let line = act.act_line("FTRUNCATE", &[]);
    act.load().wait_more_ok(500);
    let out = act.finish(&[], Blame::Serves);
    let line = line.unwrap_or_else(|| panic!("no FTRUNCATE line\n{}", out.dump));
    for attempt in ["shrink", "grow", "write_past"] {
        assert_eq!(line.get(attempt), "EPERM", "{}\n{}", line.text, out.dump);
    }
    assert_eq!(line.get("size"), line.get("size_after"), "{}", line.text);
    out.assert_survived();
}

/// A worker that never reads its channel under round-robin load: connections handed to it
/// are never acknowledged. The master must not stall (the others keep serving), must report
/// it (`unread_channel` or `ack_timeout`, whichever rule catches it first), and must replace
/// it; the connections it swallowed are accounted by [`Blame::Swallows`].
#[test]
fn never_reading_its_channel_under_round_robin() {
    let mut act = Act::start("no_read", &[]);
    let listening = act.act_line("NO_READ", &[]);
    let replaced = act.wait_replaced();
    act.wait_reported(&["unread_channel", "ack_timeout"]);
    act.load().wait_more_ok(200);
    let out = act.finish(&["unread_channel", "ack_timeout"], Blame::Swallows);
    assert!(
        listening.is_some(),
        "the hostile worker did not listen\n{}",
        out.dump
    );
    out.assert_survived();
    out.assert_reported(&["unread_channel", "ack_timeout"]);
    assert!(
        replaced && out.replaced,
        "{OFFENDER} was not replaced ({REPLACEMENT} never ready)\n{}",
        out.dump
    );
}

/// `Listen` for thousands of distinct TCP addresses and Unix paths: the master must not bind
/// (and hold a descriptor for) each of them, and reports `listeners`.
#[test]
fn listen_spam_on_tcp_ports_and_unix_paths() {
    let mut act = Act::start("listen_spam", &[]);
    let done = act.act_line("LISTEN_SPAM_DONE", &[]);
    act.wait_reported(&["listeners"]);
    act.load().wait_more_ok(200);
    let out = act.finish(&["listeners"], Blame::Nobody);
    if let Some(done) = &done {
        println!("listen_spam: {}", done.text);
    }
    out.assert_survived();
    out.assert_reported(&["listeners"]);
}

/// Responses, metrics and acknowledgements for ids the hostile worker was never given, while
/// the master asks the other workers and scrapes them and the clients' connections are handed
/// out: nothing of it may complete another worker's request or scrape (no wrong answer, the
/// spoofed metrics never in `/metrics`), and it is reported as `stray_answer`.
#[test]
fn spoofed_responses_metrics_and_acknowledgements() {
    let mut act = Act::start("spoof", &[]);
    let rounds = act.act_line("SPOOF", &[("round", "2")]);
    act.wait_reported(&["stray_answer"]);
    act.load().wait_more_ok(200);
    let out = act.finish(&["stray_answer"], Blame::Nobody);
    assert!(
        rounds.is_some(),
        "the hostile worker did not spoof twice\n{}",
        out.dump
    );
    assert!(
        !out.probes.spoof_seen.load(Ordering::SeqCst),
        "/metrics showed the spoofed metrics\n{}",
        out.dump
    );
    out.assert_survived();
    out.assert_reported(&["stray_answer"]);
}

/// App messages and heartbeats as fast as the channel takes them, for three seconds: the
/// other workers keep serving and answering, none is taken for hung, and the flood is
/// reported as `flood`.
#[test]
fn floods_of_app_messages_and_heartbeats() {
    let mut act = Act::start("flood", &[]);
    let flooded = act.act_line("FLOOD", &[("second", "3")]);
    act.wait_reported(&["flood"]);
    act.load().wait_more_ok(200);
    let out = act.finish(&["flood"], Blame::Nobody);
    assert!(
        flooded.is_some(),
        "the flood did not last 3 s\n{}",
        out.dump
    );
    out.assert_survived();
    out.assert_reported(&["flood"]);
}

/// Metrics answers of 16 MiB (the frame limit), then one over it, while `/metrics` is
/// scraped every 200 ms: every scrape answers, the master's memory stays bounded, and the
/// answer is reported as `metrics_size`.
#[test]
fn a_16_mib_metrics_answer() {
    let mut act = Act::start("big_metrics", &[]);
    let over = act.act_line("BIG_METRICS", &[("over_limit", "sent")]);
    act.wait_reported(&["metrics_size"]);
    act.load().wait_more_ok(200);
    let out = act.finish(&["metrics_size"], Blame::Nobody);
    let scrapes_failed = out.probes.metrics_failed.lock().unwrap().clone();
    println!(
        "big_metrics: over_limit={} scrapes_ok={} largest_scrape={} bytes",
        over.is_some(),
        out.probes.metrics_ok.load(Ordering::SeqCst),
        out.probes.max_metrics_bytes.load(Ordering::SeqCst)
    );
    assert!(
        scrapes_failed.is_empty(),
        "/metrics failed during the act: {scrapes_failed:?}\n{}",
        out.dump
    );
    out.assert_survived();
    out.assert_reported(&["metrics_size"]);
}

/// A worker that holds a master request, is replaced (a rolling reload the fixture's master
/// starts once the request is held), and then answers every id from the held one up: its
/// answer to the held request is its own to give, but none of the others may complete a
/// request asked of another worker, its replacement included (the master's request ids are
/// one sequence, and the healthy workers answer after 20 ms, so requests are pending while
/// the late answers arrive). Reported as `stray_answer`.
#[test]
fn a_late_answer_after_being_replaced() {
    let mut act = Act::start("late_answer", &[]);
    let late = act.act_line("LATE", &[("round", "2")]);
    let reloaded = act
        .watch("the rolling reload to finish", ACT_WAIT, |lines| {
            lines
                .iter()
                .any(|l| l.is("RELOAD_FINISHED", &[]))
                .then_some(())
        })
        .is_some();
    act.wait_reported(&["stray_answer"]);
    act.load().wait_more_ok(200);
    let out = act.finish(&["stray_answer"], Blame::Nobody);
    assert!(
        late.is_some(),
        "the hostile worker did not answer late twice\n{}",
        out.dump
    );
    assert!(reloaded, "the rolling reload did not finish\n{}", out.dump);
    assert!(out.replaced, "{REPLACEMENT} never ready\n{}", out.dump);
    out.assert_survived();
    out.assert_reported(&["stray_answer"]);
}
