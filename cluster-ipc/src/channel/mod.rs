//! Typed channels over a Unix stream socket.
//!
//! [`Channel`] and its handshake stay here, the one place that builds both halves on a
//! socket. Each half has a file of its own because they have little in common: the
//! [`Sender`]'s state is shared between tasks and a writer, the [`Receiver`]'s belongs to the
//! one task that reads. What both hold (`shared.rs`) and the limits (`config.rs`) sit below
//! them.

mod config;
mod receiver;
mod sender;
mod shared;

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio::sync::Notify;

pub use config::{Config, MAX_FDS_LIMIT};
use receiver::ReadState;
pub use receiver::Receiver;
pub use sender::Sender;
use sender::{SenderHandle, write_loop};
use shared::{Shared, WriteState};

use crate::Result;
use crate::codec::{Codec, DefaultCodec};
use crate::frame::{self, FDS_FRAME_LEN};
use crate::sys;

/// A bidirectional typed channel: sends `Tx`, receives `Rx`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cluster_ipc::Error> {
/// use cluster_ipc::{Channel, Config};
/// let (mut a, mut b) = Channel::<String, u32>::pair(Config::default()).await?;
/// a.send(&"ping".to_string()).await?;
/// assert_eq!(b.recv().await?, Some("ping".to_string()));
/// b.send(&7).await?;
/// assert_eq!(a.recv().await?, Some(7));
/// # Ok(())
/// # }
/// ```
pub struct Channel<Tx, Rx, C = DefaultCodec> {
    sender: Sender<Tx, C>,
    receiver: Receiver<Rx, C>,
}

impl<Tx, Rx, C> fmt::Debug for Channel<Tx, Rx, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("receiver", &self.receiver)
            .finish_non_exhaustive()
    }
}

impl<Tx: Serialize, Rx: DeserializeOwned, C: Codec> Channel<Tx, Rx, C> {
    /// Sets up a channel on a connected socket: starts its writer task, then exchanges hellos
    /// (protocol version and codec name) with the peer. Must run inside a tokio runtime. The
    /// handshake waits for the peer; bound it with `tokio::time::timeout` when the peer may not
    /// answer.
    pub async fn handshake(stream: UnixStream, config: Config) -> Result<Self> {
        config.validate()?;
        let hello = frame::hello(C::NAME);
        let state = WriteState {
            enqueued: hello.len() as u64,
            buf: hello,
            ..WriteState::default()
        };
        let shared = Arc::new(Shared {
            stream,
            state: Mutex::new(state),
            wake_writer: Notify::new(),
            progress: Notify::new(),
        });
        tokio::spawn(write_loop(shared.clone(), config.write_buffer()));
        let sender = Sender {
            handle: Arc::new(SenderHandle {
                shared: shared.clone(),
            }),
            codec: C::default(),
            max_frame_len: config.max_frame_len(),
            write_buffer: config.write_buffer().max(FDS_FRAME_LEN),
            max_fds: config.max_fds(),
            _marker: PhantomData,
        };
        let mut receiver = Receiver {
            shared,
            codec: C::default(),
            max_frame_len: config.max_frame_len(),
            buf: Vec::new(),
            start: 0,
            end: 0,
            cmsg: sys::CmsgBuf::new(config.max_fds()),
            pending_fds: VecDeque::new(),
            attached: None,
            state: ReadState::Open,
            close_on_decode_error: config.close_on_decode_error(),
            _marker: PhantomData,
        };
        receiver.expect_hello().await?;
        Ok(Channel { sender, receiver })
    }

    /// [`Channel::handshake`] on a standard-library socket (made non-blocking first).
    pub async fn from_std(stream: std::os::unix::net::UnixStream, config: Config) -> Result<Self> {
        stream.set_nonblocking(true)?;
        Self::handshake(UnixStream::from_std(stream)?, config).await
    }

    /// Two connected channels in this process (a socketpair), mostly for tests.
    pub async fn pair(config: Config) -> Result<(Self, Channel<Rx, Tx, C>)>
    where
        Tx: DeserializeOwned,
        Rx: Serialize,
    {
        let (a, b) = UnixStream::pair()?;
        tokio::try_join!(
            Self::handshake(a, config.clone()),
            Channel::<Rx, Tx, C>::handshake(b, config)
        )
    }

    /// See [`Sender::send`].
    pub async fn send(&self, msg: &Tx) -> Result<()> {
        self.sender.send(msg).await
    }

    /// See [`Sender::send_with_fds`].
    pub async fn send_with_fds(&self, msg: &Tx, fds: Vec<OwnedFd>) -> Result<()> {
        self.sender.send_with_fds(msg, fds).await
    }

    /// See [`Sender::flush`].
    pub async fn flush(&self) -> Result<()> {
        self.sender.flush().await
    }

    /// See [`Receiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<Rx>> {
        self.receiver.recv().await
    }

    /// See [`Receiver::recv_with_fds`].
    pub async fn recv_with_fds(&mut self) -> Result<Option<(Rx, Vec<OwnedFd>)>> {
        self.receiver.recv_with_fds().await
    }

    /// A new handle for sending from another task.
    pub fn sender(&self) -> Sender<Tx, C> {
        self.sender.clone()
    }

    /// Splits into halves that can live in different tasks.
    pub fn split(self) -> (Sender<Tx, C>, Receiver<Rx, C>) {
        (self.sender, self.receiver)
    }
}
