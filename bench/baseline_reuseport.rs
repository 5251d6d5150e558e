//! HTTP benchmark baseline: the ideal cluster (`bench/reuseport_common.rs`: one
//! single-threaded process per core, each with its own `SO_REUSEPORT` socket on the same port,
//! no supervision), serving hyper's HTTP/1.1 with keep-alive. `bench/http.sh` compares
//! `examples/http.rs` against it.
//!
//! Same handler and response as `examples/http.rs`: `GET /` answers 200, `text/plain`,
//! `Hello from worker <slot> (pid <pid>)`.
//!
//! `HOST` (default 127.0.0.1), `PORT` (default 8000), `WORKERS` (default one per core).
//! Build: `cargo build --release --example baseline_reuseport`.

#[path = "reuseport_common.rs"]
mod common;

use std::process::ExitCode;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn main() -> ExitCode {
    common::run("baseline_reuseport", |slot| {
        Ok(move |stream| async move {
            let service = service_fn(move |req| common::hello(req, slot));
            // Keep-alive is hyper's default; said here because the benchmark relies on it.
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        })
    })
}
