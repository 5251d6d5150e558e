//! The wire format (see WIRE.md, included in the crate docs).
//!

use crate::Error;

pub(crate) const HEADER_LEN: usize = 4;
pub(crate) const KIND_MESSAGE: u8 = 0;
pub(crate) const KIND_FDS: u8 = 1;
pub(crate) const KIND_HELLO: u8 = 2;
/// Length of a whole descriptors frame: header, kind, count.
pub(crate) const FDS_FRAME_LEN: usize = HEADER_LEN + 1 + 2;

const MAGIC: &[u8; 8] = b"CLUSTER\0";

/// The version of the frame protocol, exchanged in the handshake. It changes only when old and
/// new peers could no longer understand each other.
pub const PROTOCOL_VERSION: u16 = 1;

/// Appends a frame header with a zero length, to patch with [`patch_len`] once the payload is in.
pub(crate) fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, kind]);
    start
}

/// Writes the length of the frame that starts at `start`; fails if it exceeds `max`.
pub(crate) fn patch_len(out: &mut [u8], start: usize, max: usize) -> Result<(), Error> {
    let len = out.len() - start - HEADER_LEN;
    if len > max {
        return Err(Error::FrameTooLarge {
            len: len as u64,
            max,
        });
    }
    out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

pub(crate) fn push_fds_frame(out: &mut Vec<u8>, count: u16) {
    out.extend_from_slice(&3u32.to_le_bytes());
    out.push(KIND_FDS);
    out.extend_from_slice(&count.to_le_bytes());
}

pub(crate) fn hello(codec: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    let start = begin(&mut out, KIND_HELLO);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    let name = &codec.as_bytes()[..codec.len().min(255)];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    let len = out.len() - start - HEADER_LEN;
    out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
    out
}

/// Checks a peer's hello payload (after the kind byte) against ours.
pub(crate) fn check_hello(body: &[u8], our_codec: &'static str) -> Result<(), Error> {
    let rest = body.strip_prefix(MAGIC.as_slice()).ok_or_else(|| {
        Error::Handshake("the hello frame does not start with the cluster magic".into())
    })?;
    let (version, rest) = rest
        .split_first_chunk::<2>()
        .ok_or_else(|| Error::Handshake("the hello frame ends before its version".into()))?;
    let theirs = u16::from_le_bytes(*version);
    if theirs != PROTOCOL_VERSION {
        return Err(Error::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    let (&name_len, name) = rest
        .split_first()
        .ok_or_else(|| Error::Handshake("the hello frame ends before its codec name".into()))?;
    if name.len() != usize::from(name_len) {
        return Err(Error::Handshake(format!(
            "the hello frame's codec name should be {name_len} bytes, found {}",
            name.len()
        )));
    }
    if name != our_codec.as_bytes() {
        return Err(Error::CodecMismatch {
            ours: our_codec,
            theirs: String::from_utf8_lossy(name).into_owned(),
        });
    }
    Ok(())
}

pub(crate) fn fds_count(body: &[u8]) -> Result<usize, Error> {
    let bytes: [u8; 2] = body.try_into().map_err(|_| {
        Error::Protocol(format!(
            "a descriptors frame must hold 2 bytes, found {}",
            body.len()
        ))
    })?;
    Ok(usize::from(u16::from_le_bytes(bytes)))
}
