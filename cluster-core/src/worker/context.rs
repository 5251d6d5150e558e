//! [`WorkerContext`], the app's handle, and what it hands out ([`Incoming`]). Apart from the
//! process's life (`run.rs`) because an app reads only this: its methods and their errors and
//! cancel safety.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::shared::WorkerShared;
use crate::messaging::{self, Pending};
use crate::model::WorkerId;
use crate::net::bind;
use crate::net::listener::{Handed, Listener};
use crate::protocol::{Balance, ListenAddr, ListenerInfo, ToMaster};
use crate::request::Request;
use crate::store::Store;
use crate::{Error, ErrorKind, Result};

/// What a worker receives from the master.
#[derive(Debug)]
pub enum Incoming<D, U> {
    /// A message sent with `send` or `broadcast`.
    Message(D),
    /// A request: answer it with [`Request::respond`].
    Request(Request<D, U>),
}

/// A worker's handle on the cluster: its identity, messages to and from the master, and the
/// shutdown signal. `D` is the type of messages the master sends, `U` of those it receives.
/// Cheap to clone.
///
/// The worker's function gets it (see [`Cluster::worker`](crate::Cluster::worker)). A worker
/// that serves a line of text on a port shared by every worker, answers the master's
/// messages and requests, and stops when asked:
///
/// ```no_run
/// # use cluster_core as cluster; // the facade crate `cluster` re-exports these names
/// use std::net::SocketAddr;
/// use std::time::Duration;
/// use cluster::{BoxError, Cluster, Incoming, WorkerContext};
/// use tokio::io::AsyncWriteExt;
///
/// async fn worker(ctx: WorkerContext<String, String>) -> Result<(), BoxError> {
///     // The master binds the port once and shares it: every worker accepts on it.
///     let listener = ctx.listen(SocketAddr::from(([127, 0, 0, 1], 7000))).await?;
///     // A request to the master, with its own timeout.
///     let motd = ctx.request(&"motd?".to_owned(), Duration::from_secs(1)).await?;
///     loop {
///         tokio::select! {
///             accepted = listener.accept() => {
///                 let (mut connection, _peer) = accepted?;
///                 connection.write_all(format!("{}: {motd}\n", ctx.id()).as_bytes()).await?;
///             }
///             incoming = ctx.recv() => match incoming {
///                 Some(Incoming::Message(text)) => println!("the master says {text}"),
///                 Some(Incoming::Request(request)) => request.respond(&"fine".to_owned()).await?,
///                 None => break, // the master is gone
///             },
///             () = ctx.shutdown_requested() => break,
///         }
///     }
///     ctx.send(&format!("{} stops", ctx.id())).await?;
///     Ok(())
/// }
///
/// fn main() -> std::process::ExitCode {
///     Cluster::<String, String>::new()
///         .master(|ctx| async move {
///             while let Some(event) = ctx.next_event().await {
///                 if let cluster::Event::Request { request, .. } = event {
///                     let _ = request.respond(&"welcome".to_owned()).await;
///                 }
///             }
///         })
///         .worker(worker)
///         .run()
/// }
/// ```
pub struct WorkerContext<D = (), U = ()> {
    pub(super) id: WorkerId,
    pub(super) sender: cluster_ipc::Sender<ToMaster>,
    pub(super) incoming: Arc<Mutex<mpsc::Receiver<Incoming<D, U>>>>,
    pub(super) shutdown: CancellationToken,
    pub(super) pending: Arc<Pending>,
    pub(super) shared: Arc<WorkerShared>,
    pub(super) _up: PhantomData<fn(U)>,
}

impl<D, U> Clone for WorkerContext<D, U> {
    fn clone(&self) -> Self {
        WorkerContext {
            id: self.id.clone(),
            sender: self.sender.clone(),
            incoming: self.incoming.clone(),
            shutdown: self.shutdown.clone(),
            pending: self.pending.clone(),
            shared: self.shared.clone(),
            _up: PhantomData,
        }
    }
}

