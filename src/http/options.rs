//! What a caller gives [`serve`](crate::http::serve) and what it gets back: [`DrainOptions`],
//! [`ServeStats`], and the [`PeerAddr`] in each request. Apart from the server so that the
//! knobs and their defaults read as one list.

use std::time::Duration;

use super::readiness::Readiness;

/// The default [`DrainOptions::header_read_timeout`], hyper's own default.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The default [`DrainOptions::write_timeout`]: as long as the header read timeout, so that
/// by default one timer period serves both.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The default [`DrainOptions::max_drain`]: one second under the cluster's default `grace`
/// (5 s), so that a worker stops by itself, with its drained requests answered, before the
/// master's SIGKILL would end every connection it still has.
const MAX_DRAIN: Duration = Duration::from_secs(4);

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
///
/// [`serve`]: crate::http::serve
#[derive(Clone, Debug)]
#[must_use]
pub struct DrainOptions {
    pub(super) quiet_period: Duration,
    pub(super) shutdown_delay: Duration,
    pub(super) max_drain: Option<Duration>,
    pub(super) readiness: Readiness,
    pub(super) header_read_timeout: Option<Duration>,
    pub(super) write_timeout: Option<Duration>,
    pub(super) request_timeout: Option<Duration>,
    pub(super) max_connections: Option<usize>,
    pub(super) peer_addr: bool,
    pub(super) proxy_protocol: bool,
    #[cfg(feature = "tls")]
    pub(super) tls: Option<super::tls::TlsOptions>,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            quiet_period: Duration::from_millis(500),
            shutdown_delay: Duration::ZERO,
            max_drain: Some(MAX_DRAIN),
            readiness: Readiness::new(),
            header_read_timeout: Some(HEADER_READ_TIMEOUT),
            write_timeout: Some(WRITE_TIMEOUT),
            request_timeout: None,
            max_connections: None,
            peer_addr: true,
            proxy_protocol: false,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl DrainOptions {
    /// The defaults: a 500 ms quiet period, no shutdown delay, a drain of at most 4 s,
    /// header read and write timeouts of 30 s, no connection cap.
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
    /// connections still open then are dropped, and [`serve`] returns normally. Default 4 s,
    /// under the cluster's default `grace` of 5 s: a worker must stop by itself before the
    /// master's SIGKILL, which would end every connection it still has, including requests
    /// about to complete. A client that keeps one connection busy (a response it never
    /// reads, a request that never ends) then costs only that connection. In a worker, keep
    /// `shutdown_delay + max_drain` under `grace` (with a margin for the process to exit);
    /// with a longer `grace`, raise this with it. `None` waits for every connection.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let options = cluster::http::DrainOptions::new().max_drain(Duration::from_secs(8));
    /// # let _ = options;
    /// ```
    ///
    /// [`serve`]: crate::http::serve
    pub fn max_drain(mut self, max: impl Into<Option<Duration>>) -> Self {
        self.max_drain = max.into();
        self
    }

    /// A connection that completes no request head for this long while no request on it is
    /// under way is closed: a client sending its head byte by byte (slowloris), or a
    /// keep-alive connection left idle between requests (this is the idle deadline). Default
    /// 30 s, as hyper's own header read timeout; `None` keeps such connections open. It holds
    /// while draining too. The check runs once per period per connection (the shorter of this
    /// and [`write_timeout`](Self::write_timeout)), not per request, so a connection is
    /// closed between one timeout and one timeout plus one period after it last started a
    /// request.
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

    /// A connection whose response cannot be written for this long (the socket stays full
    /// because the client stopped reading) is closed, without waiting for the rest of the
    /// response. Default 30 s; `None` waits for as long as the client. It holds while
    /// draining too, and only stalls count: a handler that produces its body slowly is not
    /// timed. Checked by the same per-connection timer as
    /// [`header_read_timeout`](Self::header_read_timeout), from what each write records
    /// (no clock read, no timer per write), so the close comes between one timeout and one
    /// timeout plus one period after the last byte that went out.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let options = cluster::http::DrainOptions::new().write_timeout(Duration::from_secs(10));
    /// # let _ = options;
    /// ```
    pub fn write_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.write_timeout = timeout.into();
        self
    }

