//! Descriptor passing: descriptors ride with their own message, in order, CLOEXEC, and work;
//! limits on either side fail cleanly without leaking the descriptors involved.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};

use cluster_ipc::{Channel, Codec, Config, Error};
use common::{is_cloexec, pipe, read_now, within, write_fd, writers_closed};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    /// Carries `count` pipe read ends whose pipes hold `token` + index.
    Pipes {
        token: u32,
        count: u32,
    },
    Plain(u32),
    Listener {
        port: u16,
    },
}

async fn pair<C: Codec>(config: Config) -> (Channel<Msg, Msg, C>, Channel<Msg, Msg, C>) {
    within("pair", Channel::<Msg, Msg, C>::pair(config))
        .await
        .expect("pair")
}

/// `count` pipe read ends, pipe `i` holding the text `"{token}:{i}"`.
fn filled_pipes(token: u32, count: u32) -> Vec<OwnedFd> {
    (0..count)
        .map(|i| {
            let (r, w) = pipe();
            write_fd(&w, format!("{token}:{i}").as_bytes());
            r
        })
        .collect()
}

/// Checks that `fds` are exactly the pipes sent with `Pipes { token, count }`, in order.
fn check_pipes(msg: &Msg, fds: &[OwnedFd]) {
    match msg {
        Msg::Pipes { token, count } => {
            assert_eq!(fds.len(), *count as usize, "descriptors of message {token}");
            for (i, fd) in fds.iter().enumerate() {
                assert!(is_cloexec(fd), "received descriptor without FD_CLOEXEC");
                let text = String::from_utf8(read_now(fd, 64)).unwrap();
                assert_eq!(
                    text,
                    format!("{token}:{i}"),
                    "descriptor {i} of message {token}"
                );
            }
        }
        Msg::Plain(n) => assert!(fds.is_empty(), "plain message {n} got descriptors"),
        other => panic!("unexpected {other:?}"),
    }
}

/// Descriptors arrive with their message and no other, in order, CLOEXEC, and usable.
async fn fds_ride_with_their_message<C: Codec>() {
    let (a, mut b) = pair::<C>(Config::default()).await;
    let plan: Vec<Msg> = vec![
        Msg::Plain(0),
        Msg::Pipes { token: 1, count: 1 },
        Msg::Plain(2),
        Msg::Pipes { token: 3, count: 3 },
        Msg::Pipes { token: 4, count: 1 },
        Msg::Plain(5),
        Msg::Pipes {
            token: 6,
            count: 64,
        },
        Msg::Plain(7),
    ];
    for msg in &plan {
        match msg {
            Msg::Pipes { token, count } => a
                .send_with_fds(msg, filled_pipes(*token, *count))
                .await
                .unwrap(),
            _ => a.send(msg).await.unwrap(),
        }
    }
    for want in &plan {
        let (got, fds) = within("recv_with_fds", b.recv_with_fds())
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(&got, want);
        check_pipes(&got, &fds);
    }
}

/// A burst of messages with and without descriptors, sent from another task without waiting.
async fn interleaved_burst<C: Codec>() {
    let (a, mut b) = pair::<C>(Config::default().with_write_buffer(8 << 10)).await;
    const N: u32 = 600;
    let plan = |i: u32| match i % 5 {
        0 | 3 => Msg::Plain(i),
        1 => Msg::Pipes { token: i, count: 1 },
        2 => Msg::Pipes { token: i, count: 2 },
        _ => Msg::Pipes {
            token: i,
            count: 1 + i % 7,
        },
    };
    let sender = tokio::spawn(async move {
        for i in 0..N {
            match plan(i) {
                msg @ Msg::Pipes { token, count } => {
                    a.send_with_fds(&msg, filled_pipes(token, count)).await
                }
                msg => a.send(&msg).await,
            }
            .expect("send");
        }
    });
    for i in 0..N {
        let (got, fds) = within("recv_with_fds", b.recv_with_fds())
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(got, plan(i));
        check_pipes(&got, &fds);
    }
    assert!(within("end", b.recv_with_fds()).await.unwrap().is_none());
    within("sender", sender).await.unwrap();
}

