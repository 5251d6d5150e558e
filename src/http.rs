//! HTTP/1.1 serving (hyper 1) that drains without losing requests.
//!
//! A worker told to stop must not close a keep-alive connection on which the client has
//! already sent its next request: that request is lost (Node and PM2 lose dozens per rolling
//! reload this way). [`serve`] drains instead:
//!
//! 1. When the shutdown token fires it keeps serving normally for
//!    [`DrainOptions::shutdown_delay`] while [`Readiness`] reports not ready, so a load
//!    balancer polling a readiness endpoint stops sending traffic first.
//! 2. Then it stops accepting, but first takes the connections already waiting in the
//!    listener's queue ([`Accept::try_accept_queued`]) and serves them instead of letting
//!    the kernel reset them.
//! 3. Every response produced from then on carries `Connection: close`, so each open
//!    connection is closed right after the response to the request its client has sent.
//! 4. A connection that stays idle (no request, nothing read or written) for
//!    [`DrainOptions::quiet_period`] is closed; a request that arrives within that period is
//!    answered first. Requests in flight finish.
//! 5. It returns once every connection is closed, or after [`DrainOptions::max_drain`],
//!    dropping what is left.
//!
//! Closing goes through a "lingering close": the write side is shut first and whatever the
//! client still sends is read and discarded until it closes (at most two seconds), because
//! closing a socket with unread input makes the kernel send a reset, which can destroy the
//! last response before the client has read it. A connection whose last request asked for
//! the close (`Connection: close`, or HTTP/1.0 without keep-alive) and had no body left
//! unread is shut and closed at once: its client sends nothing more (RFC 9112, section 9.6),
//! and waiting for its close would cost a wake-up per connection for nothing.
//!
//! One race no server can remove: a request the client sends on an idle connection while
//! the server's close of that connection is already on the wire. HTTP/1.1 clients retry
//! such requests (RFC 9112, section 9.3.1); the quiet period makes the window rare, since a
//! connection is closed only after being silent that long.
//!
//! ```
//! use std::convert::Infallible;
//!
//! use cluster::http::http_body_util::Full;
//! use cluster::http::hyper::body::{Bytes, Incoming};
//! use cluster::http::hyper::{Request, Response};
//! use cluster::http::{CancellationToken, DrainOptions, serve};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! // In a worker this is `ctx.shutdown_token()`.
//! let shutdown = CancellationToken::new();
//! # shutdown.cancel();
//! let stats = serve(
//!     listener,
//!     |_req: Request<Incoming>| async {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("hello"))))
//!     },
//!     shutdown,
//!     DrainOptions::new(),
//! )
//! .await?;
//! println!("served {} requests", stats.requests);
//! # Ok(())
//! # }
//! ```

use std::error::Error as StdError;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONNECTION, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The HTTP body helpers the examples use (`Full`, `Empty`, ...), re-exported so that
/// `cluster` is the only dependency an app needs.
///
/// ```
/// use cluster::http::http_body_util::Full;
/// use cluster::http::hyper::body::Bytes;
///
/// let body = Full::new(Bytes::from_static(b"ok"));
/// # let _ = body;
/// ```
pub use http_body_util;
/// hyper, whose request, response and service types [`serve`] speaks, re-exported so that
/// `cluster` is the only dependency an app needs.
///
/// ```
/// use cluster::http::hyper::{Response, StatusCode};
///
/// let response = Response::builder().status(StatusCode::NO_CONTENT).body(());
/// # let _ = response;
/// ```
pub use hyper;
/// The token [`serve`] watches; a worker's is `WorkerContext::shutdown_token()`.
///
/// ```
/// use cluster::http::CancellationToken;
///
/// let shutdown = CancellationToken::new();
/// shutdown.cancel();
/// assert!(shutdown.is_cancelled());
/// ```
pub use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The default [`DrainOptions::header_read_timeout`], hyper's own default.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closed connection's remaining input is read and discarded before the socket is
/// dropped (see the module documentation on lingering close).
const LINGER: Duration = Duration::from_secs(2);
/// Pause after an accept error that means the process is out of something (descriptors,
/// memory): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most this many queued connections are taken when draining starts, so that a flood of
/// new connections cannot keep a draining server accepting forever.
const MAX_QUEUED: usize = 4096;
/// EBADF, the same on Linux, the BSDs and macOS: the listener itself is gone.
const EBADF: i32 = 9;

