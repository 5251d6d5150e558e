//! The master's HTTP/1.1 status server: `GET /status` (the [`ClusterStatus`] as JSON),
//! `GET /metrics` (OpenMetrics), `GET /healthz` and `GET /readyz`.
//!
//! It runs inside the master next to the supervisor and asks it for data through a
//! [`StatusSource`]. Every request is bounded in time: a slow or hung worker, or a busy
//! supervisor, makes a scrape partial or a probe fail, never makes it hang. Every connection
//! is bounded too, and no number of idle or slow connections keeps `/healthz` and `/readyz`
//! from answering (slots.rs says how). With a [`StatusToken`], `/status` and `/metrics` need
//! it; the probes never do (see [`StatusOptions::token`]).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::model::WorkerState;
use crate::observe::metrics::{self, WorkerMetricsText};
use crate::observe::status::ClusterStatus;
use crate::options::StatusToken;

mod slots;

use slots::{Limits, Pool, Slot, Slots};

/// Where the status server gets its data (the supervisor implements it over its command
/// channel).
pub(crate) trait StatusSource: Send + Sync + 'static {
    /// The current snapshot; `None` once the master is stopping or gone.
    fn status(&self) -> impl Future<Output = Option<ClusterStatus>> + Send;

    /// The OpenMetrics text of each ready worker. The source itself skips workers that do
    /// not answer within `timeout` (slow, hung or dead).
    fn worker_metrics(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Vec<WorkerMetricsText>> + Send;
}

/// Settings of the master's status server.
#[derive(Debug, Clone)]
#[must_use]
pub struct StatusOptions {
    /// `GET /readyz` answers 200 only when at least this many workers are ready. Default 1.
    pub min_ready: usize,
    /// How long a `/metrics` scrape waits for the workers' own metrics; workers that take
    /// longer are left out of that scrape. Default 500 ms.
    pub scrape_timeout: Duration,
    /// When set, `/status` and `/metrics` answer 401 (with `WWW-Authenticate: Bearer`) unless
    /// the request carries `Authorization: Bearer <token>`. Default none.
    ///
    /// `/healthz` and `/readyz` stay open: an orchestrator probes without secrets, and they
    /// tell nothing but "up" and "ready". The `Debug` of these options redacts the token.
    pub token: Option<StatusToken>,
}

impl Default for StatusOptions {
    fn default() -> Self {
        Self {
            min_ready: 1,
            scrape_timeout: Duration::from_millis(500),
            token: None,
        }
    }
}

impl StatusOptions {
    /// The most any request may take: the scrape timeout plus slack for the supervisor to
    /// answer and the source to give up on its workers.
    fn request_bound(&self) -> Duration {
        self.scrape_timeout.saturating_add(REQUEST_SLACK)
    }
}

/// See [`StatusOptions::request_bound`].
const REQUEST_SLACK: Duration = Duration::from_secs(1);
/// A client that has not sent a whole request head by then is dropped: a slow-loris, and
/// also an idle keep-alive connection, since hyper arms this timer whenever it starts waiting
/// for a head, including the next one on a kept-alive connection. So an idle connection holds
/// its slot at most 10 s even when nobody needs it; when somebody does, it is closed at once
/// (slots.rs).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for a connection on a reserved probe slot: a probe sends its request at once, and
/// a client that does not is holding a slot meant for probes.
const PROBE_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed accept (typically EMFILE), wait before the next one rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// Serves the status routes on `listener` until `shutdown` fires, one task per connection.
/// On shutdown it stops accepting, lets requests in flight finish (each is bounded), closes
/// idle connections, and returns.
pub(crate) async fn serve_status<S: StatusSource>(
    listener: TcpListener,
    source: Arc<S>,
    options: StatusOptions,
    shutdown: CancellationToken,
) {
    let slots = Slots::new(Limits::DEFAULT);
    let mut connections = JoinSet::new();
    'accept: loop {
        // Accepted before a slot is found (unlike a semaphore taken first): the peer decides
        // which connection, if any, makes room, and an idle one always can.
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "status server: accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let slot = loop {
            if let Some(slot) = slots.admit(peer.ip()) {
                break slot;
            }
            // Every slot is answering a request, each bounded in time: wait for one.
            tokio::select! {
                () = shutdown.cancelled() => break 'accept,
                () = slots.freed() => {}
            }
        };
        // Reap finished connections so that the set does not grow with every one served.
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(
            stream,
            Arc::clone(&source),
            options.clone(),
            shutdown.clone(),
            slot,
        ));
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(options.request_bound() + REQUEST_SLACK, drain)
        .await
        .is_err()
    {
        tracing::debug!("status server: connections still open at shutdown aborted");
    }
    connections.abort_all();
}

