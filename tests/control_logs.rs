//! `clusterctl logs` and the workers' last lines the master keeps, driven as real processes:
//! exactly the last N lines of a slot, the GROUP and GROUP/SLOT filters, `logs -f` receiving
//! lines as the workers print them, the lines of a replaced worker kept before its
//! replacement's, a follower that never reads holding up neither other clients nor the
//! forwarding of output, and a failed `reload --wait` showing the replacement's last lines.
//! The workers print on demand (`echo`/`echoerr` on the fixture's stdin,
//! tests/fixture/cluster_fixture.rs); a line printed by the master has been recorded, since a
//! forwarder records each batch before writing it.

mod support;

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use cluster::control::client::Client;
use cluster::control::protocol::{Request, Response};
use serde_json::Value;
use support::ctl::{CTL, ctl, describe, rows, start, text, wait_ready};
use support::process::{Captured, Group, group_command, read_lines};
use support::{Exit, TempDir, WAIT, wait_until};

/// The pid of the current worker of `slot` in `list --json` rows.
fn pid_of(rows: &[Value], slot: u64) -> u64 {
    rows.iter()
        .find(|r| r["slot"] == slot)
        .and_then(|r| r["pid"].as_u64())
        .unwrap_or_else(|| panic!("no pid for slot {slot} in {rows:?}"))
}

fn lines(out: &[u8]) -> Vec<String> {
    text(out).lines().map(str::to_owned).collect()
}

/// The line `clusterctl logs` prints for the fixture's `ECHO` line `i` of `n` (no padding).
fn echo(slot: usize, generation: u64, pid: u64, i: u64, n: u64) -> String {
    format!("[worker/{slot} pid {pid}] ECHO id=worker/{slot}#{generation} i={i} n={n}")
}

/// A `clusterctl` left running (`logs -f`), its stdout read line by line; killed when
/// dropped.
struct Running {
    group: Group,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Captured,
}

impl Running {
    fn start(socket: &Path, args: &[&str]) -> Running {
        let mut cmd = group_command(Path::new(CTL), &[]);
        cmd.arg("-s").arg(socket).args(args);
        let (group, pipes) = Group::spawn(&mut cmd, "clusterctl");
        let (tx, lines) = mpsc::channel();
        read_lines(pipes.stdout, tx, |line| line);
        Running {
            group,
            lines,
            seen: Vec::new(),
            stderr: Captured::start(pipes.stderr),
        }
    }