/// Anything that yields connections: a tokio `TcpListener` or `UnixListener`, an
/// `Arc` of one (so that two servers can take turns on one socket, as an old and a new
/// worker do during a rolling reload), or cluster's worker `Listener`.
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
pub trait Accept: Send + Sync + 'static {
    /// A connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The peer's address, handed to the handler as [`PeerAddr`] in the request's extensions.
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
    fn try_accept_queued(&self) -> Option<io::Result<(Self::Io, Self::Addr)>> {
        None
    }
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

    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send {
        tokio::net::TcpListener::accept(self)
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
                    Ok((tokio::net::TcpStream::from_std(socket.into())?, peer))
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

    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send {
        cluster_core::Listener::accept(self)
    }

    fn try_accept_queued(&self) -> Option<io::Result<(Self::Io, Self::Addr)>> {
        self.try_accept()
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

/// The peer address of a request's connection, found in the request's extensions.
///
/// ```
/// use std::convert::Infallible;
/// use std::net::SocketAddr;
///
/// use cluster::http::PeerAddr;
/// use cluster::http::hyper::body::Incoming;
/// use cluster::http::hyper::{Request, Response};
///
/// async fn handler(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
///     let peer = req.extensions().get::<PeerAddr<SocketAddr>>().map(|p| p.0);
///     Ok(Response::new(format!("hello {peer:?}")))
/// }
/// # let _ = handler;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr<T>(pub T);

/// Where a server is in its life, in order.
///
/// ```
/// use cluster::http::Phase;
///
/// assert!(Phase::Serving < Phase::ShutdownDelay);
/// assert!(Phase::Draining < Phase::Stopped);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// [`serve`] has not started yet.
    Starting,
    /// Accepting and serving: ready for traffic.
    Serving,
    /// The shutdown token fired: still serving normally for
    /// [`DrainOptions::shutdown_delay`], but no longer ready.
    ShutdownDelay,
    /// No longer accepting; open connections are being closed.
    Draining,
    /// [`serve`] returned.
    Stopped,
}

/// Tells whether a server is ready for traffic, for an app's readiness endpoint: give a
/// clone to [`DrainOptions::readiness`] and keep one in the handler. Cheap to clone; use
/// one per [`serve`] call.
///
/// ```
/// use std::convert::Infallible;
///
/// use cluster::http::hyper::body::Incoming;
/// use cluster::http::hyper::{Request, Response, StatusCode};
/// use cluster::http::{DrainOptions, Readiness};
///
/// let readiness = Readiness::new();
/// let options = DrainOptions::new().readiness(&readiness);
/// let handler = move |req: Request<Incoming>| {
///     let ready = readiness.is_ready();
///     async move {
///         let status = match (req.uri().path(), ready) {
///             ("/readyz", false) => StatusCode::SERVICE_UNAVAILABLE,
///             _ => StatusCode::OK,
///         };
///         Ok::<_, Infallible>(Response::builder().status(status).body(String::new()).unwrap_or_default())
///     }
/// };
/// # let _ = (options, handler);
/// ```
#[derive(Clone, Debug)]
pub struct Readiness {
    phase: Arc<watch::Sender<Phase>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            phase: Arc::new(watch::Sender::new(Phase::Starting)),
        }
    }
}

