//! HTTP benchmark baseline for HTTP/2: the ideal cluster of `bench/baseline_reuseport.rs`
//! (`bench/reuseport_common.rs`: one single-threaded process per core, each with its own
//! `SO_REUSEPORT` socket, no supervision), serving hyper's HTTP/2 with prior knowledge (h2c)
//! and its defaults. `bench/http2.sh` compares `examples/http.rs` against it with h2load.
//!
//! Same handler and response as `examples/http.rs`. `HOST`, `PORT`, `WORKERS` as
//! `baseline_reuseport`. Build: `cargo build --release --example baseline_h2`.

#[path = "reuseport_common.rs"]
mod common;

use std::process::ExitCode;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() -> ExitCode {
    common::run("baseline_h2", |slot| {
        Ok(move |stream| async move {
            let service = service_fn(move |req| common::hello(req, slot));
            let _ = http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        })
    })
}
