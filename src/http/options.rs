//! What a caller gives [`serve`](crate::http::serve) and what it gets back: [`DrainOptions`],
//! [`ServeStats`], and the [`PeerAddr`] in each request. Apart from the server so that the
//! knobs and their defaults read as one list.

use std::time::Duration;

use super::readiness::Readiness;

/// The default [`DrainOptions::header_read_timeout`], hyper's own default.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    pub(super) peer_addr: bool,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            quiet_period: Duration::from_millis(500),
            shutdown_delay: Duration::ZERO,
            max_drain: None,
            readiness: Readiness::new(),
            header_read_timeout: Some(HEADER_READ_TIMEOUT),
            peer_addr: true,
        }
    }
}

impl DrainOptions {
    /// The defaults: a 500 ms quiet period, no shutdown delay, no bound on the drain.
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
    /// connections still open then are dropped. Default `None`: wait for all. In a worker,
    /// keep `shutdown_delay + max_drain` under the cluster's `grace`, after which the
    /// worker is killed.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let options = cluster::http::DrainOptions::new().max_drain(Duration::from_secs(4));
    /// # let _ = options;
    /// ```
    pub fn max_drain(mut self, max: impl Into<Option<Duration>>) -> Self {
        self.max_drain = max.into();
        self
    }

    /// A connection that completes no request head for this long while no request on it is
    /// under way is closed: a client sending its head byte by byte (slowloris), or a
    /// keep-alive connection left idle. Default 30 s, as hyper's own header read timeout;
    /// `None` keeps such connections open. The check runs once per period per connection,
    /// not per request, so a connection is closed between one and two periods after it last
    /// started a request.
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
    /// Requests handed to the service.
    pub requests: u64,
    /// Connections taken from the listener's queue after accepting stopped.
    pub queued: u64,
    /// Connections the drain closed after their quiet period.
    pub closed_idle: u64,
    /// Responses given `Connection: close` because of the drain (each ends its connection).
    pub closed_after_response: u64,
    /// Connections dropped still open when `max_drain` elapsed.
    pub aborted: u64,
}
