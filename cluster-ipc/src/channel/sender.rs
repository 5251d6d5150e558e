//! The sending half and its writer task: encoding into the shared buffer, backpressure, and
//! batching queued frames into few `sendmsg` calls. Separate from the receiver because the two
//! halves share nothing but the socket and its write state.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use serde::Serialize;
use tokio::io::Interest;
use tokio::net::UnixStream;

use super::shared::{READ_GROWTH, Shared, WriteState};
use crate::codec::{Codec, DefaultCodec};
use crate::frame::{self, KIND_MESSAGE};
use crate::sys;
use crate::{Error, Result};

/// Drops with the last clone of a [`Sender`], telling the writer task to finish.
pub(super) struct SenderHandle {
    pub(super) shared: Arc<Shared>,
}

impl Drop for SenderHandle {
    fn drop(&mut self) {
        self.shared.lock().senders_gone = true;
        self.shared.wake_writer.notify_one();
    }
}

/// The sending half of a channel. Clone it to send from several tasks; the channel's direction
/// closes (the peer's `recv` returns `Ok(None)`) when the last clone is dropped and every queued
/// message has been written.
///
/// `send` encodes into a shared buffer and returns; a writer task hands everything queued to the
/// kernel in one `sendmsg`, so a burst leaves in few syscalls while a lone message leaves at
/// once. When more than [`Config::with_write_buffer`](crate::Config::with_write_buffer) bytes
/// wait, `send` waits.
pub struct Sender<T, C = DefaultCodec> {
    pub(super) handle: Arc<SenderHandle>,
    pub(super) codec: C,
    pub(super) max_frame_len: usize,
    pub(super) write_buffer: usize,
    pub(super) max_fds: usize,
    pub(super) _marker: PhantomData<fn(T)>,
}

impl<T, C: Codec> Clone for Sender<T, C> {
    fn clone(&self) -> Self {
        Sender {
            handle: self.handle.clone(),
            codec: self.codec.clone(),
            max_frame_len: self.max_frame_len,
            write_buffer: self.write_buffer,
            max_fds: self.max_fds,
            _marker: PhantomData,
        }
    }
}

