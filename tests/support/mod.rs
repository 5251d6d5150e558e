//! Helpers shared by the process-level tests: start the fixture cluster (tests/fixture), read
//! its output lines with bounded waits, check processes through /proc, and kill everything a
//! test started when it ends, even when it fails.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

pub mod http;

/// The bound on waits for things that must happen: generous, for a loaded 2-core machine
/// running the tests in parallel. A broken build fails at this bound instead of hanging.
pub const WAIT: Duration = Duration::from_secs(30);

/// The fixture program, built by cargo alongside the tests.
pub const FIXTURE: &str = env!("CARGO_BIN_EXE_cluster-fixture");

/// One output line: `KIND key=value ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub raw: String,
    pub kind: String,
    pub fields: BTreeMap<String, String>,
}

impl Line {
    pub fn parse(raw: &str) -> Line {
        let mut words = raw.split_whitespace();
        // Skip anything before the kind (say, a log prefix added to worker output).
        let kind = words
            .by_ref()
            .find(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
            .unwrap_or("")
            .to_owned();
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Line {
            raw: raw.to_owned(),
            kind,
            fields,
        }
    }

    /// The value of `key`; panics naming the line when it has none.
    pub fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("line {:?} has no `{key}`", self.raw))
    }

    /// Whether this line is of `kind` and has every `key=value` in `fields`.
    pub fn is(&self, kind: &str, fields: &[(&str, &str)]) -> bool {
        self.kind == kind
            && fields
                .iter()
                .all(|(k, v)| self.fields.get(*k).map(String::as_str) == Some(*v))
    }

    /// The pid in the line's `pid` field.
    pub fn pid(&self) -> i32 {
        self.get("pid").parse().expect("a pid")
    }
}

/// A worker id as the fixture prints it: `group/slot#generation`.
pub fn id(group: &str, slot: usize, generation: u64) -> String {
    format!("{group}/{slot}#{generation}")
}

/// Splits `group/slot#generation`.
pub fn parse_id(id: &str) -> (String, usize, u64) {
    let (group, rest) = id.split_once('/').expect("group/slot#generation");
    let (slot, generation) = rest.split_once('#').expect("group/slot#generation");
    (
        group.to_owned(),
        slot.parse().expect("slot"),
        generation.parse().expect("generation"),
    )
}

/// A running fixture cluster. The master leads its own process group, which its workers
/// share; dropping this kills the whole group and reaps the master.
pub struct Fixture {
    child: Child,
    pid: i32,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Every stdout line read so far, in order.
    pub history: Vec<Line>,
    stdout_closed: bool,
    stderr: Arc<Mutex<String>>,
    stderr_closed: Arc<Mutex<bool>>,
    /// The master's exit, once seen. It is seen with WNOWAIT, so the master stays a zombie
    /// (its pid, which is also the group's id, cannot be reused) until the fixture is dropped.
    exit: Option<Exit>,
}

/// How the master ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

impl Fixture {
    /// Starts the fixture with `env` (on top of this process's environment, without any
    /// cluster or fixture variable).
    pub fn start(env: &[(&str, &str)]) -> Fixture {
        Self::start_with(env, |_| {})
    }

    /// As [`Fixture::start`], letting `adjust` change the command before it starts.
    pub fn start_with(env: &[(&str, &str)], adjust: impl FnOnce(&mut Command)) -> Fixture {
        Self::start_program(std::path::Path::new(FIXTURE), env, adjust)
    }

