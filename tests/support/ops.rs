//! Helpers of the operations tests (tests/status.rs, tests/memory.rs, tests/watchdog.rs,
//! tests/logs.rs), which drive the ops fixture (tests/fixture/ops_fixture.rs): start it in its
//! own process group, read its stdout and stderr line by line with bounded waits, talk HTTP
//! to its status server and workers, and kill everything it started when the test ends, even
//! when the test fails.
//!
//! Standalone (included with `#[path = "support/ops.rs"] mod ops;`), so that it does not
//! depend on the other tests' support module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

/// The bound on waits for things that must happen: generous, for a loaded 2-core machine
/// running the tests in parallel. A broken build fails at this bound instead of hanging.
pub const WAIT: Duration = Duration::from_secs(30);

/// The fixture program, built by cargo alongside the tests.
pub const FIXTURE: &str = env!("CARGO_BIN_EXE_cluster-ops-fixture");

/// A free TCP port on the loopback interface: bound to port 0, read, released. The fixture
/// binds it again at once (the small race with another process taking it meanwhile is the
/// price of not being told the port by the fixture).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// The loopback address with `port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// One output line of the fixture, with when the test read it.
#[derive(Debug, Clone)]
pub struct Line {
    pub stream: Stream,
    pub text: String,
    pub at: Instant,
}

impl Line {
    /// Whether the line (after any `[group/slot pid N] ` prefix) is `kind` with every
    /// `key=value` of `fields`.
    pub fn is(&self, kind: &str, fields: &[(&str, &str)]) -> bool {
        let body = strip_prefix(&self.text).1;
        let mut words = body.split(' ');
        words.next() == Some(kind)
            && fields
                .iter()
                .all(|(k, v)| body.split(' ').any(|w| w.split_once('=') == Some((*k, *v))))
    }

    /// The value of `key` in the line; panics naming the line when it has none.
    pub fn get(&self, key: &str) -> &str {
        strip_prefix(&self.text)
            .1
            .split(' ')
            .find_map(|w| w.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
            .unwrap_or_else(|| panic!("line {:?} has no `{key}`", self.text))
    }

    /// The `pid` field.
    pub fn pid(&self) -> i32 {
        self.get("pid").parse().expect("a pid")
    }
}

/// Splits a worker line's log prefix `[group/slot pid N] ` off: `(Some((group, slot, pid)),
/// rest)`, or `(None, line)` when it has none.
pub fn strip_prefix(line: &str) -> (Option<(String, usize, i32)>, &str) {
    let parse = || {
        let inner = line.strip_prefix('[')?;
        let (head, rest) = inner.split_once("] ")?;
        let (name, pid) = head.split_once(" pid ")?;
        let (group, slot) = name.split_once('/')?;
        Some((
            (group.to_owned(), slot.parse().ok()?, pid.parse().ok()?),
            rest,
        ))
    };
    match parse() {
        Some((who, rest)) => (Some(who), rest),
        None => (None, line),
    }
}

/// How the master ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

/// A running ops fixture. The master leads its own process group, which its workers share;
/// dropping this kills the whole group and reaps the master.
pub struct Fixture {
    child: Child,
    pid: i32,
    lines: mpsc::Receiver<Line>,
    /// Every line read so far (stdout and stderr), in the order the test read them.
    pub history: Vec<Line>,
    /// How many of the two streams have ended.
    closed: usize,
    exit: Option<Exit>,
}

impl Fixture {
    /// Starts the fixture with `env` on top of this process's environment (without any
    /// cluster or fixture variable).
    pub fn start(env: &[(&str, String)]) -> Fixture {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(FIXTURE);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("CLUSTER_") || k.starts_with("OPS_") {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().expect("start the ops fixture");
        let pid = i32::try_from(child.id()).expect("a pid");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        spawn_reader(out, Stream::Out, tx.clone());
        spawn_reader(err, Stream::Err, tx);
        Fixture {
            child,
            pid,
            lines,
            history: Vec::new(),
            closed: 0,
            exit: None,
        }
    }

    /// The master's pid (also its process group's id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The output so far (the last lines, shortened), for failure messages.
    pub fn dump(&self) -> String {
        let skip = self.history.len().saturating_sub(200);
        let mut text = format!("--- output ({} lines, last 200) ---\n", self.history.len());
        for line in &self.history[skip..] {
            let tag = if line.stream == Stream::Out {
                "out"
            } else {
                "err"
            };
            let shown: String = line.text.chars().take(300).collect();
            text.push_str(&format!("{tag}| {shown}\n"));
        }
        text
    }

    /// Sends `sig` to the master only.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid), sig).expect("signal the master");
    }