impl<D, U> fmt::Debug for WorkerContext<D, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerContext")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<D, U> WorkerContext<D, U>
where
    D: DeserializeOwned + Send + 'static,
    U: Serialize + Send + 'static,
{
    /// Counts one request served, for the master's `max_requests` recycling: see
    /// [`count_request`](crate::count_request). `cluster::http` counts its own requests.
    pub fn count_request(&self) {
        super::count_request();
    }

    /// This worker's identity.
    pub fn id(&self) -> &WorkerId {
        &self.id
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.id.group
    }

    /// The slot in the group, `0..count`.
    pub fn slot(&self) -> usize {
        self.id.slot
    }

    /// Sends a message to the master. Returns once the message is queued on the channel
    /// (waiting while its write buffer is full), not when the master has read it.
    ///
    /// # Errors
    ///
    /// - [`Codec`](crate::ErrorKind::Codec): `msg` cannot be encoded; nothing was sent.
    /// - [`Disconnected`](crate::ErrorKind::Disconnected): the master is gone (the channel is
    ///   closed).
    /// - [`Ipc`](crate::ErrorKind::Ipc): the message is larger than the channel's frame limit
    ///   (nothing was sent), or the channel broke.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the message is queued whole or not at all. A future dropped while it waits
    /// for room sent nothing; once queued, the message is delivered unless the channel fails.
    pub async fn send(&self, msg: &U) -> Result<()> {
        let payload = messaging::encode(msg)?;
        Ok(self.sender.send(&ToMaster::User(payload)).await?)
    }

    /// Asks the master and waits up to `timeout` for its answer. The timeout counts from when
    /// the request is queued on the channel.
    ///
    /// # Errors
    ///
    /// - [`Codec`](crate::ErrorKind::Codec): `msg` cannot be encoded (nothing was sent), or
    ///   the answer does not decode as `D`.
    /// - [`Timeout`](crate::ErrorKind::Timeout): no answer within `timeout` (the master
    ///   function dropped the [`Request`], is busy, or reads no events).
    /// - [`Disconnected`](crate::ErrorKind::Disconnected): the master is gone.
    /// - [`Ipc`](crate::ErrorKind::Ipc): the request is larger than the frame limit, or the
    ///   channel broke.
    ///
    /// # Cancel safety
    ///
    /// A future dropped before the request was queued sent nothing. Once it is queued,
    /// dropping the future does not take it back: the master may still receive the request
    /// and answer, and the answer is discarded.
    pub async fn request(&self, msg: &U, timeout: Duration) -> Result<D> {
        let payload = messaging::encode(msg)?;
        let (guard, rx) = self.pending.register();
        self.sender
            .send(&ToMaster::Request {
                id: guard.id,
                payload,
            })
            .await?;
        messaging::await_response(guard, rx, timeout, "master").await
    }

    /// The next message or request from the master; `None` once the master has asked this
    /// worker to stop and every message sent before has been received. Clones of the context
    /// share one queue: each message goes to one caller.
    ///
    /// # Errors
    ///
    /// None: the end is `None`. A message that does not decode as `D` is dropped with a
    /// warning.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken off the queue only by a call that returns it, so
    /// dropping the future loses none.
    pub async fn recv(&self) -> Option<Incoming<D, U>> {
        self.incoming.lock().await.recv().await
    }

    /// This worker's metrics registry: register counters, gauges and histograms in it; the
    /// master collects them when `/metrics` is scraped and adds `group` and `slot` labels.
    ///
    /// ```no_run
    /// # fn demo(ctx: cluster_core::WorkerContext) {
    /// use cluster_core::prometheus_client::metrics::counter::Counter;
    /// let requests = Counter::<u64>::default();
    /// ctx.metrics().register("requests", "Requests served", requests.clone());
    /// requests.inc();
    /// # }
    /// ```
    pub fn metrics(&self) -> crate::observe::metrics::WorkerMetrics {
        self.shared
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(crate::observe::metrics::WorkerMetrics::new)
            .clone()
    }

    /// The master's store, shared by every worker of the cluster and the master: keys,
    /// values, counters, compare-and-swap, expiry, publish/subscribe (see [`Store`]).
    pub fn store(&self) -> Store {
        self.shared.store.clone()
    }

    /// Tells the master this worker is ready now.
    ///
    /// Without it, a worker is ready as soon as every `listen` its function started before
    /// its first `await` that did not complete at once has finished (a worker that listens on
    /// nothing is ready at once). A worker that does slow setup before listening should call
    /// `ready()` itself once it can serve. A second call, or one after the automatic report,
    /// does nothing.
    ///
    /// # Errors
    ///
    /// - [`Disconnected`](crate::ErrorKind::Disconnected): the master is gone.
    /// - [`Ipc`](crate::ErrorKind::Ipc): the channel broke.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before the report was queued, the worker is not
    /// reported ready, and a later call (or the automatic report) sends it.
    pub async fn ready(&self) -> Result<()> {
        self.shared.send_ready().await
    }

    /// Listens on a TCP address shared by the whole cluster, with the cluster's balance
    /// policy. The master binds it once and keeps it for the cluster's life; an address it
    /// cannot bind is an error naming the cause (address in use, permission denied).
    ///
    /// # Errors
    ///
    /// - [`Listen`](crate::ErrorKind::Listen): the master cannot listen on `addr` (in use,
    ///   permission denied), the address is already listened on with another balance policy,
    ///   or (with [`Balance::ReusePort`]) this worker cannot bind it with `SO_REUSEPORT`.
    /// - [`Disconnected`](crate::ErrorKind::Disconnected): the master is gone.
    /// - [`Io`](crate::ErrorKind::Io): the socket could not be registered with the runtime.
    /// - [`Ipc`](crate::ErrorKind::Ipc): the master answered without the socket, or the
    ///   channel broke.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: await it to the end. Once polled, the master has been asked, and a
    /// dropped future does not withdraw the request: the master binds the address anyway (for
    /// the cluster's life), and with a master-accept policy (round-robin, least-connections,
    /// sticky) puts this worker in the rotation, so connections handed to it for that address
    /// are closed unserved. The automatic readiness report also waits for this listen to end,
    /// so such a worker is ready only once it calls [`WorkerContext::ready`].
    ///
    /// ```no_run
    /// # async fn demo(ctx: cluster_core::WorkerContext) -> cluster_core::Result<()> {
    /// let listener = ctx.listen("127.0.0.1:8000".parse().unwrap()).await?;
    /// loop {
    ///     let (conn, peer) = listener.accept().await.map_err(cluster_core::Error::other)?;
    ///     // serve `conn` (AsyncRead + AsyncWrite), e.g. with hyper
    /// #   drop((conn, peer));
    /// }
    /// # }
    /// ```
    pub async fn listen(&self, addr: SocketAddr) -> Result<Listener> {
        self.listen_inner(ListenAddr::Tcp(addr), None).await
    }

    /// [`WorkerContext::listen`] with a balance policy for this address.
    ///
    /// # Errors
    ///
    /// As [`WorkerContext::listen`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`WorkerContext::listen`].
    pub async fn listen_with(&self, addr: SocketAddr, balance: Balance) -> Result<Listener> {
        self.listen_inner(ListenAddr::Tcp(addr), Some(balance))
            .await
    }

    /// Listens on the socket named `name` that the master was started with (socket
    /// activation: `FileDescriptorName=` in a systemd socket unit, `--fdname` of
    /// `systemd-socket-activate`, passed in `LISTEN_FDNAMES`), with the cluster's balance
    /// policy. [`WorkerContext::listen`] takes an inherited socket too, found by its address;
    /// a name finds it whatever address the unit gives it.
    ///
    /// # Errors
    ///
    /// As [`WorkerContext::listen`]; [`Listen`](crate::ErrorKind::Listen) also when no
    /// inherited socket has this name (the error lists those there are), or the one that has
    /// is not a TCP listening socket (a Unix one is listened on with
    /// [`WorkerContext::listen_unix`] and its path).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`WorkerContext::listen`].
    pub async fn listen_named(&self, name: &str) -> Result<Listener> {
        self.listen_inner(ListenAddr::Named(name.to_owned()), None)
            .await
    }

    /// [`WorkerContext::listen_named`] with a balance policy for this socket.
    ///
    /// # Errors
    ///
    /// As [`WorkerContext::listen_named`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`WorkerContext::listen`].
    pub async fn listen_named_with(&self, name: &str, balance: Balance) -> Result<Listener> {
        self.listen_inner(ListenAddr::Named(name.to_owned()), Some(balance))
            .await
    }

    /// Listens on a Unix stream socket path shared by the whole cluster (`Shared` policy).
    ///
    /// # Errors
    ///
    /// - [`Listen`](crate::ErrorKind::Listen): the master cannot listen on `path` (it exists,
    ///   permission denied), or it is already listened on with another policy.
    /// - [`Disconnected`](crate::ErrorKind::Disconnected): the master is gone.
    /// - [`Io`](crate::ErrorKind::Io): the socket could not be registered with the runtime.
    /// - [`Ipc`](crate::ErrorKind::Ipc): the master answered without the socket, or the
    ///   channel broke.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a dropped future does not withdraw the request, the master binds the
    /// path anyway, and the automatic readiness report waits for this listen forever (call
    /// [`WorkerContext::ready`]). The socket itself is closed with the dropped answer.
    pub async fn listen_unix(&self, path: &Path) -> Result<tokio::net::UnixListener> {
        self.shared.listens_in_flight.fetch_add(1, Ordering::SeqCst);
        let result = self
            .ask_listen(ListenAddr::Unix(path.to_path_buf()), Some(Balance::Shared))
            .await;
        let result = result.and_then(|(_, mut fds, _)| {
            let fd = fds.pop().ok_or_else(|| {
                Error::new(
                    ErrorKind::Ipc,
                    "the master answered a listen without its socket",
                )
            })?;
            let socket = std::os::unix::net::UnixListener::from(fd);
            socket
                .set_nonblocking(true)
                .map_err(|e| Error::io("cannot set the socket non-blocking", e))?;
            tokio::net::UnixListener::from_std(socket)
                .map_err(|e| Error::io("cannot register the socket", e))
        });
        self.listen_done().await;
        result
    }

    async fn listen_done(&self) {
        self.shared.listens_in_flight.fetch_sub(1, Ordering::SeqCst);
        let _ = self.shared.maybe_ready().await;
    }

    async fn ask_listen(
        &self,
        addr: ListenAddr,
        balance: Option<Balance>,
    ) -> Result<(
        ListenerInfo,
        Vec<OwnedFd>,
        Option<mpsc::UnboundedReceiver<Handed>>,
    )> {
        let id = self.shared.next_listen.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared
            .listen_waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        self.sender
            .send(&ToMaster::Listen { id, addr, balance })
            .await?;
        let (result, fds, queue) = rx.await.map_err(|_| Error::disconnected("master"))?;
        Ok((
            result.map_err(|e| Error::new(ErrorKind::Listen, e))?,
            fds,
            queue,
        ))
    }

    async fn listen_inner(&self, addr: ListenAddr, balance: Option<Balance>) -> Result<Listener> {
        if matches!(addr, ListenAddr::Named(_)) && self.shared.level < 2 {
            // An older master (a deploy of this build under it) would take the request for a
            // broken frame and kill this worker.
            return Err(Error::new(
                ErrorKind::Listen,
                "the master runs an older build that cannot listen on named sockets: restart the master with this build first",
            ));
        }
        self.shared.listens_in_flight.fetch_add(1, Ordering::SeqCst);
        let result = self.listen_tcp(addr, balance).await;
        self.listen_done().await;
        result
    }

    async fn listen_tcp(&self, addr: ListenAddr, balance: Option<Balance>) -> Result<Listener> {
        // The master sends handed connections right after its answer, in order; the reader
        // of its messages registers the listener's queue on reading the answer, so none
        // arrives for an unknown listener (this task may run only after they have arrived).
        let (info, mut fds, queue) = self.ask_listen(addr.clone(), balance).await?;
        let io = |what: &'static str| move |e| Error::io(what, e);
        match info.balance {
            Balance::Shared => {
                let load = Some(self.shared.listeners.load_slot(info.listener));
                self.passed_socket(&info, fds.pop(), load)
            }
            // The master passes a socket under `ReusePort` only when it inherited it: there
            // is no SO_REUSEPORT group to join, and every worker accepts from that socket.
            Balance::ReusePort if !fds.is_empty() => self.passed_socket(&info, fds.pop(), None),
            Balance::ReusePort => {
                let ListenAddr::Tcp(sock) = addr else {
                    return Err(Error::new(
                        ErrorKind::Listen,
                        "ReusePort needs a TCP address; use Balance::Shared for a Unix socket",
                    ));
                };
                let socket = bind::bind_tcp(sock, true).map_err(|e| {
                    Error::new(
                        ErrorKind::Listen,
                        format!("cannot listen on {sock} with SO_REUSEPORT"),
                    )
                    .with_source(e)
                })?;
                let local = socket.local_addr().ok();
                let socket = tokio::net::TcpListener::from_std(socket)
                    .map_err(io("cannot register the socket"))?;
                Ok(Listener::socket(
                    info.listener,
                    local,
                    info.balance,
                    socket,
                    self.shared.live.clone(),
                    None,
                ))
            }
            _ => {
                let queue = queue.unwrap_or_else(|| self.shared.listeners.register(info.listener));
                Ok(Listener::handed(
                    info.listener,
                    info.local,
                    info.balance,
                    queue,
                    self.shared.closes.clone(),
                    self.shared.live.clone(),
                ))
            }
        }
    }

    /// A listener accepting from the listening socket the master passed.
    fn passed_socket(
        &self,
        info: &ListenerInfo,
        fd: Option<OwnedFd>,
        load: Option<Arc<std::sync::OnceLock<crate::net::load::LoadShare>>>,
    ) -> Result<Listener> {
        let io = |what: &'static str| move |e| Error::io(what, e);
        let fd = fd.ok_or_else(|| {
            Error::new(
                ErrorKind::Ipc,
                "the master answered a listen without its socket",
            )
        })?;
        let socket = std::net::TcpListener::from(fd);
        socket
            .set_nonblocking(true)
            .map_err(io("cannot set the socket non-blocking"))?;
        let socket =
            tokio::net::TcpListener::from_std(socket).map_err(io("cannot register the socket"))?;
        Ok(Listener::socket(
            info.listener,
            info.local,
            info.balance,
            socket,
            self.shared.live.clone(),
            load,
        ))
    }

    /// A token cancelled when the master asks this worker to stop (shutdown, reload,
    /// scale-down) or the worker gets SIGTERM. Servers select on `cancelled()` to start
    /// draining.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Resolves when this worker is asked to stop.
    ///
    /// # Errors
    ///
    /// None.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the request to stop stays; a later call resolves at once.
    pub async fn shutdown_requested(&self) {
        self.shutdown.cancelled().await
    }

    /// Whether this worker has been asked to stop.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}
