//! HTTP-level helpers for the process tests: run examples/http (or a copy of it) as a real
//! cluster on a free loopback port, and a raw HTTP/1.1 client over std's `TcpStream` that can
//! drive keep-alive loops and connection-per-request loops while counting every success and
//! every failure precisely.
//!
//! A failure is: a connect error, a reset, a timeout, EOF before a complete response, or a
//! status other than 200. A response carrying `Connection: close` followed by EOF is not one:
//! the client reconnects, as any HTTP/1.1 client does.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::process::{Captured, Group, group_command};
use super::{WAIT, free_port, parent_of};

/// Bound on one connect, read or write: far above any healthy answer on a loaded machine, so
/// that only a lost request reaches it.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The examples/http cluster
// ---------------------------------------------------------------------------------------

/// A running examples/http cluster. Its master leads its own process group, which its workers
/// share; dropping this kills the whole group.
pub(crate) struct HttpCluster {
    group: Group,
    addr: SocketAddr,
    /// The master's status server, when started with one.
    status: Option<SocketAddr>,
    workers: usize,
    /// Started with `PROXY_PROTOCOL=1`: every connection must start with a PROXY header.
    proxy: bool,
    stdout: Captured,
    stderr: Captured,
}

impl HttpCluster {
    /// Starts `program` (examples/http, examples/axum or a copy of one) with `WORKERS=workers` and
    /// `POLICY=policy` on a free loopback port, and waits until every slot answers. A port
    /// taken meanwhile by someone else is retried with another one.
    pub(crate) fn start(program: &Path, workers: usize, policy: &str) -> HttpCluster {
        Self::start_on(program, workers, policy, false, &[])
    }

    /// As [`HttpCluster::start_with_status`], with more environment variables (`REDIS_URL`,
    /// `CLUSTER_STICKY_COOKIE`, ...). With `PROXY_PROTOCOL=1` the probes that wait for the
    /// slots send a PROXY header first, as the workers then require.
    pub(crate) fn start_with_env(
        program: &Path,
        workers: usize,
        policy: &str,
        env: &[(&str, &str)],
    ) -> HttpCluster {
        Self::start_on(program, workers, policy, true, env)
    }

    /// As [`HttpCluster::start`], with the master's status server (`/status`, `/metrics`) on
    /// a free loopback port of its own too (see [`HttpCluster::status_addr`]).
    pub(crate) fn start_with_status(program: &Path, workers: usize, policy: &str) -> HttpCluster {
        Self::start_on(program, workers, policy, true, &[])
    }

    /// Starts `program` like [`HttpCluster::start_with_env`] but does not wait for it: for a
    /// cluster that the plain HTTP/1.1 probes cannot reach (TLS), which the test then waits
    /// for with a client of its own.
    pub(crate) fn spawn_unprobed(
        program: &Path,
        workers: usize,
        policy: &str,
        env: &[(&str, &str)],
    ) -> HttpCluster {
        Self::spawn(program, workers, policy, (free_port(), None), env)
    }

    fn start_on(
        program: &Path,
        workers: usize,
        policy: &str,
        status: bool,
        env: &[(&str, &str)],
    ) -> HttpCluster {
        let mut last = String::new();
        for _ in 0..5 {
            let status_port = status.then(free_port);
            let mut cluster =
                Self::spawn(program, workers, policy, (free_port(), status_port), env);
            match cluster.wait_up() {
                Ok(()) => return cluster,
                Err(why) => last = format!("{why}\n{}", cluster.dump()),
            }
        }
        panic!(
            "{} did not start on any of 5 ports: {last}",
            program.display()
        );
    }

    fn spawn(
        program: &Path,
        workers: usize,
        policy: &str,
        (port, status_port): (u16, Option<u16>),
        env: &[(&str, &str)],
    ) -> HttpCluster {
        let mut cmd = group_command(program, &["CLUSTER_"]);
        cmd.envs(env.iter().copied());
        cmd.env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("WORKERS", workers.to_string())
            .env("POLICY", policy)
            .env(
                "STATUS_PORT",
                status_port.map_or("off".to_string(), |p| p.to_string()),
            );
        let (group, pipes) = Group::spawn(&mut cmd, &program.display().to_string());
        HttpCluster {
            group,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            status: status_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            workers,
            proxy: env.contains(&("PROXY_PROTOCOL", "1")),
            stdout: Captured::start(pipes.stdout),
            stderr: Captured::start(pipes.stderr),
        }
    }

