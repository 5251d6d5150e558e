//! The receiving half: reading frames into one buffer, pairing descriptors with their message,
//! and the hello check. Separate from the sender because all its state is its own (one task
//! reads), while the sender's is shared between tasks.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio::io::Interest;

use super::config::MAX_FDS_LIMIT;
use super::shared::{READ_GROWTH, Shared};
use crate::codec::{Codec, DefaultCodec};
use crate::frame::{self, HEADER_LEN, KIND_FDS, KIND_HELLO, KIND_MESSAGE};
use crate::sys;
use crate::{Error, Result};

/// Descriptors received ahead of their frame beyond this many mean a misbehaving peer.
const MAX_PENDING_FDS: usize = 4 * MAX_FDS_LIMIT;
/// The smallest read window: large enough to take a burst of small frames in one syscall.
const READ_WINDOW: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadState {
    Open,
    Eof,
    Failed,
}

/// The receiving half of a channel. Not clonable: one task reads.
pub struct Receiver<T, C = DefaultCodec> {
    pub(super) shared: Arc<Shared>,
    pub(super) codec: C,
    pub(super) max_frame_len: usize,
    pub(super) buf: Vec<u8>,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) cmsg: sys::CmsgBuf,
    /// Descriptors that arrived and whose descriptors frame has not been parsed yet.
    pub(super) pending_fds: VecDeque<OwnedFd>,
    /// Descriptors of the last descriptors frame, waiting for their message frame.
    pub(super) attached: Option<Vec<OwnedFd>>,
    pub(super) state: ReadState,
    /// See [`crate::Config::with_close_on_decode_error`].
    pub(super) close_on_decode_error: bool,
    pub(super) _marker: PhantomData<fn() -> T>,
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
                Err(e) => Err(self.undecodable(e)),
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
    /// A frame over the limit, a truncated frame, a payload that does not decode (unless
    /// [`crate::Config::with_close_on_decode_error`] says otherwise) or missing descriptors
    /// return an error and close the channel.
    pub async fn recv_with_fds(&mut self) -> Result<Option<(T, Vec<OwnedFd>)>> {
        if let Some(body) = self.buffered_message() {
            return match self.codec.decode::<T>(&self.buf[body.0..body.1]) {
                Ok(msg) => Ok(Some((msg, Vec::new()))),
                Err(e) => Err(self.undecodable(e)),
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
                        Err(e) => Err(self.undecodable(e)),
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

    pub(super) async fn expect_hello(&mut self) -> Result<()> {
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
    /// A whole frame whose message did not decode (it has been consumed, with its
    /// descriptors): the channel closes unless the config keeps it open.
    fn undecodable(&mut self, err: Error) -> Error {
        if self.close_on_decode_error {
            self.fail(err)
        } else {
            err
        }
    }

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
