//! A channel's limits, apart from the halves that enforce them: both halves and the handshake
//! read them, and they are checked before any socket is touched.

use crate::{Error, Result};

/// The most descriptors one message may carry (the kernel's `SCM_MAX_FD`).
pub const MAX_FDS_LIMIT: usize = 253;

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
    close_on_decode_error: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_len: 16 << 20,
            write_buffer: 256 << 10,
            max_fds: 64,
            close_on_decode_error: true,
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

    /// Whether a message that does not decode closes the channel (default `true`: a peer that
    /// sends what this side cannot read is not trusted further). The frame itself was whole,
    /// so the stream stays in step: with `false`, `recv` returns the error and the next `recv`
    /// reads the next frame, and the channel can still send, so that a server can tell a
    /// client of another version why it was not understood. Frames that break the framing
    /// (too large, truncated, unknown kind) close the channel either way.
    pub fn with_close_on_decode_error(mut self, close: bool) -> Self {
        self.close_on_decode_error = close;
        self
    }

    /// Whether a message that does not decode closes the channel.
    pub fn close_on_decode_error(&self) -> bool {
        self.close_on_decode_error
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
