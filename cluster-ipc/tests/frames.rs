//! Framing errors, injected as raw bytes after a valid hello: each is a typed error that closes
//! the channel (a payload that does not decode only when the config says so, as by default).
//! And the sending side's frame limit, which does not close it.

mod common;

use cluster_ipc::{Channel, Codec, Config, Error};
use common::{expect_raw_eof, frame, message, raw_peer, within};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Tagged {
    Small(u8),
    Named { name: String },
}

type Peer<C> = (Channel<Tagged, Tagged, C>, UnixStream);

async fn peer<C: Codec>(config: Config) -> Peer<C> {
    raw_peer::<Tagged, Tagged, C>(config).await
}

/// After a fatal error, later calls report `Closed`, sends fail, and the raw peer sees the end.
async fn assert_closed_after<C: Codec>((mut ch, mut raw): Peer<C>) {
    assert!(matches!(
        within("recv after the error", ch.recv()).await,
        Err(Error::Closed)
    ));
    assert!(matches!(
        within("recv_with_fds after the error", ch.recv_with_fds()).await,
        Err(Error::Closed)
    ));
    assert!(ch.sender().is_closed());
    assert!(ch.send(&Tagged::Small(1)).await.is_err());
    expect_raw_eof(&mut raw).await;
}

/// A valid message frame still decodes before the bad bytes (the raw peer is set up right).
async fn valid_raw_message_decodes<C: Codec>() {
    let (mut ch, mut raw) = peer::<C>(Config::default()).await;
    let mut bytes = message::<C, _>(&Tagged::Named { name: "x".into() });
    bytes.extend(message::<C, _>(&Tagged::Small(9)));
    raw.write_all(&bytes).await.unwrap();
    assert_eq!(
        within("recv", ch.recv()).await.unwrap(),
        Some(Tagged::Named { name: "x".into() })
    );
    assert_eq!(
        within("recv", ch.recv()).await.unwrap(),
        Some(Tagged::Small(9))
    );
    // Written one byte at a time, a frame still arrives whole.
    for b in message::<C, _>(&Tagged::Small(3)) {
        raw.write_all(&[b]).await.unwrap();
    }
    assert_eq!(
        within("recv", ch.recv()).await.unwrap(),
        Some(Tagged::Small(3))
    );
    drop(raw);
    assert_eq!(within("end", ch.recv()).await.unwrap(), None);
}

