//! What the accept loop shares with every connection's task ([`Shared`]: the app's service,
//! the protocol builders, the drain's token, the options, the counters), what a connection
//! knows of its peer, and the two closing helpers both protocols' loops use. Apart so that
//! the connection's task (`connection.rs`), the protocols' loops (`http1.rs`, `http2.rs`),
//! the service wrapper (`service.rs`) and TLS (`tls.rs`) all point down to it.

use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::proxy::ProxiedAddr;

pub(super) type BoxError = Box<dyn StdError + Send + Sync>;

/// The bound on shutting a connection closed by a deadline.
const CLOSE_NOW: Duration = Duration::from_secs(1);

/// State that the accept loop shares with every connection task.
pub(super) struct Shared<S> {
    pub(super) service: S,
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<TokioExecutor>,
    /// With [`DrainOptions::tls`](crate::http::DrainOptions::tls): the handshake's acceptor.
    #[cfg(feature = "tls")]
    pub(super) tls: Option<super::tls::Acceptor>,
    /// Cancelled when draining starts (after the shutdown delay).
    pub(super) drain: CancellationToken,
    /// Set with `drain`, for the per-response check: the token's own `is_cancelled` takes
    /// a lock. Each connection holds it too (`ConnState::server_draining`).
    pub(super) draining: Arc<AtomicBool>,
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
    /// Origin of `ConnState::last_io`.
    pub(super) epoch: Instant,
    /// Requests of the connections that ended: each adds its own when it ends.
    pub(super) requests: AtomicU64,
    pub(super) http2_connections: AtomicU64,
    pub(super) closed_idle: AtomicU64,
    pub(super) closed_after_response: AtomicU64,
    pub(super) closed_header_timeout: AtomicU64,
    pub(super) refused_proxy_header: AtomicU64,
    pub(super) closed_write_timeout: AtomicU64,
    pub(super) requests_timed_out: AtomicU64,
    pub(super) tls_handshake_timeouts: AtomicU64,
    pub(super) tls_handshake_errors: AtomicU64,
}

/// What one connection's task needs from the connection besides its bytes.
pub(super) struct Peer<T> {
    pub(super) addr: T,
    pub(super) proxied: Option<ProxiedAddr>,
}

/// Shuts the write side and returns, dropping the socket. Bounded, since an `Io` that has
/// something to send on shutdown (a TLS close notification) would wait on the very client
/// that stopped reading.
pub(super) async fn close_now<I: AsyncWrite + Unpin>(mut io: I) {
    let _ = tokio::time::timeout(CLOSE_NOW, io.shutdown()).await;
}

/// Sleeps until `deadline`; never returns without one (its `select!` branch is disabled
/// then).
pub(super) async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
