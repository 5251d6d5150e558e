//! The app's service as a connection serves it ([`DrainService`]): each request counted,
//! its connection marked busy until the response is sent, `Connection: close` on HTTP/1.1
//! responses once draining, and the request timeout. Apart from the connection's task
//! because this runs once per request (per stream with HTTP/2, in the stream's own task).
//!
//! HTTP/1.1 serves one request at a time per connection, so its request timeout and its
//! entry in the worker's slow-request reports are the connection's (`ConnState`, checked by
//! the connection's one timer). HTTP/2 streams run at once, each in a task of its own, so
//! each stream has its own: a timer when `request_timeout` is set, and a registration in the
//! worker's reports.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONNECTION, HeaderValue};
use hyper::service::Service;
use hyper::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::drain::{ConnState, count_own, is_clients_last};
use super::options::PeerAddr;
use super::proxy::ProxiedAddr;
use super::shared::{BoxError, Shared};
use super::streams::{StreamSlot, Streams};

/// The app's service, wrapped to count requests, mark the connection busy until each
/// response is sent, and close HTTP/1.1 connections through their next response once
/// draining.
pub(super) struct DrainService<S, T> {
    pub(super) shared: Arc<Shared<S>>,
    pub(super) conn: Arc<ConnState>,
    // In an `Arc` so that the service is `Unpin`, as the connection must be for `into_parts`
    // after it is polled to its end.
    pub(super) peer: Arc<T>,
    /// The client's address from the PROXY header, with `proxy_protocol`.
    pub(super) proxied: Option<ProxiedAddr>,
    /// Serving HTTP/2 streams rather than HTTP/1.1 requests: the connection's streams under
    /// way.
    pub(super) streams: Option<Arc<Streams>>,
}

impl<S, T, B> Service<Request<Incoming>> for DrainService<S, T>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    T: Clone + Send + Sync + 'static,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<DrainBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, B>;

    // Inlined into hyper's dispatcher, so that the request and the response future are built
    // in place rather than copied through this frame.
    #[inline]
    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        // Counted in the server's requests when the connection ends (`serve_http`).
        let number = count_own(&self.conn.heads);
        // The worker's count, for the master's `max_requests` recycling.
        cluster_core::count_request();
        let http2 = self.streams.is_some();
        let stream = self
            .streams
            .as_ref()
            .map(|streams| streams.begin(number, req.method(), req.uri()));
        let busy = Busy::new(Arc::clone(&self.conn), stream);
        let expires = self.shared.request_timeout.is_some();
        if !http2 {
            if expires {
                self.conn.responded.store(false, Ordering::Relaxed);
                self.conn.timed_out.store(false, Ordering::Relaxed);
            }
            self.conn
                .request
                .set(req.method().as_str(), req.uri().path());
            self.conn
                .client_done
                .store(is_clients_last(&req), Ordering::Relaxed);
        }
        if self.shared.peer_addr {
            req.extensions_mut().insert(PeerAddr(T::clone(&self.peer)));
        }
        if let Some(proxied) = self.proxied {
            req.extensions_mut().insert(proxied);
        }
        let response = self.shared.service.call(req);
        if let Some(timeout) = self.shared.request_timeout.filter(|_| http2) {
            let shared = Arc::clone(&self.shared);
            return ResponseFuture::Timed {
                future: Box::pin(stream_response(response, busy, shared, timeout)),
            };
        }
        ResponseFuture::Direct {
            handler: response,
            call: Some(Call {
                busy,
                expires,
                http2,
            }),
        }
    }
}

pin_project! {
    /// The response to one request: the handler's future itself, unboxed, with what its
    /// answer needs; hyper keeps it in place, so a request costs no allocation. (Boxed in an
    /// `async` block, with its body boxed too, it cost two allocations and frees and two more
    /// copies of the handler's future per request: about 250 of a keep-alive request's
    /// 10,000 instructions; for an HTTP/2 stream, whose future is big enough to take malloc's
    /// slow path, more.) An HTTP/2 stream with `request_timeout` is boxed instead: it
    /// carries a timer of its own.
    #[project = ResponseProjection]
    pub(super) enum ResponseFuture<F, B> {
        Direct {
            #[pin]
            handler: F,
            // Taken when the response is ready.
            call: Option<Call>,
        },
        Timed {
            future: BoxedResponse<B>,
        },
    }
}

/// An HTTP/2 stream's response, as `stream_response` gives it.
type BoxedResponse<B> =
    Pin<Box<dyn Future<Output = Result<Response<DrainBody<B>>, BoxError>> + Send>>;

/// What a response needs besides the handler's answer: its connection's, through `busy`,
/// rather than the server's `Arc` (two locked instructions a request fewer).
pub(super) struct Call {
    busy: Busy,
    /// HTTP/1.1 with `request_timeout` set: the connection's task may ask for a 503.
    expires: bool,
    /// An HTTP/2 stream's: no `Connection` header (HTTP/2 forbids it; the drain's GOAWAY
    /// does its work).
    http2: bool,
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<DrainBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (handler, call) = match self.project() {
            ResponseProjection::Direct { handler, call } => (handler, call),
            ResponseProjection::Timed { future } => return future.as_mut().poll(cx),
        };
        let Some(answer) = call.take() else {
            return Poll::Ready(Err("response polled after it was given".into()));
        };
        // The flag is set by the connection's task, which polls this future next. The
        // handler's future is dropped by hyper once this one is ready, with whatever it held.
        if answer.expires && answer.busy.conn.timed_out.swap(false, Ordering::Relaxed) {
            return Poll::Ready(Ok(unavailable(answer.busy)));
        }
        let response = match handler.poll(cx) {
            Poll::Ready(response) => response,
            Poll::Pending => {
                *call = Some(answer);
                return Poll::Pending;
            }
        };
        let Call {
            busy,
            expires,
            http2,
        } = answer;
        if expires {
            busy.conn.responded.store(true, Ordering::Relaxed);
        }
        let mut response = response.map_err(Into::into)?;
        // Decided when the response is ready, not when the request came: a request that was
        // under way when draining started still closes its connection, so the client learns
        // it from this response instead of from a close that races its next request.
        if !http2 && busy.conn.server_draining.load(Ordering::Relaxed) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            count_own(&busy.conn.closed_after_response);
        }
        Poll::Ready(Ok(response.map(|body| DrainBody::new(body, busy, None))))
    }
}

