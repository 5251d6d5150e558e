//! Payload encodings. This module is the only place that names bincode or postcard.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

/// Turns values into frame payloads and back.
///
/// Both ends of a channel must use the same codec; the handshake compares [`Codec::NAME`].
///
/// ```
/// use cluster_ipc::{Bincode, Codec};
/// let mut buf = Vec::new();
/// Bincode.encode(&("hello", 42u32), &mut buf).unwrap();
/// let back: (String, u32) = Bincode.decode(&buf).unwrap();
/// assert_eq!(back, ("hello".to_string(), 42));
/// ```
pub trait Codec: Clone + Default + fmt::Debug + Send + Sync + 'static {
    /// A name that identifies the wire format, exchanged in the handshake.
    const NAME: &'static str;

    /// Appends the encoding of `value` to `out`. On error `out` may hold a partial encoding;
    /// the caller truncates it.
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), Error>;

    /// Decodes a whole payload. Trailing bytes are an error.
    ///
    /// A claimed length never allocates beyond what the payload could hold, with one bound
    /// left to serde: a sequence or map preallocates at most 1 MiB from its claimed length
    /// before its elements are read. Decoding recurses once per nesting level, so a
    /// *recursive* message type (`enum Tree { Node(Box<Tree>) }`) fed a payload nested
    /// millions deep can exhaust the stack; cluster's own messages are not recursive.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, Error>;
}

/// bincode 2 with its `standard` configuration (little-endian, varint).
///
/// The default codec. bincode is unmaintained (RUSTSEC-2025-0141); see [`Postcard`] (feature
/// `postcard`) for the maintained alternative. Avoid the serde attributes bincode cannot
/// round-trip: `skip_serializing_if`, `flatten`, `untagged`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bincode;

fn decode_error<T>(codec: &'static str, len: usize, reason: impl fmt::Display) -> Error {
    Error::Decode {
        type_name: std::any::type_name::<T>(),
        len,
        codec,
        reason: reason.to_string(),
    }
}

fn encode_error<T: ?Sized>(codec: &'static str, reason: impl fmt::Display) -> Error {
    Error::Encode {
        type_name: std::any::type_name::<T>(),
        codec,
        reason: reason.to_string(),
    }
}

/// bincode's decode limit is a const generic, but it must follow the payload's length.
/// bincode counts claims in memory bytes, not wire bytes: a varint `u64` of one wire byte
/// claims 8, a `u128` 16. So a payload of `n` bytes can legitimately claim up to `16 n`, and the
/// limit is the next power of two at or above that (at least 4 KiB). Without a limit,
/// bincode allocates a claimed `Vec<u8>` length before reading it.
macro_rules! bincode_decode_limited {
    ($bytes:expr; $($exp:literal)*) => {{
        let bytes: &[u8] = $bytes;
        let exp = bytes.len().saturating_mul(16).max(1 << 12).next_power_of_two().trailing_zeros();
        match exp {
            $( $exp => bincode::serde::decode_from_slice(
                bytes,
                bincode::config::standard().with_limit::<{ 1usize << $exp }>(),
            ), )*
            _ => bincode::serde::decode_from_slice(
                bytes,
                bincode::config::standard().with_limit::<{ 1usize << 36 }>(),
            ),
        }
    }};
}

impl Codec for Bincode {
    const NAME: &'static str = "bincode-2-standard";

    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
            .map(|_| ())
            .map_err(|e| encode_error::<T>(Self::NAME, e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, Error> {
        let (value, used): (T, usize) = bincode_decode_limited!(bytes;
            12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35)
        .map_err(|e| decode_error::<T>(Self::NAME, bytes.len(), e))?;
        if used != bytes.len() {
            return Err(decode_error::<T>(
                Self::NAME,
                bytes.len(),
                format_args!("{} trailing bytes after the value", bytes.len() - used),
            ));
        }
        Ok(value)
    }
}

/// postcard 1 (stable, documented wire format; maintained). Enabled by the `postcard` feature.
#[cfg(feature = "postcard")]
#[derive(Clone, Copy, Debug, Default)]
pub struct Postcard;

#[cfg(feature = "postcard")]
impl Codec for Postcard {
    const NAME: &'static str = "postcard-1";

    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), Error> {
        postcard::serialize_with_flavor(value, AppendToVec(out))
            .map_err(|e| encode_error::<T>(Self::NAME, e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, Error> {
        // postcard reads lengths against the input slice, so a claimed length can never
        // allocate more than the payload holds.
        let (value, rest) = postcard::take_from_bytes::<T>(bytes)
            .map_err(|e| decode_error::<T>(Self::NAME, bytes.len(), e))?;
        if !rest.is_empty() {
            return Err(decode_error::<T>(
                Self::NAME,
                bytes.len(),
                format_args!("{} trailing bytes after the value", rest.len()),
            ));
        }
        Ok(value)
    }
}

/// A postcard output that appends to a caller's buffer, so frames already queued in it stay.
#[cfg(feature = "postcard")]
struct AppendToVec<'a>(&'a mut Vec<u8>);

#[cfg(feature = "postcard")]
impl postcard::ser_flavors::Flavor for AppendToVec<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The codec channels use unless told otherwise.
pub type DefaultCodec = Bincode;