/// A passed listening socket really works: its copy on the other side accepts a connection.
async fn passed_listener_accepts<C: Codec>() {
    let (a, mut b) = pair::<C>(Config::default()).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    a.send_with_fds(&Msg::Listener { port }, vec![OwnedFd::from(listener)])
        .await
        .unwrap();
    a.flush().await.unwrap();
    let (msg, mut fds) = within("recv_with_fds", b.recv_with_fds())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg, Msg::Listener { port });
    assert_eq!(fds.len(), 1);
    let fd = fds.pop().unwrap();
    assert!(is_cloexec(&fd));
    let std_listener = std::net::TcpListener::from(fd);
    assert_eq!(std_listener.local_addr().unwrap().port(), port);
    std_listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
    let client = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        reply
    });
    let (mut conn, _) = within("accept", listener.accept()).await.unwrap();
    conn.write_all(b"accepted by the passed copy")
        .await
        .unwrap();
    drop(conn);
    assert_eq!(
        within("client", client).await.unwrap(),
        "accepted by the passed copy"
    );
}

/// Descriptors received with plain `recv` are closed; the sender's copies are closed once sent.
async fn plain_recv_closes_fds<C: Codec>() {
    let (a, mut b) = pair::<C>(Config::default()).await;
    let (r1, w1) = pipe();
    let (r2, w2) = pipe();
    a.send_with_fds(&Msg::Plain(1), vec![w1, w2]).await.unwrap();
    a.flush().await.unwrap();
    assert_eq!(within("recv", b.recv()).await.unwrap(), Some(Msg::Plain(1)));
    assert!(writers_closed(&r1), "a write end is still open somewhere");
    assert!(writers_closed(&r2), "a write end is still open somewhere");
}

/// Descriptors of a message that fails to decode are closed.
async fn undecodable_message_closes_fds<C: Codec>() {
    let (x, y) = tokio::net::UnixStream::pair().unwrap();
    let (a, b) = within("the handshake", async {
        tokio::join!(
            Channel::<String, (), C>::handshake(x, Config::default()),
            Channel::<(), Msg, C>::handshake(y, Config::default()),
        )
    })
    .await;
    let (a, mut b) = (a.unwrap(), b.unwrap());
    let (r, w) = pipe();
    // A string is not a `Msg`: the payload will not decode.
    a.send_with_fds(&"not a Msg at all, no sir".to_string(), vec![w])
        .await
        .unwrap();
    a.flush().await.unwrap();
    assert!(matches!(
        within("recv", b.recv_with_fds()).await,
        Err(Error::Decode { .. })
    ));
    assert!(
        writers_closed(&r),
        "the undecodable message's descriptor leaked"
    );
}

/// More descriptors than the sender's `max_fds` is `TooManyFds`; they are closed, nothing is
/// sent and the channel goes on.
async fn too_many_fds_for_sender<C: Codec>() {
    let (a, mut b) = pair::<C>(Config::default().with_max_fds(2)).await;
    let pipes: Vec<(OwnedFd, OwnedFd)> = (0..3).map(|_| pipe()).collect();
    let (reads, writes): (Vec<_>, Vec<_>) = pipes.into_iter().unzip();
    match a.send_with_fds(&Msg::Plain(0), writes).await {
        Err(Error::TooManyFds { count: 3, max: 2 }) => {}
        other => panic!("expected TooManyFds, got {other:?}"),
    }
    for r in &reads {
        assert!(writers_closed(r), "a refused descriptor was kept open");
    }
    let (r, w) = pipe();
    a.send_with_fds(&Msg::Plain(1), vec![w]).await.unwrap();
    a.send(&Msg::Plain(2)).await.unwrap();
    let (msg, fds) = within("recv", b.recv_with_fds()).await.unwrap().unwrap();
    assert_eq!((msg, fds.len()), (Msg::Plain(1), 1));
    drop(fds);
    // The writer task closes its copy just after `sendmsg` returns, maybe on another thread;
    // `flush` returns only after that.
    a.flush().await.unwrap();
    assert!(writers_closed(&r));
    let (msg, fds) = within("recv", b.recv_with_fds()).await.unwrap().unwrap();
    assert_eq!((msg, fds.len()), (Msg::Plain(2), 0));
    // The limit can be raised to the kernel's, and no further.
    assert!(matches!(
        Channel::<Msg, Msg, C>::pair(
            Config::default().with_max_fds(cluster_ipc::MAX_FDS_LIMIT + 1)
        )
        .await,
        Err(Error::Config {
            option: "max_fds",
            ..
        })
    ));
}