    /// As [`Fixture::start_with`], running `program` (a copy of the fixture, say) instead.
    pub fn start_program(
        program: &std::path::Path,
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command),
    ) -> Fixture {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("CLUSTER_") || k.starts_with("FIXTURE_") {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("start the fixture");
        let pid = i32::try_from(child.id()).expect("a pid");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_closed = Arc::new(Mutex::new(false));
        let mut pipe = child.stderr.take().expect("stderr");
        let (text, closed) = (stderr.clone(), stderr_closed.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => text
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
            *closed.lock().unwrap() = true;
        });
        let stdin = child.stdin.take();
        Fixture {
            child,
            pid,
            stdin,
            lines,
            history: Vec::new(),
            stdout_closed: false,
            stderr,
            stderr_closed,
            exit: None,
        }
    }

    /// The master's pid (also its process group's id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Everything the cluster wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The output so far, for failure messages.
    pub fn dump(&self) -> String {
        let out: Vec<&str> = self.history.iter().map(|l| l.raw.as_str()).collect();
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            out.join("\n"),
            self.stderr()
        )
    }

    /// Writes one command line to the master's stdin.
    pub fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").expect("write a command to the fixture");
        stdin.flush().expect("flush the fixture's stdin");
    }

    /// Sends `sig` to the master only.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid), sig).expect("signal the master");
    }

    /// Sends `sig` to the whole process group, as a terminal does on Ctrl-C.
    pub fn signal_group(&self, sig: Signal) {
        killpg(Pid::from_raw(self.pid), sig).expect("signal the process group");
    }

    /// Reads the lines that arrive until `until`; returns false once stdout is closed.
    fn pump(&mut self, until: Instant) -> bool {
        if self.stdout_closed {
            return false;
        }
        let wait = until.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(line) => {
                self.history.push(Line::parse(&line));
                while let Ok(line) = self.lines.try_recv() {
                    self.history.push(Line::parse(&line));
                }
                true
            }
            Err(RecvTimeoutError::Timeout) => true,
            Err(RecvTimeoutError::Disconnected) => {
                self.stdout_closed = true;
                false
            }
        }
    }

    /// Reads output until `check` finds what it wants in the whole history, failing the test
    /// (with the output so far) after `timeout` or when the output ends without it.
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
            let now = Instant::now();
            if now >= deadline {
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

    /// Waits (up to [`WAIT`]) for a line of `kind` with every field in `fields`, anywhere in
    /// the output so far or to come, and returns it.
    pub fn wait_line(&mut self, kind: &str, fields: &[(&str, &str)]) -> Line {
        let what = format!("a line {kind} {fields:?}");
        self.wait_for(&what, WAIT, |lines| {
            lines.iter().find(|l| l.is(kind, fields)).cloned()
        })
    }

    /// Waits for a line matching `fields` that comes after the first `after` lines.
    pub fn wait_line_after(&mut self, after: usize, kind: &str, fields: &[(&str, &str)]) -> Line {
        let what = format!("a line {kind} {fields:?} after line {after}");
        self.wait_for(&what, WAIT, |lines| {
            lines
                .iter()
                .skip(after)
                .find(|l| l.is(kind, fields))
                .cloned()
        })
    }

    /// The lines so far of `kind` with every field in `fields`.
    pub fn lines(&self, kind: &str, fields: &[(&str, &str)]) -> Vec<Line> {
        self.history
            .iter()
            .filter(|l| l.is(kind, fields))
            .cloned()
            .collect()
    }

    /// Waits until `n` workers (with a given id prefix such as `worker/`) have said hello, and
    /// returns their ids and pids.
    pub fn wait_hellos(&mut self, prefix: &str, n: usize) -> BTreeMap<String, i32> {
        self.wait_for(
            &format!("{n} workers {prefix}* saying hello"),
            WAIT,
            |lines| {
                let hellos: BTreeMap<String, i32> = lines
                    .iter()
                    .filter(|l| l.kind == "HELLO" && l.get("id").starts_with(prefix))
                    .map(|l| (l.get("id").to_owned(), l.pid()))
                    .collect();
                (hellos.len() >= n).then_some(hellos)
            },
        )
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
            // Exits are polled; output is read meanwhile so that the pipe never fills.
            let step = (Instant::now() + Duration::from_millis(10)).min(deadline);
            if !self.pump(step) {
                std::thread::sleep(
                    Duration::from_millis(10)
                        .min(deadline.saturating_duration_since(Instant::now())),
                );
            }
        }
    }

    /// Waits for the master's exit code.
    pub fn wait_exit_code(&mut self, timeout: Duration) -> i32 {
        match self.wait_exit(timeout) {
            Exit::Code(code) => code,
            other => panic!(
                "the master ended by {other:?}, not with an exit code\n{}",
                self.dump()
            ),
        }
    }

    /// Reads output until stdout and stderr are closed, i.e. the master and every worker have
    /// exited (or closed them), so that the history is complete.
    pub fn finish(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.pump(deadline) {
            if Instant::now() >= deadline {
                panic!("the output did not end within {timeout:?}\n{}", self.dump());
            }
        }
        wait_until(
            "stderr to close",
            deadline.saturating_duration_since(Instant::now()),
            || *self.stderr_closed.lock().unwrap(),
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // The master is not reaped before this point, so the group id is still ours.
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `pid` is a live process: false once it is gone or a zombie (dead, not yet reaped
/// by whoever inherited it).
pub fn pid_alive(pid: i32) -> bool {
    !matches!(proc_state(pid), None | Some('Z' | 'X' | 'x'))
}

/// The state letter of `pid` in /proc (`R`, `S`, `T`, `Z`, ...), `None` once it is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses and may contain anything.
    let i = stat.rfind(')')?;
    stat[i + 1..].trim_start().chars().next()
}

/// Polls `cond` until it holds, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A file path in the temporary directory, unique to this test, removed on drop.
pub struct TempPath(pub PathBuf);

impl TempPath {
    pub fn new(name: &str) -> TempPath {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        TempPath(std::env::temp_dir().join(format!(
            "cluster-test-{}-{n}-{nanos}-{name}",
            std::process::id()
        )))
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A hash of a file's bytes, the same one the fixture reports for its executable
/// (`FIXTURE_EXE_HASH=1`).
pub fn file_hash(path: &std::path::Path) -> String {
    use std::hash::Hasher;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(&bytes);
    format!("{:016x}", hasher.finish())
}

/// A directory in the temporary directory, unique to this test, removed with its contents on
/// drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = TempPath::new(name).0.clone();
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies `from` into `dir` as `name`, executable, and returns its path.
pub fn copy_executable(from: &std::path::Path, dir: &std::path::Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(from, &to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    to
}

/// Deploys a new build of the program at `path` the way a deploy tool should: the new bytes
/// (here the old ones with `extra` appended, which an ELF loader ignores) go to a temporary
/// file in the same directory, which is then renamed over the old path in one step. Running
/// processes keep their old inode; the next exec of `path` runs the new file. Returns the new
/// file's hash.
pub fn deploy_modified_copy(path: &std::path::Path, extra: &[u8]) -> String {
    use std::os::unix::fs::PermissionsExt;
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    bytes.extend_from_slice(extra);
    let tmp = path.with_extension("new");
    {
        let mut file = std::fs::File::create(&tmp).expect("create the new build");
        file.write_all(&bytes).expect("write the new build");
        file.sync_all().expect("sync the new build");
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .expect("make the new build executable");
    std::fs::rename(&tmp, path).expect("rename the new build over the old one");
    file_hash(path)
}
