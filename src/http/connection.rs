//! One connection's task: the select loop that serves it, closes it when a deadline passes
//! (header read, write) or, once draining, after its quiet period, and the service wrapper that counts
//! requests and adds `Connection: close` while draining. Apart from the accept loop
//! (`server.rs`) because everything here runs once per connection, in that connection's task.

use std::error::Error as StdError;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONNECTION, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::deadline::{Deadlines, Expired};
use super::drain::{ConnState, Tracked, is_clients_last, linger};
use super::options::PeerAddr;
use super::proxy::{ProxiedAddr, read_header};
use super::woken::Woken;

pub(super) type BoxError = Box<dyn StdError + Send + Sync>;

/// The bound on a PROXY header's arrival when `header_read_timeout` is off.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The bound on shutting a connection closed by a deadline.
const CLOSE_NOW: Duration = Duration::from_secs(1);

/// State that the accept loop shares with every connection task.
pub(super) struct Shared<S> {
    pub(super) service: S,
    pub(super) builder: http1::Builder,
    /// Cancelled when draining starts (after the shutdown delay).
    pub(super) drain: CancellationToken,
    /// Set with `drain`, for the per-response check: the token's own `is_cancelled` takes
    /// a lock.
    pub(super) draining: AtomicBool,
    pub(super) quiet: Duration,
    /// See [`DrainOptions::header_read_timeout`](crate::http::DrainOptions::header_read_timeout).
    pub(super) header_read_timeout: Option<Duration>,
    /// See [`DrainOptions::write_timeout`](crate::http::DrainOptions::write_timeout).
    pub(super) write_timeout: Option<Duration>,
    /// See [`DrainOptions::request_timeout`](crate::http::DrainOptions::request_timeout).
    pub(super) request_timeout: Option<Duration>,
    /// See [`DrainOptions::peer_addr`](crate::http::DrainOptions::peer_addr).
    pub(super) peer_addr: bool,
    /// See [`DrainOptions::proxy_protocol`](crate::http::DrainOptions::proxy_protocol).
    pub(super) proxy_protocol: bool,
    /// Origin of [`ConnState::last_io`].
    pub(super) epoch: Instant,
    pub(super) requests: AtomicU64,
    pub(super) closed_idle: AtomicU64,
    pub(super) closed_after_response: AtomicU64,
    pub(super) closed_header_timeout: AtomicU64,
    pub(super) refused_proxy_header: AtomicU64,
    pub(super) closed_write_timeout: AtomicU64,
    pub(super) requests_timed_out: AtomicU64,
}

