//! The socket and write state both halves hold: the sender queues into it, the receiver closes
//! it on a protocol failure and flushes through it during the handshake. Kept apart so neither
//! half depends on the other.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::net::UnixStream;
use tokio::sync::Notify;

use crate::{Error, Result};

/// The receive buffer grows by at most this much beyond what has arrived, so a header that
/// claims a large frame costs nothing until its bytes actually come.
pub(super) const READ_GROWTH: usize = 1 << 20;

/// What senders and the writer task share.
pub(super) struct Shared {
    pub(super) stream: UnixStream,
    pub(super) state: Mutex<WriteState>,
    /// Wakes the writer task when the buffer goes from empty to not empty, or on close.
    pub(super) wake_writer: Notify,
    /// Wakes senders waiting for room and flushes waiting for bytes to leave.
    pub(super) progress: Notify,
}

#[derive(Default)]
pub(super) struct WriteState {
    /// Encoded frames waiting for the writer task.
    pub(super) buf: Vec<u8>,
    /// Descriptors to attach to the `sendmsg` that starts at each offset of `buf`.
    pub(super) fds: VecDeque<(usize, Vec<OwnedFd>)>,
    /// Bytes ever queued and ever written: `flush` waits for the second to catch up.
    pub(super) enqueued: u64,
    pub(super) written: u64,
    /// No more sends are accepted (a failure on either side, or `close`).
    pub(super) closed: bool,
    /// Every `Sender` is gone: write what is left, then shut down our direction.
    pub(super) senders_gone: bool,
    /// Why the writer stopped, if it failed.
    pub(super) failure: Option<(io::ErrorKind, String)>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, WriteState> {
        // A panic while holding this lock leaves the state consistent enough to report errors.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses further sends, wakes everyone, and shuts the socket down both ways so the peer
    /// sees the end at once.
    pub(super) fn close(&self) {
        {
            let mut st = self.lock();
            st.closed = true;
            st.buf.clear();
            st.fds.clear();
        }
        let _ =
            nix::sys::socket::shutdown(self.stream.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        self.wake_writer.notify_one();
        self.progress.notify_waiters();
    }

    pub(super) fn closed_error(st: &WriteState) -> Error {
        match &st.failure {
            Some((kind, msg)) => Error::Io(io::Error::new(*kind, msg.clone())),
            None => Error::Closed,
        }
    }

    /// Waits until every byte queued before the call has been handed to the kernel.
    pub(super) async fn flush(&self) -> Result<()> {
        let target = self.lock().enqueued;
        loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            {
                let st = self.lock();
                if st.written >= target {
                    return Ok(());
                }
                if st.closed {
                    return Err(Self::closed_error(&st));
                }
            }
            progress.await;
        }
    }
}
