//! How one connection drains: its activity clock for the quiet period ([`ConnState`], also
//! read by the connection's deadlines), the I/O wrapper that feeds it, whether the client has sent its last request, and the
//! lingering close. Apart from the connection's task because these are the subtle parts
//! (see the module documentation of `cluster::http` on lingering close) and each is small
//! enough to check on its own.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Request;
use hyper::body::Body;
use hyper::header::{CONNECTION, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::detect::Rewound;
use super::record::RequestRecord;

/// How long a closed connection's remaining input is read and discarded before the socket is
/// dropped (see the module documentation on lingering close).
const LINGER: Duration = Duration::from_secs(2);

/// One connection's activity, shared by its I/O wrapper, its service and its task (all
/// running in that one task, so relaxed atomics suffice).
///
/// The counters that only the connection's task writes (`heads`, `closed_after_response`,
/// and `busy` on HTTP/1.1) are counted with a load and a store rather than a locked
/// read-modify-write: they cost a keep-alive request nothing but the two moves, and other
/// threads (the worker's stall watch, an HTTP/2 stream's task) only read them.
pub(super) struct ConnState {
    pub(super) epoch: Instant,
    /// The server's `draining` flag (`Shared::draining`), for each response's check: here
    /// so that a response needs no reference to the server of its own.
    pub(super) server_draining: Arc<AtomicBool>,
    /// When bytes last moved either way or a response finished, in nanoseconds from
    /// `epoch`: the start of the current silence. Kept only once draining has started, the
    /// one time it is read, so that serving does not pay a clock read for every read and
    /// write.
    pub(super) last_io: AtomicU64,
    /// Set when draining starts.
    pub(super) draining: AtomicBool,
    /// Requests handed to the service whose response body has not been dropped yet.
    pub(super) busy: AtomicUsize,
    /// The latest request said it is the client's last and carried no body: once it is
    /// answered, the client sends nothing more, so the close need not linger.
    pub(super) client_done: AtomicBool,
    /// Request heads completed on this connection, for the header read timeout; added to
    /// the server's request count when the connection ends. Written by its task only.
    pub(super) heads: AtomicU64,
    /// Responses given `Connection: close` because the server was draining; added to the
    /// server's count when the connection ends. Written by its task only.
    pub(super) closed_after_response: AtomicU64,
    /// A write made progress since the write deadline's last check (which clears it).
    pub(super) wrote: AtomicBool,
    /// The latest write found the socket full: a response is waiting for the client to read.
    pub(super) write_blocked: AtomicBool,
    /// The request under way has its response head: a request timeout can no longer answer
    /// 503 and closes the connection instead.
    pub(super) responded: AtomicBool,
    /// Set by the connection's task when the request under way passed its timeout: the
    /// service wrapper answers 503 at its next poll instead of waiting for the handler.
    pub(super) timed_out: AtomicBool,
    /// The method and path of the latest request: for the request timeout's log line and the
    /// worker's report of slow requests (`InFlightSource`), without a lock per request.
    pub(super) request: RequestRecord,
}

impl ConnState {
    pub(super) fn new(epoch: Instant, server_draining: Arc<AtomicBool>) -> Self {
        ConnState {
            epoch,
            server_draining,
            last_io: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            client_done: AtomicBool::new(false),
            heads: AtomicU64::new(0),
            closed_after_response: AtomicU64::new(0),
            wrote: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
            responded: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            request: RequestRecord::new(),
        }
    }

    /// What a write returned, for the write deadline: plain stores, no clock read, since
    /// this runs for every write.
    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.touch();
                self.wrote.store(true, Ordering::Relaxed);
                self.write_blocked.store(false, Ordering::Relaxed);
            }
            Poll::Pending => self.write_blocked.store(true, Ordering::Relaxed),
            Poll::Ready(_) => {}
        }
    }

    /// Something moved: the silence starts again (counted only while draining).
    pub(super) fn touch(&self) {
        if self.draining.load(Ordering::Relaxed) {
            self.stamp();
        }
    }

    /// Draining starts: the quiet period counts from now, whatever the connection did before.
    pub(super) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.stamp();
    }

    fn stamp(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_io.store(nanos, Ordering::Relaxed);
    }

    /// When the connection's quiet period ends if nothing happens before.
    pub(super) fn quiet_until(&self, quiet: Duration) -> Instant {
        if self.busy.load(Ordering::Relaxed) > 0 {
            // The silence of a slow handler is not idleness; look again a period later.
            return Instant::now() + quiet;
        }
        self.epoch + Duration::from_nanos(self.last_io.load(Ordering::Relaxed)) + quiet
    }

    /// Idle: no request under way and silent for the whole quiet period.
    pub(super) fn is_quiet(&self, quiet: Duration) -> bool {
        self.busy.load(Ordering::Relaxed) == 0 && self.quiet_until(quiet) <= Instant::now()
    }
}

