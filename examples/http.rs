//! The main job: an HTTP/1.1 and HTTP/2 server (hyper) run as a cluster.
//!
//! ```sh
//! cargo run --release --example http
//! curl http://127.0.0.1:8000/                # Hello from worker 0 (pid 1234)
//! curl --http2-prior-knowledge http://127.0.0.1:8000/   # the same over HTTP/2 (h2c)
//! curl http://127.0.0.1:8001/status          # the cluster, as JSON
//! curl http://127.0.0.1:8001/metrics         # OpenMetrics, every worker's metrics merged
//! kill -USR2 <master pid>                    # rolling reload, zero failed requests
//! ```
//!
//! Environment:
//! - `HOST` (default 127.0.0.1), `PORT` (8000);
//! - `WORKERS` (default one per CPU);
//! - `POLICY`: `shared` (default), `round-robin`, `least-connections`, `sticky`, `sticky-key`
//!   (with `CLUSTER_STICKY_COOKIE`, `CLUSTER_STICKY_HEADER` or `CLUSTER_STICKY_PROXY`, see the
//!   README's options), `reuseport`;
//! - `TLS_CERT`, `TLS_KEY` (unset): PEM files of the certificate chain and its key, to serve
//!   HTTPS (HTTP/2 or HTTP/1.1 by ALPN) instead of plain text; needs the `tls` feature
//!   (`cargo run --release --features tls --example http`). Each worker reads them when it
//!   starts, so a rolling reload (`kill -USR2`, `clusterctl reload`) serves renewed files;
//!   `TLS_HANDSHAKE_TIMEOUT_MS` (10000) bounds each handshake. HTTP/2 with prior knowledge is
//!   always served on plain text;
//! - `PROXY_PROTOCOL` (unset): `1` when every connection starts with a PROXY protocol header
//!   (behind haproxy's `send-proxy-v2`, or with `CLUSTER_STICKY_PROXY=true`);
//! - `STATUS_PORT` (8001; `off` to disable): the master's `/status`, `/metrics`, `/healthz`,
//!   `/readyz`, on 127.0.0.1 whatever `HOST` is; an address such as `0.0.0.0:8001` exposes
//!   it, so set `STATUS_TOKEN` then;
//! - `STATUS_TOKEN` (unset): `/status` and `/metrics` then need `Authorization: Bearer <it>`;
//! - `SHUTDOWN_DELAY_MS` (0): on shutdown or reload, keep serving this long while the worker's
//!   `/readyz` says not ready, for load balancers to notice;
//! - `QUIET_PERIOD_MS` (500): once draining, how long a connection may stay silent before it
//!   is closed (HTTP/1.1), or an HTTP/2 connection that opened no stream yet gets its GOAWAY
//!   (see `DrainOptions::quiet_period`);
//! - `MAX_MEMORY_MB` (512): a worker above it for 3 seconds is replaced without dropping a request;
//! - `ACCEPT_COALESCING_MS` (1): with a policy where the master accepts, its rounds of accepts
//!   under load are at least this far apart (0: hand out each connection as it comes);
//! - `RUNTIME`: the workers' tokio runtime, `current_thread` (default: with one worker per CPU,
//!   one thread each is the prefork model and wastes nothing on thread hand-offs) or
//!   `multi_thread`.
//!
//! SIGINT or SIGTERM shut it down gracefully; SIGUSR2 or SIGHUP reload it worker by worker.
//! Requests in flight finish, and keep-alive connections get their next response with
//! `Connection: close` before they are closed (see `cluster::http`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use cluster::http::{DrainOptions, Readiness};
use cluster::observe::prometheus_client::metrics::counter::Counter;
use cluster::{Balance, Cluster, Count, Runtime, Signal, WorkerContext};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}

/// `TLS_CERT` and `TLS_KEY`, and the handshake timeout: the files are read by each worker.
#[derive(Clone)]
// Without the `tls` feature only its presence is checked (main refuses to start).
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
struct Tls {
    cert: String,
    key: String,
    handshake_timeout: Duration,
}