    /// Waits until every slot has answered, or for a sign that the port was taken.
    fn wait_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        let mut seen = BTreeMap::new();
        while Instant::now() < deadline {
            if self.stderr().contains("in use") {
                return Err(format!("{} is in use", self.addr));
            }
            if let Some(exit) = self.group.try_exit() {
                return Err(format!("the master exited: {exit:?}"));
            }
            for resp in burst_as(self.addr, 2 * self.workers, self.proxy)
                .into_iter()
                .flatten()
            {
                let Some((slot, pid)) = resp.worker() else {
                    continue;
                };
                // Someone else's server on a recycled port would not be our master's child.
                if parent_of(pid) != Some(self.pid() as u32) {
                    return Err(format!("{} answers from a foreign pid {pid}", self.addr));
                }
                seen.insert(slot, pid);
            }
            if seen.len() == self.workers {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "not every slot answered within {WAIT:?} (seen {seen:?})"
        ))
    }

    /// The address the cluster serves.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The master's status server; panics when the cluster was started without one.
    pub(crate) fn status_addr(&self) -> SocketAddr {
        self.status
            .expect("started without a status server (use start_with_status)")
    }

    /// The master's pid (also its process group's id).
    pub(crate) fn pid(&self) -> i32 {
        self.group.pid()
    }

    /// Checks, without waiting and without reaping, whether the master has exited.
    pub(crate) fn try_exit(&mut self) -> Option<super::Exit> {
        self.group.try_exit()
    }

    /// Everything the cluster wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// The output so far, for failure messages.
    pub(crate) fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.text(),
            self.stderr()
        )
    }

    /// Sends `sig` to the master only.
    pub(crate) fn signal(&self, sig: Signal) {
        self.group.signal(sig);
    }

    /// How many rolling reloads the master reported finished.
    pub(crate) fn reloads_finished(&self) -> usize {
        self.stderr().matches("rolling reload finished").count()
    }

    /// Asks for a rolling reload with SIGUSR2 and waits (up to [`WAIT`]) until the master
    /// reports it finished; fails at once if it reports the reload aborted.
    pub(crate) fn reload(&self) {
        let before = self.reloads_finished();
        self.signal(Signal::SIGUSR2);
        let deadline = Instant::now() + WAIT;
        loop {
            let stderr = self.stderr();
            assert!(
                !stderr.contains("rolling reload aborted"),
                "a rolling reload aborted\n{}",
                self.dump()
            );
            if stderr.matches("rolling reload finished").count() > before {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the rolling reload did not finish within {WAIT:?}\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until every slot has answered fresh connections from workers that are not in
    /// `old`, and returns slot -> pid.
    pub(crate) fn serving_slots_except(&self, old: &BTreeSet<u32>) -> BTreeMap<usize, u32> {
        let deadline = Instant::now() + WAIT;
        let mut seen = BTreeMap::new();
        loop {
            for resp in burst_as(self.addr, 2 * self.workers, self.proxy)
                .into_iter()
                .flatten()
            {
                if let Some((slot, pid)) = resp.worker() {
                    if !old.contains(&pid) {
                        seen.insert(slot, pid);
                    }
                }
            }
            if seen.len() == self.workers {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "not every slot answered from a new worker within {WAIT:?} (seen {seen:?})\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every slot has answered, and returns slot -> pid.
    pub(crate) fn serving_slots(&self) -> BTreeMap<usize, u32> {
        self.serving_slots_except(&BTreeSet::new())
    }
}

/// Sends `n` requests on `n` fresh connections at once (so that idle workers compete for
/// them), then reads the answers. The connections come from varied loopback addresses
/// (127.0.0.1 to 127.0.0.64), so that `Sticky` spreads them too.
pub(crate) fn burst(addr: SocketAddr, n: usize) -> Vec<Result<Response, String>> {
    burst_as(addr, n, false)
}

/// As [`burst`], each connection starting with a PROXY version 1 header when `proxy`.
fn burst_as(addr: SocketAddr, n: usize, proxy: bool) -> Vec<Result<Response, String>> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut conns: Vec<Result<Conn, String>> = (0..n)
        .map(|_| {
            let last = 1 + (NEXT.fetch_add(1, Ordering::Relaxed) % 64) as u8;
            let from = IpAddr::from([127, 0, 0, last]);
            let mut conn = Conn::connect_from(from, addr)?;
            if proxy {
                let header = format!("PROXY TCP4 {from} {} 1000 {}\r\n", addr.ip(), addr.port());
                conn.send_raw(header.as_bytes())?;
            }
            conn.send_get(true)?;
            Ok(conn)
        })
        .collect();
    conns
        .iter_mut()
        .map(|c| match c {
            Ok(conn) => conn.read_response(),
            Err(e) => Err(e.clone()),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------

/// One HTTP response.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub status: u16,
    /// The server said `Connection: close`.
    pub close: bool,
    pub body: String,
}

impl Response {
    /// The slot and pid in examples/http's `Hello from worker <slot> (pid <pid>)`.
    pub(crate) fn worker(&self) -> Option<(usize, u32)> {
        let rest = self.body.strip_prefix("Hello from worker ")?;
        let (slot, rest) = rest.split_once(" (pid ")?;
        let pid = rest.strip_suffix(')')?;
        Some((slot.parse().ok()?, pid.parse().ok()?))
    }
}

fn describe(what: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("{what}: timeout"),
        io::ErrorKind::ConnectionReset => format!("{what}: reset"),
        io::ErrorKind::UnexpectedEof => format!("{what}: EOF before a complete response"),
        _ => format!("{what}: {e}"),
    }
}

/// A client connection.
pub(crate) struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    /// Connects to `addr`.
    pub(crate) fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let stream =
            TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| describe("connect", &e))?;
        Self::from_stream(stream)
    }

    /// Connects to `addr` from the local address `from` (say 127.0.0.2).
    pub(crate) fn connect_from(from: IpAddr, addr: SocketAddr) -> Result<Conn, String> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .map_err(|e| describe("socket", &e))?;
        socket
            .bind(&SocketAddr::new(from, 0).into())
            .map_err(|e| describe("bind", &e))?;
        socket
            .connect_timeout(&addr.into(), IO_TIMEOUT)
            .map_err(|e| describe("connect", &e))?;
        Self::from_stream(socket.into())
    }

    fn from_stream(stream: TcpStream) -> Result<Conn, String> {
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| describe("configure", &e))?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// The underlying stream.
    pub(crate) fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Sends `bytes` as they are.
    pub(crate) fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.reader
            .get_mut()
            .write_all(bytes)
            .map_err(|e| describe("send", &e))
    }

    /// Sends `GET path` and reads the answer, asking to close the connection after it when
    /// `close`.
    pub(crate) fn get_path(&mut self, path: &str, close: bool) -> Result<Response, String> {
        let connection = if close { "Connection: close\r\n" } else { "" };
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{connection}\r\n");
        self.send_raw(request.as_bytes())?;
        self.read_response()
    }

    /// Sends `GET /`, asking to close the connection after the answer when `close`.
    pub(crate) fn send_get(&mut self, close: bool) -> Result<(), String> {
        let request: &[u8] = if close {
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        } else {
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        };
        self.reader
            .get_mut()
            .write_all(request)
            .map_err(|e| describe("send", &e))
    }

    /// Reads one complete response.
    pub(crate) fn read_response(&mut self) -> Result<Response, String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| describe("read the status line", &e))?;
        if n == 0 {
            return Err("EOF before a complete response (nothing received)".into());
        }
        let status: u16 = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP/1.1 status line: {line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| describe("read the headers", &e))?;
            if n == 0 {
                return Err("EOF before a complete response (in the headers)".into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                return Err(format!("a malformed header: {header:?}"));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("a bad content-length: {value:?}"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.to_ascii_lowercase().contains("close");
            }
        }
        let body = if chunked {
            self.read_chunked()?
        } else if let Some(length) = length {
            let mut body = vec![0; length];
            self.reader
                .read_exact(&mut body)
                .map_err(|e| describe("read the body", &e))?;
            body
        } else if close {
            let mut body = Vec::new();
            self.reader
                .read_to_end(&mut body)
                .map_err(|e| describe("read the body", &e))?;
            body
        } else {
            Vec::new()
        };
        Ok(Response {
            status,
            close,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if self
                .reader
                .read_line(&mut line)
                .map_err(|e| describe("read a chunk size", &e))?
                == 0
            {
                return Err("EOF before a complete response (in a chunk size)".into());
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("a bad chunk size: {line:?}"))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    line.clear();
                    let n = self
                        .reader
                        .read_line(&mut line)
                        .map_err(|e| describe("read the trailers", &e))?;
                    if n == 0 || line.trim_end().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size + 2, 0);
            self.reader
                .read_exact(&mut body[start..])
                .map_err(|e| describe("read a chunk", &e))?;
            body.truncate(start + size);
        }
    }

    /// Whether anything from the server is waiting to be read (received or buffered), or
    /// the server closed: a peek that does not wait.
    pub(crate) fn has_input(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let stream = self.reader.get_ref();
        if stream.set_nonblocking(true).is_err() {
            return false;
        }
        let peeked = stream.peek(&mut [0u8; 1]);
        stream
            .set_nonblocking(false)
            .expect("make the connection blocking again");
        match peeked {
            Ok(_) => true,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    /// Reads everything the server still sends until it closes the connection: after a
    /// response to a request that asked for the close, anything here is a second answer.
    pub(crate) fn read_rest(&mut self) -> Result<Vec<u8>, String> {
        let mut rest = Vec::new();
        self.reader
            .read_to_end(&mut rest)
            .map_err(|e| describe("read to the end", &e))?;
        Ok(rest)
    }

    /// Sends `GET /` and reads the answer.
    pub(crate) fn get(&mut self, close: bool) -> Result<Response, String> {
        self.send_get(close)?;
        self.read_response()
    }
}

/// `GET /` on a fresh connection that closes after the answer.
pub(crate) fn get_once(addr: SocketAddr) -> Result<Response, String> {
    Conn::connect(addr)?.get(true)
}

/// As [`get_once`], from the local address `from`.
pub(crate) fn get_once_from(from: IpAddr, addr: SocketAddr) -> Result<Response, String> {
    Conn::connect_from(from, addr)?.get(true)
}

// ---------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------

/// One failed request.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// Which client loop.
    pub lane: usize,
    /// What went wrong.
    pub what: String,
    /// The worker that answered the last request on this connection (`None` on a fresh one).
    pub last_pid: Option<u32>,
    pub at: Instant,
}

