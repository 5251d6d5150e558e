//! Typed channels over a Unix stream socket.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::Notify;

use crate::codec::{Codec, DefaultCodec};
use crate::frame::{self, FDS_FRAME_LEN, HEADER_LEN, KIND_FDS, KIND_HELLO, KIND_MESSAGE};
use crate::sys;
use crate::{Error, Result};

/// The most descriptors one message may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS_LIMIT: usize = 253;
/// Descriptors received ahead of their frame beyond this many mean a misbehaving peer.
const MAX_PENDING_FDS: usize = 4 * MAX_FDS_LIMIT;
/// The receive buffer grows by at most this much beyond what has arrived, so a header that
/// claims a large frame costs nothing until its bytes actually come.
const READ_GROWTH: usize = 1 << 20;
/// The smallest read window: large enough to take a burst of small frames in one syscall.
const READ_WINDOW: usize = 64 << 10;

/// Limits of a channel. Both ends should agree on `max_frame_len`.
///
/// ```
/// let config = cluster_ipc::Config::default().with_max_frame_len(1 << 20);
/// assert_eq!(config.max_frame_len(), 1 << 20);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Config {
    max_frame_len: usize,
    write_buffer: usize,
    max_fds: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_len: 16 << 20,
            write_buffer: 256 << 10,
            max_fds: 64,
        }
    }
}

impl Config {
    /// The largest payload accepted or sent, in bytes (default 16 MiB, at most `u32::MAX`).
    pub fn with_max_frame_len(mut self, bytes: usize) -> Self {
        self.max_frame_len = bytes;
        self
    }

    /// How many encoded bytes may wait to be written before `send` waits (default 256 KiB).
    /// This is the channel's backpressure.
    pub fn with_write_buffer(mut self, bytes: usize) -> Self {
        self.write_buffer = bytes;
        self
    }

    /// How many descriptors one message may carry (default 64, at most 253).
    pub fn with_max_fds(mut self, count: usize) -> Self {
        self.max_fds = count;
        self
    }

    /// The largest payload, in bytes.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The write buffer's size, in bytes.
    pub fn write_buffer(&self) -> usize {
        self.write_buffer
    }

    /// The most descriptors per message.
    pub fn max_fds(&self) -> usize {
        self.max_fds
    }

    /// Checks every limit is in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |option, reason: String| Err(Error::Config { option, reason });
        if self.max_frame_len < 64 || self.max_frame_len > u32::MAX as usize {
            return bad(
                "max_frame_len",
                format!("{} is outside 64..={}", self.max_frame_len, u32::MAX),
            );
        }
        if self.write_buffer == 0 {
            return bad("write_buffer", "must be at least 1 byte".into());
        }
        if self.max_fds == 0 || self.max_fds > MAX_FDS_LIMIT {
            return bad(
                "max_fds",
                format!("{} is outside 1..={MAX_FDS_LIMIT}", self.max_fds),
            );
        }
        Ok(())
    }
}

/// What senders and the writer task share.
struct Shared {
    stream: UnixStream,
    state: Mutex<WriteState>,
    /// Wakes the writer task when the buffer goes from empty to not empty, or on close.
    wake_writer: Notify,
    /// Wakes senders waiting for room and flushes waiting for bytes to leave.
    progress: Notify,
}

