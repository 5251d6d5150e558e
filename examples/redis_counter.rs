//! State shared by every worker, kept in Redis: the Node cluster guide's `/counter`, where
//! each worker increments one counter with `INCR` and no two requests ever get the same
//! number, whichever worker serves them.
//!
//! ```sh
//! redis-server --port 6379 --save "" --appendonly no &
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example redis_counter
//! curl http://127.0.0.1:8000/counter        # {"worker": 1234, "counter": 1}
//! kill -USR2 <master pid>                   # rolling reload: the count goes on
//! ```
//!
//! Environment:
//! - `REDIS_URL` (default `redis://127.0.0.1:6379/`);
//! - `COUNTER_KEY` (`counter`): the Redis key incremented;
//! - `HOST` (127.0.0.1), `PORT` (8000), `WORKERS` (one per CPU), `POLICY` (`shared`),
//!   `STATUS_PORT` (8001; `off` to disable): as examples/http.
//!
//! Each worker opens its own connection after it starts (a connection is not something a
//! forked or re-executed process can share), and drops it once it has drained on shutdown.
//! While Redis cannot be reached `/counter` answers 503 `redis unavailable: ...` at once,
//! without waiting for Redis: the connection manager tries to reconnect on the next request,
//! so the worker serves counters again as soon as Redis is back, with no restart.
//!
//! What it guarantees: `INCR` is atomic in Redis, so every 200 carries a number no other
//! request got, with no gap as long as every request got its answer. A 503 after a timed-out
//! `INCR` does not say whether Redis applied it (the command may have reached Redis before
//! the connection broke): the counter may then skip that number.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use cluster::http::DrainOptions;
use cluster::{Balance, Cluster, Count, Signal, WorkerContext};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A request waits at most this long for Redis: past it the client gets a 503 rather than a
/// hung connection, and the next request tries a fresh connection.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn answer(status: StatusCode, kind: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(kind),
    );
    response
}

/// The connection manager: a lazy one, so that a worker starts (and serves 503s) while Redis
/// is down; one connection attempt per request at most, each bounded, so that no request
/// waits behind a reconnection loop.
fn redis_manager(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT))
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(client, config)
}

async fn incr(redis: &mut ConnectionManager, key: &str) -> Result<i64, redis::RedisError> {
    redis::cmd("INCR").arg(key).query_async(redis).await
}

async fn worker(
    ctx: WorkerContext,
    addr: SocketAddr,
    url: String,
    key: String,
) -> Result<(), cluster::Error> {
    let listener = ctx.listen(addr).await?;
    let redis = redis_manager(&url)
        .map_err(|e| cluster::Error::other(format!("REDIS_URL {url:?} is not usable: {e}")))?;
    // Open the connection now rather than on the first request, and say if Redis is not
    // there yet: the worker serves anyway, with 503s until it is.
    let mut probe = redis.clone();
    if let Err(e) = redis::cmd("PING").query_async::<String>(&mut probe).await {
        eprintln!(
            "redis_counter: {} cannot reach Redis at {url} yet: {e}",
            ctx.id()
        );
    }
    let slot = ctx.slot();
    let pid = std::process::id();
    let key = std::sync::Arc::new(key);
    let connection = redis.clone();
    let handler = move |req: Request<Incoming>| {
        let mut redis = connection.clone();
        let key = key.clone();
        async move {
            let response = match req.uri().path() {
                "/counter" => match incr(&mut redis, &key).await {
                    Ok(n) => answer(
                        StatusCode::OK,
                        "application/json",
                        format!("{{\"worker\": {pid}, \"counter\": {n}}}"),
                    ),
                    Err(e) => answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        format!("redis unavailable: {e}\n"),
                    ),
                },
                // The same greeting as examples/http, so that tools waiting for every slot
                // to answer work on both.
                "/" => answer(
                    StatusCode::OK,
                    "text/plain",
                    format!("Hello from worker {slot} (pid {pid})"),
                ),
                _ => answer(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
            };
            Ok::<_, Infallible>(response)
        }
    };
    let served = cluster::http::serve(
        listener,
        handler,
        ctx.shutdown_token(),
        DrainOptions::new().peer_addr(false),
    )
    .await;
    // Every request has been answered: the connection goes with the last handle.
    drop(redis);
    served.map_err(|e| cluster::Error::other(format!("serving HTTP: {e}")))?;
    Ok(())
}

fn main() -> ExitCode {
    let host = env_or("HOST", "127.0.0.1");
    let port = env_or("PORT", "8000");
    let addr: SocketAddr = match format!("{host}:{port}").parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("redis_counter: bad HOST/PORT {host}:{port}: {e}");
            return ExitCode::from(2);
        }
    };
    let url = env_or("REDIS_URL", "redis://127.0.0.1:6379/");
    // Checked once here, so that a typo stops the master instead of every worker in turn.
    if let Err(e) = redis::Client::open(url.as_str()) {
        eprintln!("redis_counter: bad REDIS_URL {url:?}: {e}");
        return ExitCode::from(2);
    }
    let key = env_or("COUNTER_KEY", "counter");
    let (balance, count) = match (
        env_or("POLICY", "shared").parse::<Balance>(),
        env_or("WORKERS", "cpus").parse::<Count>(),
    ) {
        (Ok(balance), Ok(count)) => (balance, count),
        (Err(e), _) => {
            eprintln!("redis_counter: bad POLICY: {e}");
            return ExitCode::from(2);
        }
        (_, Err(e)) => {
            eprintln!("redis_counter: bad WORKERS: {e}");
            return ExitCode::from(2);
        }
    };
    let mut status = cluster::Options::new();
    if let Err(e) = status.set_from_str("status_addr", &env_or("STATUS_PORT", "8001")) {
        eprintln!("redis_counter: bad STATUS_PORT: {e}");
        return ExitCode::from(2);
    }
    let status_addr = status.status_addr();
    Cluster::<(), ()>::new()
        .count(count)
        .signals([Signal::SIGINT, Signal::SIGTERM])
        .configure(|o| {
            o.with_balance(balance)
                .with_reload_signals([Signal::SIGUSR2, Signal::SIGHUP])
                .with_status_addr(status_addr)
        })
        .master(move |_ctx| async move {
            println!(
                "redis_counter: listening on http://{addr}, master pid {}",
                std::process::id()
            );
        })
        .worker(move |ctx| worker(ctx, addr, url.clone(), key.clone()))
        .run()
}
