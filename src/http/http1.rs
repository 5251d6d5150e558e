//! Serving one HTTP/1.1 connection: the select loop that serves it, closes it when a deadline
//! passes (header read, write, request) or, once draining, after its quiet period, and closes
//! it with a linger at the end. Apart from HTTP/2's (`http2.rs`) because the two drain
//! differently: HTTP/1.1 has no way to tell a client to stop but `Connection: close` on a
//! response, and hyper's connection gives its socket back for the lingering close.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::deadline::{Deadlines, Expired};
use super::detect::Rewound;
use super::drain::{ConnState, Tracked, linger};
use super::service::{DrainService, log_timeout};
use super::shared::{BoxError, Peer, Shared, close_now, sleep_until_some};
use super::woken::Woken;

/// Serves `io`, an HTTP/1.1 connection whose first bytes may be in `rewound`, until it
/// closes.
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
    // Once per connection: its requests under way show in the worker's slow-request reports.
    let source: Arc<dyn cluster_core::in_flight::InFlightSource> = conn.clone();
    let _in_flight = cluster_core::in_flight::register(Arc::downgrade(&source));
    drop(source);
    let service = DrainService {
        shared: Arc::clone(&shared),
        conn: Arc::clone(&conn),
        peer: Arc::new(peer.addr),
        proxied: peer.proxied,
        streams: None,
    };
    // hyper's shutdown at the end is left to this task (`keep_open`), so that the socket
    // comes back (`into_parts`) for a lingering close, which hyper's own does not do.
    let io = TokioIo::new(Tracked {
        io,
        conn: Arc::clone(&conn),
        rewound,
        keep_open: true,
    });
    let mut http = shared.http1.serve_connection(io, service);

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
            // In this order, rather than a random one: no random number per request, and
            // hyper's connection, the one woken by every request, comes first.
            biased;
            finished = &mut http => break finished,
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
                    std::pin::Pin::new(&mut http).graceful_shutdown();
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
                        let request = conn.request.get();
                        log_timeout(request, deadlines.request_age(now), answered);
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
