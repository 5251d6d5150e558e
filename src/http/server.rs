//! [`serve`], [`serve_tower`] and [`serve_service`]: the accept loop, the shutdown delay, taking the queued
//! connections, and waiting for the drain. Apart from the connection's task because this runs
//! once per server, and follows the steps of the module documentation in order.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::{Service, service_fn};
use hyper::{Request, Response};
use hyper_util::rt::TokioExecutor;
use hyper_util::service::TowerToHyperService;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::accept::{Accept, AcceptFailure};
use super::connection::serve_connection;
use super::options::{DrainOptions, ServeStats};
use super::readiness::Phase;
use super::shared::{BoxError, Shared};

/// Pause after an accept error that means the process is out of something (descriptors,
/// memory): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most this many queued connections are taken when draining starts, so that a flood of
/// new connections cannot keep a draining server accepting forever.
const MAX_QUEUED: usize = 4096;

/// Serves HTTP/1.1 and HTTP/2 on `listener` with a handler function until `shutdown` fires, then drains
/// (see the [module documentation](crate::http)) and returns what it did.
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
///
/// [`PeerAddr`]: crate::http::PeerAddr
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

/// [`serve`] with a tower service: an axum `Router` (after `with_state`), or any
/// `tower::Service` that takes a hyper request, served as it is, with no adapter in the app.
///
/// Each request goes to a clone of `service`, made ready (`poll_ready`) and then called, as
/// hyper-util's `TowerToHyperService` does (which this uses): cloning a `Router` is cheap.
///
/// ```
/// use axum::Router;
/// use axum::routing::get;
/// use cluster::http::{CancellationToken, DrainOptions, serve_tower};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// // In a worker this is `ctx.shutdown_token()`.
/// let shutdown = CancellationToken::new();
/// # shutdown.cancel();
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// serve_tower(listener, app, shutdown, DrainOptions::new()).await?;
/// # Ok(())
/// # }
/// ```
pub async fn serve_tower<A, S, B>(
    listener: A,
    service: S,
    shutdown: CancellationToken,
    options: DrainOptions,
) -> io::Result<ServeStats>
where
    A: Accept,
    S: tower_service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_service(
        listener,
        TowerToHyperService::new(service),
        shutdown,
        options,
    )
    .await
}

/// [`serve`] with a hyper [`Service`] instead of a function: for a service written as a
/// type. A tower service (an axum `Router`) goes to [`serve_tower`].
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
        write_timeout,
        request_timeout,
        max_connections,
        peer_addr,
        proxy_protocol,
        #[cfg(feature = "tls")]
        tls,
    } = options;
    // No timer for hyper: its header read timeout arms (and boxes, and cancels) a timer for
    // every request, which cost keep-alive serving about a tenth of its CPU per request.
    // `serve_connection` keeps one timer per connection instead.
    let http1 = http1::Builder::new();
    // hyper's HTTP/2 defaults (200 concurrent streams per connection, flow control windows,
    // the h2 crate's limits on resets); each stream's service future runs in a task of its
    // own, spawned on this runtime.
    let http2 = http2::Builder::new(TokioExecutor::new());
    let shared = Arc::new(Shared {
        service,
        http1,
        http2,
        #[cfg(feature = "tls")]
        tls: tls.map(|tls| tls.acceptor()),
        drain: CancellationToken::new(),
        draining: Arc::new(AtomicBool::new(false)),
        quiet: quiet_period,
        header_read_timeout,
        write_timeout,
        request_timeout,
        peer_addr,
        proxy_protocol,
        epoch: Instant::now(),
        requests: AtomicU64::new(0),
        http2_connections: AtomicU64::new(0),
        closed_idle: AtomicU64::new(0),
        closed_after_response: AtomicU64::new(0),
        closed_header_timeout: AtomicU64::new(0),
        refused_proxy_header: AtomicU64::new(0),
        closed_write_timeout: AtomicU64::new(0),
        requests_timed_out: AtomicU64::new(0),
        tls_handshake_timeouts: AtomicU64::new(0),
        tls_handshake_errors: AtomicU64::new(0),
    });
    let max_connections = max_connections.unwrap_or(usize::MAX);
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
            // At the cap, not accepting leaves new connections queued (for another worker,
            // or until one of ours closes) rather than accepting and closing them.
            accepted = listener.accept(), if conns.len() < max_connections => match accepted {
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
    stats.closed_header_timeout = shared.closed_header_timeout.load(Ordering::Relaxed);
    stats.refused_proxy_header = shared.refused_proxy_header.load(Ordering::Relaxed);
    stats.closed_write_timeout = shared.closed_write_timeout.load(Ordering::Relaxed);
    stats.requests_timed_out = shared.requests_timed_out.load(Ordering::Relaxed);
    stats.http2_connections = shared.http2_connections.load(Ordering::Relaxed);
    stats.tls_handshake_timeouts = shared.tls_handshake_timeouts.load(Ordering::Relaxed);
    stats.tls_handshake_errors = shared.tls_handshake_errors.load(Ordering::Relaxed);
    match failure {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}
