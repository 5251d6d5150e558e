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
        if let Some(value) = fast::decode(bytes) {
            return Ok(value);
        }
        bincode_decode(bytes)
    }
}

/// bincode's own decode: the reference for [`fast`], and what reports every error.
#[cold]
fn bincode_decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let (value, used): (T, usize) = bincode_decode_limited!(bytes;
        12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35)
    .map_err(|e| decode_error::<T>(Bincode::NAME, bytes.len(), e))?;
    if used != bytes.len() {
        return Err(decode_error::<T>(
            Bincode::NAME,
            bytes.len(),
            format_args!("{} trailing bytes after the value", bytes.len() - used),
        ));
    }
    Ok(value)
}

/// A direct decoder of bincode 2's `standard` wire format from a slice, for the common case.
///
/// bincode's own serde path costs about 10 ns per field (every integer goes through its reader,
/// limit accounting and a large error type), which caps a receiver of small messages well
/// below what the socket carries. This decoder reads the same format straight from the slice.
/// It is only ever trusted when it succeeds: any error, unsupported request or leftover byte
/// makes [`Bincode::decode`] decode again with bincode itself, whose result (value or error)
/// is returned, so error reports and every edge case stay bincode's.
///
/// Why a success here always matches bincode's: every rule below is bincode's (varint tags,
/// zigzag, raw `u8`/`i8`, `bool` and `Option` tags of 0 or 1, UTF-8 `char` and strings, `u32`
/// variant indices, `u64` lengths), and bincode's decode limit cannot trip on an input decoded
/// whole: bincode claims at most 16 bytes per wire byte consumed (a 1-byte `u128`), and the
/// limit is at least 16 times the payload.
mod fast {
    use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
    use std::fmt;

    /// Why the fast path gave up; never shown (bincode decodes again to report).
    #[derive(Debug)]
    pub(super) struct GiveUp;