impl Readiness {
    /// A handle in [`Phase::Starting`].
    ///
    /// ```
    /// use cluster::http::{Phase, Readiness};
    ///
    /// assert_eq!(Readiness::new().phase(), Phase::Starting);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The current phase.
    ///
    /// ```
    /// use cluster::http::{Phase, Readiness};
    ///
    /// let readiness = Readiness::new();
    /// assert!(readiness.phase() < Phase::Serving);
    /// ```
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Whether the server is accepting and has not been told to stop ([`Phase::Serving`]).
    ///
    /// ```
    /// use cluster::http::Readiness;
    ///
    /// assert!(!Readiness::new().is_ready());
    /// ```
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Serving
    }

    /// Resolves once the phase is `phase` or a later one.
    ///
    /// ```
    /// use cluster::http::{CancellationToken, DrainOptions, Phase, Readiness, serve};
    /// # use cluster::http::hyper::{Request, Response, body::Incoming};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let readiness = Readiness::new();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let shutdown = CancellationToken::new();
    /// let server = tokio::spawn(serve(
    ///     listener,
    ///     |_req: Request<Incoming>| async { Ok::<_, std::convert::Infallible>(Response::new(String::new())) },
    ///     shutdown.clone(),
    ///     DrainOptions::new().readiness(&readiness),
    /// ));
    /// readiness.reached(Phase::Serving).await;
    /// shutdown.cancel();
    /// readiness.reached(Phase::Stopped).await;
    /// # let _ = server.await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn reached(&self, phase: Phase) {
        let mut phases = self.phase.subscribe();
        // Only fails once the sender is dropped, and `self` holds it.
        let _ = phases.wait_for(|current| *current >= phase).await;
    }

    fn set(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }
}

/// How [`serve`] drains when its shutdown token fires.
///
/// ```
/// use std::time::Duration;
///
/// use cluster::http::DrainOptions;
///
/// let options = DrainOptions::new()
///     .quiet_period(Duration::from_millis(250))
///     .shutdown_delay(Duration::from_secs(2))
///     .max_drain(Duration::from_secs(2));
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct DrainOptions {
    quiet_period: Duration,
    shutdown_delay: Duration,
    max_drain: Option<Duration>,
    readiness: Readiness,
    header_read_timeout: Option<Duration>,
    peer_addr: bool,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            quiet_period: Duration::from_millis(500),
            shutdown_delay: Duration::ZERO,
            max_drain: None,
            readiness: Readiness::new(),
            header_read_timeout: Some(HEADER_READ_TIMEOUT),
            peer_addr: true,
        }
    }
}

impl DrainOptions {
    /// The defaults: a 500 ms quiet period, no shutdown delay, no bound on the drain.
    ///
    /// ```
    /// let options = cluster::http::DrainOptions::new();
    /// # let _ = options;
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a connection may stay silent (no request, nothing read or written) once
    /// draining has started before it is closed. Default 500 ms. Longer loses fewer requests
    /// to clients that send just as the connection closes; shorter drains faster.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let options = cluster::http::DrainOptions::new().quiet_period(Duration::from_millis(200));
    /// # let _ = options;
    /// ```
    pub fn quiet_period(mut self, period: Duration) -> Self {
        self.quiet_period = period;
        self
    }

    /// How long to keep serving normally after the shutdown token fires, with
    /// [`Readiness`] reporting not ready, before draining starts: the time a load balancer
    /// (a Kubernetes Service, say) needs to notice and stop routing here. Default zero.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let options = cluster::http::DrainOptions::new().shutdown_delay(Duration::from_secs(5));
    /// # let _ = options;
    /// ```
    pub fn shutdown_delay(mut self, delay: Duration) -> Self {
        self.shutdown_delay = delay;
        self
    }

    /// The longest the drain may take, counted from its start (after the shutdown delay);
    /// connections still open then are dropped. Default `None`: wait for all. In a worker,
    /// keep `shutdown_delay + max_drain` under the cluster's `grace`, after which the
    /// worker is killed.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let options = cluster::http::DrainOptions::new().max_drain(Duration::from_secs(4));
    /// # let _ = options;
    /// ```
    pub fn max_drain(mut self, max: impl Into<Option<Duration>>) -> Self {
        self.max_drain = max.into();
        self
    }

