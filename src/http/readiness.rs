//! [`Phase`] and [`Readiness`]: where a server is in its life, for an app's readiness
//! endpoint. A file of its own because the app and the server both hold a [`Readiness`], and
//! only the server moves it on.

use std::sync::Arc;

use tokio::sync::watch;

/// Where a server is in its life, in order.
///
/// ```
/// use cluster::http::Phase;
///
/// assert!(Phase::Serving < Phase::ShutdownDelay);
/// assert!(Phase::Draining < Phase::Stopped);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// [`serve`](crate::http::serve) has not started yet.
    Starting,
    /// Accepting and serving: ready for traffic.
    Serving,
    /// The shutdown token fired: still serving normally for
    /// [`DrainOptions::shutdown_delay`], but no longer ready.
    ///
    /// [`DrainOptions::shutdown_delay`]: crate::http::DrainOptions::shutdown_delay
    ShutdownDelay,
    /// No longer accepting; open connections are being closed.
    Draining,
    /// [`serve`](crate::http::serve) returned.
    Stopped,
}

/// Tells whether a server is ready for traffic, for an app's readiness endpoint: give a
/// clone to [`DrainOptions::readiness`] and keep one in the handler. Cheap to clone; use
/// one per [`serve`] call.
///
/// ```
/// use std::convert::Infallible;
///
/// use cluster::http::hyper::body::Incoming;
/// use cluster::http::hyper::{Request, Response, StatusCode};
/// use cluster::http::{DrainOptions, Readiness};
///
/// let readiness = Readiness::new();
/// let options = DrainOptions::new().readiness(&readiness);
/// let handler = move |req: Request<Incoming>| {
///     let ready = readiness.is_ready();
///     async move {
///         let status = match (req.uri().path(), ready) {
///             ("/readyz", false) => StatusCode::SERVICE_UNAVAILABLE,
///             _ => StatusCode::OK,
///         };
///         Ok::<_, Infallible>(Response::builder().status(status).body(String::new()).unwrap_or_default())
///     }
/// };
/// # let _ = (options, handler);
/// ```
///
/// [`serve`]: crate::http::serve
/// [`DrainOptions::readiness`]: crate::http::DrainOptions::readiness
#[derive(Clone, Debug)]
pub struct Readiness {
    phase: Arc<watch::Sender<Phase>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            phase: Arc::new(watch::Sender::new(Phase::Starting)),
        }
    }
}

impl Readiness {
    /// A handle in [`Phase::Starting`].
    ///
    /// ```
    /// use cluster::http::{Phase, Readiness};
    ///
    /// assert_eq!(Readiness::new().phase(), Phase::Starting);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The current phase.
    ///
    /// ```
    /// use cluster::http::{Phase, Readiness};
    ///
    /// let readiness = Readiness::new();
    /// assert!(readiness.phase() < Phase::Serving);
    /// ```
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Whether the server is accepting and has not been told to stop ([`Phase::Serving`]).
    ///
    /// ```
    /// use cluster::http::Readiness;
    ///
    /// assert!(!Readiness::new().is_ready());
    /// ```
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Serving
    }

    /// Resolves once the phase is `phase` or a later one.
    ///
    /// ```
    /// use cluster::http::{CancellationToken, DrainOptions, Phase, Readiness, serve};
    /// # use cluster::http::hyper::{Request, Response, body::Incoming};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let readiness = Readiness::new();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let shutdown = CancellationToken::new();
    /// let server = tokio::spawn(serve(
    ///     listener,
    ///     |_req: Request<Incoming>| async { Ok::<_, std::convert::Infallible>(Response::new(String::new())) },
    ///     shutdown.clone(),
    ///     DrainOptions::new().readiness(&readiness),
    /// ));
    /// readiness.reached(Phase::Serving).await;
    /// shutdown.cancel();
    /// readiness.reached(Phase::Stopped).await;
    /// # let _ = server.await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn reached(&self, phase: Phase) {
        let mut phases = self.phase.subscribe();
        // Only fails once the sender is dropped, and `self` holds it.
        let _ = phases.wait_for(|current| *current >= phase).await;
    }

    pub(super) fn set(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }
}
