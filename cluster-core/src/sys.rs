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

/// What a worker takes on between fork and exec: everything resolved and allocated by the
/// master beforehand, so that the hook only makes system calls.
#[derive(Debug, Clone, Default)]
pub(crate) struct Restrictions {
    pub(crate) nice: Option<libc::c_int>,
    pub(crate) rlimits: Vec<(nix::sys::resource::Resource, libc::rlimit)>,
    pub(crate) cpus: Option<nix::sched::CpuSet>,
    pub(crate) umask: Option<libc::mode_t>,
    /// The supplementary groups, set whenever the group or user changes (as `initgroups`
    /// does), so that root's groups never reach a worker.
    pub(crate) groups: Option<Vec<libc::gid_t>>,
    pub(crate) gid: Option<libc::gid_t>,
    pub(crate) uid: Option<libc::uid_t>,
    pub(crate) no_new_privs: bool,
}

/// The step of [`restrict`]'s hook that failed, as the child reports it on the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Step {
    Nice = 1,
    Rlimit,
    Affinity,
    Setgroups,
    Setgid,
    Setuid,
    /// setuid(0) succeeded after the drop: the drop did not hold.
    RootRegained,
    NoNewPrivs,
}

impl Step {
    const ALL: [Step; 8] = [
        Step::Nice,
        Step::Rlimit,
        Step::Affinity,
        Step::Setgroups,
        Step::Setgid,
        Step::Setuid,
        Step::RootRegained,
        Step::NoNewPrivs,
    ];
}

/// A pipe on which a child that failed a step of [`restrict`] names that step: the error
/// `spawn` returns carries only the errno.
pub(crate) struct StepReport {
    read: std::os::fd::OwnedFd,
    write: std::os::fd::OwnedFd,
}

impl StepReport {
    pub(crate) fn new() -> io::Result<Self> {
        // Close-on-exec: a child that gets as far as exec takes no end of it along.
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        Ok(StepReport { read, write })
    }

    /// The step the child reported, once its spawn has failed (the child wrote before it
    /// exited, so the byte is there already).
    pub(crate) fn failed_step(&self) -> Option<Step> {
        let mut byte = [0u8; 1];
        match nix::unistd::read(&self.read, &mut byte) {
            Ok(1) => Step::ALL.into_iter().find(|s| *s as u8 == byte[0]),
            _ => None,
        }
    }
}