    /// A connection that completes no request head for this long while no request on it is
    /// under way is closed: a client sending its head byte by byte (slowloris), or a
    /// keep-alive connection left idle. Default 30 s, as hyper's own header read timeout;
    /// `None` keeps such connections open. The check runs once per period per connection,
    /// not per request, so a connection is closed between one and two periods after it last
    /// started a request.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let options = cluster::http::DrainOptions::new().header_read_timeout(Duration::from_secs(10));
    /// # let _ = options;
    /// ```
    pub fn header_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.header_read_timeout = timeout.into();
        self
    }

    /// Whether each request carries its connection's [`PeerAddr`] in its extensions
    /// (default true). Inserting it allocates the request's extension map, a cost every
    /// request pays; a handler that never reads the peer can turn it off.
    ///
    /// ```
    /// let options = cluster::http::DrainOptions::new().peer_addr(false);
    /// # let _ = options;
    /// ```
    pub fn peer_addr(mut self, insert: bool) -> Self {
        self.peer_addr = insert;
        self
    }

    /// The handle on which [`serve`] reports its [`Phase`].
    ///
    /// ```
    /// use cluster::http::{DrainOptions, Readiness};
    ///
    /// let readiness = Readiness::new();
    /// let options = DrainOptions::new().readiness(&readiness);
    /// # let _ = options;
    /// ```
    pub fn readiness(mut self, readiness: &Readiness) -> Self {
        self.readiness = readiness.clone();
        self
    }
}

/// What a [`serve`] call did.
///
/// ```
/// let stats = cluster::http::ServeStats::default();
/// assert_eq!(stats.requests, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeStats {
    /// Connections accepted, including `queued`.
    pub connections: u64,
    /// Requests handed to the service.
    pub requests: u64,
    /// Connections taken from the listener's queue after accepting stopped.
    pub queued: u64,
    /// Connections the drain closed after their quiet period.
    pub closed_idle: u64,
    /// Responses given `Connection: close` because of the drain (each ends its connection).
    pub closed_after_response: u64,
    /// Connections dropped still open when `max_drain` elapsed.
    pub aborted: u64,
}

/// Serves HTTP/1.1 on `listener` with a handler function until `shutdown` fires, then drains
/// (see the [module documentation](self)) and returns what it did.
///
/// The handler gets each request with its connection's [`PeerAddr`] in the extensions.
/// Each connection runs in its own task. An error from the handler closes its connection
/// without a response, as in hyper.
///
/// Accept errors that concern one connection (reset, aborted) are skipped; running out of
/// descriptors or memory pauses accepting for 100 ms. An error that means the listener is
/// unusable (invalid, closed, its master gone) stops accepting: the connections already open
/// are drained, then that error is returned.
///
/// ```
/// use std::convert::Infallible;
///
/// use cluster::http::http_body_util::Full;
/// use cluster::http::hyper::body::{Bytes, Incoming};
/// use cluster::http::hyper::{Request, Response, StatusCode};
/// use cluster::http::{CancellationToken, DrainOptions, serve};
///
/// async fn handler(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
///     let (status, body) = match req.uri().path() {
///         "/" => (StatusCode::OK, "hello"),
///         _ => (StatusCode::NOT_FOUND, "not found"),
///     };
///     Ok(Response::builder()
///         .status(status)
///         .body(Full::new(Bytes::from(body)))
///         .unwrap_or_default())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let shutdown = CancellationToken::new();
/// let server = tokio::spawn(serve(listener, handler, shutdown.clone(), DrainOptions::new()));
/// // ... later, or in a worker when `ctx.shutdown_token()` fires:
/// shutdown.cancel();
/// let stats = server.await.map_err(std::io::Error::other)??;
/// assert_eq!(stats.requests, 0);
/// # Ok(())
/// # }
/// ```
pub async fn serve<A, F, Fut, B, E>(
    listener: A,
    handler: F,
    shutdown: CancellationToken,
    options: DrainOptions,
) -> io::Result<ServeStats>
where
    A: Accept,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    E: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_service(listener, service_fn(handler), shutdown, options).await
}

