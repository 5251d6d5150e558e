//! TLS for [`serve`](crate::http::serve) (feature `tls`): [`TlsOptions`], the certificate and
//! key read from PEM files, and the handshake each connection's task runs before HTTP.
//! Apart from the connection's task because loading and its errors are a matter of their
//! own, and the rest of the server only sees a stream and the protocol ALPN chose.
//!
//! rustls through tokio-rustls, with the `ring` provider given explicitly: rustls's
//! process-wide default provider is unset (and `ServerConfig::builder` panics) when an app's
//! dependencies enable two providers, and a server must not panic for its dependencies.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::detect::Protocol;
use super::shared::Shared;

/// The default [`TlsOptions::handshake_timeout`].
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`serve`](crate::http::serve) needs to speak TLS: the certificate chain and key, and
/// how long a handshake may take. Given to [`DrainOptions::tls`](crate::http::DrainOptions::tls).
///
/// Clients choose HTTP/2 or HTTP/1.1 by ALPN (`h2`, `http/1.1`); one that offers neither is
/// served by what its first bytes say, as without TLS.
///
/// The files are read once, when this is made: in a cluster each worker reads them at its
/// start, so a rolling reload (`clusterctl reload`) serves renewed certificates with no
/// request lost.
///
/// ```no_run
/// use std::time::Duration;
///
/// use cluster::http::{DrainOptions, TlsOptions};
///
/// let tls = TlsOptions::from_pem("/etc/app/cert.pem", "/etc/app/key.pem")?
///     .handshake_timeout(Duration::from_secs(5));
/// let options = DrainOptions::new().tls(tls);
/// # let _ = options;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct TlsOptions {
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("alpn_protocols", &self.config.alpn_protocols.len())
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsOptions {
    /// Reads the certificate chain (PEM `CERTIFICATE` blocks, the server's first) from `cert`
    /// and its private key (PKCS#8, PKCS#1 or SEC1 PEM) from `key`, and offers ALPN `h2` and
    /// `http/1.1`. TLS 1.3 and 1.2, rustls's safe defaults.
    ///
    /// The error names the file and what is wrong with it: missing or unreadable, no
    /// certificate or no key in it, a key that does not match the certificate.
    ///
    /// ```no_run
    /// let tls = cluster::http::TlsOptions::from_pem("cert.pem", "key.pem")?;
    /// # let _ = tls;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_pem(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> io::Result<TlsOptions> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let certs = read_certificates(cert)?;
        let private_key = read_key(key)?;
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| io::Error::other(format!("TLS configuration: {e}")))?
                .with_no_client_auth()
                .with_single_cert(certs, private_key)
                .map_err(|e| {
                    invalid(format!(
                        "TLS certificate {} with key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsOptions::from_config(Arc::new(config)))
    }

    /// A rustls configuration made by the app (client certificates, a certificate resolver,
    /// other protocol versions), used as it is: set its `alpn_protocols` to
    /// `[b"h2", b"http/1.1"]` to offer HTTP/2.
    ///
    /// ```
    /// use std::sync::Arc;
    ///
    /// use cluster::http::TlsOptions;
    /// use cluster::http::rustls::ServerConfig;
    /// use cluster::http::rustls::server::ResolvesServerCertUsingSni;
    ///
    /// let provider = Arc::new(cluster::http::rustls::crypto::ring::default_provider());
    /// let config = ServerConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()
    ///     .map_err(std::io::Error::other)?
    ///     .with_no_client_auth()
    ///     .with_cert_resolver(Arc::new(ResolvesServerCertUsingSni::new()));
    /// let tls = TlsOptions::from_config(Arc::new(config));
    /// # let _ = tls;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn from_config(config: Arc<ServerConfig>) -> TlsOptions {
        TlsOptions {
            config,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }

    /// How long a connection's TLS handshake may take, from its hand-over to the worker;
    /// one that has not finished by then (a client that connects and sends nothing, or half
    /// a ClientHello) is closed and counted in
    /// [`ServeStats::tls_handshake_timeouts`](crate::http::ServeStats::tls_handshake_timeouts).
    /// Default 10 s.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let tls = cluster::http::TlsOptions::from_pem("cert.pem", "key.pem")?
    ///     .handshake_timeout(Duration::from_secs(3));
    /// # let _ = tls;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    pub(super) fn acceptor(&self) -> Acceptor {
        Acceptor {
            acceptor: TlsAcceptor::from(Arc::clone(&self.config)),
            timeout: self.handshake_timeout,
        }
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A PEM file's bytes, with the path in the error.
fn read(path: &Path, what: &str) -> io::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("TLS {what} {}: {e}", path.display())))
}

fn read_certificates(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let bytes = read(path, "certificate file")?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("TLS certificate file {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "TLS certificate file {}: no certificate in it (PEM \"-----BEGIN CERTIFICATE-----\" \
             blocks, the server's own first)",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    let bytes = read(path, "key file")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound => {
                "no private key in it (PEM \"-----BEGIN PRIVATE KEY-----\", \
                 \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")"
                    .to_owned()
            }
            other => other.to_string(),
        };
        invalid(format!("TLS key file {}: {why}", path.display()))
    })
}

/// What a server keeps of its [`TlsOptions`].
pub(super) struct Acceptor {
    acceptor: TlsAcceptor,
    timeout: Duration,
}

impl Acceptor {
    /// Runs the handshake within the timeout: the stream and the protocol ALPN chose (`None`
    /// when the client offered none), or `None` when the connection is to be dropped
    /// (counted in `shared`).
    pub(super) async fn handshake<I, S>(
        &self,
        io: I,
        shared: &Shared<S>,
    ) -> Option<(TlsStream<I>, Option<Protocol>)>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(self.timeout, self.acceptor.accept(io)).await {
            Ok(Ok(stream)) => {
                let protocol = match stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Some(Protocol::Http2),
                    Some(_) => Some(Protocol::Http1),
                    None => None,
                };
                Some((stream, protocol))
            }
            Ok(Err(_)) => {
                shared.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(_) => {
                shared
                    .tls_handshake_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, contents: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("cluster-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn errors_name_the_file_and_what_is_wrong() {
        let missing = std::env::temp_dir().join("cluster-tls-no-such-file.pem");
        let err = TlsOptions::from_pem(&missing, &missing).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let message = err.to_string();
        assert!(
            message.contains("certificate file") && message.contains("no-such-file"),
            "{message}"
        );

        let empty = temp("empty.pem", b"not a pem file\n");
        let message = TlsOptions::from_pem(&empty, &empty)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("no certificate in it") && message.contains("empty.pem"),
            "{message}"
        );

        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_file = temp("cert.pem", cert.cert.pem().as_bytes());
        let message = TlsOptions::from_pem(&cert_file, &cert_file)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("key file") && message.contains("no private key in it"),
            "{message}"
        );

        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let other_key = temp(
            "other-key.pem",
            other.signing_key.serialize_pem().as_bytes(),
        );
        let message = TlsOptions::from_pem(&cert_file, &other_key)
            .unwrap_err()
            .to_string();
        assert!(message.contains("with key"), "{message}");

        let key_file = temp("key.pem", cert.signing_key.serialize_pem().as_bytes());
        let tls = TlsOptions::from_pem(&cert_file, &key_file).unwrap();
        assert_eq!(
            tls.config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        for path in [empty, cert_file, other_key, key_file] {
            let _ = std::fs::remove_file(path);
        }
    }
}
