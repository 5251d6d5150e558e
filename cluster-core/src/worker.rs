//! The worker side: its context, and the process's life from bootstrap to exit.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::task::Poll;
use std::time::Duration;

use cluster_ipc::{Channel, Config, bootstrap};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::identity::ENV_IPC_FD;
use crate::messaging::{self, Pending};
use crate::model::WorkerId;
use crate::net::bind;
use crate::net::listener::{self, Handed, Listener, WorkerListeners};
use crate::protocol::{Balance, ListenAddr, ListenerInfo, ToMaster, ToWorker};
use crate::request::{ReplyTo, Request};
use crate::{Error, ErrorKind, Result};

/// Exit code of a worker whose environment names no usable channel (EX_CONFIG).
pub const EXIT_BOOTSTRAP: i32 = 78;
/// Exit code of a worker whose master vanished.
pub const EXIT_MASTER_GONE: i32 = 69;
/// How long a worker waits for the master's hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
pub struct WorkerContext<D = (), U = ()> {
    id: WorkerId,
    sender: cluster_ipc::Sender<ToMaster>,
    incoming: Arc<Mutex<mpsc::Receiver<Incoming<D, U>>>>,
    shutdown: CancellationToken,
    pending: Arc<Pending>,
    shared: Arc<WorkerShared>,
    _up: PhantomData<fn(U)>,
}

/// The master's answer to a listen, with the queue of a master-accept listener, registered
/// by the reader of the master's messages before it reads the next one.
type ListenReply = (
    Result<ListenerInfo, String>,
    Vec<OwnedFd>,
    Option<mpsc::UnboundedReceiver<Handed>>,
);

/// Worker state shared by the context, the reader of the master's messages and listeners.
struct WorkerShared {
    sender: cluster_ipc::Sender<ToMaster>,
    listeners: WorkerListeners,
    listen_waiters: std::sync::Mutex<HashMap<u64, oneshot::Sender<ListenReply>>>,
    next_listen: AtomicU64,
    /// `listen` calls under way: readiness waits for them.
    listens_in_flight: AtomicUsize,
    /// The worker function has been polled once: listens it started are known.
    first_poll_done: AtomicBool,
    ready_sent: AtomicBool,
    closes: mpsc::UnboundedSender<u32>,
    /// Open connections of all this worker's listeners.
    live: Arc<AtomicUsize>,
    /// The worker's metrics registry, created on first use, encoded for the master's scrape.
    metrics: std::sync::Mutex<Option<crate::observe::metrics::WorkerMetrics>>,
}

impl WorkerShared {
    async fn send_ready(&self) -> Result<()> {
        if self.ready_sent.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // The send waits while the channel's buffer is full; a caller that gives up then has
        // sent nothing, and the flag must let the next call send the report.
        let mut unsent = Unsent(Some(&self.ready_sent));
        let sent = self.sender.send(&ToMaster::Ready).await;
        unsent.0 = None;
        Ok(sent?)
    }

    /// Ready once the first poll is done and no listen is under way.
    async fn maybe_ready(&self) -> Result<()> {
        if self.first_poll_done.load(Ordering::SeqCst)
            && self.listens_in_flight.load(Ordering::SeqCst) == 0
        {
            self.send_ready().await?;
        }
        Ok(())
    }
}

/// Clears a "sent" flag when dropped still holding it: the send it guarded never happened.
struct Unsent<'a>(Option<&'a AtomicBool>);

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0 {
            flag.store(false, Ordering::SeqCst);
        }
    }
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
                let fd = fds.pop().ok_or_else(|| {
                    Error::new(
                        ErrorKind::Ipc,
                        "the master answered a listen without its socket",
                    )
                })?;
                let socket = std::net::TcpListener::from(fd);
                socket
                    .set_nonblocking(true)
                    .map_err(io("cannot set the socket non-blocking"))?;
                let socket = tokio::net::TcpListener::from_std(socket)
                    .map_err(io("cannot register the socket"))?;
                Ok(Listener::socket(
                    info.listener,
                    info.local,
                    info.balance,
                    socket,
                    self.shared.live.clone(),
                    Some(self.shared.listeners.load_slot(info.listener)),
                ))
            }
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