impl<T, C> fmt::Debug for Sender<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("fd", &self.handle.shared.stream.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl<T: Serialize, C: Codec> Sender<T, C> {
    /// Queues one message. Returns once it is queued (or an error if it cannot be encoded or the
    /// channel is closed); waits while the write buffer is full. Cancel-safe: if the future is
    /// dropped, the message was either queued whole or not at all.
    pub async fn send(&self, msg: &T) -> Result<()> {
        self.send_with_fds(msg, Vec::new()).await
    }

    /// Queues one message with descriptors, which the peer receives with this message and no
    /// other. The descriptors are closed here once sent (the peer holds its own copies), and
    /// closed without being sent if an error is returned.
    pub async fn send_with_fds(&self, msg: &T, fds: Vec<OwnedFd>) -> Result<()> {
        if fds.len() > self.max_fds {
            return Err(Error::TooManyFds {
                count: fds.len(),
                max: self.max_fds,
            });
        }
        let shared = &self.handle.shared;
        let mut fds = Some(fds);
        // Fast path: room in the buffer, so no waiter needs registering.
        if let Some(done) = self.try_enqueue(msg, &mut fds) {
            return done;
        }
        loop {
            // Register for progress before checking again, so a wake-up between the check and
            // the wait is not lost.
            let progress = shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if let Some(done) = self.try_enqueue(msg, &mut fds) {
                return done;
            }
            progress.await;
        }
    }

    /// Queues `msg` if the channel is closed (an error) or has room; `None` when the buffer is
    /// full and the caller must wait. `fds` is taken only when the message is queued.
    fn try_enqueue(&self, msg: &T, fds: &mut Option<Vec<OwnedFd>>) -> Option<Result<()>> {
        let shared = &self.handle.shared;
        let mut st = shared.lock();
        if st.closed {
            return Some(Err(Shared::closed_error(&st)));
        }
        if !st.buf.is_empty() && st.buf.len() >= self.write_buffer {
            return None;
        }
        let fds = fds.take().unwrap_or_default();
        let was_empty = st.buf.is_empty();
        if let Err(e) = self.encode_into(&mut st, msg, fds) {
            return Some(Err(e));
        }
        drop(st);
        if was_empty {
            shared.wake_writer.notify_one();
        }
        Some(Ok(()))
    }

    fn encode_into(&self, st: &mut WriteState, msg: &T, fds: Vec<OwnedFd>) -> Result<()> {
        let start = st.buf.len();
        if !fds.is_empty() {
            // max_fds <= 253, so the count fits.
            frame::push_fds_frame(&mut st.buf, fds.len() as u16);
        }
        let frame_start = frame::begin(&mut st.buf, KIND_MESSAGE);
        let encoded = self
            .codec
            .encode(msg, &mut st.buf)
            .and_then(|()| frame::patch_len(&mut st.buf, frame_start, self.max_frame_len));
        if let Err(e) = encoded {
            st.buf.truncate(start);
            return Err(e);
        }
        if !fds.is_empty() {
            st.fds.push_back((start, fds));
        }
        st.enqueued += (st.buf.len() - start) as u64;
        Ok(())
    }

    /// Waits until every message queued before this call has been handed to the kernel.
    pub async fn flush(&self) -> Result<()> {
        self.handle.shared.flush().await
    }

    /// Whether the channel refuses new messages.
    pub fn is_closed(&self) -> bool {
        self.handle.shared.lock().closed
    }

    /// Closes the channel in both directions at once, dropping whatever is still queued.
    pub fn close(&self) {
        self.handle.shared.close();
    }
}

/// Writes whatever senders queued, one batch per `sendmsg`, until the senders are gone or the
/// channel closes.
pub(super) async fn write_loop(shared: Arc<Shared>, write_buffer: usize) {
    let mut batch = Vec::new();
    let mut fds = VecDeque::new();
    loop {
        let finish;
        {
            let mut st = shared.lock();
            if st.closed {
                return;
            }
            finish = st.senders_gone;
            std::mem::swap(&mut st.buf, &mut batch);
            std::mem::swap(&mut st.fds, &mut fds);
        }
        if batch.is_empty() {
            if finish {
                let _ = nix::sys::socket::shutdown(
                    shared.stream.as_raw_fd(),
                    nix::sys::socket::Shutdown::Write,
                );
                return;
            }
            shared.wake_writer.notified().await;
            continue;
        }
        // The buffer is free again: senders waiting for room may go on.
        shared.progress.notify_waiters();
        let result = write_batch(&shared.stream, &batch, &mut fds).await;
        {
            let mut st = shared.lock();
            match result {
                Ok(()) => st.written += batch.len() as u64,
                Err(e) => {
                    st.failure = Some((e.kind(), e.to_string()));
                    st.closed = true;
                    st.buf.clear();
                    st.fds.clear();
                }
            }
        }
        shared.progress.notify_waiters();
        batch.clear();
        fds.clear();
        if batch.capacity() > 4 * write_buffer.max(READ_GROWTH) {
            batch = Vec::new();
        }
    }
}

/// Writes `buf`, starting a new `sendmsg` at each offset that carries descriptors.
async fn write_batch(
    stream: &UnixStream,
    buf: &[u8],
    fds: &mut VecDeque<(usize, Vec<OwnedFd>)>,
) -> io::Result<()> {
    let mut pos = 0;
    while pos < buf.len() {
        let attach = match fds.front() {
            Some((offset, _)) if *offset == pos => fds.pop_front().map(|(_, f)| f),
            _ => None,
        };
        let end = fds.front().map_or(buf.len(), |(offset, _)| *offset);
        let chunk = &buf[pos..end];
        let rights: &[OwnedFd] = attach.as_deref().unwrap_or(&[]);
        let n = stream
            .async_io(Interest::WRITABLE, || {
                sys::send(stream.as_fd(), chunk, rights)
            })
            .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the IPC socket accepted no bytes",
            ));
        }
        pos += n;
    }
    Ok(())
}
