//! HTTP/1.1 and HTTP/2 serving (hyper 1), over TLS with the feature `tls`, that drains
//! without losing requests.
//!
//! Every connection speaks either: HTTP/2 with prior knowledge in plain text (told by its
//! preface), or what ALPN chose under TLS (`TlsOptions`, whose handshake runs in the
//! connection's task within its timeout). The steps below are HTTP/1.1's; an HTTP/2
//! connection drains with a graceful GOAWAY instead of `Connection: close` (a GOAWAY with
//! the largest stream id and a PING, then the real last stream id one round trip later; see
//! the README's "HTTP/2 and TLS"), under the same shutdown delay, quiet period, deadlines and
//! `max_drain`.
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
//! 5. It returns once every connection is closed, or after [`DrainOptions::max_drain`]
//!    (4 s by default, under the cluster's default `grace` of 5 s), dropping what is left,
//!    so that a worker stops by itself before its master would SIGKILL it.
//!
//! Every connection has deadlines, while serving and while draining alike: one that
//! completes no request head for [`DrainOptions::header_read_timeout`] (a slowloris client,
//! or a keep-alive connection idle between requests), or whose response cannot be written
//! for [`DrainOptions::write_timeout`] (its client stopped reading), is closed. With
//! [`DrainOptions::request_timeout`], a request still under way that long gets 503 in place
//! of its handler (or its connection is closed, if the response had started).
//! [`DrainOptions::max_connections`] optionally caps the connections served at once: at the
//! cap the server stops accepting, and new connections wait in the listener's queue.
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
//!
//! In a cluster, each worker serves the port the master shares ([`WorkerContext::listen`])
//! and drains on its shutdown token, so a rolling reload (SIGUSR2) or a shutdown loses no
//! request (`curl localhost:8000` while it runs; `examples/http.rs` is a fuller server):
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::net::SocketAddr;
//!
//! use cluster::http::http_body_util::Full;
//! use cluster::http::hyper::body::{Bytes, Incoming};
//! use cluster::http::hyper::{Request, Response};
//! use cluster::http::{DrainOptions, serve};
//! use cluster::{BoxError, Cluster, WorkerContext};
//!
//! async fn worker(ctx: WorkerContext) -> Result<(), BoxError> {
//!     let listener = ctx.listen(SocketAddr::from(([127, 0, 0, 1], 8000))).await?;
//!     let id = ctx.id().to_string();
//!     let handler = move |_req: Request<Incoming>| {
//!         let body = format!("hello from {id}\n");
//!         async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
//!     };
//!     let stats = serve(listener, handler, ctx.shutdown_token(), DrainOptions::new()).await?;
//!     println!("{}: served {} requests", ctx.id(), stats.requests);
//!     Ok(())
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     Cluster::<(), ()>::new().worker(worker).run()
//! }
//! ```
//!
//! [`WorkerContext::listen`]: crate::WorkerContext::listen

// The parts, bottom to top; each uses only those above it in this list: where connections
// come from (`accept`), what a server reports (`readiness`), what a caller gives and gets
// (`options`), the PROXY header a connection may start with (`proxy`), what an HTTP/1.1
// connection's request under way is (`record`), how one connection drains (`drain`), its
// deadlines (`deadline`), which HTTP it speaks (`detect`), an HTTP/2 connection's streams
// under way (`streams`), the app's service as a connection serves it (`service`), HTTP/1.1's
// and HTTP/2's serving loops (`http1`, `http2`), TLS (`tls`), all over what the accept loop
// shares with them
// (`shared`); a future polled only once it woke (`woken`); one connection's task
// (`connection`, which picks a loop), and the accept loop that runs them (`server`).
mod accept;
mod connection;
mod deadline;
mod detect;
mod drain;
mod http1;
mod http2;
mod options;
mod proxy;
mod readiness;
mod record;
mod server;
mod service;
mod shared;
mod streams;
#[cfg(test)]
mod tests;
#[cfg(feature = "tls")]
mod tls;
mod woken;

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

/// rustls, whose `ServerConfig` [`TlsOptions::from_config`] takes (feature `tls`).
///
/// ```
/// let provider = cluster::http::rustls::crypto::ring::default_provider();
/// # let _ = provider;
/// ```
#[cfg(feature = "tls")]
pub use rustls;

pub use accept::Accept;
pub use options::{DrainOptions, PeerAddr, ServeStats};
pub use proxy::ProxiedAddr;
pub use readiness::{Phase, Readiness};
pub use server::{serve, serve_service, serve_tower};
#[cfg(feature = "tls")]
pub use tls::TlsOptions;
