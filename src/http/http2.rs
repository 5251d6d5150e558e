//! Serving one HTTP/2 connection and draining it with GOAWAY. Apart from HTTP/1.1's
//! (`http1.rs`) because HTTP/2 drains differently: the server can tell the client to stop
//! opening streams at any time, without a response to carry it and without a race.
//!
//! Draining calls hyper's `graceful_shutdown` (at once on a connection that has had a
//! stream; once its first streams have arrived, or after a quiet period without one, on a
//! connection that had none), which does what RFC 9113 (section 6.8)
//! advises, in the h2 crate (`proto::Connection::go_away_gracefully`, src/proto/connection.rs
//! of h2 0.4, reached through hyper's `proto/h2/server.rs` `graceful_shutdown`): a GOAWAY with
//! the largest stream id (2^31-1, NO_ERROR) and a PING; when the PING's acknowledgement comes
//! back (one round trip, so that streams the client opened before it read the first GOAWAY
//! have arrived), a second GOAWAY with the last stream id the server took. Streams up to that
//! id are served to their end; the client retries any later one on a new connection, knowing
//! the server never saw it. The connection closes by itself once its last stream is done.
//!
//! The deadlines of an HTTP/1.1 connection hold with HTTP/2 meanings: the header read
//! timeout is the idle deadline (no stream opened and none open for that long; the
//! connection preface itself was read within it before this runs), and ends the connection
//! with the same graceful GOAWAY; the write timeout ends a connection whose client stopped
//! reading. The quiet period, once draining, closes a connection that got its GOAWAY, has no
//! stream open and stays silent that long (a client that never acknowledges the PING would
//! otherwise keep it to `max_drain`). `max_drain` ends a client that keeps opening streams
//! regardless. The request timeout is each stream's (`service.rs`), since streams run at once.

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::deadline::{Deadlines, Expired};
use super::detect::Rewound;
use super::drain::{ConnState, Tracked};
use super::service::DrainService;
use super::shared::{BoxError, Peer, Shared, sleep_until_some};
use super::streams::Streams;

/// Serves `io`, an HTTP/2 connection whose preface is still to be read (from `rewound`
/// first), until it closes.
pub(super) async fn serve<I, T, S, B>(
    io: I,
    rewound: Option<Rewound>,
    conn: Arc<ConnState>,
    peer: Peer<T>,
    shared: Arc<Shared<S>>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: Clone + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // Once per connection, as for HTTP/1.1: its streams under way show in the worker's
    // slow-request reports.
    let streams = Arc::new(Streams::default());
    let source: Arc<dyn cluster_core::in_flight::InFlightSource> = streams.clone();
    let _in_flight = cluster_core::in_flight::register(Arc::downgrade(&source));
    drop(source);
    let service = DrainService {
        shared: Arc::clone(&shared),
        conn: Arc::clone(&conn),
        peer: Arc::new(peer.addr),
        proxied: peer.proxied,
        streams: Some(streams),
    };
    let io = TokioIo::new(Tracked {
        io,
        conn: Arc::clone(&conn),
        rewound,
        keep_open: false,
    });
    let mut http = shared.http2.serve_connection(io, service);
    // No request deadline here: each stream keeps its own.
    let mut deadlines = Deadlines::new(
        shared.header_read_timeout,
        shared.write_timeout,
        None,
        Instant::now(),
    );
    let mut draining = false;
    // Draining began before the client opened its first stream (a connection taken from the
    // queue when draining started, or one that just connected): its GOAWAY waits until its
    // first streams have arrived, so that a client which sent nothing yet is served once
    // rather than refused, and goes before their responses, not after them. A client that
    // reads responses and a GOAWAY together (one segment, or one read of a busy client)
    // reuses the slots the responses freed before it parses the GOAWAY: h2load, nghttp2 and
    // others queue new streams there, which the GOAWAY then makes them drop unsent
    // (REFUSED_STREAM, on their side only). Sent with the first streams' arrival, the
    // GOAWAY is buffered ahead of their responses (h2 writes pending GOAWAY frames before
    // stream frames), so such a client has read it before any slot frees. (A client that
    // writes its first streams in pieces may still hold some unsent when it comes: those are
    // refused unprocessed, which it may retry, as any stream opened after a GOAWAY.) Checked
    // after each poll of the connection: a flag load, nothing per stream. (An atomic only
    // because the task must be `Send`; one task uses it.)
    let goaway_at_first_stream = AtomicBool::new(false);
    // The GOAWAY went out for idleness; the next expiry closes without waiting further.
    let mut idle_goaway = false;
    loop {
        let quiet_until = draining.then(|| conn.quiet_until(shared.quiet));
        let next_check = deadlines.next();
        tokio::select! {
            // Ends once the GOAWAY's last stream is done (or the client closed, or failed).
            _ = poll_fn(|cx| {
                let polled = std::pin::Pin::new(&mut http).poll(cx);
                if goaway_at_first_stream.load(Ordering::Relaxed)
                    && conn.heads.load(Ordering::Relaxed) > 0
                {
                    goaway_at_first_stream.store(false, Ordering::Relaxed);
                    std::pin::Pin::new(&mut http).graceful_shutdown();
                    // Polled again at once, to write the GOAWAY.
                    cx.waker().wake_by_ref();
                }
                polled
            }) => return,
            () = shared.drain.cancelled(), if !draining => {
                conn.start_draining();
                draining = true;
                if conn.heads.load(Ordering::Relaxed) > 0 {
                    std::pin::Pin::new(&mut http).graceful_shutdown();
                } else {
                    goaway_at_first_stream.store(true, Ordering::Relaxed);
                }
            }
            () = sleep_until_some(quiet_until), if draining => {
                if conn.is_quiet(shared.quiet) {
                    if goaway_at_first_stream.swap(false, Ordering::Relaxed) {
                        // Not one stream in a whole quiet period: the GOAWAY goes now, and
                        // the connection gets another period to close by itself.
                        std::pin::Pin::new(&mut http).graceful_shutdown();
                        conn.start_draining();
                        continue;
                    }
                    // The GOAWAY is out and nothing is under way: dropping the connection
                    // loses nothing.
                    shared.closed_idle.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            () = sleep_until_some(next_check), if next_check.is_some() => {
                let now = Instant::now();
                match deadlines.check(&conn, now) {
                    None | Some(Expired::Request) => {}
                    Some(Expired::Header) if !idle_goaway => {
                        shared.closed_header_timeout.fetch_add(1, Ordering::Relaxed);
                        idle_goaway = true;
                        goaway_at_first_stream.store(false, Ordering::Relaxed);
                        std::pin::Pin::new(&mut http).graceful_shutdown();
                        deadlines.postpone(now);
                    }
                    // Still there a period after its GOAWAY: its client does not answer.
                    Some(Expired::Header) => return,
                    Some(Expired::Write) => {
                        shared.closed_write_timeout.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
    }
}
