//! Helpers of the process-level fault tests (tests/faults.rs): stop a worker with SIGSTOP
//! for as long as a guard lives, and move a program's file away (so that the master cannot
//! start workers from it) and back.

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{WAIT, proc_state, wait_until};

/// A process stopped with SIGSTOP (and seen stopped in /proc), resumed with SIGCONT by
/// [`Stopped::resume`] or when dropped, so that a failing test never leaves it stopped.
pub(crate) struct Stopped {
    pid: i32,
    resumed: bool,
}

impl Stopped {
    /// Stops `pid` and waits (up to [`WAIT`]) until /proc says it is stopped (state `T`).
    pub(crate) fn stop(pid: i32) -> Stopped {
        kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("stop the process");
        let stopped = Stopped {
            pid,
            resumed: false,
        };
        wait_until("the process to stop", WAIT, || proc_state(pid) == Some('T'));
        stopped
    }

    /// Resumes it with SIGCONT.
    pub(crate) fn resume(mut self) {
        self.resumed = true;
        kill(Pid::from_raw(self.pid), Signal::SIGCONT).expect("resume the process");
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.resumed {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGCONT);
        }
    }
}

/// A program file renamed away (so that starting it fails with ENOENT), renamed back by
/// [`Moved::restore`] or when dropped.
pub(crate) struct Moved {
    path: PathBuf,
    away: PathBuf,
    restored: bool,
}

impl Moved {
    /// Renames `path` to a name next to it.
    pub(crate) fn away(path: &Path) -> Moved {
        let away = path.with_extension("away");
        std::fs::rename(path, &away)
            .unwrap_or_else(|e| panic!("rename {} away: {e}", path.display()));
        Moved {
            path: path.to_owned(),
            away,
            restored: false,
        }
    }

    /// Renames it back, in one step.
    pub(crate) fn restore(mut self) {
        self.restored = true;
        std::fs::rename(&self.away, &self.path)
            .unwrap_or_else(|e| panic!("rename {} back: {e}", self.path.display()));
    }
}

impl Drop for Moved {
    fn drop(&mut self) {
        if !self.restored {
            let _ = std::fs::rename(&self.away, &self.path);
        }
    }
}