    /// Reads the lines that arrive until `until`; returns false once both streams ended.
    fn pump(&mut self, until: Instant) -> bool {
        if self.closed == 2 {
            return false;
        }
        let wait = until.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(line) => {
                self.history.push(line);
                while let Ok(line) = self.lines.try_recv() {
                    self.history.push(line);
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => true,
            Err(RecvTimeoutError::Disconnected) => {
                self.closed = 2;
                false
            }
        }
    }

    /// Reads output until `check` finds what it wants in the history, failing the test (with
    /// the output so far) after `timeout` or when the output ends without it.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&[Line]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = check(&self.history) {
                return found;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.dump()
                );
            }
            if !self.pump(deadline) {
                panic!("the output ended without {what}\n{}", self.dump());
            }
        }
    }

    /// Waits (up to [`WAIT`]) for a line `kind` with every field of `fields`.
    pub fn wait_line(&mut self, kind: &str, fields: &[(&str, &str)]) -> Line {
        let what = format!("a line {kind} {fields:?}");
        self.wait_for(&what, WAIT, |lines| {
            lines.iter().find(|l| l.is(kind, fields)).cloned()
        })
    }

    /// The lines so far that are `kind` with every field of `fields`.
    pub fn lines(&self, kind: &str, fields: &[(&str, &str)]) -> Vec<Line> {
        self.history
            .iter()
            .filter(|l| l.is(kind, fields))
            .cloned()
            .collect()
    }

    /// Waits for the master's `READY` of `n` distinct workers; returns id → pid.
    pub fn wait_ready(&mut self, n: usize) -> BTreeMap<String, i32> {
        self.wait_for(&format!("{n} workers ready"), WAIT, |lines| {
            let ready: BTreeMap<String, i32> = lines
                .iter()
                .filter(|l| l.is("READY", &[]))
                .map(|l| (l.get("id").to_owned(), l.pid()))
                .collect();
            (ready.len() >= n).then_some(ready)
        })
    }

    /// Checks, without waiting and without reaping, whether the master has exited.
    pub fn try_exit(&mut self) -> Option<Exit> {
        if self.exit.is_none() {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            match waitid(Id::Pid(Pid::from_raw(self.pid)), flags) {
                Ok(WaitStatus::Exited(_, code)) => self.exit = Some(Exit::Code(code)),
                Ok(WaitStatus::Signaled(_, sig, _)) => self.exit = Some(Exit::Signal(sig)),
                Ok(_) => {}
                Err(e) => panic!("waitid on the master: {e}"),
            }
        }
        self.exit
    }

    /// Waits up to `timeout` for the master to exit, reading its output meanwhile.
    pub fn wait_exit(&mut self, timeout: Duration) -> Exit {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.try_exit() {
                return exit;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the master did not exit within {timeout:?}\n{}",
                    self.dump()
                );
            }
            // The exit is polled (there is no event for it without reaping); output is read
            // meanwhile so that the pipes never fill.
            let step = (Instant::now() + Duration::from_millis(10)).min(deadline);
            if !self.pump(step) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Reads output until both streams are closed (the master and every worker are gone), so
    /// that the history is complete.
    pub fn finish(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.pump(deadline) {
            if Instant::now() >= deadline {
                panic!("the output did not end within {timeout:?}\n{}", self.dump());
            }
        }
    }

    /// Stops the cluster with SIGTERM and checks that the master exits with code 0.
    pub fn stop_cleanly(&mut self) {
        self.signal(Signal::SIGTERM);
        let exit = self.wait_exit(WAIT);
        assert_eq!(exit, Exit::Code(0), "{}", self.dump());
    }
}

fn spawn_reader(pipe: impl Read + Send + 'static, stream: Stream, tx: mpsc::Sender<Line>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(1 << 16, pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if buf.last() == Some(&b'\n') {
                        buf.pop();
                    }
                    let line = Line {
                        stream,
                        text: String::from_utf8_lossy(&buf).into_owned(),
                        at: Instant::now(),
                    };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The master is not reaped before this point, so the group id is still ours. SIGKILL
        // also ends stopped (SIGSTOP) processes.
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `pid` is a live process: false once it is gone or a zombie.
pub fn pid_alive(pid: i32) -> bool {
    !matches!(proc_state(pid), None | Some('Z' | 'X' | 'x'))
}

/// The state letter of `pid` in /proc (`R`, `S`, `T`, `Z`, ...), `None` once it is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let i = stat.rfind(')')?;
    stat[i + 1..].trim_start().chars().next()
}

/// Polls `cond` every few milliseconds until it gives a value, failing the test after
/// `timeout` with `what` and the last value's description.
pub fn poll<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match cond() {
            Ok(found) => return found,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on a new connection to `addr` (`Connection: close`), every step bounded by
/// `timeout`; the body is read to the end of the connection.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Response> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut stream = TcpStream::connect_timeout(&addr, left())?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(left()))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        stream.set_read_timeout(Some(left()))?;
        match stream.read(&mut buf)? {
            0 => break,
            n => raw.extend_from_slice(&buf[..n]),
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "response not complete in time",
            ));
        }
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    if let Some(length) = length {
        if body.len() != length {
            return Err(bad("body shorter than its content-length"));
        }
    }
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// `GET path` that must answer: panics naming the error otherwise.
pub fn must_get(addr: SocketAddr, path: &str) -> Response {
    get(addr, path, Duration::from_secs(10)).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `GET /status` as JSON.
pub fn status(addr: SocketAddr) -> serde_json::Value {
    let response = must_get(addr, "/status");
    assert_eq!(response.status, 200, "{response:?}");
    serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {}", response.body))
}

/// The entry of `/status`'s `workers` for the current (newest) process of `slot` in group
/// `worker`.
pub fn slot_status(status: &serde_json::Value, slot: u64) -> Option<serde_json::Value> {
    status["workers"]
        .as_array()?
        .iter()
        .filter(|w| w["group"] == "worker" && w["slot"] == slot)
        .max_by_key(|w| w["generation"].as_u64())
        .cloned()
}

/// The count of `/status`'s `restarts` for `slot` of group `worker` and `reason` (0 if none).
pub fn restarts_for(status: &serde_json::Value, slot: u64, reason: &str) -> u64 {
    status["restarts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["group"] == "worker" && r["slot"] == slot && r["reason"] == reason)
        .filter_map(|r| r["count"].as_u64())
        .sum()
}

/// The value of the sample `series` (name and labels exactly as exposed) in an OpenMetrics
/// text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.split(' ').next()?.parse().ok())
    })
}

/// Sends SIGCONT to `pid` when dropped, so that a process a test stopped is never left
/// stopped, even when the test fails.
pub struct Continue(pub i32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}
