//! Where connections come from: the [`Accept`] trait, its implementations for tokio's
//! listeners and cluster's, and what an accept error means. Apart from the server because an
//! app may implement it for a listener of its own without reading the rest.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

/// EBADF, the same on Linux, the BSDs and macOS: the listener itself is gone.
const EBADF: i32 = 9;

/// Anything that yields connections: a tokio `TcpListener` or `UnixListener`, an
/// `Arc` of one (so that two servers can take turns on one socket, as an old and a new
/// worker do during a rolling reload), or cluster's worker `Listener`. The TCP ones turn
/// Nagle's algorithm off (`TCP_NODELAY`) on each connection they yield; a listener of an
/// app's own should do the same, or HTTP/2 responses can wait up to 40 ms for the client's
/// delayed acknowledgement.
///
/// `accept` must be cancel-safe (a connection is never lost when its future is dropped
/// unfinished), as tokio's listeners are: [`serve`] races it against the shutdown token.
///
/// ```
/// use std::io;
/// use std::net::SocketAddr;
///
/// use cluster::http::Accept;
///
/// /// A listener that counts what it accepts.
/// struct Counting {
///     inner: tokio::net::TcpListener,
///     accepted: std::sync::atomic::AtomicU64,
/// }
///
/// impl Accept for Counting {
///     type Io = tokio::net::TcpStream;
///     type Addr = SocketAddr;
///
///     async fn accept(&self) -> io::Result<(Self::Io, Self::Addr)> {
///         let accepted = self.inner.accept().await?;
///         self.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         Ok(accepted)
///     }
///
///     fn try_accept_queued(&self) -> Option<io::Result<(Self::Io, Self::Addr)>> {
///         self.inner.try_accept_queued()
///     }
/// }
/// ```
///
/// [`serve`]: crate::http::serve
pub trait Accept: Send + Sync + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The peer's address, handed to the handler as [`PeerAddr`] in the request's extensions.
    ///
    /// [`PeerAddr`]: crate::http::PeerAddr
    type Addr: Clone + Send + Sync + 'static;

    /// Waits for the next connection.
    ///
    /// ```
    /// use cluster::http::Accept;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let client = tokio::net::TcpStream::connect(listener.local_addr()?);
    /// let (client, accepted) = tokio::join!(client, Accept::accept(&listener));
    /// let (_io, peer) = accepted?;
    /// assert_eq!(peer, client?.local_addr()?);
    /// # Ok(())
    /// # }
    /// ```
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send;

    /// Takes a connection that is already waiting, without waiting: `None` when there is
    /// none. [`serve`] calls it once draining starts, until it returns `None`, so that
    /// clients already connected are served rather than reset when the listener closes.
    ///
    /// The default takes nothing, which suits a source whose queue outlives this server
    /// (connections handed out by a master that gives them to another worker instead).
    ///
    /// ```
    /// use cluster::http::Accept;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// assert!(listener.try_accept_queued().is_none());
    /// let _client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    /// assert!(matches!(listener.try_accept_queued(), Some(Ok(_))));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`serve`]: crate::http::serve
    fn try_accept_queued(&self) -> Option<io::Result<(Self::Io, Self::Addr)>> {
        None
    }
}

/// Turns Nagle's algorithm off on an accepted TCP connection, as Go's `net/http` and most
/// HTTP servers do. With it on, a write made while earlier bytes are unacknowledged waits in
/// the kernel for the client's ACK, which a client delays by up to 40 ms: an HTTP/2
/// connection's first responses, written after its SETTINGS, sat there that long, and a
/// drain's GOAWAY written meanwhile left in the same segment, behind them. A client that
/// reads both at once reuses the stream slots the responses freed before it parses the
/// GOAWAY, and then drops the streams it just queued (h2load counts them as failed). An
/// error is ignored: it concerns a connection already reset, whose next read reports it.
fn no_delay(stream: &tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
}

/// Maps a non-blocking accept's outcome to `try_accept_queued`'s.
fn queued<T>(accepted: io::Result<T>) -> Option<io::Result<T>> {
    match accepted {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        other => Some(other),
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&self) -> io::Result<(Self::Io, Self::Addr)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        no_delay(&stream);
        Ok((stream, peer))
    }

    fn try_accept_queued(&self) -> Option<io::Result<(Self::Io, Self::Addr)>> {
        // Straight to the kernel: tokio only tries accept(2) when its cached readiness says
        // so, and that cache can lag behind connections that are already queued.
        queued(
            socket2::SockRef::from(self)
                .accept()
                .and_then(|(socket, addr)| {
                    let peer = addr.as_socket().ok_or_else(|| {
                        io::Error::other("a TCP listener accepted a peer without an IP address")
                    })?;
                    socket.set_nonblocking(true)?;
                    let stream = tokio::net::TcpStream::from_std(socket.into())?;
                    no_delay(&stream);
                    Ok((stream, peer))
                }),
        )
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send {
        tokio::net::UnixListener::accept(self)
    }

    fn try_accept_queued(&self) -> Option<io::Result<(Self::Io, Self::Addr)>> {
        queued(
            socket2::SockRef::from(self)
                .accept()
                .and_then(|(socket, _)| {
                    let stream = std::os::unix::net::UnixStream::from(socket);
                    stream.set_nonblocking(true)?;
                    let peer = stream.peer_addr()?;
                    Ok((tokio::net::UnixStream::from_std(stream)?, peer.into()))
                }),
        )
    }
}

/// A worker's cluster listener ([`cluster_core::WorkerContext::listen`]): connections from
/// the cluster's shared socket, or handed over by the master, depending on the balance policy.
impl Accept for cluster_core::Listener {
    type Io = cluster_core::Connection;
    type Addr = SocketAddr;

    async fn accept(&self) -> io::Result<(Self::Io, Self::Addr)> {
        let (conn, peer) = cluster_core::Listener::accept(self).await?;
        // A socket cluster bound has it already: a system call a connection fewer.
        if !self.accepted_nodelay() {
            no_delay(conn.stream());
        }
        Ok((conn, peer))
    }

    fn try_accept_queued(&self) -> Option<io::Result<(Self::Io, Self::Addr)>> {
        let nodelay = self.accepted_nodelay();
        self.try_accept().map(|accepted| {
            accepted.inspect(|(conn, _)| {
                if !nodelay {
                    no_delay(conn.stream());
                }
            })
        })
    }
}

impl<A: Accept> Accept for Arc<A> {
    type Io = A::Io;
    type Addr = A::Addr;

    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send {
        (**self).accept()
    }

    fn try_accept_queued(&self) -> Option<io::Result<(Self::Io, Self::Addr)>> {
        (**self).try_accept_queued()
    }
}

/// What an accept error means for the accept loop.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AcceptFailure {
    /// Concerns one connection (reset before it was accepted, ...): go on.
    Connection,
    /// The process is short of something (descriptors, memory, buffers): pause, then go on.
    Resources,
    /// The listener cannot be used any more.
    Listener,
}

impl AcceptFailure {
    pub(super) fn of(e: &io::Error) -> Self {
        use io::ErrorKind::*;
        match e.kind() {
            ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
            | TimedOut | NetworkDown | NetworkUnreachable | HostUnreachable => {
                AcceptFailure::Connection
            }
            NotConnected | InvalidInput | Unsupported => AcceptFailure::Listener,
            _ if e.raw_os_error() == Some(EBADF) => AcceptFailure::Listener,
            _ => AcceptFailure::Resources,
        }
    }
}
