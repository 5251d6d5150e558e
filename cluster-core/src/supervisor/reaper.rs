//! Reaping orphans: the master is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so a process
//! a worker started and left behind when it died is reparented to the master instead of to
//! init, and the master collects its exit. As PID 1 in a container that is the kernel's rule
//! anyway, and nobody else would.
//!
//! The master's own workers must not be reaped here: tokio's process driver waits for each
//! of them by pid on SIGCHLD, and a blanket `waitpid(-1)` would steal their exit statuses (the
//! supervisor would see a crash as "wait failed"). So on each SIGCHLD this task lists the
//! master's children that are zombies (from `/proc`, which reaps nothing) and reaps, by pid,
//! only those that are not live workers ([`LivePids`], registered by the launcher) and have
//! stayed zombies for [`GRACE`]. The grace covers the two windows a pid set cannot: a worker
//! whose pid is not registered yet (it died between fork and registration) and a child the
//! app's own master code waits for; their owners reap them within microseconds of SIGCHLD.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep_until};

use super::notice;

/// How long a child must have been a zombie before this task takes it for an orphan.
const GRACE: Duration = Duration::from_millis(300);

/// The pids of the workers alive now, whose exits are tokio's to collect.
#[derive(Clone, Default)]
pub(crate) struct LivePids(Arc<Mutex<HashSet<u32>>>);

/// A worker's pid in [`LivePids`] until this is dropped (once its exit has been collected).
pub(crate) struct Registered {
    pids: LivePids,
    pid: u32,
}

impl LivePids {
    pub(crate) fn register(&self, pid: u32) -> Registered {
        self.lock().insert(pid);
        Registered {
            pids: self.clone(),
            pid,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn contains(&self, pid: u32) -> bool {
        self.lock().contains(&pid)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.pids.lock().remove(&self.pid);
    }
}

/// Makes this process a child subreaper and starts reaping orphans; the task ends with the
/// runtime. A failure is logged, not fatal: the cluster works without, orphans then go to
/// init as before.
pub(crate) fn start(live: LivePids) {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        notice!(
            warn,
            "cannot become a child subreaper ({e}): processes left by dead workers go to init"
        );
    }
    let sigchld = match signal(SignalKind::child()) {
        Ok(stream) => stream,
        Err(e) => {
            notice!(
                warn,
                "cannot watch SIGCHLD ({e}): processes left by dead workers are not reaped by the master"
            );
            return;
        }
    };
    tokio::spawn(reap_orphans(sigchld, live));
}

async fn reap_orphans(mut sigchld: tokio::signal::unix::Signal, live: LivePids) {
    // Zombies not yet reaped, by when they were first seen.
    let mut seen: HashMap<u32, Instant> = HashMap::new();
    loop {
        let next = seen.values().min().map(|&at| at + GRACE);
        tokio::select! {
            got = sigchld.recv() => if got.is_none() { return },
            () = sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {}
        }
        let now = Instant::now();
        let zombies = zombie_children();
        seen.retain(|pid, _| zombies.contains(pid));
        for pid in zombies {
            if live.contains(pid) {
                continue;
            }
            let first = *seen.entry(pid).or_insert(now);
            if now.duration_since(first) >= GRACE {
                reap(pid);
                seen.remove(&pid);
            }
        }
    }
}

/// Reaps every zombie child that is not a live worker, at once: the last thing the master
/// does, when nothing of its own waits for a child any more.
pub(crate) fn reap_all(live: &LivePids) {
    for pid in zombie_children() {
        if !live.contains(pid) {
            reap(pid);
        }
    }
}

fn reap(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else { return };
    // An error is a child reaped meanwhile by whoever waited for it: nothing to do.
    if let Ok(status) = waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
        tracing::debug!("reaped orphan {pid}: {status:?}");
    }
}

/// This process's children that are zombies, from `/proc` (the `children` file of each of
/// its threads: an orphan is reparented to any live thread of the subreaper).
fn zombie_children() -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return children;
    };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        children.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    children.retain(|&pid| is_zombie(pid));
    children
}

fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain anything.
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        == Some("Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_pid_is_live_until_its_registration_is_dropped() {
        let live = LivePids::default();
        let registered = live.register(42);
        assert!(live.contains(42));
        drop(registered);
        assert!(!live.contains(42));
    }

    #[test]
    fn a_zombie_child_is_listed_and_a_live_one_is_not() {
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let mut running = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !zombie_children().contains(&zombie.id()) {
            assert!(
                std::time::Instant::now() < deadline,
                "never became a zombie"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!zombie_children().contains(&running.id()));
        reap(zombie.id());
        assert!(!zombie_children().contains(&zombie.id()));
        // Already reaped: std's own wait finds nothing left to wait for.
        assert!(zombie.try_wait().is_err());
        running.kill().unwrap();
        running.wait().unwrap();
    }
}
