//! The crate's raw syscalls: the only module allowed `unsafe`.
#![allow(unsafe_code)]

use std::io;

use nix::libc;

/// Makes the child receive SIGKILL when the thread that spawns it exits, which is why workers
/// are spawned from one thread that lives as long as the master (see `spawner.rs`). The
/// `getppid` check closes the race where the master died between fork and `prctl`.
pub(crate) fn kill_with_parent(cmd: &mut tokio::process::Command, parent: libc::pid_t) {
    let hook = move || {
        // SAFETY: prctl and getppid are async-signal-safe and allocate nothing.
        if unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::getppid() } != parent {
            // The master is already gone; ESRCH without allocating (we are between fork and exec).
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and calls only async-signal-safe functions.
    unsafe {
        cmd.pre_exec(hook);
    }
}