/// [`serve`] with a hyper [`Service`] instead of a function: for a service written as a
/// type, or a tower service (an axum `Router`, say) wrapped in
/// `hyper_util::service::TowerToHyperService`.
///
/// ```
/// use std::convert::Infallible;
/// use std::future::Ready;
///
/// use cluster::http::hyper::body::Incoming;
/// use cluster::http::hyper::service::Service;
/// use cluster::http::hyper::{Request, Response};
/// use cluster::http::{CancellationToken, DrainOptions, serve_service};
///
/// struct Hello;
///
/// impl Service<Request<Incoming>> for Hello {
///     type Response = Response<String>;
///     type Error = Infallible;
///     type Future = Ready<Result<Response<String>, Infallible>>;
///
///     fn call(&self, _req: Request<Incoming>) -> Self::Future {
///         std::future::ready(Ok(Response::new("hello".to_string())))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let shutdown = CancellationToken::new();
/// # shutdown.cancel();
/// serve_service(listener, Hello, shutdown, DrainOptions::new()).await?;
/// # Ok(())
/// # }
/// ```
pub async fn serve_service<A, S, B>(
    listener: A,
    service: S,
    shutdown: CancellationToken,
    options: DrainOptions,
) -> io::Result<ServeStats>
where
    A: Accept,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let DrainOptions {
        quiet_period,
        shutdown_delay,
        max_drain,
        readiness,
        header_read_timeout,
        peer_addr,
    } = options;
    // No timer for hyper: its header read timeout arms (and boxes, and cancels) a timer for
    // every request, which cost keep-alive serving about a tenth of its CPU per request.
    // `serve_connection` keeps one timer per connection instead.
    let builder = http1::Builder::new();
    let shared = Arc::new(Shared {
        service,
        builder,
        drain: CancellationToken::new(),
        draining: AtomicBool::new(false),
        quiet: quiet_period,
        header_read_timeout,
        peer_addr,
        epoch: Instant::now(),
        requests: AtomicU64::new(0),
        closed_idle: AtomicU64::new(0),
        closed_after_response: AtomicU64::new(0),
    });
    let mut stats = ServeStats::default();
    let mut conns = JoinSet::new();
    readiness.set(Phase::Serving);

    let stop = async {
        shutdown.cancelled().await;
        readiness.set(Phase::ShutdownDelay);
        // A zero-length sleep still waits for the timer driver's next turn, which would let
        // connections serve requests as if no shutdown had come.
        if !shutdown_delay.is_zero() {
            tokio::time::sleep(shutdown_delay).await;
        }
    };
    let mut stop = pin!(stop);
    let mut failure = None;
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            // Reap finished connections so the set does not grow with every one ever served.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((io, peer)) => {
                    stats.connections += 1;
                    conns.spawn(serve_connection(io, peer, Arc::clone(&shared)));
                }
                Err(e) => match AcceptFailure::of(&e) {
                    AcceptFailure::Connection => {}
                    AcceptFailure::Resources => tokio::select! {
                        () = &mut stop => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    },
                    AcceptFailure::Listener => {
                        failure = Some(e);
                        break;
                    }
                },
            },
        }
    }

    readiness.set(Phase::Draining);
    // From here on every response carries `Connection: close` and idle connections count
    // down their quiet period, including those taken from the queue below.
    shared.draining.store(true, Ordering::Relaxed);
    shared.drain.cancel();
    if failure.is_none() {
        for _ in 0..MAX_QUEUED {
            match listener.try_accept_queued() {
                None => break,
                Some(Ok((io, peer))) => {
                    stats.connections += 1;
                    stats.queued += 1;
                    conns.spawn(serve_connection(io, peer, Arc::clone(&shared)));
                }
                Some(Err(e)) if AcceptFailure::of(&e) == AcceptFailure::Connection => {}
                Some(Err(_)) => break,
            }
        }
    }
    // Closing the socket now refuses new connections at once instead of letting them wait
    // in a queue that nobody will accept from.
    drop(listener);

    let deadline = max_drain.map(|max| Instant::now() + max);
    let mut expired = pin!(async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    });
    loop {
        tokio::select! {
            // A connection task that panicked (its handler did) only ends that connection,
            // as with `tokio::spawn`.
            joined = conns.join_next() => if joined.is_none() { break },
            () = &mut expired => {
                stats.aborted = u64::try_from(conns.len()).unwrap_or(u64::MAX);
                conns.shutdown().await;
                break;
            }
        }
    }
    readiness.set(Phase::Stopped);

    stats.requests = shared.requests.load(Ordering::Relaxed);
    stats.closed_idle = shared.closed_idle.load(Ordering::Relaxed);
    stats.closed_after_response = shared.closed_after_response.load(Ordering::Relaxed);
    match failure {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

/// What an accept error means for the accept loop.
#[derive(Debug, PartialEq, Eq)]
enum AcceptFailure {
    /// Concerns one connection (reset before it was accepted, ...): go on.
    Connection,
    /// The process is short of something (descriptors, memory, buffers): pause, then go on.
    Resources,
    /// The listener cannot be used any more.
    Listener,
}

impl AcceptFailure {
    fn of(e: &io::Error) -> Self {
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

/// State that the accept loop shares with every connection task.
struct Shared<S> {
    service: S,
    builder: http1::Builder,
    /// Cancelled when draining starts (after the shutdown delay).
    drain: CancellationToken,
    /// Set with `drain`, for the per-response check: the token's own `is_cancelled` takes
    /// a lock.
    draining: AtomicBool,
    quiet: Duration,
    /// See [`DrainOptions::header_read_timeout`].
    header_read_timeout: Option<Duration>,
    /// See [`DrainOptions::peer_addr`].
    peer_addr: bool,
    /// Origin of [`ConnState::last_io`].
    epoch: Instant,
    requests: AtomicU64,
    closed_idle: AtomicU64,
    closed_after_response: AtomicU64,
}

/// One connection's activity, shared by its I/O wrapper, its service and its task (all
/// running in that one task, so relaxed atomics suffice).
struct ConnState {
    epoch: Instant,
    /// When bytes last moved either way or a response finished, in nanoseconds from
    /// `epoch`: the start of the current silence. Kept only once draining has started, the
    /// one time it is read, so that serving does not pay a clock read for every read and
    /// write.
    last_io: AtomicU64,
    /// Set when draining starts.
    draining: AtomicBool,
    /// Requests handed to the service whose response body has not been dropped yet.
    busy: AtomicUsize,
    /// The latest request said it is the client's last and carried no body: once it is
    /// answered, the client sends nothing more, so the close need not linger.
    client_done: AtomicBool,
    /// Request heads completed on this connection, for the header read timeout.
    heads: AtomicU64,
}

impl ConnState {
    fn new(epoch: Instant) -> Self {
        ConnState {
            epoch,
            last_io: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            client_done: AtomicBool::new(false),
            heads: AtomicU64::new(0),
        }
    }

    /// Something moved: the silence starts again (counted only while draining).
    fn touch(&self) {
        if self.draining.load(Ordering::Relaxed) {
            self.stamp();
        }
    }

    /// Draining starts: the quiet period counts from now, whatever the connection did before.
    fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.stamp();
    }

    fn stamp(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_io.store(nanos, Ordering::Relaxed);
    }

    /// When the connection's quiet period ends if nothing happens before.
    fn quiet_until(&self, quiet: Duration) -> Instant {
        if self.busy.load(Ordering::Relaxed) > 0 {
            // The silence of a slow handler is not idleness; look again a period later.
            return Instant::now() + quiet;
        }
        self.epoch + Duration::from_nanos(self.last_io.load(Ordering::Relaxed)) + quiet
    }

    /// Idle: no request under way and silent for the whole quiet period.
    fn is_quiet(&self, quiet: Duration) -> bool {
        self.busy.load(Ordering::Relaxed) == 0 && self.quiet_until(quiet) <= Instant::now()
    }
}

/// Serves one connection until it closes: normally, then draining once `shared.drain`
/// fires.
async fn serve_connection<I, T, S, B>(io: I, peer: T, shared: Arc<Shared<S>>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: Clone + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let conn = Arc::new(ConnState::new(shared.epoch));
    let service = DrainService {
        shared: Arc::clone(&shared),
        conn: Arc::clone(&conn),
        peer: Arc::new(peer),
    };
    let io = TokioIo::new(Tracked {
        io,
        conn: Arc::clone(&conn),
    });
    // Driven with `poll_without_shutdown` so that the socket comes back at the end for a
    // lingering close, which hyper's own shutdown does not do.
    let mut http = shared.builder.serve_connection(io, service);

    // One header-read timer per connection, re-armed once per period: a period in which no
    // request head completed and none was under way ends the connection.
    let mut heads = 0;
    let mut deadline = shared.header_read_timeout.map(|t| Instant::now() + t);
    let finished = loop {
        tokio::select! {
            finished = poll_fn(|cx| http.poll_without_shutdown(cx)) => break Some(finished),
            () = shared.drain.cancelled() => break None,
            () = sleep_until_some(deadline), if deadline.is_some() => {
                let now_heads = conn.heads.load(Ordering::Relaxed);
                if now_heads != heads || conn.busy.load(Ordering::Relaxed) > 0 {
                    heads = now_heads;
                    deadline = shared.header_read_timeout.map(|t| Instant::now() + t);
                    continue;
                }
                // Nothing under way and no request started for a whole period: close,
                // without a linger (no response is on its way, and a slowloris client would
                // only keep it open). Not hyper's graceful shutdown: it waits for the head of
                // a connection that has not served a request yet.
                let mut io = http.into_parts().io.into_inner().io;
                let _ = io.shutdown().await;
                return;
            }
        }
    };
    let finished = match finished {
        Some(finished) => finished,
        None => {
            // The quiet period counts from the drain's start: a connection idle for an hour
            // still gets the whole period for a request its client may be sending now.
            conn.start_draining();
            let mut closing = false;
            loop {
                let quiet_until = conn.quiet_until(shared.quiet);
                tokio::select! {
                    finished = poll_fn(|cx| http.poll_without_shutdown(cx)) => break finished,
                    () = tokio::time::sleep_until(quiet_until), if !closing => {
                        // hyper closes an idle connection at once when asked to shut down,
                        // even with a request half read, so ask only once nothing has moved
                        // for the whole period.
                        if conn.is_quiet(shared.quiet) {
                            Pin::new(&mut http).graceful_shutdown();
                            closing = true;
                            shared.closed_idle.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    };
    // An error (the client reset, a malformed request) leaves nothing worth lingering for.
    if finished.is_ok() {
        let mut io = http.into_parts().io.into_inner().io;
        if conn.client_done.load(Ordering::Relaxed) {
            // Shut explicitly: dropping alone sends no FIN while another copy of the socket
            // is open (a master that has not yet seen this worker's acknowledgement).
            let _ = io.shutdown().await;
        } else {
            linger(io).await;
        }
    }
}

/// Sleeps until `deadline`; never returns without one (its `select!` branch is disabled
/// then).
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Whether `req` is the client's last request on its connection with nothing of it left to
/// arrive: it asks for the close (RFC 9112, section 9.6: the client then sends no further
/// request) and has no body, so no input can follow the response.
fn is_clients_last<B: Body>(req: &Request<B>) -> bool {
    if !req.body().is_end_stream() {
        return false;
    }
    let mut close = false;
    let mut keep_alive = false;
    for value in req.headers().get_all(CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            close |= token.eq_ignore_ascii_case("close");
            keep_alive |= token.eq_ignore_ascii_case("keep-alive");
        }
    }
    close || (req.version() == hyper::Version::HTTP_10 && !keep_alive)
}

/// Closes a connection without a reset: shuts the write side, then reads and discards until
/// the client closes too (or [`LINGER`] passes), so that input the client sent after our
/// last response cannot make the kernel reset the connection before that response is read.
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
    let drain = async {
        if io.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 1024];
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The I/O of a connection, recording when bytes move.
struct Tracked<I> {
    io: I,
    conn: Arc<ConnState>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The app's service, wrapped to count requests, mark the connection busy until each
/// response is sent, and close connections through their next response once draining.
struct DrainService<S, T> {
    shared: Arc<Shared<S>>,
    conn: Arc<ConnState>,
    // In an `Arc` because hyper's `poll_without_shutdown` wants an `Unpin` service.
    peer: Arc<T>,
}

impl<S, T, B> Service<Request<Incoming>> for DrainService<S, T>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    T: Clone + Send + Sync + 'static,
    B: Body + Send + 'static,
{
    type Response = Response<DrainBody<B>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let busy = Busy::new(Arc::clone(&self.conn));
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        self.conn.heads.fetch_add(1, Ordering::Relaxed);
        self.conn
            .client_done
            .store(is_clients_last(&req), Ordering::Relaxed);
        if self.shared.peer_addr {
            req.extensions_mut().insert(PeerAddr(T::clone(&self.peer)));
        }
        let response = self.shared.service.call(req);
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let mut response = response.await.map_err(Into::into)?;
            // Decided when the response is ready, not when the request came: a request that
            // was under way when draining started still closes its connection, so the
            // client learns it from this response instead of from a close that races its
            // next request.
            if shared.draining.load(Ordering::Relaxed) {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                shared.closed_after_response.fetch_add(1, Ordering::Relaxed);
            }
            Ok(response.map(|body| DrainBody {
                body: Box::pin(body),
                _busy: busy,
            }))
        })
    }
}

/// Marks its connection busy while alive; dropped with the response body (or with the
/// request's future, if the service fails or the connection dies first).
struct Busy(Arc<ConnState>);

impl Busy {
    fn new(conn: Arc<ConnState>) -> Self {
        conn.busy.fetch_add(1, Ordering::Relaxed);
        Busy(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // The silence after a response counts from its end.
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its connection marked busy until hyper drops it, which it
/// does once the body is sent.
struct DrainBody<B> {
    // Boxed so that bodies which are not `Unpin` work without unsafe pin projection.
    body: Pin<Box<B>>,
    _busy: Busy,
}

impl<B: Body> Body for DrainBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.body.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Empty, Full};
    use hyper::body::Bytes;

    /// Whether a bodiless request with these `Connection` headers ends the client's input.
    fn last(version: hyper::Version, connection: &[&str]) -> bool {
        let mut builder = Request::builder().version(version).uri("/");
        for value in connection {
            builder = builder.header(CONNECTION, *value);
        }
        is_clients_last(&builder.body(Empty::<Bytes>::new()).unwrap_or_default())
    }

    #[test]
    fn a_close_asked_by_the_client_ends_its_input() {
        const HTTP_10: hyper::Version = hyper::Version::HTTP_10;
        const HTTP_11: hyper::Version = hyper::Version::HTTP_11;
        assert!(last(HTTP_11, &["close"]));
        assert!(last(HTTP_11, &["Upgrade, CLOSE"]));
        assert!(last(HTTP_11, &["te", "close"]));
        assert!(last(HTTP_10, &[]));
        assert!(!last(HTTP_10, &["keep-alive"]));
        assert!(!last(HTTP_11, &[]));
        assert!(!last(HTTP_11, &["keep-alive"]));
        assert!(!last(HTTP_11, &["closed"]));
        // A body may still be arriving: the close has to linger for it.
        let upload = Request::builder()
            .header(CONNECTION, "close")
            .body(Full::new(Bytes::from_static(b"data")))
            .unwrap_or_default();
        assert!(!is_clients_last(&upload));
    }
}
