//! The worker's side of a shared listener: [`Listener`] (served like a tokio `TcpListener`),
//! the [`Connection`]s it yields, the queues that take connections the master hands over
//! ([`WorkerListeners`]), and the report of closes for `LeastConnections` and `StickyKey`.
//!
//! Apart from the master's side (`dispatch`, `master_listeners`) because it runs in another
//! process: the two share only the messages of the protocol and the load table's layout.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::net::load::LoadShare;
use crate::protocol::{Balance, ToMaster};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection handed over by the master, with the descriptor and the peer address.
pub(crate) struct Handed {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
}

/// Where a worker's listener gets its connections.
enum Source {
    /// A socket of its own (`Shared`: the master's, passed over; `ReusePort`: bound here).
    Socket(tokio::net::TcpListener),
    /// Handed over one by one by the master.
    Handed {
        queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<Handed>>,
        closes: mpsc::UnboundedSender<u32>,
    },
}

/// A listening address shared with the rest of the cluster. Serve it as you would a tokio
/// `TcpListener`: `accept()` in a loop.
pub struct Listener {
    id: u32,
    local: Option<SocketAddr>,
    balance: Balance,
    source: Source,
    /// The worker's count of open connections, reported with its heartbeats.
    live: Arc<AtomicUsize>,
    /// With `Shared`: this worker's entry in the master's load table, once it has come.
    load: Option<Arc<OnceLock<LoadShare>>>,
    /// The listening socket has TCP_NODELAY, so every connection accepted from it does.
    accepted_nodelay: bool,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .field("balance", &self.balance)
            .finish_non_exhaustive()
    }
}

impl Listener {
    pub(crate) fn socket(
        id: u32,
        local: Option<SocketAddr>,
        balance: Balance,
        socket: tokio::net::TcpListener,
        live: Arc<AtomicUsize>,
        load: Option<Arc<OnceLock<LoadShare>>>,
    ) -> Self {
        // Asked once, of the listening socket: cluster binds its sockets with it, but one
        // inherited from systemd or an older master may not have it (and is not given it
        // here: connections queued before would not inherit it, unknown to the server).
        let accepted_nodelay = socket2::SockRef::from(&socket)
            .tcp_nodelay()
            .unwrap_or(false);
        Listener {
            id,
            local,
            balance,
            source: Source::Socket(socket),
            live,
            load,
            accepted_nodelay,
        }
    }

    pub(crate) fn handed(
        id: u32,
        local: Option<SocketAddr>,
        balance: Balance,
        queue: mpsc::UnboundedReceiver<Handed>,
        closes: mpsc::UnboundedSender<u32>,
        live: Arc<AtomicUsize>,
    ) -> Self {
        Listener {
            id,
            local,
            balance,
            source: Source::Handed {
                queue: tokio::sync::Mutex::new(queue),
                closes,
            },
            live,
            load: None,
            accepted_nodelay: false,
        }
    }