/// Runs `reloads` rolling reloads of `cluster` (each waited for) under `keep_alive`
/// keep-alive client loops and `fresh` connection-per-request loops, traffic flowing between
/// reloads so that each starts under load; then checks that no request failed, that every
/// reload finished and that no worker that answered before answers after. Returns the tally.
pub(crate) fn reload_under_load(
    cluster: &HttpCluster,
    reloads: usize,
    keep_alive: usize,
    fresh: usize,
) -> Arc<Tally> {
    let before: std::collections::BTreeSet<u32> = cluster.serving_slots().into_values().collect();
    let load = Load::start(cluster.addr(), keep_alive, fresh);
    load.wait_more_ok(200);
    for _ in 0..reloads {
        cluster.reload();
        load.wait_more_ok(200);
    }
    let tally = load.stop();
    tally.assert_none_failed(&format!("{reloads} rolling reloads"), cluster);
    assert_eq!(cluster.reloads_finished(), reloads, "{}", cluster.dump());
    let after = cluster.serving_slots_except(&before);
    let still: Vec<_> = after.values().filter(|pid| before.contains(pid)).collect();
    assert!(
        still.is_empty(),
        "workers {still:?} survived {reloads} reloads"
    );
    tally
}

/// What the client loops saw, updated live.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    ok: AtomicU64,
    failures: Mutex<Vec<Failure>>,
    /// pid -> (slot, when it last answered).
    pids: Mutex<BTreeMap<u32, (usize, Instant)>>,
}