/// Serves one connection on `slot` until the client closes it, `shutdown` fires, or the slot
/// is wanted for another connection.
async fn serve_connection<S: StatusSource>(
    stream: TcpStream,
    source: Arc<S>,
    options: StatusOptions,
    shutdown: CancellationToken,
    slot: Slot,
) {
    let pool = slot.pool();
    let marker = slot.marker();
    let bound = options.request_bound();
    // Fired by the connection's first request.
    let asked = CancellationToken::new();
    let first = asked.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let source = Arc::clone(&source);
        let options = options.clone();
        first.cancel();
        let busy = marker.busy();
        async move {
            let response = respond(&*source, &options, pool, &request).await;
            drop(busy);
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new());
    match pool {
        Pool::General => builder.header_read_timeout(HEADER_READ_TIMEOUT),
        // One request, then the reserved slot is free for the next probe.
        Pool::Probe => builder
            .header_read_timeout(PROBE_HEADER_READ_TIMEOUT)
            .keep_alive(false),
    };
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            // A client accepted a moment ago has sent, or is sending, its first request:
            // closing now would fail it (after an upgrade's hand-over, the new master serves
            // the port, but not this connection). So that one request is read (bounded as a
            // probe's) and answered.
            let read = async {
                tokio::select! {
                    () = asked.cancelled() => {}
                    () = tokio::time::sleep(PROBE_HEADER_READ_TIMEOUT) => {}
                }
            };
            tokio::select! {
                result = connection.as_mut() => result,
                () = read => {
                    // Finish the request in flight, if any, then close; an idle connection
                    // closes at once.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }
        () = slot.closed() => {
            if !slot.is_busy() {
                // Idle: dropped at once rather than through hyper's graceful shutdown, which
                // would wait for a half-sent request head until its timeout and hold the
                // descriptor meanwhile.
                return;
            }
            // It took a request after it was chosen: answer that one (bounded) and close.
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(bound + REQUEST_SLACK, connection).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "status server: connection ended with an error");
    }
}

/// The response to one request.
async fn respond<S: StatusSource>(
    source: &S,
    options: &StatusOptions,
    pool: Pool,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    #[derive(Clone, Copy)]
    enum Route {
        Status,
        Metrics,
        Healthz,
        Readyz,
    }
    let route = match request.uri().path() {
        "/status" => Route::Status,
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if let Route::Status | Route::Metrics = route {
        if pool == Pool::Probe {
            let mut response = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "status server busy: every connection slot is answering a request, and the reserved ones serve /healthz and /readyz only; retry shortly\n",
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        if let Some(refused) = options
            .token
            .as_ref()
            .and_then(|t| unauthorized(t, request))
        {
            return refused;
        }
    }
    let deadline = Instant::now() + options.request_bound();
    match route {
        Route::Status => match snapshot(source, deadline).await {
            Ok(status) => match serde_json::to_vec(&status) {
                Ok(body) => response(StatusCode::OK, JSON, body),
                Err(error) => {
                    tracing::warn!(%error, "status server: serializing the status failed");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "status not serializable\n",
                    )
                }
            },
            Err(unavailable) => unavailable,
        },
        Route::Metrics => {
            // Both at once: the cluster's figures need not wait for the workers'.
            let (status, workers) = tokio::join!(
                snapshot(source, deadline),
                timeout_at(deadline, source.worker_metrics(options.scrape_timeout)),
            );
            let status = match status {
                Ok(status) => status,
                Err(unavailable) => return unavailable,
            };
            // The cluster's own metrics matter most when workers are stuck: serve them
            // without the workers' rather than fail the scrape.
            let workers = workers.unwrap_or_else(|_| {
                tracing::warn!("status server: workers' metrics not collected in time");
                Vec::new()
            });
            response(
                StatusCode::OK,
                OPENMETRICS,
                metrics::render(&status, &workers),
            )
        }
        Route::Healthz => match snapshot(source, deadline).await {
            Ok(_) => text(StatusCode::OK, "ok"),
            Err(unavailable) => unavailable,
        },
        Route::Readyz => match snapshot(source, deadline).await {
            Ok(status) => {
                let ready = status
                    .workers
                    .iter()
                    .filter(|worker| worker.state == WorkerState::Ready)
                    .count();
                let min = options.min_ready;
                if ready >= min {
                    text(StatusCode::OK, format!("ready: {ready} workers ready\n"))
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {ready} of the {min} required workers ready\n"),
                    )
                }
            }
            Err(unavailable) => unavailable,
        },
    }
}

/// The 401 to answer when `request` does not carry `token` as `Authorization: Bearer`.
fn unauthorized(token: &StatusToken, request: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .map(|value| bearer_credentials(value.as_bytes()));
    let challenge = match given {
        Some(Some(credentials)) if token.matches(credentials) => return None,
        // RFC 6750: a request that tried a token learns it was refused; one that sent none
        // learns only which scheme to use.
        Some(_) => "Bearer realm=\"cluster status\", error=\"invalid_token\"",
        None => "Bearer realm=\"cluster status\"",
    };
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "unauthorized: /status and /metrics need the header `Authorization: Bearer <status_token>`\n",
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    Some(response)
}

/// The credentials of an `Authorization: Bearer <credentials>` value; the scheme's case does
/// not matter (RFC 9110).
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer ";
    if value.len() < SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    Some(value[SCHEME.len()..].trim_ascii())
}

/// The supervisor's snapshot by `deadline`, or the 503 to answer instead.
async fn snapshot<S: StatusSource>(
    source: &S,
    deadline: Instant,
) -> Result<ClusterStatus, Response<Full<Bytes>>> {
    match timeout_at(deadline, source.status()).await {
        Ok(Some(status)) => Ok(status),
        Ok(None) => Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "master is stopping\n",
        )),
        Err(_) => Err(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "master did not answer in time\n",
        )),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    response(status, TEXT, body)
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Every answer describes this instant; a cache in between must not replay it.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests;
