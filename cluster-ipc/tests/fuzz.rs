//! Property tests: random and mutated bytes never panic, whether decoded directly or fed to a
//! channel, and decoding never allocates far beyond the payload, whatever lengths it claims.
//!
//! A counting global allocator measures, per thread, the peak of bytes live during a decode.
#![allow(unsafe_code)] // the counting allocator

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;

use cluster_ipc::{Bincode, Channel, Codec, Config, Error};
use common::{frame, message, raw_peer};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------------------------------------
// The counting allocator.

struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = TRACKING.try_with(|tracking| {
        if tracking.get() {
            let live = LIVE.get() + delta;
            LIVE.set(live);
            PEAK.set(PEAK.get().max(live));
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the bookkeeping only
// touches const-initialised thread-locals of `Cell`s, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result and the peak of bytes this thread allocated during it.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LIVE.set(0);
    PEAK.set(0);
    TRACKING.set(true);
    let out = f();
    TRACKING.set(false);
    (out, PEAK.get().max(0) as usize)
}

/// The bound on what decoding `len` bytes may allocate: serde preallocates at most 1 MiB for a
/// sequence whatever length it claims (and the types below nest no sequence in another), a
/// `Vec<u64>` element costs 8 bytes for at least 1 byte of payload, bincode's claim limit is
/// the power of two at or above max(len, 4 KiB), plus room for the error message.
fn alloc_bound(len: usize) -> usize {
    (1 << 20) + 10 * len + (16 << 10)
}

/// Maps are worse: serde preallocates up to 1 MiB worth of entries from the claimed length
/// (both codecs pass the claim on as a size hint), and the hash table rounds its buckets up to
/// a power of two above 8/7 of that, plus a control byte per bucket: up to about 2.1 MiB from
/// a payload of a few bytes.
fn map_alloc_bound(len: usize) -> usize {
    (5 << 19) + 10 * len + (16 << 10)
}

// ---------------------------------------------------------------------------------------------
// Types to decode.

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Leaf {
    A,
    B(u8),
    C { s: String },
    D(i64, bool),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Mid {
    Leaf(Leaf),
    Pair(Leaf, Box<Leaf>),
    Bytes(Vec<u8>),
    Nums(Vec<u64>),
    Maybe(Option<Leaf>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Doc {
    name: String,
    data: Vec<u8>,
    nums: Vec<u64>,
    mid: Mid,
    tail: Option<Mid>,
    id: u32,
}

fn leaf() -> impl Strategy<Value = Leaf> {
    prop_oneof![
        Just(Leaf::A),
        any::<u8>().prop_map(Leaf::B),
        ".{0,20}".prop_map(|s| Leaf::C { s }),
        (any::<i64>(), any::<bool>()).prop_map(|(n, b)| Leaf::D(n, b)),
    ]
}

fn mid() -> impl Strategy<Value = Mid> {
    prop_oneof![
        leaf().prop_map(Mid::Leaf),
        (leaf(), leaf()).prop_map(|(a, b)| Mid::Pair(a, Box::new(b))),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Mid::Bytes),
        prop::collection::vec(any::<u64>(), 0..32).prop_map(Mid::Nums),
        prop::option::of(leaf()).prop_map(Mid::Maybe),
    ]
}

fn doc() -> impl Strategy<Value = Doc> {
    (
        ".{0,32}",
        prop::collection::vec(any::<u8>(), 0..128),
        prop::collection::vec(any::<u64>(), 0..32),
        mid(),
        prop::option::of(mid()),
        any::<u32>(),
    )
        .prop_map(|(name, data, nums, mid, tail, id)| Doc {
            name,
            data,
            nums,
            mid,
            tail,
            id,
        })
}

/// Decodes `bytes` as `T` with `C`: never panics, allocates within the bound, and any error is
/// a `Decode` error naming `T`.
fn decode_bounded<C: Codec, T: DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    decode_within::<C, T>(bytes, alloc_bound(bytes.len()))
}

fn decode_within<C: Codec, T: DeserializeOwned>(bytes: &[u8], bound: usize) -> Option<T> {
    let (result, peak) = peak_during(|| C::default().decode::<T>(bytes));
    assert!(
        peak <= bound,
        "{}: decoding {} bytes as {} allocated {peak} bytes",
        C::NAME,
        bytes.len(),
        std::any::type_name::<T>()
    );
    match result {
        Ok(v) => Some(v),
        Err(Error::Decode { type_name, len, .. }) => {
            assert_eq!(type_name, std::any::type_name::<T>());
            assert_eq!(len, bytes.len());
            None
        }
        Err(e) => panic!("unexpected error kind: {e:?}"),
    }
}

/// [`decode_bounded`] for every type, with every codec.
fn decode_all_types(bytes: &[u8]) {
    fn with<C: Codec>(bytes: &[u8]) {
        decode_bounded::<C, String>(bytes);
        decode_bounded::<C, Vec<u8>>(bytes);
        decode_bounded::<C, Vec<u64>>(bytes);
        decode_bounded::<C, Leaf>(bytes);
        decode_bounded::<C, Mid>(bytes);
        decode_bounded::<C, Doc>(bytes);
        decode_within::<C, (Option<String>, HashMap<u8, Leaf>)>(
            bytes,
            map_alloc_bound(bytes.len()),
        );
    }
    with::<Bincode>(bytes);
    #[cfg(feature = "postcard")]
    with::<cluster_ipc::Postcard>(bytes);
}

fn encode<C: Codec, T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    C::default().encode(value, &mut out).unwrap();
    out
}

/// Applies byte mutations (overwrite at an index, truncate, append) to an encoding.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    for &(at, b) in edits {
        if bytes.is_empty() || at % 5 == 0 {
            bytes.push(b);
        } else {
            let i = at % bytes.len();
            bytes[i] = b;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Random bytes decode or fail cleanly, within the allocation bound.
    #[test]
    fn random_bytes_decode_safely(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        decode_all_types(&bytes);
    }

    /// Valid encodings with bytes overwritten, appended or cut off decode or fail cleanly.
    #[test]
    fn mutated_encodings_decode_safely(
        value in doc(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<usize>()),
    ) {
        decode_all_types(&mutate(encode::<Bincode, _>(&value), &edits, cut));
        #[cfg(feature = "postcard")]
        decode_all_types(&mutate(encode::<cluster_ipc::Postcard, _>(&value), &edits, cut));
    }

    /// Every value survives encode and decode, with every codec.
    #[test]
    fn values_round_trip(value in doc()) {
        let bytes = encode::<Bincode, _>(&value);
        prop_assert_eq!(decode_bounded::<Bincode, Doc>(&bytes), Some(value.clone()));
        #[cfg(feature = "postcard")]
        {
            let bytes = encode::<cluster_ipc::Postcard, _>(&value);
            prop_assert_eq!(decode_bounded::<cluster_ipc::Postcard, Doc>(&bytes), Some(value));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Through a channel.

/// A random payload in a message frame either decodes or is a `Decode` error; a valid message
/// after it still arrives when it decoded.
async fn random_payload_through_channel<C: Codec>(payload: Vec<u8>) {
    let (mut ch, mut raw) = raw_peer::<(), Doc, C>(Config::default()).await;
    let after = Doc {
        name: "after".into(),
        data: vec![1, 2, 3],
        nums: vec![],
        mid: Mid::Leaf(Leaf::A),
        tail: None,
        id: 7,
    };
    let mut bytes = frame(0, &payload);
    bytes.extend(message::<C, _>(&after));
    raw.write_all(&bytes).await.unwrap();
    match common::within("recv", ch.recv()).await {
        Ok(Some(_)) => {
            assert_eq!(
                common::within("recv", ch.recv()).await.unwrap(),
                Some(after)
            );
        }
        Err(Error::Decode { .. }) => {
            assert!(matches!(
                common::within("recv", ch.recv()).await,
                Err(Error::Closed)
            ));
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// A random byte stream after a valid hello, then the end: the channel yields messages and
/// ends with `Ok(None)` or one error, then `Closed`; it never panics or hangs.
async fn random_stream_through_channel<C: Codec>(stream: Vec<u8>, max_frame_len: usize) {
    let config = Config::default().with_max_frame_len(max_frame_len);
    let (mut ch, mut raw) = raw_peer::<(), Mid, C>(config).await;
    let writer = tokio::spawn(async move {
        // The channel may close before reading everything: ignore write errors.
        let _ = raw.write_all(&stream).await;
        let _ = raw.shutdown().await;
        raw
    });
    let mut messages = 0;
    loop {
        match common::within("recv", ch.recv_with_fds()).await {
            Ok(Some(_)) => messages += 1,
            Ok(None) => break,
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        Error::Decode { .. }
                            | Error::FrameTooLarge { .. }
                            | Error::EmptyFrame
                            | Error::Truncated { .. }
                            | Error::UnknownFrame { .. }
                            | Error::Protocol(_)
                            | Error::MissingFds { .. }
                    ),
                    "unexpected error {e:?}"
                );
                assert!(matches!(
                    common::within("recv", ch.recv()).await,
                    Err(Error::Closed)
                ));
                break;
            }
        }
        assert!(messages <= 4096, "more messages than bytes");
    }
    drop(ch);
    drop(common::within("writer", writer).await.unwrap());
}

/// A stream made of frames with random kinds and bodies (so that headers are mostly
/// consistent and the channel gets past the first frame).
fn framed_stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            prop_oneof![
                Just(0u8),
                Just(0u8),
                Just(0u8),
                Just(1u8),
                Just(2u8),
                any::<u8>()
            ],
            prop::collection::vec(any::<u8>(), 0..40),
        ),
        0..20,
    )
    .prop_map(|frames| {
        frames
            .iter()
            .flat_map(|(kind, body)| frame(*kind, body))
            .collect()
    })
}

fn for_each_codec(f: impl Fn(&tokio::runtime::Runtime, bool)) {
    let rt = runtime();
    f(&rt, false);
    #[cfg(feature = "postcard")]
    f(&rt, true);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    #[test]
    fn random_payload_in_a_frame(payload in prop::collection::vec(any::<u8>(), 0..512)) {
        for_each_codec(|rt, postcard| {
            let payload = payload.clone();
            if !postcard {
                rt.block_on(random_payload_through_channel::<Bincode>(payload));
            } else {
                #[cfg(feature = "postcard")]
                rt.block_on(random_payload_through_channel::<cluster_ipc::Postcard>(payload));
            }
        });
    }

    #[test]
    fn random_raw_stream(
        stream in prop_oneof![prop::collection::vec(any::<u8>(), 0..1024), framed_stream()],
        small_limit in any::<bool>(),
    ) {
        let max = if small_limit { 64 } else { 16 << 20 };
        for_each_codec(|rt, postcard| {
            let stream = stream.clone();
            if !postcard {
                rt.block_on(random_stream_through_channel::<Bincode>(stream, max));
            } else {
                #[cfg(feature = "postcard")]
                rt.block_on(random_stream_through_channel::<cluster_ipc::Postcard>(stream, max));
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Targeted: huge claimed lengths in tiny payloads.

/// A 20-byte payload whose length prefix claims 2^40 elements, for codec `C`.
fn claims_2_pow_40<C: Codec>() -> Vec<u8> {
    // Both codecs encode a sequence or string length as they encode a u64.
    let mut bytes = encode::<C, _>(&(1u64 << 40));
    bytes.resize(20, b'x');
    bytes
}

fn huge_claim_fails_small<C: Codec>() {
    let bytes = claims_2_pow_40::<C>();
    assert_eq!(bytes.len(), 20);
    let (result, peak) = peak_during(|| C::default().decode::<String>(&bytes));
    assert!(matches!(result, Err(Error::Decode { .. })), "{result:?}");
    assert!(
        peak <= 4 << 10,
        "{}: String claiming 2^40 allocated {peak} bytes",
        C::NAME
    );
    let (result, peak) = peak_during(|| C::default().decode::<(String, u8)>(&bytes));
    assert!(matches!(result, Err(Error::Decode { .. })), "{result:?}");
    assert!(
        peak <= 4 << 10,
        "{}: (String, u8) claiming 2^40 allocated {peak} bytes",
        C::NAME
    );
}

/// `Vec<u8>` goes through serde's sequence visitor, which preallocates from the claimed length
/// capped at 1 MiB; postcard gives no hint when the payload is shorter than the claim, bincode
/// passes the claim on. Either way a claim of 2^40 fails and costs at most the cap.
fn huge_vec_claim_fails_capped<C: Codec>() -> usize {
    let bytes = claims_2_pow_40::<C>();
    let (result, peak) = peak_during(|| C::default().decode::<Vec<u8>>(&bytes));
    assert!(matches!(result, Err(Error::Decode { .. })), "{result:?}");
    assert!(
        peak <= (1 << 20) + (4 << 10),
        "{}: Vec<u8> claiming 2^40 allocated {peak} bytes",
        C::NAME
    );
    let (result, peak64) = peak_during(|| C::default().decode::<Vec<u64>>(&bytes));
    assert!(matches!(result, Err(Error::Decode { .. })), "{result:?}");
    assert!(
        peak64 <= (1 << 20) + (4 << 10),
        "{}: Vec<u64> claiming 2^40 allocated {peak64} bytes",
        C::NAME
    );
    peak
}

#[test]
fn huge_string_claim_bincode() {
    huge_claim_fails_small::<Bincode>();
}

#[cfg(feature = "postcard")]
#[test]
fn huge_string_claim_postcard() {
    huge_claim_fails_small::<cluster_ipc::Postcard>();
}

#[test]
fn huge_vec_claim_bincode() {
    huge_vec_claim_fails_capped::<Bincode>();
}

#[cfg(feature = "postcard")]
#[test]
fn huge_vec_claim_postcard() {
    let peak = huge_vec_claim_fails_capped::<cluster_ipc::Postcard>();
    assert!(
        peak <= 4 << 10,
        "postcard: Vec<u8> claiming 2^40 allocated {peak} bytes"
    );
}

#[test]
fn the_allocator_sees_decodes() {
    // Guards the measurement itself: a decode that allocates is seen.
    let bytes = encode::<Bincode, _>(&vec![7u8; 100_000]);
    let (v, peak) = peak_during(|| Bincode.decode::<Vec<u8>>(&bytes).unwrap());
    assert_eq!(v.len(), 100_000);
    assert!(peak >= 100_000, "peak {peak}");
}

/// A channel decodes into the same types end to end (so the types above are channel types).
#[test]
fn channel_carries_docs() {
    runtime().block_on(async {
        let (a, mut b) = Channel::<Doc, Doc>::pair(Config::default()).await.unwrap();
        let d = Doc {
            name: "n".into(),
            data: vec![0; 10],
            nums: vec![u64::MAX],
            mid: Mid::Nums(vec![1, 2]),
            tail: Some(Mid::Maybe(None)),
            id: 1,
        };
        a.send(&d).await.unwrap();
        assert_eq!(common::within("recv", b.recv()).await.unwrap(), Some(d));
    });
}
