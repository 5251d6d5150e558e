//! Handing a channel to a spawned child process.
//!
//! The parent makes a socketpair with [`socketpair`], keeps one end, and passes the other to
//! the child with [`ChildEnd::pass_to`]: the child finds it at descriptor [`CHILD_FD`] and the
//! number in an environment variable. The child rebuilds its end with [`from_env`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), cluster_ipc::Error> {
//! use std::process::Command;
//! use cluster_ipc::{Channel, Config, bootstrap};
//!
//! // Parent
//! let (ours, child_end) = bootstrap::socketpair()?;
//! let mut cmd = Command::new("/proc/self/exe");
//! child_end.pass_to(&mut cmd, bootstrap::ENV_VAR);
//! let child = cmd.spawn()?;
//! drop(child_end); // the child has its copy
//! let channel = Channel::<String, String>::from_std(ours, Config::default()).await?;
//!
//! // Child
//! if let Some(stream) = bootstrap::from_env(bootstrap::ENV_VAR)? {
//!     let channel = Channel::<String, String>::from_std(stream, Config::default()).await?;
//! }
//! # Ok(()) }
//! ```

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::Mutex;

use crate::{Error, Result, sys};

/// The environment variable that names the child's descriptor, unless told otherwise.
pub const ENV_VAR: &str = "CLUSTER_IPC_FD";

/// The descriptor number the child finds its end at.
pub const CHILD_FD: RawFd = 3;

/// The child's end of a socketpair, to pass to a [`Command`] before spawning it.
#[derive(Debug)]
pub struct ChildEnd {
    fd: OwnedFd,
}

/// Creates a connected pair: the parent's end (CLOEXEC, blocking until handed to
/// [`Channel::from_std`](crate::Channel::from_std)) and the child's.
pub fn socketpair() -> Result<(UnixStream, ChildEnd)> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut fd = OwnedFd::from(theirs);
    // With stdin, stdout or stderr closed, the pair may land on 0-2, which the child's stdio
    // setup overwrites before our descriptor is moved; duplicate it above them (std's
    // `try_clone` duplicates to 3 or higher).
    if fd.as_raw_fd() < 3 {
        fd = fd.try_clone()?;
    }
    Ok((ours, ChildEnd { fd }))
}

impl ChildEnd {
    /// Makes `cmd`'s child find this end at [`CHILD_FD`], with `var` set to that number.
    /// Drop the `ChildEnd` after spawning: the child holds its own copy.
    pub fn pass_to(&self, cmd: &mut Command, var: &str) {
        sys::inherit_at(cmd, self.fd.as_raw_fd(), CHILD_FD);
        cmd.env(var, CHILD_FD.to_string());
    }
}

/// Descriptors this process has already adopted, so no descriptor gets two owners.
static ADOPTED: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// Takes the channel a parent passed in `var`: `Ok(None)` if `var` is not set, an error if it
/// is set but names no Unix stream socket (the process was started by hand, or the descriptor
/// was closed). The returned socket is CLOEXEC and non-blocking.
pub fn from_env(var: &str) -> Result<Option<UnixStream>> {
    adopt(var, false)
}

/// Like [`from_env`], and the socket's other end must be this process's parent (its
/// `SO_PEERCRED` pid is the parent's pid), or it is left alone and refused. A program that a
/// child starts in turn inherits the variable with the environment, and often a descriptor of
/// the same number that is something else entirely: this keeps it from taking that
/// descriptor for a channel to its parent.
pub fn from_parent(var: &str) -> Result<Option<UnixStream>> {
    adopt(var, true)
}

fn adopt(var: &str, from_parent: bool) -> Result<Option<UnixStream>> {
    let Some(value) = std::env::var_os(var) else {
        return Ok(None);
    };
    let bad = |reason: String| Error::Bootstrap {
        var: var.to_string(),
        reason: format!(
            "{reason}; this process was not started by a cluster master (do not set {var} by hand)"
        ),
    };
    let raw: RawFd = value
        .to_str()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n: &RawFd| *n >= 0)
        .ok_or_else(|| {
            bad(format!(
                "expected a file descriptor number, found {value:?}"
            ))
        })?;
    let mut adopted = ADOPTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if adopted.contains(&raw) {
        return Err(bad(format!(
            "file descriptor {raw} was already taken by this process"
        )));
    }
    // Checked before anything is taken: a descriptor that is not ours stays as it is.
    let peer_is_parent = |raw: RawFd| {
        if !from_parent {
            return Ok(());
        }
        let parent = std::os::unix::process::parent_id();
        match sys::peer_pid(raw) {
            Ok(peer) if u32::try_from(peer).is_ok_and(|peer| peer == parent) => Ok(()),
            Ok(peer) => Err(format!(
                "the other end of file descriptor {raw} is process {peer}, not this process's parent {parent}"
            )),
            Err(e) => Err(format!(
                "cannot learn the other end of file descriptor {raw} ({e})"
            )),
        }
    };
    let fd = sys::adopt_unix_stream(raw, peer_is_parent).map_err(bad)?;
    adopted.push(raw);
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    Ok(Some(stream))
}