/// Adds one to a counter that only the calling task writes (see [`ConnState`]): a load and a
/// store, no locked instruction.
pub(super) fn count_own(counter: &AtomicU64) -> u64 {
    let n = counter.load(Ordering::Relaxed) + 1;
    counter.store(n, Ordering::Relaxed);
    n
}

/// What the connection has under way, for the worker's report of slow requests: the request
/// being handled, or whose response is being sent (`busy`), numbered by `heads`.
impl cluster_core::in_flight::InFlightSource for ConnState {
    fn current(&self) -> Option<(u64, String, String)> {
        if self.busy.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let (method, path) = self.request.get()?;
        Some((self.heads.load(Ordering::Relaxed), method, path))
    }
}

/// Whether `req` is the client's last request on its connection with nothing of it left to
/// arrive: it asks for the close (RFC 9112, section 9.6: the client then sends no further
/// request) and has no body, so no input can follow the response.
pub(super) fn is_clients_last<B: Body>(req: &Request<B>) -> bool {
    if !req.body().is_end_stream() {
        return false;
    }
    // One walk over the headers, in a slice, rather than the map's lookup, which hashes the
    // name (about 150 instructions of a keep-alive request's 10,000 when every request did
    // it, and again for each request that has the header).
    let (close, keep_alive) = connection_tokens(
        req.headers()
            .iter()
            .filter(|&(name, _)| name == CONNECTION)
            .map(|(_, value)| value),
    );
    close || (req.version() == hyper::Version::HTTP_10 && !keep_alive)
}

/// Whether the `Connection` header's `values` say `close`, and `keep-alive`.
fn connection_tokens<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> (bool, bool) {
    let mut close = false;
    let mut keep_alive = false;
    for value in values {
        // The usual value, alone: no split.
        if value.as_bytes().eq_ignore_ascii_case(b"close") {
            close = true;
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            close |= token.eq_ignore_ascii_case("close");
            keep_alive |= token.eq_ignore_ascii_case("keep-alive");
        }
    }
    (close, keep_alive)
}

/// Closes a connection without a reset: shuts the write side, then reads and discards until
/// the client closes too (or [`LINGER`] passes), so that input the client sent after our
/// last response cannot make the kernel reset the connection before that response is read.
pub(super) async fn linger<I: AsyncRead + AsyncWrite + Unpin>(mut io: I) {
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

/// The I/O of a connection, recording when bytes move and when a write finds the socket
/// full.
pub(super) struct Tracked<I> {
    pub(super) io: I,
    pub(super) conn: Arc<ConnState>,
    /// Leave the shutdown that hyper asks for at the end of the connection to the
    /// connection's task, which takes the socket back for it (HTTP/1.1: a plain shutdown or a
    /// lingering close). hyper's `poll_without_shutdown` would do the same, but it wants an
    /// `Unpin` response future, which would cost every request an allocation.
    pub(super) keep_open: bool,
    /// The bytes protocol detection read, handed out before any read of `io`.
    pub(super) rewound: Option<Rewound>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(rewound) = self.rewound.as_mut() {
            if rewound.fill(buf) {
                // Freed as soon as it is handed out: the connection may live for hours.
                self.rewound = None;
            }
            self.conn.touch();
            return Poll::Ready(Ok(()));
        }
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
        self.conn.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.conn.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.keep_open {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