/// Reads the master's messages until the channel ends; the worker exits when it does, since
/// the master is gone.
async fn read_master<D: DeserializeOwned + Send + 'static, U: Send + 'static>(
    mut rx: cluster_ipc::Receiver<ToWorker>,
    reply: cluster_ipc::Sender<ToMaster>,
    incoming: mpsc::Sender<Incoming<D, U>>,
    shutdown: CancellationToken,
    pending: Arc<Pending>,
    shared: Arc<WorkerShared>,
) {
    let mut incoming = Some(incoming);
    loop {
        let (msg, mut fds) = match rx.recv_with_fds().await {
            Ok(Some(msg)) => msg,
            Ok(None) | Err(_) => master_gone(),
        };
        match msg {
            ToWorker::Shutdown => {
                shutdown.cancel();
                // Close the queue so `recv` returns None once drained.
                incoming = None;
            }
            ToWorker::User(payload) => match messaging::decode::<D>(&payload) {
                Ok(msg) => deliver(&incoming, Incoming::Message(msg)).await,
                Err(e) => tracing::warn!("dropped a message from the master: {e:#}"),
            },
            ToWorker::Request { id, payload } => match messaging::decode::<D>(&payload) {
                Ok(msg) => {
                    let request = Request::new(msg, id, ReplyTo::Master(reply.clone()));
                    deliver(&incoming, Incoming::Request(request)).await
                }
                Err(e) => tracing::warn!("dropped a request from the master: {e:#}"),
            },
            ToWorker::Response { id, payload } => pending.complete(id, payload),
            ToWorker::MetricsRequest { id } => {
                let metrics = shared
                    .metrics
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let text = metrics.map_or_else(|| "# EOF\n".to_string(), |m| m.encode());
                let _ = reply.send(&ToMaster::Metrics { id, text }).await;
            }
            ToWorker::Listening { id, result } => {
                let waiter = shared
                    .listen_waiters
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                if let Some(waiter) = waiter {
                    // Connections for this listener may be the very next messages: its queue
                    // must exist before they are read, not when the listening task next runs.
                    let queue = match &result {
                        Ok(info)
                            if !matches!(info.balance, Balance::Shared | Balance::ReusePort) =>
                        {
                            Some(shared.listeners.register(info.listener))
                        }
                        _ => None,
                    };
                    let _ = waiter.send((result, fds, queue));
                }
            }
            ToWorker::Connection {
                listener,
                conn,
                peer,
            } => {
                // Acknowledge first: from here on the connection is this worker's, and the
                // master stops keeping a copy to hand elsewhere.
                let _ = reply.send(&ToMaster::Accepted { conn }).await;
                let Some(fd) = fds.pop() else { continue };
                take_connection(&shared, listener, fd, peer);
            }
            ToWorker::LoadShare {
                listener,
                index,
                tag,
            } => {
                let Some(fd) = fds.pop() else { continue };
                match crate::net::load::LoadShare::open(fd, index, tag) {
                    Ok(share) => {
                        let _ = shared.listeners.load_slot(listener).set(share);
                    }
                    Err(e) => tracing::warn!("cannot map the load table of {listener}: {e}"),
                }
            }
            ToWorker::Connections { listener, conns } => {
                for (conn, _) in &conns {
                    let _ = reply.send(&ToMaster::Accepted { conn: *conn }).await;
                }
                if fds.len() != conns.len() {
                    tracing::warn!(
                        "{} connections came with {} descriptors: dropped them",
                        conns.len(),
                        fds.len()
                    );
                    continue;
                }
                for ((_, peer), fd) in conns.into_iter().zip(fds) {
                    take_connection(&shared, listener, fd, peer);
                }
            }
        }
    }
}

/// Ends the process at once: the master died (its parent-death signal normally gets here
/// first).
#[allow(
    clippy::exit,
    reason = "an orphaned worker must not serve on: its connections and shutdown belong to a \
              master that is gone, and the worker function may never return"
)]
fn master_gone() -> ! {
    eprintln!(
        "cluster worker {}: the master is gone, exiting",
        std::process::id()
    );
    std::process::exit(EXIT_MASTER_GONE);
}

/// Queues a connection the master handed over for the listener it belongs to.
fn take_connection(shared: &WorkerShared, listener: u32, fd: OwnedFd, peer: Option<SocketAddr>) {
    if let Some(handed) = handed(fd, peer) {
        if !shared.listeners.deliver(listener, handed) {
            tracing::warn!("dropped a connection for unknown listener {listener}");
        }
    }
}

fn handed(fd: OwnedFd, peer: Option<SocketAddr>) -> Option<Handed> {
    let stream = std::net::TcpStream::from(fd);
    let peer = peer.or_else(|| stream.peer_addr().ok())?;
    stream.set_nonblocking(true).ok()?;
    let stream = tokio::net::TcpStream::from_std(stream).ok()?;
    Some(Handed { stream, peer })
}

