//! Runs the programs built by `#[cluster::main]` (examples/macro_fns.rs and
//! examples/macro_traits.rs) as real processes: both workers come up and talk to the master
//! over the typed channel, and SIGINT stops the cluster with exit code 0.

mod support;

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::example;
use support::process::read_lines;

/// Long enough for a loaded CI machine to start a master and two workers.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The examples' grace is 3 s; the rest is slack.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Kills the master if the test fails before it exits, so no process outlives the test (its
/// workers follow through their parent-death signal).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Starts the example, waits until every line in `expected` has been printed, sends SIGINT
/// and expects exit code 0.
fn run_until_printed_then_interrupt(name: &str, expected: &[&str]) {
    // The default control socket in a directory of this run's (see support::process).
    let runtime_dir = support::TempDir::new(name);
    let child = Command::new(example(name))
        .env("XDG_RUNTIME_DIR", &runtime_dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let mut guard = Guard(child);
    let stdout = guard.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    read_lines(stdout, tx, |line| line);

    let deadline = Instant::now() + START_TIMEOUT;
    let mut missing: Vec<&str> = expected.to_vec();
    let mut seen = Vec::new();
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                // Worker lines reach the master's stdout prefixed with `[group/slot pid N] `.
                let text = match line
                    .strip_prefix('[')
                    .and_then(|rest| rest.split_once("] "))
                {
                    Some((who, text)) if who.contains(" pid ") => text,
                    _ => line.as_str(),
                };
                missing.retain(|m| *m != text);
                seen.push(line);
            }
            Err(_) => panic!(
                "{name}: still waiting for {missing:?} after {START_TIMEOUT:?}; printed: {seen:#?}"
            ),
        }
    }

    let pid = Pid::from_raw(i32::try_from(guard.0.id()).expect("pid"));
    kill(pid, Signal::SIGINT).expect("send SIGINT to the master");
    let status = wait_with_timeout(&mut guard.0, STOP_TIMEOUT).unwrap_or_else(|| {
        panic!("{name}: the master did not exit within {STOP_TIMEOUT:?} of SIGINT")
    });
    assert_eq!(
        status.code(),
        Some(0),
        "{name}: exit status after SIGINT: {status}"
    );
}

#[test]
fn function_style_cluster_runs_and_stops_on_sigint() {
    run_until_printed_then_interrupt(
        "macro_fns",
        &[
            "master: about to start the workers",
            "Master process running",
            "master: worker 0 is up",
            "master: worker 1 is up",
            "Worker process running",
        ],
    );
}

#[test]
fn type_style_cluster_runs_and_stops_on_sigint() {
    run_until_printed_then_interrupt(
        "macro_traits",
        &[
            "master: about to start the workers",
            "master: hello from worker 0",
            "master: hello from worker 1",
        ],
    );
}