    /// Reads stdout until `done` holds for the lines so far, failing after [`WAIT`].
    fn wait_for(&mut self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "timed out waiting for {what}; stdout so far: {:?}; stderr: {}",
                    self.seen,
                    self.stderr.text()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "clusterctl's stdout ended before {what}: {:?}; stderr: {}",
                    self.seen,
                    self.stderr.text()
                ),
            }
        }
    }

    fn wait_exit(&mut self) -> Exit {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(exit) = self.group.try_exit() {
                return exit;
            }
            assert!(
                Instant::now() < deadline,
                "clusterctl did not exit; stderr: {}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn logs_lines_n_prints_exactly_the_last_n_lines_and_the_filters_keep_to_their_slots() {
    let dir = TempDir::new("ctl-logs-n");
    let (mut fx, socket) = start(&dir, &[("FIXTURE_COUNT", "2")]);
    let rows = wait_ready(&socket, 2);
    let (pid0, pid1) = (pid_of(&rows, 0), pid_of(&rows, 1));
    fx.command("echo worker 0 30 0");
    fx.wait_line("ECHO", &[("id", "worker/0#1"), ("i", "30")]);
    fx.command("echoerr worker 1 2");
    wait_until("worker/1's stderr lines", WAIT, || {
        fx.stderr().contains("ECHO_ERR id=worker/1#1 i=2 n=2")
    });

    let out = ctl(&socket, &["logs", "--lines", "10", "worker/0"]);
    assert!(out.status.success(), "{}", describe(&out));
    let want: Vec<String> = (21..=30).map(|i| echo(0, 1, pid0, i, 30)).collect();
    assert_eq!(lines(&out.stdout), want, "{}", describe(&out));
    assert_eq!(text(&out.stderr), "", "{}", describe(&out));

    // A worker's stderr lines go to clusterctl's stderr.
    let out = ctl(&socket, &["logs", "--lines", "2", "worker/1"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(text(&out.stdout), "", "{}", describe(&out));
    let want: Vec<String> = (1..=2)
        .map(|i| format!("[worker/1 pid {pid1}] ECHO_ERR id=worker/1#1 i={i} n=2"))
        .collect();
    assert_eq!(lines(&out.stderr), want, "{}", describe(&out));

    // The group, and the whole cluster: each slot's last lines, in the order printed.
    let wstart1 = format!("[worker/1 pid {pid1}] WSTART id=worker/1#1 pid={pid1}");
    for args in [&["logs", "--lines", "15", "worker"][..], &["logs"]] {
        let out = ctl(&socket, args);
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
        let mut want = vec![wstart1.clone()];
        want.extend((16..=30).map(|i| echo(0, 1, pid0, i, 30)));
        assert_eq!(lines(&out.stdout), want, "{args:?}: {}", describe(&out));
        assert_eq!(lines(&out.stderr).len(), 2, "{args:?}: {}", describe(&out));
    }
    let out = ctl(&socket, &["logs", "--lines", "1000", "worker/1"]);
    assert_eq!(lines(&out.stdout), [wstart1], "{}", describe(&out));

    let out = ctl(&socket, &["logs", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("no group named \"nope\""),
        "{}",
        describe(&out)
    );
    let out = ctl(&socket, &["logs", "worker/7"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("no worker in slot worker/7"),
        "{}",
        describe(&out)
    );
    let out = ctl(&socket, &["logs", "worker/x"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn logs_follow_prints_lines_as_workers_print_them_until_the_master_exits() {
    let dir = TempDir::new("ctl-logs-f");
    let (mut fx, socket) = start(&dir, &[("FIXTURE_COUNT", "2")]);
    let rows = wait_ready(&socket, 2);
    let pid0 = pid_of(&rows, 0);
    let mut follower = Running::start(&socket, &["logs", "-f", "--lines", "1", "worker/0"]);
    // The backlog (worker/0's one line so far) is sent after the follower is registered:
    // once it is printed, every later line reaches the follower.
    let wstart = format!("[worker/0 pid {pid0}] WSTART id=worker/0#1 pid={pid0}");
    follower.wait_for("the backlog", |seen| seen.len() == 1);
    assert_eq!(follower.seen, std::slice::from_ref(&wstart));
    // A line of another slot, recorded before worker/0's below: it would reach the follower
    // first if the filter let it through.
    fx.command("echo worker 1 1 0");
    fx.wait_line("ECHO", &[("id", "worker/1#1")]);
    fx.command("echo worker 0 3 0");
    follower.wait_for("worker/0's new lines", |seen| seen.len() >= 4);
    let mut want = vec![wstart];
    want.extend((1..=3).map(|i| echo(0, 1, pid0, i, 3)));
    assert_eq!(follower.seen, want);

    // The master exits: the follower ends with it, exit 0, saying so.
    let out = ctl(&socket, &["stop"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        follower.wait_exit(),
        Exit::Code(0),
        "{}",
        follower.stderr.text()
    );
    wait_until("clusterctl's stderr to end", WAIT, || {
        follower.stderr.closed()
    });
    assert!(
        follower.stderr.text().contains("went away"),
        "{}",
        follower.stderr.text()
    );
    assert_eq!(fx.wait_exit_code(WAIT), 0);
}

#[test]
fn a_replaced_workers_lines_are_kept_before_its_replacements() {
    let dir = TempDir::new("ctl-logs-replaced");
    let (mut fx, socket) = start(&dir, &[("FIXTURE_COUNT", "1")]);
    let old = pid_of(&wait_ready(&socket, 1), 0);
    fx.command("echo worker 0 2 0");
    fx.wait_line("ECHO", &[("id", "worker/0#1"), ("i", "2")]);
    let out = ctl(&socket, &["restart", "worker/0"]);
    assert!(out.status.success(), "{}", describe(&out));
    let rows = poll_generation(&socket, 2);
    let new = pid_of(&rows, 0);
    assert_ne!(old, new);
    fx.command("echo worker 0 1 0");
    fx.wait_line("ECHO", &[("id", "worker/0#2"), ("i", "1")]);

    let out = ctl(&socket, &["logs", "--lines", "100", "worker/0"]);
    assert!(out.status.success(), "{}", describe(&out));
    let ours: Vec<String> = lines(&out.stdout)
        .into_iter()
        .filter(|l| l.contains("WSTART") || l.contains("ECHO"))
        .collect();
    assert_eq!(
        ours,
        [
            format!("[worker/0 pid {old}] WSTART id=worker/0#1 pid={old}"),
            echo(0, 1, old, 1, 2),
            echo(0, 1, old, 2, 2),
            format!("[worker/0 pid {new}] WSTART id=worker/0#2 pid={new}"),
            echo(0, 2, new, 1, 1),
        ],
        "{}",
        describe(&out)
    );
}

/// `list --json` once every worker listed is of `generation` and ready.
fn poll_generation(socket: &Path, generation: u64) -> Vec<Value> {
    support::poll("the replacement alone, ready", WAIT, || {
        let rows = rows(socket);
        let done = !rows.is_empty()
            && rows
                .iter()
                .all(|r| r["generation"] == generation && r["state"] == "ready");
        if done {
            Ok(rows)
        } else {
            Err(format!("{rows:?}"))
        }
    })
}

#[test]
fn a_follower_that_never_reads_holds_up_neither_other_clients_nor_the_output() {
    const LINES: u64 = 4000;
    let dir = TempDir::new("ctl-logs-stalled");
    let (mut fx, socket) = start(&dir, &[("FIXTURE_COUNT", "1")]);
    wait_ready(&socket, 1);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A raw client: it asks to follow, reads the first answer (so that it is registered), and
    // then reads nothing while the runtime is not driven.
    let mut stalled = runtime.block_on(Client::connect(&socket)).unwrap();
    let follow = Request::Logs {
        group: None,
        slot: None,
        lines: 0,
        follow: true,
    };
    let first = runtime.block_on(stalled.request(&follow)).unwrap();
    assert_eq!(first, Response::LogsUpToDate);

    // About 4 MiB: more than the follower's queue (1 MiB), the master's write buffer for the
    // connection (256 KiB) and the socket's buffers together.
    fx.command(&format!("echo worker 0 {LINES} 1000"));
    // The master's own output gets every line, in order: forwarding never waited.
    fx.wait_line("ECHO", &[("id", "worker/0#1"), ("i", &LINES.to_string())]);
    let printed: Vec<u64> = fx
        .lines("ECHO", &[("id", "worker/0#1")])
        .iter()
        .map(|l| l.get("i").parse().unwrap())
        .collect();
    assert_eq!(printed, (1..=LINES).collect::<Vec<_>>());
    // Other clients are served meanwhile.
    let out = ctl(&socket, &["logs", "--lines", "1", "worker/0"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains(&format!("i={LINES} n={LINES} ")),
        "{}",
        describe(&out)
    );
    assert_eq!(rows(&socket).len(), 1);

    // Reading at last, the stalled client gets lines and the count of those it missed, which
    // add up to what the worker printed.
    let (got, dropped) = runtime.block_on(async {
        let (mut got, mut dropped, mut markers) = (0u64, 0u64, 0);
        let read = async {
            while got + dropped < LINES {
                match stalled.next().await.unwrap() {
                    Some(Response::Logs(lines)) => got += lines.len() as u64,
                    Some(Response::LogsDropped(n)) => {
                        dropped += n;
                        markers += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .unwrap_or_else(|_| panic!("got {got}, dropped {dropped} of {LINES}"));
        assert!(markers >= 1);
        (got, dropped)
    });
    assert!(got > 0 && dropped > 0, "got {got}, dropped {dropped}");
}

#[test]
fn a_failed_reload_wait_prints_the_replacements_last_lines() {
    let dir = TempDir::new("ctl-logs-reload");
    let (mut fx, socket) = start(
        &dir,
        &[
            ("FIXTURE_COUNT", "1"),
            ("FIXTURE_UNREADY_FROM", "2"),
            ("FIXTURE_READY_TIMEOUT_MS", "1000"),
        ],
    );
    wait_ready(&socket, 1);
    // Lines of the old worker, which are not the replacement's.
    fx.command("echo worker 0 2 0");
    fx.wait_line("ECHO", &[("id", "worker/0#1"), ("i", "2")]);
    let out = ctl(&socket, &["reload", "--wait"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let stdout = text(&out.stdout);
    let pid = stdout
        .split("starting worker/0#2 (pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("the replacement's pid in {stdout}"));
    let stderr = text(&out.stderr);
    let (failure, shown) = stderr
        .split_once("\nthe replacement's last lines:\n")
        .unwrap_or_else(|| panic!("no last lines in {stderr}"));
    assert!(failure.contains("reload failed at worker/0"), "{stderr}");
    assert_eq!(
        shown.lines().collect::<Vec<_>>(),
        [
            format!("  [worker/0 pid {pid}] WSTART id=worker/0#2 pid={pid}"),
            format!("  [worker/0 pid {pid}] UNREADY id=worker/0#2 pid={pid}"),
        ],
        "{stderr}"
    );
}

#[test]
fn logs_has_help() {
    let out = std::process::Command::new(CTL)
        .args(["logs", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let help = text(&out.stdout);
    for word in [
        "Usage: clusterctl logs",
        "--follow",
        "--lines <N>",
        "GROUP",
        "dropped",
    ] {
        assert!(help.contains(word), "{word} in\n{help}");
    }
}
