//! HTTP benchmark baseline: one process, tokio's multi-thread runtime on every core, hyper's
//! HTTP/1.1 server with keep-alive. This is what a single-process Rust server does without any
//! cluster; `bench/http.sh` compares `examples/http.rs` against it.
//!
//! Same handler and response as `examples/http.rs`: `GET /` answers 200, `text/plain`,
//! `Hello from worker 0 (pid N)` (there is one "worker", slot 0).
//!
//! `HOST` (default 127.0.0.1) and `PORT` (default 8000) say where to listen.
//! Build: `cargo build --release --example baseline_multithread`.

use std::convert::Infallible;
use std::net::{SocketAddr, ToSocketAddrs};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The one "worker" of this process, as `examples/http.rs` numbers them.
const SLOT: usize = 0;

/// `HOST:PORT` from the environment, with the defaults of `examples/http.rs`.
fn listen_addr() -> std::io::Result<SocketAddr> {
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".to_owned());
    let port: u16 = port.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("PORT={port}: {e}"),
        )
    })?;
    (host.as_str(), port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("HOST={host}: no address"),
            )
        })
}

/// The handler of `examples/http.rs`, line for line, so that the comparison measures the
/// serving and not the handler: the body is formatted per request there, so it is here too.
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

// `#[tokio::main]` without arguments is the multi-thread runtime with one worker per core.
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = listen_addr()?;
    let listener = TcpListener::bind(addr).await?;
    eprintln!(
        "baseline_multithread listening on http://{} (pid {})",
        listener.local_addr()?,
        std::process::id()
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            // EMFILE and the like: keep serving the connections we have.
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        tokio::spawn(async move {
            let service = service_fn(move |req| hello(req, SLOT));
            // Keep-alive is hyper's default; said here because the benchmark relies on it.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
