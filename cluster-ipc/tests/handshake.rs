//! The versioned handshake: each side's first frame is a hello; a wrong version, codec or
//! shape fails it with a typed error, and the failing side still sends its own hello.

mod common;

use cluster_ipc::{Channel, Codec, Config, Error, PROTOCOL_VERSION};
use common::{assert_is_hello, frame, hello_with, read_frame, within};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Runs a real `C` handshake against a raw peer that writes `bytes` (then, if `close`, shuts
/// its side). Checks the raw peer received the channel's hello, and returns the result.
async fn handshake_against<C: Codec>(bytes: Vec<u8>, close: bool) -> Result<(), Error> {
    handshake_against_inner::<C>(bytes, close, true).await
}

/// As [`handshake_against`]; when `must_hello` is false the channel may close before its
/// hello left (a framing error in the peer's first frame closes the socket at once).
async fn handshake_against_inner<C: Codec>(
    bytes: Vec<u8>,
    close: bool,
    must_hello: bool,
) -> Result<(), Error> {
    let (a, mut raw) = UnixStream::pair().unwrap();
    let channel = tokio::spawn(Channel::<u8, u8, C>::handshake(a, Config::default()));
    raw.write_all(&bytes).await.unwrap();
    if close {
        raw.shutdown().await.unwrap();
    }
    match within("the channel's hello", read_frame(&mut raw)).await {
        Some((kind, body)) => assert_is_hello::<C>(kind, &body),
        None => assert!(!must_hello, "the channel sent no hello"),
    }
    let result = within("the handshake", channel).await.unwrap().map(|_| ());
    if result.is_err() {
        // A failed handshake closes the socket: the raw peer sees the end.
        assert!(within("the end", read_frame(&mut raw)).await.is_none());
    }
    result
}

async fn valid_hello_passes<C: Codec>() {
    handshake_against::<C>(common::hello::<C>(), false)
        .await
        .expect("a valid hello");
}

async fn version_mismatch<C: Codec>() {
    for theirs in [0, PROTOCOL_VERSION + 1, u16::MAX] {
        match handshake_against::<C>(hello_with(b"CLUSTER\0", theirs, C::NAME), false).await {
            Err(Error::VersionMismatch { ours, theirs: got }) => {
                assert_eq!(ours, PROTOCOL_VERSION);
                assert_eq!(got, theirs);
            }
            other => panic!("expected VersionMismatch, got {other:?}"),
        }
    }
}

async fn codec_mismatch<C: Codec>() {
    for name in ["json", "", "bincode-1", "postcard-0"] {
        match handshake_against::<C>(hello_with(b"CLUSTER\0", PROTOCOL_VERSION, name), false).await
        {
            Err(Error::CodecMismatch { ours, theirs }) => {
                assert_eq!(ours, C::NAME);
                assert_eq!(theirs, name);
            }
            other => panic!("expected CodecMismatch for {name:?}, got {other:?}"),
        }
    }
}

async fn malformed_hellos<C: Codec>() {
    let mut short_name = common::hello::<C>();
    // Claim one more byte of codec name than the frame holds.
    let name_len_at = 4 + 1 + 8 + 2;
    short_name[name_len_at] += 1;
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "bad magic",
            hello_with(b"CLUSTEX\0", PROTOCOL_VERSION, C::NAME),
            false,
        ),
        ("no version", frame(2, b"CLUSTER\0\x01"), false),
        (
            "no codec name length",
            frame(2, b"CLUSTER\0\x01\x00"),
            false,
        ),
        ("codec name length mismatch", short_name, false),
        ("a message first", frame(0, &[1]), false),
        ("closed before hello", Vec::new(), true),
    ];
    for (what, bytes, close) in cases {
        match handshake_against::<C>(bytes, close).await {
            Err(Error::Handshake(reason)) => assert!(!reason.is_empty()),
            other => panic!("{what}: expected Error::Handshake, got {other:?}"),
        }
    }
    // Framing errors in the first frame keep their own type.
    assert!(matches!(
        handshake_against_inner::<C>(0u32.to_le_bytes().to_vec(), false, false).await,
        Err(Error::EmptyFrame)
    ));
    assert!(matches!(
        handshake_against_inner::<C>(vec![9, 0], true, false).await,
        Err(Error::Truncated { got: 2 })
    ));
}

/// An out-of-range configuration is refused before anything is sent.
async fn invalid_config_refused<C: Codec>() {
    for config in [
        Config::default().with_max_frame_len(63),
        Config::default().with_max_frame_len(u32::MAX as usize + 1),
        Config::default().with_write_buffer(0),
        Config::default().with_max_fds(0),
        Config::default().with_max_fds(cluster_ipc::MAX_FDS_LIMIT + 1),
    ] {
        let (a, _b) = UnixStream::pair().unwrap();
        match Channel::<u8, u8, C>::handshake(a, config.clone()).await {
            Err(Error::Config { option, reason }) => {
                assert!(!option.is_empty() && !reason.is_empty())
            }
            other => panic!("{config:?}: expected Error::Config, got {other:?}"),
        }
    }
}

codec_tests!(
    valid_hello_passes,
    version_mismatch,
    codec_mismatch,
    malformed_hellos,
    invalid_config_refused,
);

/// Two real channels built with different codecs: both sides report the mismatch.
#[cfg(feature = "postcard")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bincode_against_postcard_fails_on_both_sides() {
    use cluster_ipc::{Bincode, Postcard};
    let (x, y) = UnixStream::pair().unwrap();
    let (a, b) = within("both handshakes", async {
        tokio::join!(
            Channel::<u8, u8, Bincode>::handshake(x, Config::default()),
            Channel::<u8, u8, Postcard>::handshake(y, Config::default()),
        )
    })
    .await;
    match a {
        Err(Error::CodecMismatch { ours, theirs }) => {
            assert_eq!(ours, Bincode::NAME);
            assert_eq!(theirs, Postcard::NAME);
        }
        other => panic!("bincode side: expected CodecMismatch, got {other:?}"),
    }
    match b {
        Err(Error::CodecMismatch { ours, theirs }) => {
            assert_eq!(ours, Postcard::NAME);
            assert_eq!(theirs, Bincode::NAME);
        }
        other => panic!("postcard side: expected CodecMismatch, got {other:?}"),
    }
}

/// Matching real channels agree, in either order of starting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_waits_for_a_late_peer() {
    let (x, y) = UnixStream::pair().unwrap();
    let early = tokio::spawn(Channel::<u8, u8>::handshake(x, Config::default()));
    // The early side is blocked on the peer's hello until the peer starts.
    tokio::task::yield_now().await;
    assert!(!early.is_finished());
    let mut late = within(
        "late side",
        Channel::<u8, u8>::handshake(y, Config::default()),
    )
    .await
    .unwrap();
    let early = within("early side", early).await.unwrap().unwrap();
    early.send(&5).await.unwrap();
    assert_eq!(within("recv", late.recv()).await.unwrap(), Some(5));
}