/// A sender allowed more descriptors than the receiver: the kernel truncates them
/// (`MSG_CTRUNC`), the receiver reports `FdsTruncated` and closes those that did arrive.
async fn more_fds_than_receiver_allows<C: Codec>() {
    let (x, y) = tokio::net::UnixStream::pair().unwrap();
    let (a, b) = within("the handshake", async {
        tokio::join!(
            Channel::<Msg, Msg, C>::handshake(x, Config::default().with_max_fds(16)),
            Channel::<Msg, Msg, C>::handshake(y, Config::default().with_max_fds(2)),
        )
    })
    .await;
    let (a, mut b) = (a.unwrap(), b.unwrap());
    let pipes: Vec<(OwnedFd, OwnedFd)> = (0..10).map(|_| pipe()).collect();
    let (reads, writes): (Vec<_>, Vec<_>) = pipes.into_iter().unzip();
    a.send_with_fds(&Msg::Plain(10), writes).await.unwrap();
    let _ = a.flush().await;
    assert!(matches!(
        within("recv", b.recv_with_fds()).await,
        Err(Error::FdsTruncated)
    ));
    assert!(matches!(
        within("recv after", b.recv_with_fds()).await,
        Err(Error::Closed)
    ));
    for (i, r) in reads.iter().enumerate() {
        assert!(writers_closed(r), "descriptor {i} leaked after MSG_CTRUNC");
    }
}

/// The same truncation with a raw `sendmsg` on the sending end, and the raw end sees the
/// receiver close.
async fn raw_sendmsg_over_receiver_limit<C: Codec>() {
    let (mut b, raw) = common::raw_peer::<Msg, Msg, C>(Config::default().with_max_fds(1)).await;
    let pipes: Vec<(OwnedFd, OwnedFd)> = (0..4).map(|_| pipe()).collect();
    let (reads, writes): (Vec<_>, Vec<_>) = pipes.into_iter().unzip();
    let mut bytes = common::frame(1, &4u16.to_le_bytes());
    bytes.extend(common::message::<C, _>(&Msg::Plain(4)));
    let raws: Vec<i32> = writes.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&raws)];
    let iov = [std::io::IoSlice::new(&bytes)];
    let n = raw
        .async_io(tokio::io::Interest::WRITABLE, || {
            nix::sys::socket::sendmsg::<nix::sys::socket::UnixAddr>(
                raw.as_raw_fd(),
                &iov,
                &cmsg,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(std::io::Error::from)
        })
        .await
        .unwrap();
    assert_eq!(n, bytes.len());
    drop(writes);
    assert!(matches!(
        within("recv", b.recv_with_fds()).await,
        Err(Error::FdsTruncated)
    ));
    for (i, r) in reads.iter().enumerate() {
        assert!(writers_closed(r), "descriptor {i} leaked after MSG_CTRUNC");
    }
    let mut raw = raw;
    common::expect_raw_eof(&mut raw).await;
}

codec_tests!(
    fds_ride_with_their_message,
    interleaved_burst,
    passed_listener_accepts,
    plain_recv_closes_fds,
    undecodable_message_closes_fds,
    too_many_fds_for_sender,
    more_fds_than_receiver_allows,
    raw_sendmsg_over_receiver_limit,
);
