//! Helpers shared by the integration tests: bounded waits, raw frames, raw peers, fd checks.
#![allow(dead_code)]

use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use cluster_ipc::{Channel, Codec, Config, PROTOCOL_VERSION};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The bound on every wait: generous, for a loaded 2-core machine.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
pub(crate) async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// One frame: `u32` LE length (kind byte included), the kind, the body.
pub(crate) fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_le_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// A hello frame built by hand from WIRE.md.
pub(crate) fn hello_with(magic: &[u8], version: u16, codec: &str) -> Vec<u8> {
    let mut body = magic.to_vec();
    body.extend_from_slice(&version.to_le_bytes());
    body.push(codec.len() as u8);
    body.extend_from_slice(codec.as_bytes());
    frame(2, &body)
}

/// The hello a real `C` channel expects.
pub(crate) fn hello<C: Codec>() -> Vec<u8> {
    hello_with(b"CLUSTER\0", PROTOCOL_VERSION, C::NAME)
}

/// A message frame holding `value` encoded with `C`.
pub(crate) fn message<C: Codec, T: Serialize>(value: &T) -> Vec<u8> {
    let mut body = Vec::new();
    C::default().encode(value, &mut body).expect("encode");
    frame(0, &body)
}

/// Reads one whole frame from a raw socket: (kind, body). `None` at end of stream.
pub(crate) async fn read_frame(raw: &mut UnixStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 4];
    match raw.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) => panic!("raw read failed: {e}"),
    }
    let len = u32::from_le_bytes(header) as usize;
    assert!(len >= 1, "a real channel sent an empty frame");
    let mut payload = vec![0u8; len];
    raw.read_exact(&mut payload)
        .await
        .expect("raw read of a frame body");
    let kind = payload.remove(0);
    Some((kind, payload))
}

/// Checks that `body` is the hello a `C` channel sends.
pub(crate) fn assert_is_hello<C: Codec>(kind: u8, body: &[u8]) {
    assert_eq!(kind, 2, "the first frame must be a hello");
    let mut expected = b"CLUSTER\0".to_vec();
    expected.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    expected.push(C::NAME.len() as u8);
    expected.extend_from_slice(C::NAME.as_bytes());
    assert_eq!(body, expected.as_slice(), "hello body");
}

/// A real channel on one end of a socketpair and a raw socket on the other; the handshake is
/// done (the raw end sent a valid hello and read the channel's).
pub(crate) async fn raw_peer<Tx, Rx, C>(config: Config) -> (Channel<Tx, Rx, C>, UnixStream)
where
    Tx: Serialize + Send + 'static,
    Rx: DeserializeOwned + Send + 'static,
    C: Codec,
{
    let (a, mut raw) = UnixStream::pair().expect("socketpair");
    let channel = tokio::spawn(Channel::<Tx, Rx, C>::handshake(a, config));
    raw.write_all(&hello::<C>()).await.expect("write hello");
    let (kind, body) = within("the channel's hello", read_frame(&mut raw))
        .await
        .expect("the channel closed before its hello");
    assert_is_hello::<C>(kind, &body);
    let channel = within("the handshake", channel)
        .await
        .expect("handshake task")
        .expect("handshake");
    (channel, raw)
}

/// Waits until the raw end sees the end of the stream (the channel closed its side).
pub(crate) async fn expect_raw_eof(raw: &mut UnixStream) {
    let mut sink = Vec::new();
    within("the peer to close", raw.read_to_end(&mut sink))
        .await
        .ok();
}

/// A pipe, both ends CLOEXEC: (read, write).
pub(crate) fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2")
}

/// Whether FD_CLOEXEC is set on `fd`.
pub(crate) fn is_cloexec(fd: impl AsFd) -> bool {
    let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
    nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
}

/// Whether the raw number `raw` is an open descriptor of this process.
pub(crate) fn is_open(raw: i32) -> bool {
    std::path::Path::new(&format!("/proc/self/fd/{raw}")).exists()
}

/// Writes `data` into a pipe's write end (blocking; pipes hold 64 KiB).
pub(crate) fn write_fd(fd: impl AsFd, data: &[u8]) {
    let n = nix::unistd::write(fd, data).expect("write to pipe");
    assert_eq!(n, data.len());
}

/// Reads what a pipe's read end holds now, without waiting (the writer already wrote).
pub(crate) fn read_now(fd: impl AsFd, max: usize) -> Vec<u8> {
    let mut buf = vec![0u8; max];
    let n = nix::unistd::read(fd.as_fd(), &mut buf).expect("read from pipe");
    buf.truncate(n);
    buf
}

/// Whether every write end of the pipe whose read end is `read` is closed: a non-blocking read
/// returns 0 (EOF) rather than EAGAIN. The pipe must be empty.
pub(crate) fn writers_closed(read: &OwnedFd) -> bool {
    let flags = nix::fcntl::fcntl(read.as_fd(), nix::fcntl::FcntlArg::F_GETFL).expect("F_GETFL");
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(read.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).expect("F_SETFL");
    let mut buf = [0u8; 16];
    match nix::unistd::read(read.as_fd(), &mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("the pipe unexpectedly held {n} bytes"),
        Err(nix::errno::Errno::EAGAIN) => false,
        Err(e) => panic!("read: {e}"),
    }
}

/// The number of entries in /proc/self/fd (the process's open descriptors).
pub(crate) fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// The raw number of a descriptor, for messages.
pub(crate) fn raw(fd: &impl AsRawFd) -> i32 {
    fd.as_raw_fd()
}

/// Runs generic async test functions once per codec: `codec_tests!(name, ...)` makes
/// `bincode::name` and (with the `postcard` feature) `postcard::name`, each calling
/// `name::<Codec>()` on a two-worker runtime.
#[macro_export]
macro_rules! codec_tests {
    ($($name:ident),* $(,)?) => {
        mod bincode {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name::<cluster_ipc::Bincode>().await
                }
            )*
        }
        #[cfg(feature = "postcard")]
        mod postcard {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name::<cluster_ipc::Postcard>().await
                }
            )*
        }
    };
}
