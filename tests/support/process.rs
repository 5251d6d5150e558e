//! The process machinery every fixture of the process tests shares: start a program leading
//! its own process group, read its output (line by line into a channel, or as a whole into a
//! buffer) on threads of their own, see the master's exit without reaping it, kill the whole
//! group when the test ends (even when it fails), and wait on a fixture's output lines with
//! bounded waits.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

use super::{Exit, WAIT, wait_until};

/// A command for `program` that leads a process group of its own, with stdout and stderr
/// piped and stdin null (change it after), and without any variable of this process's
/// environment whose name starts with one of `drop_env` (`CLUSTER_`, say).
pub(crate) fn group_command(program: &Path, drop_env: &[&str]) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if drop_env.iter().any(|prefix| k.starts_with(prefix)) {
            cmd.env_remove(&key);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // Each cluster's default control socket (`$XDG_RUNTIME_DIR/cluster/<name>.sock`) in a
        // directory of its own: tests run the same program at once, and a second master of a
        // name refuses to start. Removed with the group.
        .env("XDG_RUNTIME_DIR", runtime_dir());
    cmd
}

/// A fresh directory path (not created) under the temporary directory.
pub(crate) fn runtime_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("cluster-test-run-{}-{n}", std::process::id()))
}

/// A running master that leads its own process group, which its workers share; dropping this
/// kills the whole group and reaps the master.
pub(crate) struct Group {
    child: Child,
    pid: i32,
    /// The master's exit, once seen. It is seen with WNOWAIT, so the master stays a zombie
    /// (its pid, which is also the group's id, cannot be reused) until this is dropped.
    exit: Option<Exit>,
    /// The `XDG_RUNTIME_DIR` given by [`group_command`], removed on drop.
    runtime_dir: Option<std::path::PathBuf>,
}

/// The pipes of a [`Group`]'s master.
pub(crate) struct Pipes {
    pub stdin: Option<ChildStdin>,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

impl Group {
    /// Starts `cmd` (from [`group_command`]); `what` names it in the panic when it cannot.
    pub(crate) fn spawn(cmd: &mut Command, what: &str) -> (Group, Pipes) {
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        let pid = i32::try_from(child.id()).expect("a pid");
        let pipes = Pipes {
            stdin: child.stdin.take(),
            stdout: child.stdout.take().expect("stdout"),
            stderr: child.stderr.take().expect("stderr"),
        };
        let runtime_dir = cmd
            .get_envs()
            .find(|(k, _)| *k == "XDG_RUNTIME_DIR")
            .and_then(|(_, v)| v.map(std::path::PathBuf::from))
            .filter(|dir| dir.starts_with(std::env::temp_dir()));
        let group = Group {
            child,
            pid,
            exit: None,
            runtime_dir,
        };
        (group, pipes)
    }

    /// The master's pid (also its process group's id).
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `sig` to the master only.
    pub(crate) fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid), sig).expect("signal the master");
    }

    /// Sends `sig` to the whole process group, as a terminal does on Ctrl-C.
    pub(crate) fn signal_group(&self, sig: Signal) {
        killpg(Pid::from_raw(self.pid), sig).expect("signal the process group");
    }

    /// Checks, without waiting and without reaping, whether the master has exited.
    pub(crate) fn try_exit(&mut self) -> Option<Exit> {
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
}

