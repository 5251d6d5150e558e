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
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::observe::metrics::tests::{check_openmetrics, status, worker};

    /// Any test wait longer than this is a hang.
    const BOUND: Duration = Duration::from_secs(10);

    #[derive(Default)]
    struct Fake {
        status: Mutex<Option<ClusterStatus>>,
        metrics: Vec<WorkerMetricsText>,
        hang_metrics: bool,
        hang_status: bool,
    }

    impl StatusSource for Fake {
        async fn status(&self) -> Option<ClusterStatus> {
            if self.hang_status {
                std::future::pending::<()>().await;
            }
            self.status.lock().unwrap().clone()
        }

        async fn worker_metrics(&self, _timeout: Duration) -> Vec<WorkerMetricsText> {
            if self.hang_metrics {
                // A source that ignores its own timeout: the server must bound it anyway.
                std::future::pending::<()>().await;
            }
            self.metrics.clone()
        }
    }

    fn fake() -> Fake {
        let mut text = String::from("# HELP jobs Jobs done.\n# TYPE jobs counter\n");
        text.push_str("jobs_total{kind=\"a\"} 3\n# EOF\n");
        Fake {
            status: Mutex::new(Some(status())),
            metrics: vec![WorkerMetricsText {
                group: "web".into(),
                slot: 0,
                text,
            }],
            ..Fake::default()
        }
    }

    struct Server {
        addr: SocketAddr,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    async fn start(source: Fake, options: StatusOptions) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_status(
            listener,
            Arc::new(source),
            options,
            shutdown.clone(),
        ));
        Server {
            addr,
            shutdown,
            task,
        }
    }

    struct Reply {
        code: u16,
        headers: String,
        body: String,
    }

    async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
        tokio::time::timeout(BOUND, async {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let head =
                format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            let mut raw = String::new();
            stream.read_to_string(&mut raw).await.unwrap();
            let (headers, body) = raw.split_once("\r\n\r\n").unwrap();
            let code = headers.split(' ').nth(1).unwrap().parse().unwrap();
            Reply {
                code,
                headers: headers.to_ascii_lowercase(),
                body: body.to_owned(),
            }
        })
        .await
        .expect("request hung")
    }

    async fn get(addr: SocketAddr, path: &str) -> Reply {
        request(addr, "GET", path).await
    }

    async fn stop(server: Server) {
        server.shutdown.cancel();
        tokio::time::timeout(BOUND, server.task)
            .await
            .expect("server did not stop")
            .unwrap();
    }

    #[tokio::test]
    async fn status_is_the_snapshot_as_json() {
        let server = start(fake(), StatusOptions::default()).await;
        let reply = get(server.addr, "/status").await;
        assert_eq!(reply.code, 200);
        assert!(reply.headers.contains("content-type: application/json"));
        let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        let master = &json["master"];
        assert_eq!(master["pid"], 4242);
        assert_eq!(master["uptime_ms"], 61_500);
        assert_eq!(master["restarts_total"], 5);
        assert_eq!(master["reloads_total"], 2);
        let workers = json["workers"].as_array().unwrap();
        assert_eq!(workers.len(), 2);
        let first = &workers[0];
        assert_eq!(first["group"], "web");
        assert_eq!(first["slot"], 0);
        assert_eq!(first["pid"], 4000);
        assert_eq!(first["generation"], 2);
        assert_eq!(first["state"], "ready");
        assert_eq!(first["restarts"], 1);
        assert_eq!(first["uptime_ms"], 1500);
        assert_eq!(first["rss_bytes"], 10_485_760);
        assert_eq!(first["cpu_seconds"], 1.25);
        assert_eq!(first["connections"], 3);
        assert_eq!(workers[1]["state"], "starting");
        assert_eq!(json["restarts"][0]["reason"], "crash");
        stop(server).await;
    }

    #[tokio::test]
    async fn metrics_have_the_cluster_and_the_workers() {
        let server = start(fake(), StatusOptions::default()).await;
        let reply = get(server.addr, "/metrics").await;
        assert_eq!(reply.code, 200);
        assert!(
            reply.headers.contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            )
        );
        check_openmetrics(&reply.body).unwrap();
        assert!(reply.body.contains("cluster_workers{state=\"ready\"} 1\n"));
        assert!(reply.body.contains("cluster_reloads_total 2\n"));
        assert!(
            reply
                .body
                .contains("jobs_total{group=\"web\",slot=\"0\",kind=\"a\"} 3\n")
        );
        stop(server).await;
    }

    #[tokio::test]
    async fn readyz_follows_the_ready_count() {
        let server = start(fake(), StatusOptions::default()).await;
        let reply = get(server.addr, "/readyz").await;
        assert_eq!(reply.code, 200, "{}", reply.body);
        stop(server).await;

        let options = StatusOptions {
            min_ready: 2,
            ..StatusOptions::default()
        };
        let server = start(fake(), options.clone()).await;
        let reply = get(server.addr, "/readyz").await;
        assert_eq!(reply.code, 503);
        assert!(reply.body.contains("1 of the 2"), "{}", reply.body);
        stop(server).await;

        let source = fake();
        source
            .status
            .lock()
            .unwrap()
            .as_mut()
            .unwrap()
            .workers
            .push(worker(WorkerState::Ready, 2));
        let server = start(source, options).await;
        assert_eq!(get(server.addr, "/readyz").await.code, 200);
        stop(server).await;
    }

    #[tokio::test]
    async fn healthz_is_ok_while_the_master_runs() {
        let server = start(fake(), StatusOptions::default()).await;
        let reply = get(server.addr, "/healthz").await;
        assert_eq!(reply.code, 200);
        assert_eq!(reply.body, "ok");
        stop(server).await;
    }

    #[tokio::test]
    async fn a_stopping_master_is_neither_healthy_nor_ready() {
        let source = fake();
        *source.status.lock().unwrap() = None;
        let server = start(source, StatusOptions::default()).await;
        for path in ["/healthz", "/readyz", "/status", "/metrics"] {
            let reply = get(server.addr, path).await;
            assert_eq!(reply.code, 503, "{path}");
            assert_eq!(reply.body, "master is stopping\n");
        }
        stop(server).await;
    }

    #[tokio::test]
    async fn unknown_paths_are_404_and_other_methods_405() {
        let server = start(fake(), StatusOptions::default()).await;
        assert_eq!(get(server.addr, "/").await.code, 404);
        assert_eq!(get(server.addr, "/statusx").await.code, 404);
        assert_eq!(get(server.addr, "/metrics?x=1").await.code, 200);
        let reply = request(server.addr, "POST", "/status").await;
        assert_eq!(reply.code, 405);
        assert!(reply.headers.contains("allow: get, head"));
        stop(server).await;
    }

    #[tokio::test]
    async fn hung_worker_metrics_do_not_stall_the_scrape() {
        let source = Fake {
            hang_metrics: true,
            ..fake()
        };
        let options = StatusOptions {
            min_ready: 1,
            scrape_timeout: Duration::from_millis(200),
        };
        let bound = options.request_bound();
        let server = start(source, options).await;
        let started = std::time::Instant::now();
        let reply = get(server.addr, "/metrics").await;
        let took = started.elapsed();
        assert!(took >= bound - Duration::from_millis(50), "{took:?}");
        assert!(took < bound + Duration::from_secs(1), "{took:?}");
        assert_eq!(reply.code, 200);
        check_openmetrics(&reply.body).unwrap();
        assert!(reply.body.contains("cluster_master_uptime_seconds 61.5\n"));
        assert!(!reply.body.contains("jobs_total"));
        // The rest of the server is unaffected meanwhile.
        assert_eq!(get(server.addr, "/healthz").await.code, 200);
        stop(server).await;
    }

    #[tokio::test]
    async fn a_hung_supervisor_gives_503_within_the_bound() {
        let source = Fake {
            hang_status: true,
            ..fake()
        };
        let options = StatusOptions {
            min_ready: 1,
            scrape_timeout: Duration::from_millis(100),
        };
        let bound = options.request_bound();
        let server = start(source, options).await;
        let started = std::time::Instant::now();
        let reply = get(server.addr, "/status").await;
        assert!(started.elapsed() < bound + Duration::from_secs(1));
        assert_eq!(reply.code, 503);
        assert_eq!(reply.body, "master did not answer in time\n");
        stop(server).await;
    }

    #[tokio::test]
    async fn connections_are_served_concurrently_and_shutdown_closes_idle_ones() {
        let source = Fake {
            hang_metrics: true,
            ..fake()
        };
        let options = StatusOptions {
            min_ready: 1,
            scrape_timeout: Duration::from_millis(300),
        };
        let server = start(source, options).await;
        // A scrape stuck on the workers does not hold up another connection.
        let addr = server.addr;
        let slow = tokio::spawn(async move { get(addr, "/metrics").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(get(server.addr, "/status").await.code, 200);
        assert!(
            !slow.is_finished(),
            "the slow scrape should still be waiting"
        );
        // An idle keep-alive connection must not keep the server from stopping.
        let mut idle = TcpStream::connect(server.addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut buffer = [0; 1024];
        let read = tokio::time::timeout(BOUND, idle.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
        assert_eq!(slow.await.unwrap().code, 200);
        let started = std::time::Instant::now();
        stop(server).await;
        assert!(started.elapsed() < Duration::from_secs(2));
        // And the idle connection was closed.
        let read = tokio::time::timeout(BOUND, idle.read(&mut buffer))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(read, 0);
    }
}