/// `options` with TLS from `tls`'s files, read now: at the worker's start.
#[cfg(feature = "tls")]
fn with_tls(options: DrainOptions, tls: Option<Tls>) -> Result<DrainOptions, cluster::Error> {
    let Some(tls) = tls else { return Ok(options) };
    let loaded = cluster::http::TlsOptions::from_pem(&tls.cert, &tls.key)
        .map_err(|e| cluster::Error::other(format!("TLS_CERT/TLS_KEY: {e}")))?;
    Ok(options.tls(loaded.handshake_timeout(tls.handshake_timeout)))
}

#[cfg(not(feature = "tls"))]
fn with_tls(options: DrainOptions, tls: Option<Tls>) -> Result<DrainOptions, cluster::Error> {
    match tls {
        // main refuses this before starting anything; said again in case that changes.
        Some(_) => Err(cluster::Error::other(
            "TLS_CERT needs the tls feature: cargo run --features tls --example http",
        )),
        None => Ok(options),
    }
}

async fn worker(
    ctx: WorkerContext,
    addr: SocketAddr,
    (delay, quiet): (Duration, Duration),
    proxy: bool,
    tls: Option<Tls>,
) -> Result<(), cluster::Error> {
    let listener = ctx.listen(addr).await?;
    let slot = ctx.slot();
    let requests = Counter::<u64>::default();
    ctx.metrics()
        .register("http_requests", "HTTP requests served", requests.clone());
    let readiness = Readiness::new();
    let ready = readiness.clone();
    let handler = move |req: Request<Incoming>| {
        let requests = requests.clone();
        let ready = ready.clone();
        async move {
            requests.inc();
            let response = match req.uri().path() {
                "/" => text(
                    StatusCode::OK,
                    format!("Hello from worker {slot} (pid {})", std::process::id()),
                ),
                "/readyz" if ready.is_ready() => text(StatusCode::OK, "ready".into()),
                "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "draining".into()),
                _ => text(StatusCode::NOT_FOUND, "not found".into()),
            };
            Ok::<_, Infallible>(response)
        }
    };
    // The handler never reads the client's address: skip inserting it into every request.
    let options = DrainOptions::new()
        .shutdown_delay(delay)
        .quiet_period(quiet)
        .readiness(&readiness)
        .peer_addr(false)
        .proxy_protocol(proxy);
    let options = with_tls(options, tls)?;
    let stats = cluster::http::serve(listener, handler, ctx.shutdown_token(), options)
        .await
        .map_err(|e| cluster::Error::other(format!("serving HTTP: {e}")))?;
    // What the drain did, for the operator (and the tests): connections still open at
    // `max_drain` (`aborted`) are the ones whose clients may have lost a request.
    eprintln!(
        "worker {slot}: served {} requests on {} connections ({} HTTP/2), {} aborted at max_drain",
        stats.requests, stats.connections, stats.http2_connections, stats.aborted
    );
    Ok(())
}

