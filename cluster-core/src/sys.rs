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

/// Makes the child start with the terminal's SIGINT and SIGHUP ignored. A worker ignores them
/// anyway once its runtime is up (the master alone handles a Ctrl-C to the whole process
/// group), but until then their default action would kill it, and the master would take the
/// Ctrl-C for a crash. Ignored dispositions survive `exec`; the worker's own handlers replace
/// them later.
pub(crate) fn ignore_terminal_signals(cmd: &mut tokio::process::Command) {
    let hook = || {
        for sig in [libc::SIGINT, libc::SIGHUP] {
            // SAFETY: signal is async-signal-safe and allocates nothing.
            if unsafe { libc::signal(sig, libc::SIG_IGN) } == libc::SIG_ERR {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and calls only async-signal-safe functions.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Watches a listening socket's readiness with tokio's reactor, without tokio accepting on it:
/// the master accepts with a raw `accept(2)` so the sockets it only forwards are never
/// registered with the reactor.
pub(crate) fn watch_listener(
    listener: std::net::TcpListener,
) -> io::Result<tokio::io::unix::AsyncFd<std::net::TcpListener>> {
    // SAFETY: the AsyncFd takes ownership of the listener, which owns its descriptor, so the
    // descriptor stays open and refers to the same socket for the AsyncFd's whole life, and
    // `TcpListener::as_raw_fd` always returns that same descriptor.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
}
