//! HTTP benchmark baseline for TLS: the ideal cluster of `bench/baseline_reuseport.rs`
//! (`bench/reuseport_common.rs`) with rustls (tokio-rustls, the `ring` provider, as
//! `cluster::http`'s feature `tls`) in front of hyper: HTTP/2 or HTTP/1.1 by ALPN. Reads
//! `TLS_CERT` and `TLS_KEY` (PEM) as `examples/http.rs` does. `bench/http2.sh` compares
//! `examples/http.rs` with TLS against it.
//!
//! Same handler and response as `examples/http.rs`. `HOST`, `PORT`, `WORKERS` as
//! `baseline_reuseport`. Build: `cargo build --release --example baseline_tls`.

#[path = "reuseport_common.rs"]
mod common;

use std::process::ExitCode;
use std::sync::Arc;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The server configuration from `TLS_CERT` and `TLS_KEY`, offering `h2` and `http/1.1`.
fn config() -> std::io::Result<Arc<ServerConfig>> {
    let var =
        |name: &str| std::env::var(name).map_err(|_| common::invalid(format!("{name} is not set")));
    let (cert, key) = (var("TLS_CERT")?, var("TLS_KEY")?);
    let certs = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| common::invalid(format!("TLS_CERT={cert}: {e}")))?;
    let key = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| common::invalid(format!("TLS_KEY={key}: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| common::invalid(format!("TLS_CERT/TLS_KEY: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn main() -> ExitCode {
    common::run("baseline_tls", |slot| {
        let acceptor = TlsAcceptor::from(config()?);
        Ok(move |stream| {
            let acceptor = acceptor.clone();
            async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let service = service_fn(move |req| common::hello(req, slot));
                let io = TokioIo::new(tls);
                let _ = if h2 {
                    http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    http1::Builder::new().serve_connection(io, service).await
                };
            }
        })
    })
}
