//! The crate's raw syscalls: the only module allowed `unsafe`.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::libc;
use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};

/// Sends `data` in one `sendmsg`, with `fds` as SCM_RIGHTS when there are any. Never raises
/// SIGPIPE and never blocks.
pub(crate) fn send(fd: BorrowedFd<'_>, data: &[u8], fds: &[OwnedFd]) -> io::Result<usize> {
    let iov = [io::IoSlice::new(data)];
    let raw: Vec<RawFd>;
    let rights;
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() {
        &[]
    } else {
        raw = fds.iter().map(AsRawFd::as_raw_fd).collect();
        rights = [ControlMessage::ScmRights(&raw)];
        &rights
    };
    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    sendmsg::<UnixAddr>(fd.as_raw_fd(), &iov, cmsgs, flags, None).map_err(io::Error::from)
}

/// A control-message buffer aligned for `cmsghdr`, sized for `max_fds` descriptors.
pub(crate) struct CmsgBuf {
    words: Vec<u64>,
    len: usize,
}

impl CmsgBuf {
    pub(crate) fn new(max_fds: usize) -> Self {
        let payload =
            u32::try_from(max_fds.max(1) * mem::size_of::<libc::c_int>()).unwrap_or(u32::MAX);
        // SAFETY: CMSG_SPACE only does arithmetic on its argument.
        let len = unsafe { libc::CMSG_SPACE(payload) } as usize;
        CmsgBuf {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }
}

/// What one `recvmsg` brought.
pub(crate) struct Received {
    pub(crate) bytes: usize,
    pub(crate) fds: Vec<OwnedFd>,
    /// The kernel dropped descriptors that did not fit (`MSG_CTRUNC`); those in `fds` did arrive.
    pub(crate) truncated: bool,
}

/// Reads into `buf` with `MSG_CMSG_CLOEXEC`, taking ownership of every descriptor that arrived,
/// even when the control buffer was too small, so none leaks.
pub(crate) fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], cmsg: &mut CmsgBuf) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.words.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.len as _;
    let flags = libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT;
    // SAFETY: msg points at `iov` and `cmsg`, both live and writable for the lengths given.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR/CMSG_NXTHDR stay within msg_controllen.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: c is non-null and points at a cmsghdr inside our aligned buffer.
        let hdr = unsafe { &*c };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_DATA points just past the header of the same control message.
            let data = unsafe { libc::CMSG_DATA(c) };
            let header = data as usize - c as usize;
            let count =
                (hdr.cmsg_len as usize).saturating_sub(header) / mem::size_of::<libc::c_int>();
            for i in 0..count {
                // SAFETY: `count` ints follow CMSG_DATA within cmsg_len; they may be unaligned.
                let raw = unsafe { data.cast::<libc::c_int>().add(i).read_unaligned() };
                // SAFETY: the kernel just installed this descriptor for us; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR; returns null past the end.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    Ok(Received {
        bytes: n as usize,
        fds,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Makes `cmd`'s child find `src` at descriptor number `target`, without CLOEXEC.
pub(crate) fn inherit_at(cmd: &mut Command, src: RawFd, target: RawFd) {
    let hook = move || {
        if src == target {
            // dup2 onto itself keeps CLOEXEC, so clear it by hand.
            // SAFETY: fcntl is async-signal-safe and touches only the descriptor table.
            let flags = unsafe { libc::fcntl(target, libc::F_GETFD) };
            // SAFETY: as above.
            if flags < 0
                || unsafe { libc::fcntl(target, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0
            {
                return Err(io::Error::last_os_error());
            }
        // SAFETY: dup2 is async-signal-safe; the new descriptor has CLOEXEC clear.
        } else if unsafe { libc::dup2(src, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec, where only async-signal-safe calls are
    // allowed: it calls only fcntl and dup2, allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Reads an integer socket option of a raw descriptor.
fn int_sockopt(raw: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are live and sized for an int option; a bad descriptor gives EBADF.
    let rc = unsafe {
        libc::getsockopt(
            raw,
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// The pid of the process at the other end of Unix socket `raw` when the connection (or the
/// socketpair) was made.
pub(crate) fn peer_pid(raw: RawFd) -> io::Result<libc::pid_t> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are live and sized for SO_PEERCRED; a bad descriptor gives EBADF,
    // a socket of another kind an error or a zero pid.
    let rc = unsafe {
        libc::getsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(cred.pid)
    }
}

/// Checks that the inherited descriptor `raw` is an open Unix stream socket, then takes
/// ownership of it and sets CLOEXEC so our own children do not inherit it. A descriptor that
/// fails the checks is left alone (it may be someone else's).
///
/// The caller guarantees nothing else in this process owns `raw` (`bootstrap::from_env`
/// adopts each number at most once).
pub(crate) fn adopt_unix_stream(
    raw: RawFd,
    accept: impl FnOnce(RawFd) -> Result<(), String>,
) -> Result<OwnedFd, String> {
    // SAFETY: F_GETFD only reads the descriptor's flags; an invalid number gives EBADF.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    if flags < 0 {
        return Err(format!(
            "file descriptor {raw} is not open ({})",
            io::Error::last_os_error()
        ));
    }
    match (
        int_sockopt(raw, libc::SO_DOMAIN),
        int_sockopt(raw, libc::SO_TYPE),
    ) {
        (Ok(libc::AF_UNIX), Ok(libc::SOCK_STREAM)) => {}
        (Err(e), _) | (_, Err(e)) => {
            return Err(format!("file descriptor {raw} is not a socket ({e})"));
        }
        (Ok(domain), Ok(kind)) => {
            return Err(format!(
                "file descriptor {raw} is a socket of domain {domain} and type {kind}, not a Unix stream socket"
            ));
        }
    }
    // The caller's own check (the peer), before anything about the descriptor changes.
    accept(raw)?;
    // SAFETY: F_SETFD on the open descriptor checked above.
    if unsafe { libc::fcntl(raw, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(format!(
            "cannot set CLOEXEC on file descriptor {raw} ({})",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: the descriptor is open, it is the socket the master made for us, and the caller
    // guarantees no one else in this process owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}