#[derive(Default)]
struct WriteState {
    /// Encoded frames waiting for the writer task.
    buf: Vec<u8>,
    /// Descriptors to attach to the `sendmsg` that starts at each offset of `buf`.
    fds: VecDeque<(usize, Vec<OwnedFd>)>,
    /// Bytes ever queued and ever written: `flush` waits for the second to catch up.
    enqueued: u64,
    written: u64,
    /// No more sends are accepted (a failure on either side, or `close`).
    closed: bool,
    /// Every `Sender` is gone: write what is left, then shut down our direction.
    senders_gone: bool,
    /// Why the writer stopped, if it failed.
    failure: Option<(io::ErrorKind, String)>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, WriteState> {
        // A panic while holding this lock leaves the state consistent enough to report errors.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses further sends, wakes everyone, and shuts the socket down both ways so the peer
    /// sees the end at once.
    fn close(&self) {
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

    fn closed_error(st: &WriteState) -> Error {
        match &st.failure {
            Some((kind, msg)) => Error::Io(io::Error::new(*kind, msg.clone())),
            None => Error::Closed,
        }
    }

    /// Waits until every byte queued before the call has been handed to the kernel.
    async fn flush(&self) -> Result<()> {
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

/// Drops with the last clone of a [`Sender`], telling the writer task to finish.
struct SenderHandle {
    shared: Arc<Shared>,
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
/// once. When more than [`Config::with_write_buffer`] bytes wait, `send` waits.
pub struct Sender<T, C = DefaultCodec> {
    handle: Arc<SenderHandle>,
    codec: C,
    max_frame_len: usize,
    write_buffer: usize,
    max_fds: usize,
    _marker: PhantomData<fn(T)>,
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
async fn write_loop(shared: Arc<Shared>, write_buffer: usize) {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadState {
    Open,
    Eof,
    Failed,
}

/// The receiving half of a channel. Not clonable: one task reads.
pub struct Receiver<T, C = DefaultCodec> {
    shared: Arc<Shared>,
    codec: C,
    max_frame_len: usize,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    cmsg: sys::CmsgBuf,
    /// Descriptors that arrived and whose descriptors frame has not been parsed yet.
    pending_fds: VecDeque<OwnedFd>,
    /// Descriptors of the last descriptors frame, waiting for their message frame.
    attached: Option<Vec<OwnedFd>>,
    state: ReadState,
    _marker: PhantomData<fn() -> T>,
}

impl<T, C> fmt::Debug for Receiver<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("fd", &self.shared.stream.as_raw_fd())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned, C: Codec> Receiver<T, C> {
    /// Receives the next message; `Ok(None)` when the peer closed its direction cleanly.
    /// Descriptors that came with the message are closed. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<T>> {
        if let Some(body) = self.buffered_message() {
            return match self.codec.decode::<T>(&self.buf[body.0..body.1]) {
                Ok(msg) => Ok(Some(msg)),
                Err(e) => Err(self.fail(e)),
            };
        }
        Ok(self.recv_with_fds().await?.map(|(msg, _)| msg))
    }

    /// The fast path of a burst: the payload range of a whole message frame that is already
    /// buffered, carries no descriptors and is within limits, consumed; `None` for anything
    /// else (the general path then reads, checks and reports as usual).
    #[inline]
    fn buffered_message(&mut self) -> Option<(usize, usize)> {
        if self.state != ReadState::Open || self.attached.is_some() {
            return None;
        }
        let frame = self.buf.get(self.start..self.end)?;
        let (header, rest) = frame.split_first_chunk::<HEADER_LEN>()?;
        let len = u32::from_le_bytes(*header) as usize;
        if len == 0 || len > self.max_frame_len || rest.len() < len || rest[0] != KIND_MESSAGE {
            return None;
        }
        let body = (self.start + HEADER_LEN + 1, self.start + HEADER_LEN + len);
        self.start += HEADER_LEN + len;
        Some(body)
    }

    /// Receives the next message with the descriptors sent with it (CLOEXEC set), in order.
    /// Cancel-safe: dropping the future loses nothing.
    ///
    /// A frame over the limit, a truncated frame, a payload that does not decode or missing
    /// descriptors return an error and close the channel.
    pub async fn recv_with_fds(&mut self) -> Result<Option<(T, Vec<OwnedFd>)>> {
        if let Some(body) = self.buffered_message() {
            return match self.codec.decode::<T>(&self.buf[body.0..body.1]) {
                Ok(msg) => Ok(Some((msg, Vec::new()))),
                Err(e) => Err(self.fail(e)),
            };
        }
        loop {
            let Some((kind, body)) = self.next_frame().await? else {
                return Ok(None);
            };
            match kind {
                KIND_MESSAGE => {
                    let decoded = self.codec.decode::<T>(&self.buf[body.0..body.1]);
                    let fds = self.attached.take().unwrap_or_default();
                    return match decoded {
                        Ok(msg) => Ok(Some((msg, fds))),
                        Err(e) => Err(self.fail(e)),
                    };
                }
                KIND_FDS => {
                    let count = match frame::fds_count(&self.buf[body.0..body.1]) {
                        Ok(count) => count,
                        Err(e) => return Err(self.fail(e)),
                    };
                    if self.attached.is_some() {
                        return Err(
                            self.fail(Error::Protocol("two descriptors frames in a row".into()))
                        );
                    }
                    if self.pending_fds.len() < count {
                        let received = self.pending_fds.len();
                        return Err(self.fail(Error::MissingFds {
                            expected: count,
                            received,
                        }));
                    }
                    self.attached = Some(self.pending_fds.drain(..count).collect());
                }
                KIND_HELLO => return Err(self.fail(Error::Protocol("a second hello frame".into()))),
                kind => return Err(self.fail(Error::UnknownFrame { kind })),
            }
        }
    }

    async fn expect_hello(&mut self) -> Result<()> {
        let outcome = match self.next_frame().await {
            Ok(Some((KIND_HELLO, body))) => frame::check_hello(&self.buf[body.0..body.1], C::NAME),
            Ok(Some((kind, _))) => Err(Error::Handshake(format!(
                "expected a hello frame first, got frame kind {kind}"
            ))),
            Ok(None) => Err(Error::Handshake(
                "the peer closed the channel before its hello".into(),
            )),
            Err(e) => return Err(e),
        };
        if let Err(e) = outcome {
            // Let our own hello reach the peer, so it reports the mismatch too.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), self.shared.flush()).await;
            return Err(self.fail(e));
        }
        Ok(())
    }
}

impl<T, C> Receiver<T, C> {
    fn fail(&mut self, err: Error) -> Error {
        self.state = ReadState::Failed;
        self.pending_fds.clear();
        self.attached = None;
        self.buf = Vec::new();
        self.start = 0;
        self.end = 0;
        self.shared.close();
        err
    }

    /// The next whole frame's kind and payload range (after the kind byte) in `self.buf`,
    /// or `None` at a clean end of stream.
    async fn next_frame(&mut self) -> Result<Option<(u8, (usize, usize))>> {
        match self.state {
            ReadState::Open => {}
            ReadState::Eof => return Ok(None),
            ReadState::Failed => return Err(Error::Closed),
        }
        loop {
            let avail = self.end - self.start;
            let need = if avail >= HEADER_LEN {
                let mut header = [0u8; HEADER_LEN];
                header.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
                let len = u32::from_le_bytes(header) as usize;
                if len == 0 {
                    return Err(self.fail(Error::EmptyFrame));
                }
                if len > self.max_frame_len {
                    return Err(self.fail(Error::FrameTooLarge {
                        len: len as u64,
                        max: self.max_frame_len,
                    }));
                }
                if avail >= HEADER_LEN + len {
                    let kind = self.buf[self.start + HEADER_LEN];
                    let body = (self.start + HEADER_LEN + 1, self.start + HEADER_LEN + len);
                    self.start += HEADER_LEN + len;
                    return Ok(Some((kind, body)));
                }
                HEADER_LEN + len
            } else {
                HEADER_LEN
            };
            if self.read_more(need).await? == 0 {
                if avail == 0 && self.attached.is_none() {
                    self.state = ReadState::Eof;
                    self.pending_fds.clear();
                    return Ok(None);
                }
                return Err(self.fail(Error::Truncated { got: avail }));
            }
        }
    }

    /// Reads once from the socket, making room for a frame of `need` bytes at `start`.
    /// Returns 0 at end of stream.
    async fn read_more(&mut self, need: usize) -> Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > 4 * READ_GROWTH {
                self.buf = Vec::new();
            }
        } else if self.start > 0
            && (self.buf.len() - self.start < need || self.buf.len() - self.end < READ_WINDOW)
        {
            // Move the partial frame to the front rather than growing the buffer: a stream of
            // small frames rarely ends a read on a frame boundary, and growing would zero fresh
            // memory on every such read. This copies less than one frame's worth in that case.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // Rounded up so the buffer settles at a fixed size instead of creeping up by a partial
        // frame's length at a time.
        let target = (self.start + need)
            .min(self.end + READ_GROWTH)
            .max(self.end + READ_WINDOW)
            .next_multiple_of(READ_WINDOW);
        if self.buf.len() < target {
            self.buf.resize(target, 0);
        }
        let stream = &self.shared.stream;
        let window = &mut self.buf[self.end..];
        let cmsg = &mut self.cmsg;
        let got = match stream
            .async_io(Interest::READABLE, || {
                sys::recv(stream.as_fd(), window, cmsg)
            })
            .await
        {
            Ok(got) => got,
            Err(e) => return Err(self.fail(Error::Io(e))),
        };
        self.pending_fds.extend(got.fds);
        if got.truncated {
            return Err(self.fail(Error::FdsTruncated));
        }
        if self.pending_fds.len() > MAX_PENDING_FDS {
            return Err(self.fail(Error::Protocol(format!(
                "more than {MAX_PENDING_FDS} descriptors arrived ahead of their frames"
            ))));
        }
        self.end += got.bytes;
        Ok(got.bytes)
    }
}

/// A bidirectional typed channel: sends `Tx`, receives `Rx`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cluster_ipc::Error> {
/// use cluster_ipc::{Channel, Config};
/// let (mut a, mut b) = Channel::<String, u32>::pair(Config::default()).await?;
/// a.send(&"ping".to_string()).await?;
/// assert_eq!(b.recv().await?, Some("ping".to_string()));
/// b.send(&7).await?;
/// assert_eq!(a.recv().await?, Some(7));
/// # Ok(())
/// # }
/// ```
pub struct Channel<Tx, Rx, C = DefaultCodec> {
    sender: Sender<Tx, C>,
    receiver: Receiver<Rx, C>,
}

impl<Tx, Rx, C> fmt::Debug for Channel<Tx, Rx, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("receiver", &self.receiver)
            .finish_non_exhaustive()
    }
}

impl<Tx: Serialize, Rx: DeserializeOwned, C: Codec> Channel<Tx, Rx, C> {
    /// Sets up a channel on a connected socket: starts its writer task, then exchanges hellos
    /// (protocol version and codec name) with the peer. Must run inside a tokio runtime. The
    /// handshake waits for the peer; bound it with `tokio::time::timeout` when the peer may not
    /// answer.
    pub async fn handshake(stream: UnixStream, config: Config) -> Result<Self> {
        config.validate()?;
        let hello = frame::hello(C::NAME);
        let state = WriteState {
            enqueued: hello.len() as u64,
            buf: hello,
            ..WriteState::default()
        };
        let shared = Arc::new(Shared {
            stream,
            state: Mutex::new(state),
            wake_writer: Notify::new(),
            progress: Notify::new(),
        });
        tokio::spawn(write_loop(shared.clone(), config.write_buffer));
        let sender = Sender {
            handle: Arc::new(SenderHandle {
                shared: shared.clone(),
            }),
            codec: C::default(),
            max_frame_len: config.max_frame_len,
            write_buffer: config.write_buffer.max(FDS_FRAME_LEN),
            max_fds: config.max_fds,
            _marker: PhantomData,
        };
        let mut receiver = Receiver {
            shared,
            codec: C::default(),
            max_frame_len: config.max_frame_len,
            buf: Vec::new(),
            start: 0,
            end: 0,
            cmsg: sys::CmsgBuf::new(config.max_fds),
            pending_fds: VecDeque::new(),
            attached: None,
            state: ReadState::Open,
            _marker: PhantomData,
        };
        receiver.expect_hello().await?;
        Ok(Channel { sender, receiver })
    }

    /// [`Channel::handshake`] on a standard-library socket (made non-blocking first).
    pub async fn from_std(stream: std::os::unix::net::UnixStream, config: Config) -> Result<Self> {
        stream.set_nonblocking(true)?;
        Self::handshake(UnixStream::from_std(stream)?, config).await
    }

    /// Two connected channels in this process (a socketpair), mostly for tests.
    pub async fn pair(config: Config) -> Result<(Self, Channel<Rx, Tx, C>)>
    where
        Tx: DeserializeOwned,
        Rx: Serialize,
    {
        let (a, b) = UnixStream::pair()?;
        tokio::try_join!(
            Self::handshake(a, config.clone()),
            Channel::<Rx, Tx, C>::handshake(b, config)
        )
    }

    /// See [`Sender::send`].
    pub async fn send(&self, msg: &Tx) -> Result<()> {
        self.sender.send(msg).await
    }

    /// See [`Sender::send_with_fds`].
    pub async fn send_with_fds(&self, msg: &Tx, fds: Vec<OwnedFd>) -> Result<()> {
        self.sender.send_with_fds(msg, fds).await
    }

    /// See [`Sender::flush`].
    pub async fn flush(&self) -> Result<()> {
        self.sender.flush().await
    }

    /// See [`Receiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<Rx>> {
        self.receiver.recv().await
    }

    /// See [`Receiver::recv_with_fds`].
    pub async fn recv_with_fds(&mut self) -> Result<Option<(Rx, Vec<OwnedFd>)>> {
        self.receiver.recv_with_fds().await
    }

    /// A new handle for sending from another task.
    pub fn sender(&self) -> Sender<Tx, C> {
        self.sender.clone()
    }

    /// Splits into halves that can live in different tasks.
    pub fn split(self) -> (Sender<Tx, C>, Receiver<Rx, C>) {
        (self.sender, self.receiver)
    }
}
