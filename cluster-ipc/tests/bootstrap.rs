//! Handing a channel to a child process (`bootstrap`), and `from_env`'s errors.
//!
//! The child-process test re-runs this test binary with `--exact <test> --nocapture` and an
//! environment variable that makes the same test play the child.
#![allow(unsafe_code)] // std::env::set_var, in tests only

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;

use cluster_ipc::{Channel, Config, Error, bootstrap};
use common::{is_cloexec, is_open, within};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Set (to the test's name) in the child's environment: play the child.
const ROLE_VAR: &str = "CLUSTER_IPC_TEST_CHILD_ROLE";
/// The variable the parent names the child's channel descriptor in.
const CHANNEL_VAR: &str = "CLUSTER_IPC_TEST_CHANNEL_FD";

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum ToChild {
    /// Accept one connection on the listener that comes with this message; write `reply`.
    Serve { reply: String },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum ToParent {
    Ready { pid: u32 },
    Served { peer_port: u16 },
}

/// Kills (and reaps) the child on drop, so no test failure leaves it running.
struct KillOnDrop(Option<tokio::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.start_kill();
            let _ = child.try_wait();
        }
    }
}

/// The child's side: rebuild the channel from the environment, take the listener, serve.
async fn child_main() {
    let stream = bootstrap::from_parent(CHANNEL_VAR)
        .expect("from_parent: the channel's other end is the parent")
        .expect("the parent set the variable");
    assert_eq!(stream.as_raw_fd(), bootstrap::CHILD_FD);
    assert!(is_cloexec(&stream), "the adopted channel must be CLOEXEC");
    let mut channel = within(
        "the child's handshake",
        Channel::<ToParent, ToChild>::from_std(stream, Config::default()),
    )
    .await
    .expect("handshake in the child");
    channel
        .send(&ToParent::Ready {
            pid: std::process::id(),
        })
        .await
        .unwrap();
    let (msg, mut fds) = within("the listener", channel.recv_with_fds())
        .await
        .expect("recv in the child")
        .expect("a message");
    let ToChild::Serve { reply } = msg;
    assert_eq!(fds.len(), 1);
    let fd = fds.pop().unwrap();
    assert!(is_cloexec(&fd));
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let (mut conn, peer) = within("a connection in the child", listener.accept())
        .await
        .unwrap();
    conn.write_all(reply.as_bytes()).await.unwrap();
    conn.shutdown().await.unwrap();
    channel
        .send(&ToParent::Served {
            peer_port: peer.port(),
        })
        .await
        .unwrap();
    channel.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_passed_to_child_process_accepts() {
    const NAME: &str = "listener_passed_to_child_process_accepts";
    if std::env::var(ROLE_VAR).as_deref() == Ok(NAME) {
        return child_main().await;
    }
    let (ours, child_end) = bootstrap::socketpair().unwrap();
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", NAME, "--nocapture"])
        .env(ROLE_VAR, NAME)
        .stdin(Stdio::null())
        // The child's test harness output goes to our stderr, out of our result lines.
        .stdout(Stdio::from(
            std::io::stderr().as_fd().try_clone_to_owned().unwrap(),
        ))
        .kill_on_drop(true);
    child_end.pass_to(cmd.as_std_mut(), CHANNEL_VAR);
    let mut child = KillOnDrop(Some(cmd.spawn().expect("spawn the child")));
    drop(child_end);

    let mut channel = within(
        "the parent's handshake",
        Channel::<ToChild, ToParent>::from_std(ours, Config::default()),
    )
    .await
    .expect("handshake with the child");
    let child_pid = child.0.as_ref().unwrap().id().unwrap();
    assert_eq!(
        within("ready", channel.recv()).await.unwrap(),
        Some(ToParent::Ready { pid: child_pid })
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reply = format!("hello from the child of {}", std::process::id());
    channel
        .send_with_fds(
            &ToChild::Serve {
                reply: reply.clone(),
            },
            vec![OwnedFd::from(listener)],
        )
        .await
        .unwrap();
    channel.flush().await.unwrap();

    // The parent no longer holds the listener (the channel closed its copy once sent): only the
    // child's copy can accept this connection.
    let mut conn = within("connect", tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    let local_port = conn.local_addr().unwrap().port();
    let mut got = String::new();
    within("the child's reply", conn.read_to_string(&mut got))
        .await
        .unwrap();
    assert_eq!(got, reply);
    assert_eq!(
        within("served", channel.recv()).await.unwrap(),
        Some(ToParent::Served {
            peer_port: local_port
        })
    );
    // The child exits, closing its end.
    assert_eq!(
        within("the child's end", channel.recv()).await.unwrap(),
        None
    );
    let status = within("the child's exit", child.0.as_mut().unwrap().wait())
        .await
        .unwrap();
    assert!(status.success(), "child failed: {status}");
    child.0 = None;
}

/// Sets an environment variable. Each test uses variables of its own.
fn set_env(var: &str, value: &str) {
    // SAFETY: tests only; every variable set here is distinct and read only by the test that
    // sets it, and nothing in these tests reads the environment through libc concurrently.
    unsafe { std::env::set_var(var, value) };
}

fn expect_bootstrap_error(var: &str, needle: &str) {
    match bootstrap::from_env(var) {
        Err(Error::Bootstrap { var: got, reason }) => {
            assert_eq!(got, var);
            assert!(
                reason.contains(needle),
                "{reason:?} should mention {needle:?}"
            );
        }
        other => panic!("{var}: expected Error::Bootstrap, got {other:?}"),
    }
}

#[test]
fn from_env_unset_is_none() {
    let var = "CLUSTER_IPC_TEST_NEVER_SET_7f3a";
    assert!(std::env::var_os(var).is_none());
    assert!(bootstrap::from_env(var).unwrap().is_none());
}

#[test]
fn from_env_garbage_is_an_error() {
    for (i, value) in ["", "three", "-1", "3x", "99999999999999999999"]
        .iter()
        .enumerate()
    {
        let var = format!("CLUSTER_IPC_TEST_GARBAGE_{i}");
        set_env(&var, value);
        expect_bootstrap_error(&var, "expected a file descriptor number");
    }
}

#[test]
fn from_env_closed_fd_is_an_error() {
    let var = "CLUSTER_IPC_TEST_CLOSED_FD";
    assert!(!is_open(1000), "descriptor 1000 is unexpectedly open");
    set_env(var, "1000");
    expect_bootstrap_error(var, "not open");
    assert!(!is_open(1000));
}

#[test]
fn from_env_regular_file_is_an_error_and_left_open() {
    let var = "CLUSTER_IPC_TEST_REGULAR_FILE";
    let file = std::fs::File::open(std::env::current_exe().unwrap()).unwrap();
    let raw = file.as_raw_fd();
    let cloexec = is_cloexec(&file);
    set_env(var, &raw.to_string());
    expect_bootstrap_error(var, "not a socket");
    // Not ours to close, nor to change.
    assert!(is_open(raw));
    assert_eq!(is_cloexec(&file), cloexec);
    let mut head = [0u8; 4];
    std::io::Read::read_exact(&mut &file, &mut head).expect("the file still reads");
    assert_eq!(&head, b"\x7fELF");
}

#[test]
fn from_env_wrong_socket_kinds_are_errors_and_left_open() {
    let datagram = std::os::unix::net::UnixDatagram::pair().unwrap().0;
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for (i, raw) in [datagram.as_raw_fd(), tcp.as_raw_fd()]
        .into_iter()
        .enumerate()
    {
        let var = format!("CLUSTER_IPC_TEST_WRONG_SOCKET_{i}");
        set_env(&var, &raw.to_string());
        expect_bootstrap_error(&var, "not a Unix stream socket");
        assert!(is_open(raw));
    }
    // Both still work.
    assert!(tcp.local_addr().is_ok());
    assert!(datagram.local_addr().is_ok());
}

#[tokio::test]
async fn from_env_adopts_a_unix_stream_once() {
    let var = "CLUSTER_IPC_TEST_ADOPT_ONCE";
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    // Hand over ownership of `theirs` to from_env, as a parent would.
    let raw = std::os::fd::IntoRawFd::into_raw_fd(theirs);
    set_env(var, &raw.to_string());
    let adopted = bootstrap::from_env(var).unwrap().expect("a stream");
    assert_eq!(adopted.as_raw_fd(), raw);
    assert!(is_cloexec(&adopted));
    // A second call must not give the same descriptor a second owner.
    expect_bootstrap_error(var, "already taken");
    // The adopted stream is a working channel end. The channel gets a duplicate: the adopted
    // number stays open for the life of the process, so no other test's descriptor can reuse
    // it and be refused as "already taken".
    let dup = adopted.try_clone().unwrap();
    std::mem::forget(adopted);
    let (a, b) = within("the handshake", async {
        tokio::join!(
            Channel::<u32, u32>::from_std(ours, Config::default()),
            Channel::<u32, u32>::from_std(dup, Config::default()),
        )
    })
    .await;
    let (a, mut b) = (a.unwrap(), b.unwrap());
    a.send(&11).await.unwrap();
    assert_eq!(within("recv", b.recv()).await.unwrap(), Some(11));
    drop(a);
    assert_eq!(within("end", b.recv()).await.unwrap(), None);
}

#[test]
fn from_parent_refuses_a_socket_whose_other_end_is_not_the_parent_and_leaves_it_open() {
    let var = "CLUSTER_IPC_TEST_NOT_THE_PARENT";
    // A pair this process made: the other end is this process, not its parent, as for a
    // program that a worker starts and that inherits the worker's channel variable.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let raw = theirs.as_raw_fd();
    let cloexec = is_cloexec(&theirs);
    set_env(var, &raw.to_string());
    match bootstrap::from_parent(var) {
        Err(Error::Bootstrap { reason, .. }) => {
            assert!(
                reason.contains(&format!("is process {}", std::process::id())),
                "{reason:?}"
            );
            assert!(reason.contains("not this process's parent"), "{reason:?}");
        }
        other => panic!("expected Error::Bootstrap, got {other:?}"),
    }
    // Not taken: still open, unchanged, and still a working socket.
    assert!(is_open(raw));
    assert_eq!(is_cloexec(&theirs), cloexec);
    std::io::Write::write_all(&mut &ours, b"x").unwrap();
    let mut byte = [0u8; 1];
    std::io::Read::read_exact(&mut &theirs, &mut byte).unwrap();
    assert_eq!(&byte, b"x");
    // A later from_parent may still try (nothing was recorded as adopted).
    assert!(bootstrap::from_parent(var).is_err());
}