/// Makes the child take on `r` before it runs the worker: nice value, resource limits and
/// CPUs while it still may (a higher limit or a lower nice value needs root), then the umask,
/// then groups, gid and uid in the order that keeps the right to change the next, then
/// `no_new_privs`. Register it before [`kill_with_parent`]: the kernel clears the parent-death
/// signal when the credentials change.
pub(crate) fn restrict(cmd: &mut tokio::process::Command, r: Restrictions, report: &StepReport) {
    use std::os::fd::AsRawFd;
    let report = report.write.as_raw_fd();
    let hook = move || {
        let fail = |step: Step| {
            // errno first: the write below may change it.
            let error = io::Error::last_os_error();
            let byte = [step as u8];
            // SAFETY: write is async-signal-safe; the buffer is a live local of one byte. A
            // failed report only leaves the error without its step.
            unsafe { libc::write(report, byte.as_ptr().cast(), 1) };
            Err(error)
        };
        if let Some(nice) = r.nice {
            // SAFETY: setpriority is async-signal-safe and allocates nothing.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } < 0 {
                return fail(Step::Nice);
            }
        }
        for (resource, limit) in &r.rlimits {
            // SAFETY: setrlimit is async-signal-safe; `limit` lives in the hook's data.
            if unsafe { libc::setrlimit(*resource as _, limit) } < 0 {
                return fail(Step::Rlimit);
            }
        }
        if let Some(cpus) = &r.cpus {
            // A thin wrapper of sched_setaffinity(2), which is async-signal-safe.
            if nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), cpus).is_err() {
                return fail(Step::Affinity);
            }
        }
        if let Some(mask) = r.umask {
            // SAFETY: umask cannot fail and is async-signal-safe.
            unsafe { libc::umask(mask) };
        }
        if let Some(groups) = &r.groups {
            // SAFETY: setgroups reads `groups.len()` gids from the hook's own vector.
            if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } < 0 {
                return fail(Step::Setgroups);
            }
        }
        if let Some(gid) = r.gid {
            // SAFETY: setgid is async-signal-safe and allocates nothing.
            if unsafe { libc::setgid(gid) } < 0 {
                return fail(Step::Setgid);
            }
        }
        if let Some(uid) = r.uid {
            // SAFETY: as above.
            if unsafe { libc::setuid(uid) } < 0 {
                return fail(Step::Setuid);
            }
            // SAFETY: as above; succeeding here means the drop can be undone.
            if uid != 0 && unsafe { libc::setuid(0) } == 0 {
                return fail(Step::RootRegained);
            }
        }
        if r.no_new_privs {
            // SAFETY: prctl is async-signal-safe and allocates nothing.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
                return fail(Step::NoNewPrivs);
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and calls only async-signal-safe functions
    // on data allocated before the fork.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Makes the child start with the terminal's SIGINT and SIGHUP ignored. A worker ignores them
/// anyway once its runtime is up (the master alone handles a Ctrl-C to the whole process
/// group), but until then their default action would kill it, and the master would take the
/// Ctrl-C for a crash. Ignored dispositions survive `exec`; the worker's own handlers replace
/// them later.
///
/// SIGTTIN and SIGTTOU are ignored for good: they scale the master (`scale_signals`), and
/// their default action would stop a worker that receives one sent to the whole process
/// group. Ignoring SIGTTOU also lets a worker of a background cluster write to the terminal
/// under `stty tostop` without the kernel signalling the group, and with it the master.
pub(crate) fn ignore_terminal_signals(cmd: &mut tokio::process::Command) {
    let hook = || {
        for sig in [libc::SIGINT, libc::SIGHUP, libc::SIGTTIN, libc::SIGTTOU] {
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

/// Watches an accepted connection's readiness for reading, for `StickyKey`'s peek, giving
/// the stream back when it cannot be registered.
pub(crate) fn watch_stream(
    stream: std::net::TcpStream,
) -> Result<tokio::io::unix::AsyncFd<std::net::TcpStream>, (std::net::TcpStream, io::Error)> {
    // SAFETY: as for `watch_listener`: the AsyncFd owns the stream, which owns its
    // descriptor, so the descriptor stays open and is the same socket until `into_inner`
    // deregisters it and gives the stream back.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(stream, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts())
}

/// Removes `var` from this process's environment.
///
/// Only while the process has one thread: `Cluster::run` calls it before it starts the
/// runtime, and is documented to be the first thing `main` does.
pub(crate) fn remove_env(var: &std::ffi::OsStr) {
    // SAFETY: called only from the worker's bootstrap in `Cluster::run`, before any runtime or
    // thread of the cluster exists; `run` must come before the app starts threads of its own.
    unsafe { std::env::remove_var(var) }
}

/// Takes the listening sockets the master was started with (socket activation), each with its
/// name, and removes `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES` from this process's
/// environment, so that neither the workers nor a program this process executes later take
/// descriptors meant for the master. Descriptors are only taken when `LISTEN_PID` is this
/// process; `sd-notify` sets CLOEXEC on each, so workers never inherit them by accident.
///
/// Only while the process has one thread: `Cluster::run` calls it in the master before it
/// starts the runtime, and is documented to be the first thing `main` does.
pub(crate) fn take_listen_fds() -> io::Result<Vec<(std::os::fd::OwnedFd, String)>> {
    use std::os::fd::FromRawFd;
    // SAFETY: called only from the master's start in `Cluster::run`, before any runtime or
    // thread of the cluster exists (the environment is edited); `run` must come before the
    // app starts threads of its own.
    let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }?;
    Ok(fds
        .map(|(raw, name)| {
            // SAFETY: the protocol hands descriptors 3..3+LISTEN_FDS to this process (the
            // crate checked LISTEN_PID), and nothing in this process has wrapped them before:
            // this runs once, before anything else opens a file.
            (unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) }, name)
        })
        .collect())
}

/// The seals of the shared counters' memfd: its size is fixed for good.
const SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// An array of `AtomicU32` in memory shared between processes: a memfd mapped read-write.
/// The master creates it and passes the descriptor; each worker maps the same pages.
pub(crate) struct SharedCounters {
    ptr: std::ptr::NonNull<std::sync::atomic::AtomicU32>,
    len: usize,
    fd: std::os::fd::OwnedFd,
}

// SAFETY: the mapping holds only atomics, which are safe to use from any thread, and it lives
// until `Drop` unmaps it.
unsafe impl Send for SharedCounters {}
// SAFETY: as above; every access goes through `&AtomicU32`.
unsafe impl Sync for SharedCounters {}

impl SharedCounters {
    /// A new zeroed array of `len` counters.
    pub(crate) fn create(len: usize) -> io::Result<Self> {
        // SAFETY: the name is a NUL-terminated literal; memfd_create only reads it.
        let raw = unsafe {
            libc::memfd_create(
                c"cluster-load".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create just returned this descriptor; nothing else owns it.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        let bytes = Self::bytes(len)?;
        // SAFETY: ftruncate on the memfd we own; new pages read as zeroes.
        if unsafe { libc::ftruncate(raw, bytes as libc::off_t) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // Every worker maps the file read-write; sealed, none of them can shrink it (which
        // would kill the master and every other worker with SIGBUS at their next touch), grow
        // it, or lift the seals.
        // SAFETY: fcntl on the memfd we own, with an integer argument.
        if unsafe { libc::fcntl(raw, libc::F_ADD_SEALS, SEALS) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Self::map(fd, len)
    }

    /// Maps an array of `len` counters received from the master. Fails if the file is
    /// smaller than that, rather than fault on access.
    pub(crate) fn open(fd: std::os::fd::OwnedFd, len: usize) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor we own, with no argument.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & SEALS != SEALS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the shared counters are not sealed against resizing: refusing to map them",
            ));
        }
        let bytes = Self::bytes(len)?;
        let size = std::fs::File::from(fd.try_clone()?).metadata()?.len();
        if size < bytes as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared counters of {size} bytes, want {bytes}"),
            ));
        }
        Self::map(fd, len)
    }

    fn bytes(len: usize) -> io::Result<usize> {
        len.checked_mul(std::mem::size_of::<u32>())
            .filter(|&b| b > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad counter count"))
    }

    fn map(fd: std::os::fd::OwnedFd, len: usize) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        let bytes = Self::bytes(len)?;
        // SAFETY: a fresh shared mapping of `bytes` bytes of a file at least that long; the
        // kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<std::sync::atomic::AtomicU32>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SharedCounters { ptr, len, fd })
    }

    /// The counters.
    pub(crate) fn counters(&self) -> &[std::sync::atomic::AtomicU32] {
        // SAFETY: the mapping is `len` page-aligned u32s, valid until Drop; AtomicU32 has the
        // layout of u32, and other processes touch these words only atomically too.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The memfd, to pass to a worker.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference into it outlives
        // `self` (`counters` borrows `self`).
        unsafe {
            libc::munmap(
                self.ptr.as_ptr().cast(),
                self.len * std::mem::size_of::<u32>(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    #[test]
    fn the_shared_counters_cannot_be_shrunk_grown_or_unsealed() {
        let shared = SharedCounters::create(64).unwrap();
        let raw = shared.fd().as_raw_fd();
        // SAFETY: calls on a descriptor `shared` owns and keeps open.
        unsafe {
            assert_eq!(libc::ftruncate(raw, 0), -1, "shrunk");
            assert_eq!(libc::ftruncate(raw, 1 << 20), -1, "grown");
            assert_eq!(
                libc::fcntl(raw, libc::F_ADD_SEALS, 0),
                -1,
                "seals added after F_SEAL_SEAL"
            );
        }
        shared.counters()[63].store(7, std::sync::atomic::Ordering::Relaxed);
        let worker = SharedCounters::open(shared.fd().try_clone_to_owned().unwrap(), 64).unwrap();
        assert_eq!(
            worker.counters()[63].load(std::sync::atomic::Ordering::Relaxed),
            7
        );
    }

    #[test]
    fn an_unsealed_file_is_refused() {
        // SAFETY: a NUL-terminated literal name; the descriptor is owned right after.
        let raw = unsafe { libc::memfd_create(c"unsealed".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: memfd_create just returned it; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ftruncate on the memfd we own.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 256) }, 0);
        let error = SharedCounters::open(fd, 64).err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(error.to_string().contains("not sealed"), "{error}");
    }
}