/// An HTTP/2 stream's response with `request_timeout`: a timer of the stream's own, which
/// answers 503 in place of a handler that passed it, or resets the stream whose body is
/// still being produced then. No `Connection` header, as for every HTTP/2 stream.
async fn stream_response<S, F, B, E>(
    response: F,
    busy: Busy,
    shared: Arc<Shared<S>>,
    timeout: Duration,
) -> Result<Response<DrainBody<B>>, BoxError>
where
    S: Send + Sync + 'static,
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + timeout;
    let response = match tokio::time::timeout_at(deadline, response).await {
        Ok(response) => response.map_err(Into::into)?,
        Err(_) => {
            shared.requests_timed_out.fetch_add(1, Ordering::Relaxed);
            log_timeout(busy.request(), started.elapsed(), true);
            return Ok(unavailable(busy));
        }
    };
    let expiry = Expiry {
        sleep: Box::pin(tokio::time::sleep_until(deadline)),
        started,
        expired: Box::new(move || {
            shared.requests_timed_out.fetch_add(1, Ordering::Relaxed);
        }),
    };
    Ok(response.map(|body| DrainBody::new(body, busy, Some(expiry))))
}

/// The empty 503 given in place of a handler that passed its request timeout.
fn unavailable<B>(busy: Busy) -> Response<DrainBody<B>> {
    let mut unavailable = Response::new(DrainBody {
        body: None,
        busy,
        expiry: None,
    });
    *unavailable.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    unavailable
}

/// Logs a request ended by its timeout, with its method, path and (lower bound of) age.
pub(super) fn log_timeout(request: Option<(String, String)>, age: Duration, answered: bool) {
    let (method, path) = request.unwrap_or_else(|| ("?".to_owned(), "?".to_owned()));
    let what = if answered {
        "answered 503 in place of its handler"
    } else {
        "its response had started: connection closed (HTTP/1.1) or stream reset (HTTP/2)"
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

/// Marks its connection busy while alive; dropped with the response body (or with the
/// request's future, if the service fails or the connection dies first). An HTTP/2 stream's
/// also keeps the stream in the worker's slow-request reports.
pub(super) struct Busy {
    conn: Arc<ConnState>,
    stream: Option<StreamSlot>,
}

impl Busy {
    fn new(conn: Arc<ConnState>, stream: Option<StreamSlot>) -> Self {
        if stream.is_some() {
            conn.busy.fetch_add(1, Ordering::Relaxed);
        } else {
            // HTTP/1.1: made and dropped by the connection's task alone (see `ConnState`).
            let busy = conn.busy.load(Ordering::Relaxed);
            conn.busy.store(busy + 1, Ordering::Relaxed);
        }
        Busy { conn, stream }
    }

    /// The HTTP/2 stream's method and path, for a log line.
    fn request(&self) -> Option<(String, String)> {
        self.stream.as_ref()?.request()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // The silence after a response counts from its end.
        self.conn.touch();
        if self.stream.is_some() {
            // An HTTP/2 stream's, dropped in the stream's task, beside the others.
            self.conn.busy.fetch_sub(1, Ordering::Relaxed);
        } else {
            let busy = self.conn.busy.load(Ordering::Relaxed);
            self.conn
                .busy
                .store(busy.saturating_sub(1), Ordering::Relaxed);
        }
    }
}

/// An HTTP/2 stream's request timeout while its response body is produced.
struct Expiry {
    sleep: Pin<Box<Sleep>>,
    started: Instant,
    /// Counts the timeout in the server's stats.
    expired: Box<dyn FnOnce() + Send>,
}

pin_project! {
    /// A response body that keeps its connection marked busy until hyper drops it, which it
    /// does once the body is sent.
    pub(super) struct DrainBody<B> {
        // `None`: the empty body of a 503 given in place of a handler that passed its
        // request timeout, or a body ended by its stream's timeout. In place, not boxed:
        // hyper keeps the whole body pinned in its connection.
        #[pin]
        body: Option<B>,
        busy: Busy,
        expiry: Option<Expiry>,
    }
}

impl<B> DrainBody<B> {
    fn new(body: B, busy: Busy, expiry: Option<Expiry>) -> Self {
        DrainBody {
            body: Some(body),
            busy,
            expiry,
        }
    }
}

impl<B> Body for DrainBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Some(expiry) = this.expiry.as_mut() {
            if expiry.sleep.as_mut().poll(cx).is_ready() {
                let started = expiry.started;
                if let Some(expiry) = this.expiry.take() {
                    (expiry.expired)();
                }
                log_timeout(this.busy.request(), started.elapsed(), false);
                // An error from the body makes hyper reset the stream: its client learns
                // the response is incomplete, and the connection's other streams go on.
                this.body.set(None);
                return Poll::Ready(Some(Err("request_timeout passed".into())));
            }
        }
        match this.body.as_pin_mut() {
            Some(body) => body.poll_frame(cx).map_err(Into::into),
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