    /// The address the cluster listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.source {
            Source::Socket(socket) => socket.local_addr(),
            Source::Handed { .. } => self
                .local
                .ok_or_else(|| io::Error::other("no local address")),
        }
    }

    /// The load-balancing policy in force.
    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// Whether every connection this listener yields already has TCP_NODELAY (Nagle's
    /// algorithm off): true when it accepts from a listening socket that has it, as cluster
    /// binds them, since Linux's accepted sockets inherit it from their listener. A server
    /// that wants TCP_NODELAY can then skip its own `setsockopt` per connection. False for
    /// connections handed over by the master, and for a socket inherited without it.
    pub fn accepted_nodelay(&self) -> bool {
        self.accepted_nodelay
    }

    /// This worker's entry in the load table, once the master has sent it (`Shared`).
    fn load_share(&self) -> Option<&LoadShare> {
        self.load.as_deref().and_then(OnceLock::get)
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<(Connection, SocketAddr)> {
        match &self.source {
            Source::Socket(socket) => {
                // Above its share, a worker lets the others take what arrives meanwhile.
                for _ in 0..crate::net::load::MAX_HOLDS {
                    if !self.load_share().is_some_and(LoadShare::over_share) {
                        break;
                    }
                    tokio::time::sleep(crate::net::load::HOLD).await;
                }
                let (stream, peer) = socket.accept().await?;
                Ok((self.connection(stream, None), peer))
            }
            Source::Handed { queue, closes } => match queue.lock().await.recv().await {
                Some(handed) => Ok(self.wrap(handed, closes)),
                None => Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the master is gone",
                )),
            },
        }
    }

    /// Takes a connection that is already waiting, without waiting: a draining server serves
    /// what is queued instead of resetting it.
    pub fn try_accept(&self) -> Option<io::Result<(Connection, SocketAddr)>> {
        match &self.source {
            Source::Socket(socket) => {
                // Straight to the kernel with a non-blocking accept: tokio's cached readiness
                // can lag behind connections that are already queued.
                let accepted = socket2::SockRef::from(socket)
                    .accept()
                    .and_then(|(sock, peer)| {
                        let stream = std::net::TcpStream::from(sock);
                        stream.set_nonblocking(true)?;
                        let peer = peer
                            .as_socket()
                            .ok_or_else(|| io::Error::other("not an IP peer"))?;
                        Ok((TcpStream::from_std(stream)?, peer))
                    });
                match accepted {
                    Ok((stream, peer)) => Some(Ok((self.connection(stream, None), peer))),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                    Err(e) => Some(Err(e)),
                }
            }
            Source::Handed { queue, closes } => {
                let mut queue = queue.try_lock().ok()?;
                queue
                    .try_recv()
                    .ok()
                    .map(|handed| Ok(self.wrap(handed, closes)))
            }
        }
    }

    fn wrap(
        &self,
        handed: Handed,
        closes: &mpsc::UnboundedSender<u32>,
    ) -> (Connection, SocketAddr) {
        // The policies that count open connections (`StickyKey` for connections without a key).
        let close = matches!(self.balance, Balance::LeastConnections | Balance::StickyKey)
            .then(|| (self.id, closes.clone()));
        (self.connection(handed.stream, close), handed.peer)
    }

    fn connection(
        &self,
        stream: TcpStream,
        close: Option<(u32, mpsc::UnboundedSender<u32>)>,
    ) -> Connection {
        self.live.fetch_add(1, Ordering::Relaxed);
        // Counted only if the table had come when it opened, so that its close matches.
        let load = self.load.clone().filter(|l| l.get().is_some());
        if let Some(share) = load.as_deref().and_then(OnceLock::get) {
            share.opened();
        }
        Connection {
            stream,
            close,
            live: self.live.clone(),
            load,
        }
    }
}

/// An accepted connection: a `TcpStream` that, for `LeastConnections` and `StickyKey`, tells
/// the master when it closes.
pub struct Connection {
    stream: TcpStream,
    close: Option<(u32, mpsc::UnboundedSender<u32>)>,
    live: Arc<AtomicUsize>,
    /// Counted in the load table (`Shared`).
    load: Option<Arc<OnceLock<LoadShare>>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("stream", &self.stream)
            .finish()
    }
}

impl Connection {
    /// The underlying stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        if let Some(share) = self.load.as_deref().and_then(OnceLock::get) {
            share.closed();
        }
        if let Some((listener, closes)) = self.close.take() {
            let _ = closes.send(listener);
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The worker's table of listeners the master hands connections for, and of the load tables
/// of its `Shared` listeners.
#[derive(Default)]
pub(crate) struct WorkerListeners {
    queues: Mutex<HashMap<u32, mpsc::UnboundedSender<Handed>>>,
    loads: Mutex<HashMap<u32, Arc<OnceLock<LoadShare>>>>,
}

impl WorkerListeners {
    /// Where `listener`'s load entry goes once the master sends it.
    pub(crate) fn load_slot(&self, listener: u32) -> Arc<OnceLock<LoadShare>> {
        lock(&self.loads).entry(listener).or_default().clone()
    }

    pub(crate) fn register(&self, listener: u32) -> mpsc::UnboundedReceiver<Handed> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.queues).insert(listener, tx);
        rx
    }

    /// Queues a handed connection for its listener; false if nobody listens for it.
    pub(crate) fn deliver(&self, listener: u32, handed: Handed) -> bool {
        lock(&self.queues)
            .get(&listener)
            .is_some_and(|q| q.send(handed).is_ok())
    }
}

/// Reports closes for `LeastConnections` and `StickyKey` to the master.
pub(crate) async fn report_closes(
    mut closes: mpsc::UnboundedReceiver<u32>,
    sender: cluster_ipc::Sender<ToMaster>,
) {
    while let Some(listener) = closes.recv().await {
        if sender.send(&ToMaster::Closed { listener }).await.is_err() {
            return;
        }
    }
}