/// A header over `max_frame_len` is `FrameTooLarge` (before any of the body arrives), then the
/// channel is closed.
async fn header_over_limit<C: Codec>() {
    let (mut ch, mut raw) = peer::<C>(Config::default().with_max_frame_len(1024)).await;
    raw.write_all(&1025u32.to_le_bytes()).await.unwrap();
    raw.write_all(&[0]).await.unwrap();
    match within("recv", ch.recv()).await {
        Err(Error::FrameTooLarge {
            len: 1025,
            max: 1024,
        }) => {}
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_closed_after::<C>((ch, raw)).await;
}

/// A header claiming 4 GiB on a default channel fails at once, without waiting for (or
/// allocating) the claimed bytes.
async fn header_claiming_4gib<C: Codec>() {
    let (mut ch, mut raw) = peer::<C>(Config::default()).await;
    raw.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    match within("recv", ch.recv()).await {
        Err(Error::FrameTooLarge { len, max }) => {
            assert_eq!(len, u64::from(u32::MAX));
            assert_eq!(max, 16 << 20);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_closed_after::<C>((ch, raw)).await;
}

/// A frame of exactly `max_frame_len` bytes is accepted.
async fn frame_at_limit_is_accepted<C: Codec>() {
    let (mut ch, mut raw) = peer::<C>(Config::default().with_max_frame_len(64)).await;
    // A `Named` with a name that makes the payload (kind byte included) exactly 64 bytes.
    let name = (1..64)
        .map(|n| "n".repeat(n))
        .find(|name| message::<C, _>(&Tagged::Named { name: name.clone() }).len() == 4 + 64)
        .expect("a name of the right length");
    raw.write_all(&message::<C, _>(&Tagged::Named { name: name.clone() }))
        .await
        .unwrap();
    assert_eq!(
        within("recv", ch.recv()).await.unwrap(),
        Some(Tagged::Named { name })
    );
}

/// A payload that does not decode is `Error::Decode` naming the expected type and the codec.
async fn garbage_payload<C: Codec>() {
    let (mut ch, mut raw) = peer::<C>(Config::default()).await;
    // Variant index 200 does not exist in `Tagged`, whatever the codec.
    raw.write_all(&frame(0, &[200, 1, 2, 3])).await.unwrap();
    match within("recv", ch.recv()).await {
        Err(Error::Decode {
            type_name,
            len,
            codec,
            reason,
        }) => {
            assert!(type_name.ends_with("Tagged"), "{type_name}");
            assert_eq!(len, 4);
            assert_eq!(codec, C::NAME);
            assert!(!reason.is_empty());
        }
        other => panic!("expected Error::Decode, got {other:?}"),
    }
    assert_closed_after::<C>((ch, raw)).await;
}

/// With `close_on_decode_error(false)`, a payload that does not decode is an error for that
/// frame only: the frames after it are read, and the channel still sends.
async fn garbage_payload_kept_open<C: Codec>() {
    let config = Config::default().with_close_on_decode_error(false);
    let (mut ch, mut raw) = peer::<C>(config).await;
    // In one write (read from the buffer at once), then one at a time (read as they come).
    let mut bytes = frame(0, &[200, 1, 2, 3]);
    bytes.extend(message::<C, _>(&Tagged::Small(9)));
    raw.write_all(&bytes).await.unwrap();
    assert!(matches!(
        within("recv", ch.recv()).await,
        Err(Error::Decode { .. })
    ));
    assert_eq!(
        within("recv", ch.recv()).await.unwrap(),
        Some(Tagged::Small(9))
    );
    raw.write_all(&frame(0, &[200])).await.unwrap();
    assert!(matches!(
        within("recv", ch.recv_with_fds()).await,
        Err(Error::Decode { .. })
    ));
    raw.write_all(&message::<C, _>(&Tagged::Small(8)))
        .await
        .unwrap();
    assert_eq!(
        within("recv", ch.recv()).await.unwrap(),
        Some(Tagged::Small(8))
    );
    assert!(!ch.sender().is_closed());
    ch.send(&Tagged::Small(1)).await.unwrap();
}

/// A valid value followed by trailing bytes is a decode error too.
async fn trailing_bytes_are_a_decode_error<C: Codec>() {
    let (mut ch, mut raw) = peer::<C>(Config::default()).await;
    let mut bytes = message::<C, _>(&Tagged::Small(5));
    // Append two bytes inside the frame and fix its length.
    bytes.extend_from_slice(&[0, 0]);
    let len = (bytes.len() - 4) as u32;
    bytes[..4].copy_from_slice(&len.to_le_bytes());
    raw.write_all(&bytes).await.unwrap();
    match within("recv", ch.recv()).await {
        Err(Error::Decode { reason, .. }) => {
            assert!(reason.contains("trailing"), "{reason}")
        }
        other => panic!("expected Error::Decode, got {other:?}"),
    }
    assert_closed_after::<C>((ch, raw)).await;
}

/// A frame of length zero is `EmptyFrame`.
async fn empty_frame<C: Codec>() {
    let (mut ch, mut raw) = peer::<C>(Config::default()).await;
    raw.write_all(&0u32.to_le_bytes()).await.unwrap();
    assert!(matches!(
        within("recv", ch.recv()).await,
        Err(Error::EmptyFrame)
    ));
    assert_closed_after::<C>((ch, raw)).await;
}

/// A frame of an unknown kind is `UnknownFrame` with that kind.
async fn unknown_frame_kind<C: Codec>() {
    let (mut ch, mut raw) = peer::<C>(Config::default()).await;
    raw.write_all(&message::<C, _>(&Tagged::Small(1)))
        .await
        .unwrap();
    raw.write_all(&frame(0x7f, b"future")).await.unwrap();
    assert_eq!(
        within("recv", ch.recv()).await.unwrap(),
        Some(Tagged::Small(1))
    );
    assert!(matches!(
        within("recv", ch.recv()).await,
        Err(Error::UnknownFrame { kind: 0x7f })
    ));
    assert_closed_after::<C>((ch, raw)).await;
}

/// A second hello, or a descriptors frame of the wrong size, breaks the protocol.
async fn protocol_violations<C: Codec>() {
    let (mut ch, mut raw) = peer::<C>(Config::default()).await;
    raw.write_all(&common::hello::<C>()).await.unwrap();
    assert!(matches!(
        within("recv", ch.recv()).await,
        Err(Error::Protocol(_))
    ));
    assert_closed_after::<C>((ch, raw)).await;

    let (mut ch, mut raw) = peer::<C>(Config::default()).await;
    raw.write_all(&frame(1, &[1, 0, 0])).await.unwrap();
    assert!(matches!(
        within("recv", ch.recv()).await,
        Err(Error::Protocol(_))
    ));
    assert_closed_after::<C>((ch, raw)).await;
}

/// A descriptors frame announcing descriptors that did not come is `MissingFds`.
async fn announced_fds_missing<C: Codec>() {
    let (mut ch, mut raw) = peer::<C>(Config::default()).await;
    let mut bytes = frame(1, &2u16.to_le_bytes());
    bytes.extend(message::<C, _>(&Tagged::Small(1)));
    raw.write_all(&bytes).await.unwrap();
    match within("recv", ch.recv_with_fds()).await {
        Err(Error::MissingFds {
            expected: 2,
            received: 0,
        }) => {}
        other => panic!("expected MissingFds, got {other:?}"),
    }
    assert_closed_after::<C>((ch, raw)).await;
}

/// The peer closing in the middle of a frame's body is `Truncated` with what had arrived.
async fn peer_closes_mid_body<C: Codec>() {
    let (mut ch, mut raw) = peer::<C>(Config::default()).await;
    let mut bytes = 100u32.to_le_bytes().to_vec();
    bytes.push(0);
    bytes.extend_from_slice(&[7; 10]);
    raw.write_all(&bytes).await.unwrap();
    drop(raw);
    match within("recv", ch.recv()).await {
        Err(Error::Truncated { got: 15 }) => {}
        other => panic!("expected Truncated {{ got: 15 }}, got {other:?}"),
    }
    assert!(matches!(
        within("recv after", ch.recv()).await,
        Err(Error::Closed)
    ));
}

/// The peer closing in the middle of a frame's header is `Truncated` too.
async fn peer_closes_mid_header<C: Codec>() {
    let (mut ch, mut raw) = peer::<C>(Config::default()).await;
    raw.write_all(&message::<C, _>(&Tagged::Small(2)))
        .await
        .unwrap();
    raw.write_all(&[5, 0]).await.unwrap();
    raw.shutdown().await.unwrap();
    assert_eq!(
        within("recv", ch.recv()).await.unwrap(),
        Some(Tagged::Small(2))
    );
    match within("recv", ch.recv()).await {
        Err(Error::Truncated { got: 2 }) => {}
        other => panic!("expected Truncated {{ got: 2 }}, got {other:?}"),
    }
}

/// The peer closing after a descriptors frame, before its message, is `Truncated`: the
/// descriptors' message never came.
async fn peer_closes_after_fds_frame<C: Codec>() {
    let (mut ch, raw) = peer::<C>(Config::default()).await;
    let (r, w) = common::pipe();
    let bytes = frame(1, &1u16.to_le_bytes());
    let fds = [std::os::fd::AsRawFd::as_raw_fd(&w)];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(&bytes)];
    let raw = raw.into_std().unwrap();
    raw.set_nonblocking(false).unwrap();
    nix::sys::socket::sendmsg::<nix::sys::socket::UnixAddr>(
        std::os::fd::AsRawFd::as_raw_fd(&raw),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .unwrap();
    drop(w);
    drop(raw);
    assert!(matches!(
        within("recv", ch.recv()).await,
        Err(Error::Truncated { got: 0 })
    ));
    // The descriptor that arrived without its message was closed.
    assert!(common::writers_closed(&r));
}

/// Sending a message over the limit is `FrameTooLarge`, sends nothing (nor its descriptors),
/// and the channel goes on.
async fn oversized_send_keeps_channel<C: Codec>() {
    let config = Config::default().with_max_frame_len(1024);
    let (a, mut b) = within("pair", Channel::<Tagged, Tagged, C>::pair(config))
        .await
        .unwrap();
    let big = Tagged::Named {
        name: "x".repeat(2000),
    };
    match a.send(&big).await {
        Err(Error::FrameTooLarge { len, max: 1024 }) => assert!(len > 2000, "{len}"),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    let (r, w) = common::pipe();
    match a.send_with_fds(&big, vec![w]).await {
        Err(Error::FrameTooLarge { .. }) => {}
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    // The refused message's descriptor was closed, not kept or sent.
    assert!(common::writers_closed(&r));
    assert!(!a.sender().is_closed());
    a.send(&Tagged::Small(1))
        .await
        .expect("the channel still works");
    let fits = Tagged::Named {
        name: "y".repeat(1000),
    };
    a.send(&fits).await.expect("a message under the limit");
    match within("recv", b.recv_with_fds()).await.unwrap() {
        Some((Tagged::Small(1), fds)) => assert!(fds.is_empty(), "descriptors leaked onto it"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(within("recv", b.recv()).await.unwrap(), Some(fits));
    // And the other direction was never affected.
    b.send(&Tagged::Small(2)).await.unwrap();
    let mut a = a;
    assert_eq!(
        within("recv", a.recv()).await.unwrap(),
        Some(Tagged::Small(2))
    );
}

codec_tests!(
    valid_raw_message_decodes,
    header_over_limit,
    header_claiming_4gib,
    frame_at_limit_is_accepted,
    garbage_payload,
    garbage_payload_kept_open,
    trailing_bytes_are_a_decode_error,
    empty_frame,
    unknown_frame_kind,
    protocol_violations,
    announced_fds_missing,
    peer_closes_mid_body,
    peer_closes_mid_header,
    peer_closes_after_fds_frame,
    oversized_send_keeps_channel,
);