impl Tally {
    /// Successful requests so far.
    pub(crate) fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Failed requests so far.
    pub(crate) fn failures(&self) -> Vec<Failure> {
        self.failures.lock().unwrap().clone()
    }

    /// Fails the test, with every failure and the cluster's output, if any request failed
    /// `during` something.
    pub(crate) fn assert_none_failed(&self, during: &str, cluster: &HttpCluster) {
        self.assert_none_failed_in(during, || cluster.dump());
    }

    /// As [`Tally::assert_none_failed`], for any server: `dump` describes it.
    pub(crate) fn assert_none_failed_in(&self, during: &str, dump: impl FnOnce() -> String) {
        let failures = self.failures();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed during {during}: {failures:#?}\n{}",
            failures.len(),
            self.ok() + failures.len() as u64,
            dump()
        );
    }

    /// Every worker that answered so far: pid -> (slot, when it last answered).
    pub(crate) fn pids(&self) -> BTreeMap<u32, (usize, Instant)> {
        self.pids.lock().unwrap().clone()
    }

    fn success(&self, resp: &Response) -> Option<u32> {
        self.ok.fetch_add(1, Ordering::SeqCst);
        let (slot, pid) = resp.worker()?;
        self.pids
            .lock()
            .unwrap()
            .insert(pid, (slot, Instant::now()));
        Some(pid)
    }

