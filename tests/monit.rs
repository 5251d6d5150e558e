//! `clusterctl monit` in a pseudo-terminal, against real clusters: it shows every worker's
//! pid, fits a terminal made smaller under it ("... N more"), quits on `q` with exit 0, and
//! exits 1 saying so when the master goes away; each time the terminal is given back as it
//! was (alternate screen left, cursor shown, raw mode off). Without a terminal it refuses and
//! points to `list --json`.
//!
//! monit runs under `setsid -c` (util-linux), so that the pseudo-terminal is its controlling
//! terminal: crossterm reads the size from /dev/tty, which would otherwise be whatever
//! terminal runs the tests, or none.

mod support;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::pty::{Winsize, openpty};
use nix::sys::termios::{LocalFlags, tcgetattr};
use support::ctl::{CTL, ctl, describe, start, text, wait_ready};
use support::{TempDir, WAIT, poll};

const ENTER_ALTERNATE: &str = "\x1b[?1049h";
const LEAVE_ALTERNATE: &str = "\x1b[?1049l";
const SHOW_CURSOR: &str = "\x1b[?25h";

/// `clusterctl monit` on a pseudo-terminal; killed on drop if still running.
struct Monit {
    child: Child,
    /// The terminal's side, for keys.
    master: File,
    /// Kept open to read the terminal's settings after monit has exited.
    slave: OwnedFd,
    /// Everything monit wrote.
    output: Arc<Mutex<Vec<u8>>>,
}

impl Monit {
    fn start(socket: &std::path::Path, rows: u16, cols: u16) -> Monit {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(&size, None).expect("a pseudo-terminal");
        let stdio = || Stdio::from(pty.slave.try_clone().expect("dup the terminal"));
        let child = Command::new("setsid")
            .arg("-c")
            .arg(CTL)
            .arg("-s")
            .arg(socket)
            .arg("monit")
            .stdin(stdio())
            .stdout(stdio())
            .stderr(stdio())
            .spawn()
            .expect("run setsid (util-linux)");
        let mut reader = File::from(pty.master.try_clone().expect("dup the terminal"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        // Ends when the terminal's other side is closed for good (at the test's end).
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Monit {
            child,
            master: File::from(pty.master),
            slave: pty.slave,
            output,
        }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until monit's output after byte `from` holds every one of `words`.
    fn wait_for(&self, from: usize, words: &[String]) {
        poll(&format!("monit showing {words:?}"), WAIT, || {
            let out = self.output();
            let seen = out.get(from..).unwrap_or("");
            if words.iter().all(|w| seen.contains(w.as_str())) {
                Ok(())
            } else {
                Err(format!("{out:?}"))
            }
        });
    }

    fn press(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let until = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < until,
                "monit still running after {WAIT:?}: {:?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Checks that monit gave the terminal back: it left the alternate screen and showed the
    /// cursor after it last entered, and the line discipline is cooked and echoing again.
    fn assert_restored(&self) {
        let out = self.output();
        let entered = out
            .rfind(ENTER_ALTERNATE)
            .unwrap_or_else(|| panic!("never entered the alternate screen: {out:?}"));
        let after = &out[entered..];
        assert!(after.contains(LEAVE_ALTERNATE), "{out:?}");
        assert!(after.contains(SHOW_CURSOR), "{out:?}");
        let flags = tcgetattr(&self.slave).unwrap().local_flags;
        assert!(
            flags.contains(LocalFlags::ICANON | LocalFlags::ECHO),
            "raw mode left on: {flags:?}"
        );
    }
}

impl Drop for Monit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pids(rows: &[serde_json::Value]) -> Vec<String> {
    rows.iter().map(|r| r["pid"].to_string()).collect()
}

#[test]
fn monit_shows_every_worker_fits_a_smaller_terminal_and_quits_on_q() {
    let dir = TempDir::new("monit-q");
    let (_fx, socket) = start(&dir, &[("FIXTURE_COUNT", "4")]);
    let rows = wait_ready(&socket, 4);
    let mut monit = Monit::start(&socket, 40, 120);
    monit.wait_for(0, &pids(&rows));
    let out = monit.output();
    assert!(out.contains(ENTER_ALTERNATE), "{out:?}");
    assert!(
        out.contains("4 workers, 4 ready") && out.contains("lag"),
        "{out:?}"
    );
    // Six rows: four of header, one worker, and the count of the others.
    let from = monit.output.lock().unwrap().len();
    let stty = Command::new("stty")
        .args(["rows", "6", "cols", "100"])
        .stdin(Stdio::from(monit.slave.try_clone().unwrap()))
        .status()
        .expect("run stty");
    assert!(stty.success());
    monit.wait_for(from, &["... 3 more".to_owned()]);

    monit.press("q");
    let status = monit.wait_exit();
    assert_eq!(status.code(), Some(0), "{:?}", monit.output());
    monit.assert_restored();
}

#[test]
fn monit_exits_1_saying_so_when_the_master_goes_away() {
    let dir = TempDir::new("monit-gone");
    let (mut fx, socket) = start(&dir, &[("FIXTURE_COUNT", "2")]);
    let rows = wait_ready(&socket, 2);
    let mut monit = Monit::start(&socket, 30, 120);
    monit.wait_for(0, &pids(&rows));
    let out = ctl(&socket, &["stop"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(fx.wait_exit_code(WAIT), 0);
    let status = monit.wait_exit();
    assert_eq!(status.code(), Some(1), "{:?}", monit.output());
    let out = monit.output();
    let left = out
        .rfind(LEAVE_ALTERNATE)
        .expect("left the alternate screen");
    // Said on the normal screen, after leaving the alternate one.
    assert!(
        out[left..].contains("clusterctl: the master of cluster-fixture"),
        "{out:?}"
    );
    assert!(out[left..].contains("went away"), "{out:?}");
    monit.assert_restored();
}

#[test]
fn monit_without_a_terminal_refuses_and_points_to_list_json() {
    let dir = TempDir::new("monit-pipe");
    // Refused before any cluster is looked for.
    let out = ctl(&dir.0.join("none.sock"), &["monit"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("needs a terminal"), "{stderr}");
    assert!(stderr.contains("clusterctl list --json"), "{stderr}");
}
