//! An axum app run as a cluster: the `Router` is served by `cluster::http::serve_tower`, so
//! rolling reloads and shutdowns drain it without a failed request, exactly as the hyper
//! handler of examples/http. No adapter and no dependency besides `cluster` and `axum`.
//!
//! ```sh
//! cargo run --release --example axum
//! curl http://127.0.0.1:8000/                # Hello from worker 0 (pid 1234)
//! curl 'http://127.0.0.1:8000/slow?ms=2000'  # answers after 2 s, even across a reload
//! kill -USR2 <master pid>                    # rolling reload, zero failed requests
//! ```
//!
//! Environment: `HOST` (default 127.0.0.1), `PORT` (8000), `WORKERS` (default one per CPU),
//! `POLICY`: `shared` (default), `round-robin`, `least-connections`, `sticky`, `reuseport`.
//!
//! SIGINT or SIGTERM shut it down gracefully; SIGUSR2 or SIGHUP reload it worker by worker.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use cluster::http::DrainOptions;
use cluster::{Balance, BoxError, Cluster, Count, Runtime, Signal, WorkerContext};
use serde::Deserialize;

/// The longest `/slow` sleeps: a draining worker waits for it, and is killed after `GRACE`.
const MAX_SLOW: Duration = Duration::from_secs(5);
const GRACE: Duration = Duration::from_secs(10);

async fn hello(State(slot): State<usize>) -> String {
    format!("Hello from worker {slot} (pid {})", std::process::id())
}

#[derive(Deserialize)]
struct Slow {
    ms: u64,
}

/// Stands for a handler that waits on a database or another service.
async fn slow(State(slot): State<usize>, Query(Slow { ms }): Query<Slow>) -> String {
    let delay = Duration::from_millis(ms).min(MAX_SLOW);
    tokio::time::sleep(delay).await;
    format!(
        "Slept {} ms in worker {slot} (pid {})",
        delay.as_millis(),
        std::process::id()
    )
}

async fn worker(ctx: WorkerContext, addr: SocketAddr) -> Result<(), BoxError> {
    let listener = ctx.listen(addr).await?;
    let app = Router::new()
        .route("/", get(hello))
        .route("/slow", get(slow))
        .with_state(ctx.slot());
    // Not `axum::serve`: its graceful shutdown closes idle keep-alive connections at once,
    // losing any request a client is sending on one just then. `serve_tower` drains them
    // (see `cluster::http`).
    cluster::http::serve_tower(listener, app, ctx.shutdown_token(), DrainOptions::new()).await?;
    Ok(())
}

fn config() -> Result<(SocketAddr, Count, Balance), String> {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let addr = format!("{}:{}", var("HOST", "127.0.0.1"), var("PORT", "8000"));
    let addr = addr
        .parse()
        .map_err(|e| format!("bad HOST/PORT {addr}: {e}"))?;
    let count: Count = var("WORKERS", "cpus")
        .parse()
        .map_err(|e| format!("bad WORKERS: {e}"))?;
    let balance: Balance = var("POLICY", "shared")
        .parse()
        .map_err(|e| format!("bad POLICY: {e}"))?;
    Ok((addr, count, balance))
}

fn main() -> ExitCode {
    let (addr, count, balance) = match config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("axum: {e}");
            return ExitCode::from(2);
        }
    };
    Cluster::<(), ()>::new()
        .count(count)
        .signals([Signal::SIGINT, Signal::SIGTERM])
        .grace(GRACE)
        .configure(|o| {
            o.with_balance(balance)
                .with_reload_signals([Signal::SIGUSR2, Signal::SIGHUP])
        })
        // One single-threaded worker per CPU: the prefork model, no hand-offs between threads.
        .worker_runtime(Runtime::CurrentThread)
        .master(move |_ctx| async move {
            println!(
                "axum: listening on http://{addr} ({balance:?}), master pid {}",
                std::process::id()
            );
        })
        .worker(move |ctx| worker(ctx, addr))
        .run()
}
