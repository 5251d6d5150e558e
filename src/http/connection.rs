//! One connection's task, up to the protocol's server: the PROXY header, the TLS handshake
//! (feature `tls`), which HTTP it speaks (ALPN under TLS, the preface otherwise), then
//! `http1.rs` or `http2.rs` serves it. Apart from the accept loop (`server.rs`) because
//! everything here runs once per connection, in that connection's task.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};

use super::detect::{Protocol, Rewound, sniff};
use super::drain::ConnState;
use super::proxy::{ProxiedAddr, read_header};
use super::shared::{BoxError, Peer, Shared, close_now};

/// The bound on a PROXY header's arrival when `header_read_timeout` is off, and on the first
/// bytes that tell the protocol.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves one connection until it closes: normally, then draining once `shared.drain`
/// fires.
pub(super) async fn serve_connection<I, T, S, B>(mut io: I, addr: T, shared: Arc<Shared<S>>)
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
    // The PROXY header comes first, in the clear, even before a TLS handshake.
    let proxied = if shared.proxy_protocol {
        let within = shared.header_read_timeout.unwrap_or(FIRST_BYTES_TIMEOUT);
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
    let peer = Peer { addr, proxied };
    #[cfg(feature = "tls")]
    if let Some(acceptor) = &shared.tls {
        // In this task, after the hand-over: the accept loop never waits for a client, and
        // a master-accept policy hands over the connection as it came, before any TLS.
        let Some((tls, protocol)) = acceptor.handshake(io, &shared).await else {
            return;
        };
        return serve_http(tls, protocol, peer, shared).await;
    }
    serve_http(io, None, peer, shared).await;
}

/// Serves a connection's HTTP: `protocol` when ALPN chose it, or as its first bytes say.
async fn serve_http<I, T, S, B>(
    mut io: I,
    protocol: Option<Protocol>,
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
    let (protocol, rewound) = match protocol {
        Some(protocol) => (protocol, None),
        None => match first_bytes(&mut io, &shared).await {
            Some((protocol, prefix)) => (protocol, Rewound::new(prefix)),
            None => {
                close_now(io).await;
                return;
            }
        },
    };
    let conn = Arc::new(ConnState::new(shared.epoch, Arc::clone(&shared.draining)));
    // Dropped with this task however it ends (closed, or aborted at `max_drain`), which is
    // before the server reads its counts.
    let _counted = AddOnEnd {
        conn: Arc::clone(&conn),
        shared: Arc::clone(&shared),
    };
    // Each protocol's server boxed: in place, either made this task's future 6,272 bytes
    // (an HTTP/1.1 one 2,872, an HTTP/2 one 2,480, and the states around them), which tokio
    // copies when it spawns the task, again when the task ends (its output written over the
    // future) and once more when the accept loop reaps it: 3,400 instructions of `memcpy` a
    // connection, more than a connection-per-request client's whole request costs in hyper.
    // Boxed, the task is 880 bytes and the server is copied once, into its box.
    match protocol {
        Protocol::Http1 => Box::pin(super::http1::serve(io, rewound, conn, peer, shared)).await,
        Protocol::Http2 => {
            shared.http2_connections.fetch_add(1, Ordering::Relaxed);
            Box::pin(super::http2::serve(io, rewound, conn, peer, shared)).await;
        }
    }
}

/// Adds a connection's own counts to the server's when the connection ends, so that serving
/// a request touches no counter shared by every connection.
struct AddOnEnd<S> {
    conn: Arc<ConnState>,
    shared: Arc<Shared<S>>,
}

impl<S> Drop for AddOnEnd<S> {
    fn drop(&mut self) {
        let (shared, conn) = (&self.shared, &self.conn);
        let requests = conn.heads.load(Ordering::Relaxed);
        shared.requests.fetch_add(requests, Ordering::Relaxed);
        let closed = conn.closed_after_response.load(Ordering::Relaxed);
        shared
            .closed_after_response
            .fetch_add(closed, Ordering::Relaxed);
    }
}

/// Reads a connection's first bytes, to tell its protocol, within the deadlines that hold for
/// a request head: the header read timeout, and once draining, the quiet period (a client
/// that has sent nothing by then is closed, as an idle HTTP/1.1 connection is). `None` when
/// the connection is to be closed.
async fn first_bytes<I, S>(io: &mut I, shared: &Shared<S>) -> Option<(Protocol, Vec<u8>)>
where
    I: AsyncRead + Unpin,
{
    let timeout = shared.header_read_timeout.unwrap_or(FIRST_BYTES_TIMEOUT);
    let quiet = async {
        shared.drain.cancelled().await;
        tokio::time::sleep(shared.quiet).await;
    };
    tokio::select! {
        // First, so that a client whose request is already in (the usual case) costs no
        // timer: the others are not polled when this one is ready.
        biased;
        sniffed = sniff(io) => sniffed.ok(),
        () = tokio::time::sleep(timeout) => {
            shared.closed_header_timeout.fetch_add(1, Ordering::Relaxed);
            None
        }
        () = quiet => {
            shared.closed_idle.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}
