//! Helpers of the operations tests (tests/status.rs, tests/memory.rs, tests/watchdog.rs,
//! tests/logs.rs), which drive the ops fixture (tests/fixture/ops_fixture.rs) through the
//! shared fixture machinery (`super::process`), its stdout and stderr both read line by line,
//! and talk HTTP to its status server and workers.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::process::{self, Group, OutputLine, group_command, read_lines};
use super::{Exit, WAIT};

/// The fixture program, built by cargo alongside the tests.
pub(crate) const FIXTURE: &str = env!("CARGO_BIN_EXE_cluster-ops-fixture");

/// The loopback address with `port`.
pub(crate) fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Out,
    Err,
}

/// One output line of the fixture, with when the test read it.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    pub stream: Stream,
    pub text: String,
    pub at: Instant,
}

impl Line {
    /// Whether the line (after any `[group/slot pid N] ` prefix) is `kind` with every
    /// `key=value` of `fields`.
    pub(crate) fn is(&self, kind: &str, fields: &[(&str, &str)]) -> bool {
        let body = strip_prefix(&self.text).1;
        let mut words = body.split(' ');
        words.next() == Some(kind)
            && fields
                .iter()
                .all(|(k, v)| body.split(' ').any(|w| w.split_once('=') == Some((*k, *v))))
    }

    /// The value of `key` in the line; panics naming the line when it has none.
    pub(crate) fn get(&self, key: &str) -> &str {
        strip_prefix(&self.text)
            .1
            .split(' ')
            .find_map(|w| w.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
            .unwrap_or_else(|| panic!("line {:?} has no `{key}`", self.text))
    }

    /// The `pid` field.
    pub(crate) fn pid(&self) -> i32 {
        self.get("pid").parse().expect("a pid")
    }
}

/// Splits a worker line's log prefix `[group/slot pid N] ` off: `(Some((group, slot, pid)),
/// rest)`, or `(None, line)` when it has none.
pub(crate) fn strip_prefix(line: &str) -> (Option<(String, usize, i32)>, &str) {
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

/// A running ops fixture (see [`process::Fixture`] for the waits on its output): its stdout
/// and stderr are both read as [`Line`]s, in the order the test read them. The master leads
/// its own process group, which its workers share; dropping this kills the whole group and
/// reaps the master.
pub(crate) type Fixture = process::Fixture<Line>;

impl OutputLine for Line {
    fn is(&self, kind: &str, fields: &[(&str, &str)]) -> bool {
        Line::is(self, kind, fields)
    }

    /// The last lines, shortened.
    fn dump(fixture: &Fixture) -> String {
        let history = &fixture.history;
        let skip = history.len().saturating_sub(200);
        let mut text = format!("--- output ({} lines, last 200) ---\n", history.len());
        for line in &history[skip..] {
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
}

impl Fixture {
    /// Starts the fixture with `env` on top of this process's environment (without any
    /// cluster or fixture variable).
    pub(crate) fn start(env: &[(&str, String)]) -> Fixture {
        Self::start_program(Path::new(FIXTURE), &["CLUSTER_", "OPS_"], env)
    }

    /// As [`Fixture::start`], running `program` (another fixture whose output has the same
    /// shape, say) without this process's variables whose names start with one of
    /// `drop_env`.
    pub(crate) fn start_program(
        program: &Path,
        drop_env: &[&str],
        env: &[(&str, String)],
    ) -> Fixture {
        let mut cmd = group_command(program, drop_env);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let (group, pipes) = Group::spawn(&mut cmd, "the ops fixture");
        let (tx, lines) = mpsc::channel();
        let line = |stream| {
            move |text| Line {
                stream,
                text,
                at: Instant::now(),
            }
        };
        read_lines(pipes.stdout, tx.clone(), line(Stream::Out));
        read_lines(pipes.stderr, tx, line(Stream::Err));
        Fixture::new(group, None, lines, None)
    }

    /// Waits for the master's `READY` of `n` distinct workers; returns id → pid.
    pub(crate) fn wait_ready(&mut self, n: usize) -> BTreeMap<String, i32> {
        self.wait_for(&format!("{n} workers ready"), WAIT, |lines| {
            let ready: BTreeMap<String, i32> = lines
                .iter()
                .filter(|l| l.is("READY", &[]))
                .map(|l| (l.get("id").to_owned(), l.pid()))
                .collect();
            (ready.len() >= n).then_some(ready)
        })
    }

    /// Stops the cluster with SIGTERM and checks that the master exits with code 0.
    pub(crate) fn stop_cleanly(&mut self) {
        self.signal(Signal::SIGTERM);
        let exit = self.wait_exit(WAIT);
        assert_eq!(exit, Exit::Code(0), "{}", self.dump());
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on a new connection to `addr` (`Connection: close`), every step bounded by
/// `timeout`; the body is read to the end of the connection.
pub(crate) fn get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Response> {
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
pub(crate) fn must_get(addr: SocketAddr, path: &str) -> Response {
    get(addr, path, Duration::from_secs(10)).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `GET /status` as JSON.
pub(crate) fn status(addr: SocketAddr) -> serde_json::Value {
    let response = must_get(addr, "/status");
    assert_eq!(response.status, 200, "{response:?}");
    serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {}", response.body))
}

/// The entry of `/status`'s `workers` for the current (newest) process of `slot` in group
/// `worker`.
pub(crate) fn slot_status(status: &serde_json::Value, slot: u64) -> Option<serde_json::Value> {
    status["workers"]
        .as_array()?
        .iter()
        .filter(|w| w["group"] == "worker" && w["slot"] == slot)
        .max_by_key(|w| w["generation"].as_u64())
        .cloned()
}

/// The count of `/status`'s `restarts` for `slot` of group `worker` and `reason` (0 if none).
pub(crate) fn restarts_for(status: &serde_json::Value, slot: u64, reason: &str) -> u64 {
    counted_for(status, "restarts", slot, reason)
}

/// The count of `/status`'s `recycles` for `slot` of group `worker` and `reason` (0 if none).
pub(crate) fn recycles_for(status: &serde_json::Value, slot: u64, reason: &str) -> u64 {
    counted_for(status, "recycles", slot, reason)
}

fn counted_for(status: &serde_json::Value, list: &str, slot: u64, reason: &str) -> u64 {
    status[list]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["group"] == "worker" && r["slot"] == slot && r["reason"] == reason)
        .filter_map(|r| r["count"].as_u64())
        .sum()
}

/// The value of the sample `series` (name and labels exactly as exposed) in an OpenMetrics
/// text.
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.split(' ').next()?.parse().ok())
    })
}

/// Sends SIGCONT to `pid` when dropped, so that a process a test stopped is never left
/// stopped, even when the test fails.
pub(crate) struct Continue(pub i32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}