    /// A request still under way this long after it began is ended, as uWSGI's `harakiri`
    /// does for a stuck handler but without killing the worker: if its handler has not
    /// produced a response yet, the handler's future is dropped and the client gets
    /// `503 Service Unavailable` (empty body; the connection stays open); if the response
    /// has started (a body still being produced), the connection is closed. Each is logged
    /// with the method, path and age, and counted in [`ServeStats::requests_timed_out`].
    /// Default `None`: no limit.
    ///
    /// Checked by the connection's one timer, at half this period, so a stuck request ends
    /// between one and one and a half timeouts after it began, with no timer or clock read
    /// per request. A handler that blocks its thread (a busy loop, a blocking call on a
    /// current-thread runtime) cannot be interrupted by anything in its process: that is the
    /// master's heartbeat watchdog's job.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let options = cluster::http::DrainOptions::new().request_timeout(Duration::from_secs(30));
    /// # let _ = options;
    /// ```
    pub fn request_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.request_timeout = timeout.into().filter(|t| !t.is_zero());
        self
    }

    /// The most connections served at once. When this many are open, the server stops
    /// accepting until one closes: new connections wait in the listener's queue (with the
    /// cluster's `Shared` balance, another worker takes them) instead of being accepted and
    /// closed, which a client would see as a failed request. Default `None`: no cap. A cap of
    /// 0 counts as 1. The connections already queued when draining starts are still taken
    /// past the cap: each closes after one response, and leaving them would reset them when
    /// the listener closes.
    ///
    /// ```
    /// let options = cluster::http::DrainOptions::new().max_connections(10_000);
    /// # let _ = options;
    /// ```
    pub fn max_connections(mut self, max: impl Into<Option<usize>>) -> Self {
        self.max_connections = max.into().map(|max| max.max(1));
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

    /// Whether every connection starts with a PROXY protocol header (version 1 or 2), as a
    /// load balancer with haproxy's `send-proxy`/`send-proxy-v2` sends, or the master does
    /// with `balance = "sticky-key"` and `sticky_proxy` (default false).
    ///
    /// The header is read within `header_read_timeout`, before the first request; a
    /// connection without a valid one is closed unserved. The client's address it carries is
    /// in each request's extensions as [`ProxiedAddr`](crate::http::ProxiedAddr) (while
    /// [`PeerAddr`] stays the load balancer's).
    ///
    /// ```
    /// let options = cluster::http::DrainOptions::new().proxy_protocol(true);
    /// # let _ = options;
    /// ```
    pub fn proxy_protocol(mut self, expect: bool) -> Self {
        self.proxy_protocol = expect;
        self
    }

    /// Serve TLS (feature `tls`): every connection's handshake runs in its own task, after
    /// the hand-over and the PROXY header if any, within
    /// [`TlsOptions::handshake_timeout`](crate::http::TlsOptions::handshake_timeout); ALPN
    /// then chooses HTTP/2 or HTTP/1.1. Default `None`: plain text (HTTP/1.1, and HTTP/2
    /// with prior knowledge).
    ///
    /// ```no_run
    /// use cluster::http::{DrainOptions, TlsOptions};
    ///
    /// let options = DrainOptions::new().tls(TlsOptions::from_pem("cert.pem", "key.pem")?);
    /// # let _ = options;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: impl Into<Option<super::tls::TlsOptions>>) -> Self {
        self.tls = tls.into();
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
    ///
    /// [`serve`]: crate::http::serve
    /// [`Phase`]: crate::http::Phase
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
///
/// [`serve`]: crate::http::serve
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeStats {
    /// Connections accepted, including `queued`.
    pub connections: u64,
    /// Requests handed to the service (HTTP/2 streams included).
    pub requests: u64,
    /// Connections that spoke HTTP/2 (prior knowledge, or ALPN `h2` under TLS).
    pub http2_connections: u64,
    /// Connections taken from the listener's queue after accepting stopped.
    pub queued: u64,
    /// Connections the drain closed after their quiet period (HTTP/2: after their GOAWAY,
    /// with no stream open).
    pub closed_idle: u64,
    /// Responses given `Connection: close` because of the drain (each ends its connection).
    pub closed_after_response: u64,
    /// Connections dropped still open when `max_drain` elapsed.
    pub aborted: u64,
    /// Connections closed by `header_read_timeout`: an unfinished request head, or idle
    /// between requests (HTTP/2: no stream opened, sent a GOAWAY).
    pub closed_header_timeout: u64,
    /// With [`DrainOptions::proxy_protocol`]: connections closed unserved because they did
    /// not start with a valid PROXY header within `header_read_timeout`.
    pub refused_proxy_header: u64,
    /// Connections closed by `write_timeout`: their client stopped reading a response.
    pub closed_write_timeout: u64,
    /// Requests ended by `request_timeout` (answered 503, or their connection closed; an
    /// HTTP/2 stream reset).
    pub requests_timed_out: u64,
    /// With TLS: connections closed because their handshake did not finish within
    /// [`TlsOptions::handshake_timeout`](crate::http::TlsOptions::handshake_timeout).
    pub tls_handshake_timeouts: u64,
    /// With TLS: connections whose handshake failed (no common protocol version or cipher,
    /// not TLS at all, an unknown certificate authority to the client).
    pub tls_handshake_errors: u64,
}