async fn deliver<D, U>(queue: &Option<mpsc::Sender<Incoming<D, U>>>, item: Incoming<D, U>) {
    if let Some(queue) = queue {
        let _ = queue.send(item).await;
    }
}

/// Signals that reach a worker directly. A terminal's Ctrl-C (SIGINT) and hang-up (SIGHUP) go
/// to the whole foreground process group, master and workers alike: workers ignore them so the
/// master alone coordinates exactly one graceful shutdown. SIGTERM sent to one worker stops
/// that worker gracefully.
fn handle_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    for kind in [SignalKind::interrupt(), SignalKind::hangup()] {
        if let Ok(mut stream) = signal(kind) {
            tokio::spawn(async move { while stream.recv().await.is_some() {} });
        }
    }
    if let Ok(mut term) = signal(SignalKind::terminate()) {
        tokio::spawn(async move {
            while term.recv().await.is_some() {
                shutdown.cancel();
            }
        });
    }
}

/// Beats from a task on the worker's own runtime: if the runtime is stuck (a busy loop, a
/// deadlock), the beats stop and the master's watchdog replaces the worker. A thread of its
/// own would keep beating through that. Each beat carries how late it ran (the runtime's lag).
async fn heartbeat(
    sender: cluster_ipc::Sender<ToMaster>,
    interval: Duration,
    live: Arc<AtomicUsize>,
) {
    let mut due = tokio::time::Instant::now() + interval;
    loop {
        tokio::time::sleep_until(due).await;
        let now = tokio::time::Instant::now();
        let lag_us =
            u64::try_from(now.saturating_duration_since(due).as_micros()).unwrap_or(u64::MAX);
        let connections = live.load(Ordering::Relaxed) as u64;
        if sender
            .send(&ToMaster::Heartbeat {
                lag_us,
                connections,
            })
            .await
            .is_err()
        {
            return;
        }
        due = now + interval;
    }
}

/// How a worker, master or hook function ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It returned normally.
    Ok,
    /// It returned an error (or panicked), described here.
    Failed(String),
}

/// Runs a worker process's whole life inside a runtime: bootstrap, handshake, the user's
/// function, then a final message to the master. Returns once the function has ended and the
/// master has been told how; the error says why the worker failed.
pub(crate) async fn run<D, U, F, Fut>(id: WorkerId, auto_ready: bool, f: F) -> Result<()>
where
    D: DeserializeOwned + Send + 'static,
    U: Serialize + Send + 'static,
    F: FnOnce(WorkerContext<D, U>) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let channel = connect().await?;
    let (sender, receiver) = channel.split();
    let shutdown = CancellationToken::new();
    let pending = Arc::new(Pending::default());
    let (queue, incoming) = mpsc::channel(1024);
    let (closes, closes_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(WorkerShared {
        sender: sender.clone(),
        listeners: WorkerListeners::default(),
        listen_waiters: std::sync::Mutex::new(HashMap::new()),
        next_listen: AtomicU64::new(0),
        listens_in_flight: AtomicUsize::new(0),
        first_poll_done: AtomicBool::new(false),
        ready_sent: AtomicBool::new(!auto_ready),
        closes,
        live: Arc::default(),
        metrics: std::sync::Mutex::new(None),
    });
    handle_signals(shutdown.clone());
    tokio::spawn(heartbeat(
        sender.clone(),
        heartbeat_interval(),
        shared.live.clone(),
    ));
    tokio::spawn(listener::report_closes(closes_rx, sender.clone()));
    tokio::spawn(read_master(
        receiver,
        sender.clone(),
        queue,
        shutdown.clone(),
        pending.clone(),
        shared.clone(),
    ));
    let ctx = WorkerContext {
        id: id.clone(),
        sender: sender.clone(),
        incoming: Arc::new(Mutex::new(incoming)),
        shutdown,
        pending,
        shared: shared.clone(),
        _up: PhantomData,
    };
    // Poll the worker's function once here, so the listens it starts before its first real
    // wait are known: the worker is ready when they are done, or now if there are none.
    let mut work = Box::pin(f(ctx));
    let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
    shared.first_poll_done.store(true, Ordering::SeqCst);
    shared.maybe_ready().await.map_err(|e| {
        Error::new(
            ErrorKind::Disconnected,
            "the master is gone: the worker could not report that it is ready",
        )
        .with_source(e)
    })?;
    let outcome = match first {
        Poll::Ready(outcome) => outcome,
        // A panic in the worker's function is a failure like any other, reported to the master.
        Poll::Pending => match tokio::spawn(work).await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => Outcome::Failed(format!(
                "the worker function panicked: {}",
                crate::cluster::panic_message(&*e.into_panic())
            )),
            Err(e) => Outcome::Failed(e.to_string()),
        },
    };
    let failed = matches!(outcome, Outcome::Failed(_));
    let _ = sender.send(&ToMaster::Exiting { failed }).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sender.flush()).await;
    match outcome {
        Outcome::Ok => Ok(()),
        Outcome::Failed(reason) => Err(Error::new(ErrorKind::WorkerFailed, reason)),
    }
}