impl Drop for Group {
    fn drop(&mut self) {
        // The master is not reaped before this point, so the group id is still ours. SIGKILL
        // also ends stopped (SIGSTOP) processes.
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.runtime_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Reads `pipe` line by line on a thread of its own, sending `make(line)` (the line without
/// its newline, invalid UTF-8 replaced) for each, until the pipe ends or nobody listens.
pub(crate) fn read_lines<L: Send + 'static>(
    pipe: impl Read + Send + 'static,
    tx: mpsc::Sender<L>,
    make: impl Fn(String) -> L + Send + 'static,
) {
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
                    if tx
                        .send(make(String::from_utf8_lossy(&buf).into_owned()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
}

/// Everything a pipe gave so far, read on a thread of its own.
#[derive(Clone)]
pub(crate) struct Captured {
    text: Arc<Mutex<String>>,
    closed: Arc<AtomicBool>,
}

impl Captured {
    /// Starts reading `pipe` to its end.
    pub(crate) fn start(mut pipe: impl Read + Send + 'static) -> Captured {
        let captured = Captured {
            text: Arc::new(Mutex::new(String::new())),
            closed: Arc::new(AtomicBool::new(false)),
        };
        let (text, closed) = (captured.text.clone(), captured.closed.clone());
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
            closed.store(true, Ordering::SeqCst);
        });
        captured
    }

    /// The text so far.
    pub(crate) fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Whether the pipe has ended.
    pub(crate) fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// What a fixture's output line must tell the shared waits, and how a fixture of such lines
/// shows its output in failure messages.
pub(crate) trait OutputLine: Clone + Send + 'static {
    /// Whether the line is of `kind` and has every `key=value` in `fields`.
    fn is(&self, kind: &str, fields: &[(&str, &str)]) -> bool;

    /// The output of `fixture` so far, for failure messages.
    fn dump(fixture: &Fixture<Self>) -> String;
}

/// A running fixture cluster whose output arrives as lines `L` (see the fixtures' modules for
/// their constructors): its process group, its stdin if piped, the lines read so far, and its
/// stderr when it is not read into the lines.
pub(crate) struct Fixture<L> {
    pub(super) group: Group,
    pub(super) stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<L>,
    /// Every line read so far, in the order the test read them.
    pub history: Vec<L>,
    /// Whether every sender of lines is gone (the streams read into lines have ended).
    closed: bool,
    pub(super) stderr: Option<Captured>,
}

impl<L: OutputLine> Fixture<L> {
    /// A fixture of `group`, whose lines arrive on `lines`.
    pub(super) fn new(
        group: Group,
        stdin: Option<ChildStdin>,
        lines: mpsc::Receiver<L>,
        stderr: Option<Captured>,
    ) -> Fixture<L> {
        Fixture {
            group,
            stdin,
            lines,
            history: Vec::new(),
            closed: false,
            stderr,
        }
    }

    /// The master's pid (also its process group's id).
    pub(crate) fn pid(&self) -> i32 {
        self.group.pid()
    }

    /// The output so far, for failure messages.
    pub(crate) fn dump(&self) -> String {
        L::dump(self)
    }

    /// Writes one command line to the master's stdin.
    pub(crate) fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").expect("write a command to the fixture");
        stdin.flush().expect("flush the fixture's stdin");
    }

    /// Sends `sig` to the master only.
    pub(crate) fn signal(&self, sig: Signal) {
        self.group.signal(sig);
    }

    /// Sends `sig` to the whole process group, as a terminal does on Ctrl-C.
    pub(crate) fn signal_group(&self, sig: Signal) {
        self.group.signal_group(sig);
    }

    /// Reads the lines that arrive until `until`; returns false once the lines have ended.
    fn pump(&mut self, until: Instant) -> bool {
        if self.closed {
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
                self.closed = true;
                false
            }
        }
    }

    /// Reads output until `check` finds what it wants in the whole history, failing the test
    /// (with the output so far) after `timeout` or when the output ends without it.
    pub(crate) fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&[L]) -> Option<T>,
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

    /// Waits (up to [`WAIT`]) for a line of `kind` with every field in `fields`, anywhere in
    /// the output so far or to come, and returns it.
    pub(crate) fn wait_line(&mut self, kind: &str, fields: &[(&str, &str)]) -> L {
        let what = format!("a line {kind} {fields:?}");
        self.wait_for(&what, WAIT, |lines| {
            lines.iter().find(|l| l.is(kind, fields)).cloned()
        })
    }

    /// Waits for a line matching `fields` that comes after the first `after` lines.
    pub(crate) fn wait_line_after(
        &mut self,
        after: usize,
        kind: &str,
        fields: &[(&str, &str)],
    ) -> L {
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
    pub(crate) fn lines(&self, kind: &str, fields: &[(&str, &str)]) -> Vec<L> {
        self.history
            .iter()
            .filter(|l| l.is(kind, fields))
            .cloned()
            .collect()
    }

    /// Checks, without waiting and without reaping, whether the master has exited.
    pub(crate) fn try_exit(&mut self) -> Option<Exit> {
        self.group.try_exit()
    }

    /// Waits up to `timeout` for the master to exit, reading its output meanwhile.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Exit {
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
                std::thread::sleep(
                    Duration::from_millis(10)
                        .min(deadline.saturating_duration_since(Instant::now())),
                );
            }
        }
    }

    /// Waits for the master's exit code.
    pub(crate) fn wait_exit_code(&mut self, timeout: Duration) -> i32 {
        match self.wait_exit(timeout) {
            Exit::Code(code) => code,
            other => panic!(
                "the master ended by {other:?}, not with an exit code\n{}",
                self.dump()
            ),
        }
    }

    /// Reads output until every stream is closed, i.e. the master and every worker have
    /// exited (or closed them), so that the history is complete.
    pub(crate) fn finish(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.pump(deadline) {
            if Instant::now() >= deadline {
                panic!("the output did not end within {timeout:?}\n{}", self.dump());
            }
        }
        if let Some(stderr) = &self.stderr {
            wait_until(
                "stderr to close",
                deadline.saturating_duration_since(Instant::now()),
                || stderr.closed(),
            );
        }
    }
}
