use std::io;

/// Everything that can go wrong on an IPC channel.
///
/// Errors that leave the byte stream out of sync (a bad frame, a payload that does not decode,
/// missing file descriptors) close the channel: the call that hit them returns the error and
/// every later call returns [`Error::Closed`]. A payload that does not decode can be made an
/// error of its frame alone ([`crate::Config::with_close_on_decode_error`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket failed (the peer vanished, the descriptor was closed, ...). The
    /// [`io::Error`] is the `source()`, not part of the message.
    #[error("I/O error on the IPC socket")]
    Io(#[from] io::Error),
    /// A frame header announced more bytes than the configured limit.
    #[error(
        "frame of {len} bytes exceeds the limit of {max} bytes; the channel is closed \
         (raise `max_frame_len` on both sides, or send smaller messages)"
    )]
    FrameTooLarge {
        /// The length the frame claimed (or, when sending, the encoded length).
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// A frame of length zero, which no sender produces.
    #[error(
        "received an empty frame; the channel is closed (is the peer speaking the cluster IPC protocol?)"
    )]
    EmptyFrame,
    /// The peer closed its end in the middle of a frame.
    #[error(
        "the peer closed the channel in the middle of a frame ({got} bytes of it had arrived); \
         the channel is closed"
    )]
    Truncated {
        /// How many bytes of the unfinished frame had arrived.
        got: usize,
    },
    /// A payload did not decode as the expected type.
    #[error(
        "could not decode a `{type_name}` from a {len}-byte payload with the {codec} codec: {reason}; \
         the channel is closed (do both sides use the same message types?)"
    )]
    Decode {
        /// The Rust type that was expected.
        type_name: &'static str,
        /// The payload length.
        len: usize,
        /// The codec's name.
        codec: &'static str,
        /// What the codec reported.
        reason: String,
    },
    /// A value could not be encoded (a serde `Serialize` impl failed, or the codec cannot
    /// represent it). Nothing was sent.
    #[error("could not encode a `{type_name}` with the {codec} codec: {reason}; nothing was sent")]
    Encode {
        /// The Rust type being sent.
        type_name: &'static str,
        /// The codec's name.
        codec: &'static str,
        /// What the codec reported.
        reason: String,
    },
    /// A frame of a kind this version does not know.
    #[error(
        "unknown frame kind {kind:#04x}; the channel is closed (is the peer speaking the cluster IPC protocol?)"
    )]
    UnknownFrame {
        /// The kind byte that was received.
        kind: u8,
    },
    /// The peer sent a frame that breaks the protocol.
    #[error("the peer broke the IPC protocol: {0}; the channel is closed")]
    Protocol(String),
    /// The channel was closed, by an earlier error or by the peer.
    #[error("the IPC channel is closed")]
    Closed,
    /// The peer speaks another protocol version.
    #[error(
        "IPC protocol version mismatch: this side speaks version {ours}, the peer speaks {theirs}; \
         run compatible cluster releases on both sides"
    )]
    VersionMismatch {
        /// Our [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// The peer encodes payloads with another codec.
    #[error(
        "IPC codec mismatch: this side encodes with {ours}, the peer with {theirs}; \
         build both sides with the same codec"
    )]
    CodecMismatch {
        /// Our codec's name.
        ours: &'static str,
        /// The peer's codec name.
        theirs: String,
    },
    /// The peer's first frame was not a valid hello.
    #[error("bad IPC handshake from the peer: {0}")]
    Handshake(String),
    /// The kernel truncated the file descriptors of a message (`MSG_CTRUNC`).
    #[error("file descriptors were truncated in transit (MSG_CTRUNC); the channel is closed")]
    FdsTruncated,
    /// A frame announced more file descriptors than arrived with it.
    #[error(
        "a frame announced {expected} file descriptors but {received} arrived; the channel is closed"
    )]
    MissingFds {
        /// How many the frame announced.
        expected: usize,
        /// How many had arrived.
        received: usize,
    },
    /// A message carried more file descriptors than allowed.
    #[error(
        "a message may carry at most {max} file descriptors, this one has {count}; nothing was sent"
    )]
    TooManyFds {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A configuration value is out of range.
    #[error("invalid IPC option `{option}`: {reason}")]
    Config {
        /// The option's name.
        option: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The environment told this process it has an IPC channel, but it does not.
    #[error("{var}: {reason}")]
    Bootstrap {
        /// The environment variable.
        var: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// The common thiserror mistake, `#[error("...: {0}")]` with `#[from]`, prints the cause
    /// twice once a reporter walks `source()`: the message must leave it to `source()`.
    #[test]
    fn no_message_repeats_its_source() {
        let with_sources = [Error::Io(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the peer hung up",
        ))];
        for error in &with_sources {
            let source = error.source().expect("a variant with a source").to_string();
            assert!(
                !error.to_string().contains(&source),
                "{error} repeats its source {source}"
            );
        }
    }
}