    impl fmt::Display for GiveUp {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("fast bincode decode gave up")
        }
    }

    impl std::error::Error for GiveUp {}

    impl de::Error for GiveUp {
        fn custom<T: fmt::Display>(_: T) -> Self {
            GiveUp
        }
    }

    type Res<T> = Result<T, GiveUp>;

    const U16_BYTE: u8 = 251;
    const U32_BYTE: u8 = 252;
    const U64_BYTE: u8 = 253;
    const U128_BYTE: u8 = 254;

    pub(super) struct Decoder<'de> {
        pub(super) input: &'de [u8],
    }

    impl<'de> Decoder<'de> {
        #[inline]
        fn take(&mut self, n: usize) -> Res<&'de [u8]> {
            if self.input.len() < n {
                return Err(GiveUp);
            }
            let (head, rest) = self.input.split_at(n);
            self.input = rest;
            Ok(head)
        }

        #[inline]
        fn array<const N: usize>(&mut self) -> Res<[u8; N]> {
            let (head, rest) = self.input.split_first_chunk::<N>().ok_or(GiveUp)?;
            self.input = rest;
            Ok(*head)
        }

        #[inline]
        fn byte(&mut self) -> Res<u8> {
            let (&b, rest) = self.input.split_first().ok_or(GiveUp)?;
            self.input = rest;
            Ok(b)
        }

        /// A varint of at most `max_tag`'s width (`U16_BYTE` for `u16`, and so on).
        #[inline]
        fn varint(&mut self, max_tag: u8) -> Res<u128> {
            let tag = self.byte()?;
            if tag < U16_BYTE {
                return Ok(u128::from(tag));
            }
            if tag > max_tag {
                return Err(GiveUp);
            }
            Ok(match tag {
                U16_BYTE => u128::from(u16::from_le_bytes(self.array()?)),
                U32_BYTE => u128::from(u32::from_le_bytes(self.array()?)),
                U64_BYTE => u128::from(u64::from_le_bytes(self.array()?)),
                U128_BYTE => u128::from_le_bytes(self.array()?),
                _ => return Err(GiveUp),
            })
        }

        #[inline]
        fn u16(&mut self) -> Res<u16> {
            Ok(self.varint(U16_BYTE)? as u16)
        }

        #[inline]
        fn u32(&mut self) -> Res<u32> {
            Ok(self.varint(U32_BYTE)? as u32)
        }

        #[inline]
        fn u64(&mut self) -> Res<u64> {
            Ok(self.varint(U64_BYTE)? as u64)
        }

        #[inline]
        fn len(&mut self) -> Res<usize> {
            usize::try_from(self.u64()?).map_err(|_| GiveUp)
        }

        #[inline]
        fn bytes(&mut self) -> Res<&'de [u8]> {
            let len = self.len()?;
            self.take(len)
        }

        #[inline]
        fn str(&mut self) -> Res<&'de str> {
            std::str::from_utf8(self.bytes()?).map_err(|_| GiveUp)
        }
    }

    fn unzig16(v: u16) -> i16 {
        ((v >> 1) as i16) ^ -((v & 1) as i16)
    }
    fn unzig32(v: u32) -> i32 {
        ((v >> 1) as i32) ^ -((v & 1) as i32)
    }
    fn unzig64(v: u64) -> i64 {
        ((v >> 1) as i64) ^ -((v & 1) as i64)
    }
    fn unzig128(v: u128) -> i128 {
        ((v >> 1) as i128) ^ -((v & 1) as i128)
    }

    impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
        type Error = GiveUp;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Res<V::Value> {
            Err(GiveUp)
        }
        fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            match self.byte()? {
                0 => v.visit_bool(false),
                1 => v.visit_bool(true),
                _ => Err(GiveUp),
            }
        }
        fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_i8(self.byte()? as i8)
        }
        fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_i16(unzig16(self.u16()?))
        }
        fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_i32(unzig32(self.u32()?))
        }
        fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_i64(unzig64(self.u64()?))
        }
        fn deserialize_i128<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_i128(unzig128(self.varint(U128_BYTE)?))
        }
        fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_u8(self.byte()?)
        }
        fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_u16(self.u16()?)
        }
        fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_u32(self.u32()?)
        }
        fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_u64(self.u64()?)
        }
        fn deserialize_u128<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_u128(self.varint(U128_BYTE)?)
        }
        fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_f32(f32::from_le_bytes(self.array()?))
        }
        fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_f64(f64::from_le_bytes(self.array()?))
        }
        fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            let first = *self.input.first().ok_or(GiveUp)?;
            let width = match first {
                0x00..=0x7F => 1,
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => return Err(GiveUp),
            };
            let s = std::str::from_utf8(self.take(width)?).map_err(|_| GiveUp)?;
            v.visit_char(s.chars().next().ok_or(GiveUp)?)
        }
        fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_borrowed_str(self.str()?)
        }
        fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_string(self.str()?.to_owned())
        }
        fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_borrowed_bytes(self.bytes()?)
        }
        fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_byte_buf(self.bytes()?.to_vec())
        }
        fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            match self.byte()? {
                0 => v.visit_none(),
                1 => v.visit_some(self),
                _ => Err(GiveUp),
            }
        }
        fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            v.visit_unit()
        }
        fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Res<V::Value> {
            v.visit_unit()
        }
        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            v: V,
        ) -> Res<V::Value> {
            v.visit_newtype_struct(self)
        }
        fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            let len = self.len()?;
            self.deserialize_tuple(len, v)
        }
        fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Res<V::Value> {
            v.visit_seq(Access { de: self, len })
        }
        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            len: usize,
            v: V,
        ) -> Res<V::Value> {
            self.deserialize_tuple(len, v)
        }
        fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Res<V::Value> {
            let len = self.len()?;
            v.visit_map(Access { de: self, len })
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            v: V,
        ) -> Res<V::Value> {
            self.deserialize_tuple(fields.len(), v)
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: &'static [&'static str],
            v: V,
        ) -> Res<V::Value> {
            v.visit_enum(self)
        }
        fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Res<V::Value> {
            Err(GiveUp)
        }
        fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Res<V::Value> {
            Err(GiveUp)
        }
        fn is_human_readable(&self) -> bool {
            false
        }
    }

    /// Elements of a sequence, tuple or struct, or entries of a map: `len` more to come.
    struct Access<'a, 'de> {
        de: &'a mut Decoder<'de>,
        len: usize,
    }

    impl<'de> de::SeqAccess<'de> for Access<'_, 'de> {
        type Error = GiveUp;

        fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Res<Option<T::Value>> {
            if self.len == 0 {
                return Ok(None);
            }
            self.len -= 1;
            seed.deserialize(&mut *self.de).map(Some)
        }

        fn size_hint(&self) -> Option<usize> {
            // What bincode says; serde caps the preallocation it drives at 1 MiB.
            Some(self.len)
        }
    }

    impl<'de> de::MapAccess<'de> for Access<'_, 'de> {
        type Error = GiveUp;

        fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Res<Option<K::Value>> {
            if self.len == 0 {
                return Ok(None);
            }
            self.len -= 1;
            seed.deserialize(&mut *self.de).map(Some)
        }

        fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Res<V::Value> {
            seed.deserialize(&mut *self.de)
        }

        fn size_hint(&self) -> Option<usize> {
            Some(self.len)
        }
    }

    impl<'de> de::EnumAccess<'de> for &mut Decoder<'de> {
        type Error = GiveUp;
        type Variant = Self;

        fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Res<(V::Value, Self)> {
            let index = self.u32()?;
            let value = seed.deserialize(IntoDeserializer::<GiveUp>::into_deserializer(index))?;
            Ok((value, self))
        }
    }

    impl<'de> de::VariantAccess<'de> for &mut Decoder<'de> {
        type Error = GiveUp;

        fn unit_variant(self) -> Res<()> {
            Ok(())
        }
        fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Res<T::Value> {
            seed.deserialize(self)
        }
        fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Res<V::Value> {
            de::Deserializer::deserialize_tuple(self, len, v)
        }
        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            v: V,
        ) -> Res<V::Value> {
            de::Deserializer::deserialize_tuple(self, fields.len(), v)
        }
    }

    /// The value, if the whole of `bytes` decodes as one; `None` to let bincode decide.
    #[inline]
    pub(super) fn decode<T: de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
        let mut decoder = Decoder { input: bytes };
        let value = T::deserialize(&mut decoder).ok()?;
        decoder.input.is_empty().then_some(value)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    enum Kind {
        Unit,
        New(i16),
        Tuple(i32, char),
        Struct { a: i64, b: Option<u128> },
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Every {
        b: bool,
        i8: i8,
        u8: u8,
        u16: u16,
        i128: i128,
        f32: f32,
        f64: f64,
        c: char,
        s: String,
        bytes: Vec<u8>,
        kinds: Vec<Kind>,
        map: BTreeMap<u32, (u64, ())>,
        opt: Option<Box<Every>>,
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Unit),
            any::<i16>().prop_map(Kind::New),
            (any::<i32>(), any::<char>()).prop_map(|(a, c)| Kind::Tuple(a, c)),
            (any::<i64>(), any::<Option<u128>>()).prop_map(|(a, b)| Kind::Struct { a, b }),
        ]
    }

    fn leaf() -> impl Strategy<Value = Every> {
        (
            (
                any::<bool>(),
                any::<i8>(),
                any::<u8>(),
                any::<u16>(),
                any::<i128>(),
            ),
            (any::<f32>(), any::<f64>(), any::<char>(), ".{0,20}"),
            prop::collection::vec(any::<u8>(), 0..20),
            prop::collection::vec(kind(), 0..4),
            prop::collection::btree_map(any::<u32>(), any::<u64>(), 0..4),
        )
            .prop_map(
                |((b, i8, u8, u16, i128), (f32, f64, c, s), bytes, kinds, map)| Every {
                    b,
                    i8,
                    u8,
                    u16,
                    i128,
                    f32,
                    f64,
                    c,
                    s,
                    bytes,
                    kinds,
                    map: map.into_iter().map(|(k, v)| (k, (v, ()))).collect(),
                    opt: None,
                },
            )
    }

    fn every() -> impl Strategy<Value = Every> {
        (leaf(), prop::option::of(leaf())).prop_map(|(mut outer, inner)| {
            outer.opt = inner.map(Box::new);
            outer
        })
    }

    /// The fast path agrees with bincode wherever it answers (compared by re-encoding, so NaN
    /// payloads compare bit for bit).
    fn agrees<T: Serialize + DeserializeOwned>(bytes: &[u8]) {
        if let Some(fast) = fast::decode::<T>(bytes) {
            let reference = bincode_decode::<T>(bytes).expect("bincode rejects what fast accepted");
            let (mut a, mut b) = (Vec::new(), Vec::new());
            Bincode.encode(&fast, &mut a).unwrap();
            Bincode.encode(&reference, &mut b).unwrap();
            assert_eq!(a, b);
        }
    }

    fn agrees_all(bytes: &[u8]) {
        agrees::<Every>(bytes);
        agrees::<Vec<Kind>>(bytes);
        agrees::<(u32, i64, String)>(bytes);
        agrees::<(u16, i16, char, bool)>(bytes);
        agrees::<Option<Vec<u8>>>(bytes);
    }

    proptest! {
        #[test]
        fn fast_decode_round_trips(value in every()) {
            let mut bytes = Vec::new();
            Bincode.encode(&value, &mut bytes).unwrap();
            let back: Every = fast::decode(&bytes).expect("fast path declined a valid encoding");
            let mut again = Vec::new();
            Bincode.encode(&back, &mut again).unwrap();
            prop_assert_eq!(bytes, again);
        }

        #[test]
        fn fast_decode_agrees_on_mutations(
            value in every(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<Option<prop::sample::Index>>(),
        ) {
            let mut bytes = Vec::new();
            Bincode.encode(&value, &mut bytes).unwrap();
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            agrees_all(&bytes);
        }

        #[test]
        fn fast_decode_agrees_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            agrees_all(&bytes);
        }
    }
}