    fn fail(&self, lane: usize, what: String, last_pid: Option<u32>) {
        self.failures.lock().unwrap().push(Failure {
            lane,
            what,
            last_pid,
            at: Instant::now(),
        });
    }
}

/// Client loops running against a server until stopped: `keep_alive` loops that each reuse
/// one connection for as long as the server keeps it open, and `fresh` loops that open a new
/// connection for every request.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start(addr: SocketAddr, keep_alive: usize, fresh: usize) -> Load {
        Self::start_on(addr, keep_alive, fresh, "/", Duration::ZERO)
    }

    /// As [`Load::start`], each loop asking for `path` and waiting `pause` after each
    /// answer (a light load, for a cluster that should stay quiet).
    pub(crate) fn start_on(
        addr: SocketAddr,
        keep_alive: usize,
        fresh: usize,
        path: &'static str,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut threads = Vec::new();
        for lane in 0..keep_alive + fresh {
            let (stop, tally) = (stop.clone(), tally.clone());
            let reuse = lane < keep_alive;
            let lane = Lane {
                number: lane,
                reuse,
                path,
                pause,
            };
            threads.push(std::thread::spawn(move || {
                lane_loop(addr, &lane, &stop, &tally)
            }));
        }
        Load {
            stop,
            tally,
            threads,
        }
    }

    /// The live counts.
    pub(crate) fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Waits (up to [`WAIT`]) until `more` requests have succeeded from now on.
    pub(crate) fn wait_more_ok(&self, more: u64) {
        let target = self.tally.ok() + more;
        let deadline = Instant::now() + WAIT;
        while self.tally.ok() < target {
            assert!(
                Instant::now() < deadline,
                "only {} of {target} requests succeeded within {WAIT:?}; failures: {:#?}",
                self.tally.ok(),
                self.tally.failures()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the loops, waits for their last requests, and returns what they saw.
    pub(crate) fn stop(mut self) -> Arc<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            thread.join().expect("a client loop panicked");
        }
        self.tally.clone()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // On a failing test: the loops end on their own within their I/O timeouts.
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One client loop of a [`Load`].
struct Lane {
    number: usize,
    /// Keeps its connection for as long as the server does.
    reuse: bool,
    path: &'static str,
    /// Waited after each answer.
    pause: Duration,
}

fn lane_loop(addr: SocketAddr, lane: &Lane, stop: &AtomicBool, tally: &Tally) {
    let Lane {
        number: lane,
        reuse,
        path,
        pause,
    } = *lane;
    let mut conn: Option<Conn> = None;
    let mut last_pid = None;
    while !stop.load(Ordering::SeqCst) {
        if conn.is_none() {
            match Conn::connect(addr) {
                Ok(c) => {
                    conn = Some(c);
                    last_pid = None;
                }
                Err(e) => {
                    tally.fail(lane, e, None);
                    // Not a spin on a dead port: one failed connect per millisecond at most.
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match c.get_path(path, !reuse) {
            Ok(resp) if resp.status == 200 => {
                last_pid = tally.success(&resp);
                if resp.close || !reuse {
                    conn = None;
                }
            }
            Ok(resp) => {
                tally.fail(lane, format!("status {}", resp.status), last_pid);
                conn = None;
            }
            Err(e) => {
                tally.fail(lane, e, last_pid);
                conn = None;
            }
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        } else if reuse {
            // Pacing, not synchronisation: keeps 16 loops from starving the cluster of CPU
            // on a 2-core machine, while far below any idle timeout of the server.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
