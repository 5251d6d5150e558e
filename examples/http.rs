//! The main job: an HTTP/1.1 server (hyper) run as a cluster.
//!
//! ```sh
//! cargo run --release --example http
//! curl http://127.0.0.1:8000/      # Hello from worker 0 (pid 1234)
//! ```
//!
//! Environment: `HOST` (default 127.0.0.1), `PORT` (8000), `WORKERS` (one per CPU), `POLICY`
//! (`shared`, `round-robin`, `least-connections`, `sticky`, `reuseport`; default `shared`).
//! SIGINT or SIGTERM shut it down gracefully; SIGUSR2 or SIGHUP reload it worker by worker.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use cluster::{Balance, Cluster, Count, Signal, WorkerContext};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn policy(name: &str) -> Option<Balance> {
    Some(match name {
        "shared" => Balance::Shared,
        "round-robin" => Balance::RoundRobin,
        "least-connections" => Balance::LeastConnections,
        "sticky" => Balance::Sticky,
        "reuseport" => Balance::ReusePort,
        _ => return None,
    })
}

async fn hello(req: Request<Incoming>, slot: usize) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/" => (
            StatusCode::OK,
            format!("Hello from worker {slot} (pid {})", std::process::id()),
        ),
        _ => (StatusCode::NOT_FOUND, "not found".to_string()),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default())
}

async fn worker(ctx: WorkerContext, addr: SocketAddr) -> Result<(), cluster::Error> {
    let listener = ctx.listen(addr).await?;
    let slot = ctx.slot();
    let shutdown = ctx.shutdown_token();
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (conn, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("worker {slot}: accept failed: {e}");
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| hello(req, slot));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(conn), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
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
    let Some(balance) = policy(&env_or("POLICY", "shared")) else {
        eprintln!(
            "http: POLICY must be one of shared, round-robin, least-connections, sticky, reuseport"
        );
        return ExitCode::from(2);
    };
    let count = match std::env::var("WORKERS").ok().map(|w| w.parse::<usize>()) {
        None => Count::Cpus,
        Some(Ok(n)) => Count::Fixed(n),
        Some(Err(e)) => {
            eprintln!("http: bad WORKERS: {e}");
            return ExitCode::from(2);
        }
    };
    let options = cluster::Options::new()
        .count(count)
        .balance(balance)
        .signals([Signal::SIGINT, Signal::SIGTERM])
        .reload_signals([Signal::SIGUSR2, Signal::SIGHUP]);
    Cluster::<(), ()>::new()
        .options(options)
        .master(move |_ctx| async move {
            println!(
                "http: listening on http://{addr} ({balance:?}), master pid {}",
                std::process::id()
            );
        })
        .worker(move |ctx| worker(ctx, addr))
        .run()
}