/// The interval the master asked for, in `CLUSTER_HEARTBEAT_MS` (default 1 s).
fn heartbeat_interval() -> Duration {
    std::env::var(crate::identity::ENV_HEARTBEAT_MS)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&ms: &u64| ms > 0)
        .map_or(Duration::from_secs(1), Duration::from_millis)
}

/// Every failure here is `Bootstrap`: the process is not a worker its master can talk to.
async fn connect() -> Result<Channel<ToMaster, ToWorker>> {
    let bootstrap = |message: &'static str| Error::new(ErrorKind::Bootstrap, message);
    let stream = bootstrap::from_env(ENV_IPC_FD)
        .map_err(|e| bootstrap("cannot take the channel to the master").with_source(e))?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Bootstrap,
                format!(
                    "{ENV_IPC_FD} is not set: this process has the cluster worker variables but no channel to a master"
                ),
            )
        })?;
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        Channel::from_std(stream, Config::default()),
    )
    .await
    .map_err(|_| bootstrap("the master did not answer the handshake within 10 s"))?
    .map_err(|e| bootstrap("the handshake with the master failed").with_source(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bound on waits that should be quick.
    const STEP: Duration = Duration::from_secs(5);

    /// A worker's shared state on a channel whose master end the test holds.
    async fn shared_with_master(
        config: Config,
    ) -> (Arc<WorkerShared>, cluster_ipc::Receiver<ToMaster>) {
        let (worker, master) = Channel::<ToMaster, ToWorker>::pair(config).await.unwrap();
        let (sender, _) = worker.split();
        let (_, from_worker) = master.split();
        let (closes, _) = mpsc::unbounded_channel();
        let shared = Arc::new(WorkerShared {
            sender,
            listeners: WorkerListeners::default(),
            listen_waiters: std::sync::Mutex::new(HashMap::new()),
            next_listen: AtomicU64::new(0),
            listens_in_flight: AtomicUsize::new(0),
            first_poll_done: AtomicBool::new(true),
            ready_sent: AtomicBool::new(false),
            closes,
            live: Arc::default(),
            metrics: std::sync::Mutex::new(None),
        });
        (shared, from_worker)
    }

    /// A `ready` dropped while the channel is full sent nothing, so it must not count as sent:
    /// the next call reports the worker ready.
    #[tokio::test]
    async fn a_ready_report_dropped_before_it_was_queued_is_sent_by_the_next_call() {
        let (shared, mut from_worker) =
            shared_with_master(Config::default().with_write_buffer(64 << 10)).await;
        // Fill the socket and then the channel's buffer: the master end reads nothing yet.
        let mut queued = 0;
        loop {
            let big = ToMaster::User(vec![0; 32 << 10]);
            let send = shared.sender.send(&big);
            match tokio::time::timeout(Duration::from_millis(100), send).await {
                Ok(result) => result.unwrap(),
                Err(_) => break,
            }
            queued += 1;
            assert!(queued < 10_000, "the channel never filled up");
        }
        let gave_up = tokio::time::timeout(Duration::from_millis(50), shared.send_ready()).await;
        assert!(gave_up.is_err(), "the report waited for room");
        assert!(!shared.ready_sent.load(Ordering::SeqCst));

        // The master reads what was queued; the next call reports ready.
        let reader = tokio::spawn(async move {
            loop {
                match tokio::time::timeout(STEP, from_worker.recv()).await {
                    Ok(Ok(Some(ToMaster::Ready))) => return true,
                    Ok(Ok(Some(_))) => {}
                    _ => return false,
                }
            }
        });
        tokio::time::timeout(STEP, shared.send_ready())
            .await
            .unwrap()
            .unwrap();
        assert!(shared.ready_sent.load(Ordering::SeqCst));
        assert!(reader.await.unwrap(), "the master got the ready report");
    }
}
