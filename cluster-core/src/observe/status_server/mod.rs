//! The master's HTTP/1.1 status server: `GET /status` (the [`ClusterStatus`] as JSON),
//! `GET /metrics` (OpenMetrics), `GET /healthz` and `GET /readyz`.
//!
//! It runs inside the master next to the supervisor and asks it for data through a
//! [`StatusSource`]. Every request is bounded in time: a slow or hung worker, or a busy
//! supervisor, makes a scrape partial or a probe fail, never makes it hang.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::model::WorkerState;
use crate::observe::metrics::{self, WorkerMetricsText};
use crate::observe::status::ClusterStatus;

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
}

impl Default for StatusOptions {
    fn default() -> Self {
        Self {
            min_ready: 1,
            scrape_timeout: Duration::from_millis(500),
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
/// Monitoring needs few connections; a cap keeps a misbehaving client from using up the
/// master's file descriptors, which it needs for workers.
const MAX_CONNECTIONS: usize = 64;
/// A client that has not sent its request headers by then is dropped (slow-loris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
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
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = Arc::clone(&limit).acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed; stop rather than spin if it ever is.
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "status server: accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        // Reap finished connections so that the set does not grow with every one served.
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(
            stream,
            Arc::clone(&source),
            options.clone(),
            shutdown.clone(),
            permit,
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

/// Serves one connection until the client closes it or `shutdown` fires.
async fn serve_connection<S: StatusSource>(
    stream: TcpStream,
    source: Arc<S>,
    options: StatusOptions,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        let source = Arc::clone(&source);
        let options = options.clone();
        async move { Ok::<_, Infallible>(respond(&*source, &options, &request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            // Finish the request in flight, if any, then close; an idle connection closes
            // at once.
            connection.as_mut().graceful_shutdown();
            connection.await
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