/// Serves one connection until it closes: normally, then draining once `shared.drain`
/// fires.
pub(super) async fn serve_connection<I, T, S, B>(mut io: I, peer: T, shared: Arc<Shared<S>>)
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
    let proxied = if shared.proxy_protocol {
        let within = shared.header_read_timeout.unwrap_or(PROXY_HEADER_TIMEOUT);
        match tokio::time::timeout(within, read_header(&mut io)).await {
            Ok(Ok(source)) => Some(ProxiedAddr(source)),
            // No valid header in time: closed unserved (see `DrainOptions::proxy_protocol`).
            Ok(Err(_)) | Err(_) => {
                shared.refused_proxy_header.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    } else {
        None
    };
    let conn = Arc::new(ConnState::new(shared.epoch));
    // Once per connection: its requests under way show in the worker's slow-request reports.
    let source: Arc<dyn cluster_core::in_flight::InFlightSource> = conn.clone();
    let _in_flight = cluster_core::in_flight::register(Arc::downgrade(&source));
    drop(source);
    let service = DrainService {
        shared: Arc::clone(&shared),
        conn: Arc::clone(&conn),
        peer: Arc::new(peer),
        proxied,
    };
    let io = TokioIo::new(Tracked {
        io,
        conn: Arc::clone(&conn),
    });
    // Driven with `poll_without_shutdown` so that the socket comes back at the end for a
    // lingering close, which hyper's own shutdown does not do.
    let mut http = shared.builder.serve_connection(io, service);

    // One timer per connection for both deadlines, re-armed once per period (see
    // `deadline.rs`); they hold while draining too, so that a client that stops reading, or
    // trickles a request head, cannot keep a draining server alive.
    let mut deadlines = Deadlines::new(
        shared.header_read_timeout,
        shared.write_timeout,
        shared.request_timeout,
        Instant::now(),
    );
    let mut draining = false;
    let mut closing = false;
    // `select!` polls every branch at each of the task's wake-ups, one per request: the
    // drain's start and the deadline timer are polled only once they fired (see `woken.rs`).
    let drain_cancelled = pin!(shared.drain.cancelled());
    let mut drain_started = Woken::new(drain_cancelled);
    // Each turn of this loop comes from a timer or from the drain's start, never from a
    // request, so what is computed here costs nothing per request.
    let finished = loop {
        let quiet_until = draining.then(|| conn.quiet_until(shared.quiet));
        let next_check = deadlines.next();
        let check = pin!(sleep_until_some(next_check));
        let mut check = Woken::new(check);
        tokio::select! {
            finished = poll_fn(|cx| http.poll_without_shutdown(cx)) => break finished,
            () = &mut drain_started, if !draining => {
                // The quiet period counts from the drain's start: a connection idle for an
                // hour still gets the whole period for a request its client may be sending
                // now.
                conn.start_draining();
                draining = true;
            }
            () = sleep_until_some(quiet_until), if draining && !closing => {
                // hyper closes an idle connection at once when asked to shut down, even with
                // a request half read, so ask only once nothing has moved for the whole
                // period.
                if conn.is_quiet(shared.quiet) {
                    Pin::new(&mut http).graceful_shutdown();
                    closing = true;
                    shared.closed_idle.fetch_add(1, Ordering::Relaxed);
                }
            }
            () = &mut check, if next_check.is_some() => {
                let now = Instant::now();
                let Some(expired) = deadlines.check(&conn, now) else {
                    continue;
                };
                let counter = match expired {
                    Expired::Header => &shared.closed_header_timeout,
                    Expired::Write => &shared.closed_write_timeout,
                    Expired::Request => {
                        shared.requests_timed_out.fetch_add(1, Ordering::Relaxed);
                        let answered = !conn.responded.load(Ordering::Relaxed);
                        log_timeout(&conn, deadlines.request_age(now), answered);
                        if answered {
                            // The next poll of the connection polls the service wrapper,
                            // which sees the flag and answers 503 in place of the handler.
                            conn.timed_out.store(true, Ordering::Relaxed);
                            continue;
                        }
                        // The response's head is out: nothing but a close tells the client.
                        close_now(http.into_parts().io.into_inner().io).await;
                        return;
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                // Closed without a linger: no response is on its way that the client would
                // read (it stopped reading, or never finished asking), and lingering would
                // only give it more time. Not hyper's graceful shutdown either: it waits for
                // the head of a connection that has not served a request yet, and for the
                // stuck write to finish.
                close_now(http.into_parts().io.into_inner().io).await;
                return;
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

/// Logs a request ended by its timeout, with its method, path and (lower bound of) age.
fn log_timeout(conn: &ConnState, age: Duration, answered: bool) {
    let request = conn.request.lock().ok().and_then(|r| r.clone());
    let (method, path) = request.map_or_else(
        || ("?".to_owned(), "?".to_owned()),
        |(method, uri)| (method.to_string(), uri.path().to_owned()),
    );
    let what = if answered {
        "answered 503 in place of its handler"
    } else {
        "its response had started: connection closed"
    };
    let line = format!(
        "request {method} {path} still under way after {} ms (request_timeout): {what}",
        age.as_millis()
    );
    // Like the master's notices: a worker without a tracing subscriber still shows it.
    if tracing::dispatcher::has_been_set() {
        tracing::warn!("{line}");
    } else {
        eprintln!("cluster::http: {line}");
    }
}

/// Shuts the write side and returns, dropping the socket. Bounded, since an `Io` that has
/// something to send on shutdown (a TLS close notification) would wait on the very client
/// that stopped reading.
async fn close_now<I: AsyncWrite + Unpin>(mut io: I) {
    let _ = tokio::time::timeout(CLOSE_NOW, io.shutdown()).await;
}

/// Sleeps until `deadline`; never returns without one (its `select!` branch is disabled
/// then).
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The app's service, wrapped to count requests, mark the connection busy until each
/// response is sent, and close connections through their next response once draining.
struct DrainService<S, T> {
    shared: Arc<Shared<S>>,
    conn: Arc<ConnState>,
    // In an `Arc` because hyper's `poll_without_shutdown` wants an `Unpin` service.
    peer: Arc<T>,
    /// The client's address from the PROXY header, with `proxy_protocol`.
    proxied: Option<ProxiedAddr>,
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
        let expires = self.shared.request_timeout.is_some();
        if expires {
            self.conn.responded.store(false, Ordering::Relaxed);
            self.conn.timed_out.store(false, Ordering::Relaxed);
        }
        if let Ok(mut current) = self.conn.request.lock() {
            *current = Some((req.method().clone(), req.uri().clone()));
        }
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        // The worker's count, for the master's `max_requests` recycling.
        cluster_core::count_request();
        self.conn.heads.fetch_add(1, Ordering::Relaxed);
        self.conn
            .client_done
            .store(is_clients_last(&req), Ordering::Relaxed);
        if self.shared.peer_addr {
            req.extensions_mut().insert(PeerAddr(T::clone(&self.peer)));
        }
        if let Some(proxied) = self.proxied {
            req.extensions_mut().insert(proxied);
        }
        let response = self.shared.service.call(req);
        let shared = Arc::clone(&self.shared);
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            let response = if expires {
                let mut response = pin!(response);
                // The flag is set by the connection's task, which polls this future next.
                let answered = poll_fn(|cx| {
                    if conn.timed_out.swap(false, Ordering::Relaxed) {
                        return Poll::Ready(None);
                    }
                    response.as_mut().poll(cx).map(Some)
                })
                .await;
                let Some(answered) = answered else {
                    // The handler's future is dropped here, with whatever it held.
                    let mut unavailable = Response::new(DrainBody {
                        body: None,
                        _busy: busy,
                    });
                    *unavailable.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    return Ok(unavailable);
                };
                conn.responded.store(true, Ordering::Relaxed);
                answered
            } else {
                response.await
            };
            let mut response = response.map_err(Into::into)?;
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
                body: Some(Box::pin(body)),
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
    // Boxed so that bodies which are not `Unpin` work without unsafe pin projection. `None`:
    // the empty body of a 503 given in place of a handler that passed its request timeout.
    body: Option<Pin<Box<B>>>,
    _busy: Busy,
}

impl<B: Body> Body for DrainBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.body.as_mut() {
            Some(body) => body.as_mut().poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(|body| body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |body| body.size_hint())
    }
}