fn main() -> ExitCode {
    let host = env_or("HOST", "127.0.0.1");
    let port = env_or("PORT", "8000");
    let addr: SocketAddr = match format!("{host}:{port}").parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("http: bad HOST/PORT {host}:{port}: {e}");
            return ExitCode::from(2);
        }
    };
    let balance: Balance = match env_or("POLICY", "shared").parse() {
        Ok(balance) => balance,
        Err(e) => {
            eprintln!("http: bad POLICY: {e}");
            return ExitCode::from(2);
        }
    };
    let count: Count = match env_or("WORKERS", "cpus").parse() {
        Ok(count) => count,
        Err(e) => {
            eprintln!("http: bad WORKERS: {e}");
            return ExitCode::from(2);
        }
    };
    // The options' own text forms: a bare port is on 127.0.0.1, so the status stays local
    // even when HOST exposes the app; the token is read at run time, never from the source.
    let mut status = cluster::Options::new();
    if let Err(e) = status.set_from_str("status_addr", &env_or("STATUS_PORT", "8001")) {
        eprintln!("http: bad STATUS_PORT: {e}");
        return ExitCode::from(2);
    }
    if let Ok(token) = std::env::var("STATUS_TOKEN") {
        if let Err(e) = status.set_from_str("status_token", &token) {
            eprintln!("http: bad STATUS_TOKEN: {e}");
            return ExitCode::from(2);
        }
    }
    let status_addr = status.status_addr();
    let number = |name: &str, default: u64| env_or(name, &default.to_string()).parse::<u64>();
    let (Ok(delay_ms), Ok(quiet_ms), Ok(max_memory_mb), Ok(coalescing_ms), Ok(handshake_ms)) = (
        number("SHUTDOWN_DELAY_MS", 0),
        number("QUIET_PERIOD_MS", 500),
        number("MAX_MEMORY_MB", 512),
        number("ACCEPT_COALESCING_MS", 1),
        number("TLS_HANDSHAKE_TIMEOUT_MS", 10_000),
    ) else {
        eprintln!(
            "http: SHUTDOWN_DELAY_MS, QUIET_PERIOD_MS, MAX_MEMORY_MB, ACCEPT_COALESCING_MS and \
             TLS_HANDSHAKE_TIMEOUT_MS must be whole numbers"
        );
        return ExitCode::from(2);
    };
    let tls = match (std::env::var("TLS_CERT"), std::env::var("TLS_KEY")) {
        (Ok(cert), Ok(key)) => Some(Tls {
            cert,
            key,
            handshake_timeout: Duration::from_millis(handshake_ms),
        }),
        (Err(_), Err(_)) => None,
        _ => {
            eprintln!("http: TLS_CERT and TLS_KEY go together");
            return ExitCode::from(2);
        }
    };
    if tls.is_some() && !cfg!(feature = "tls") {
        eprintln!("http: TLS_CERT needs the tls feature: cargo run --features tls --example http");
        return ExitCode::from(2);
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    let delay = Duration::from_millis(delay_ms);
    let quiet = Duration::from_millis(quiet_ms);
    let proxy = match env_or("PROXY_PROTOCOL", "0").as_str() {
        "1" => true,
        "0" => false,
        other => {
            eprintln!("http: PROXY_PROTOCOL must be 1 or 0, not {other}");
            return ExitCode::from(2);
        }
    };
    let runtime = match env_or("RUNTIME", "current_thread").as_str() {
        "current_thread" => Runtime::CurrentThread,
        "multi_thread" => Runtime::MultiThread,
        other => {
            eprintln!("http: RUNTIME must be current_thread or multi_thread, not {other}");
            return ExitCode::from(2);
        }
    };
    Cluster::<(), ()>::new()
        .count(count)
        .signals([Signal::SIGINT, Signal::SIGTERM])
        // Draining takes at most the shutdown delay plus `max_drain` (4 s by default, see
        // `DrainOptions`), after which the worker returns by itself; the rest is margin.
        .grace(delay + Duration::from_secs(10))
        .configure(|o| {
            o.with_balance(balance)
                .with_reload_signals([Signal::SIGUSR2, Signal::SIGHUP])
                .with_status_addr(status_addr)
                .with_status_token(status.status_token().cloned())
                .with_heartbeat_timeout(Some(Duration::from_secs(10)))
                .with_max_memory(Some(max_memory_mb << 20))
                .with_accept_coalescing(Duration::from_millis(coalescing_ms))
        })
        .worker_runtime(runtime)
        .master(move |_ctx| async move {
            let status = status_addr.map_or("off".to_string(), |a| format!("http://{a}/status"));
            println!(
                "http: listening on {scheme}://{addr} ({balance:?}), status {status}, master pid {}",
                std::process::id()
            );
        })
        .worker(move |ctx| worker(ctx, addr, (delay, quiet), proxy, tls.clone()))
        .run()
}
