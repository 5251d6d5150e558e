//! Reading the PROXY protocol header (versions 1 and 2) off a connection before serving it,
//! for [`DrainOptions::proxy_protocol`](crate::http::DrainOptions::proxy_protocol): behind a
//! load balancer that sends one (haproxy's `send-proxy-v2`, or the master's
//! `Balance::StickyKey` with `sticky_proxy`), the header comes before the request and names
//! the real client.
//!
//! Read exactly, never past its end, so that the request's bytes stay for hyper: the first 8
//! bytes tell the version; version 2 then says its length, version 1 ends at its `\r\n`
//! (read a byte at a time, at most 107). The bytes are checked by the same parser the master
//! uses (`cluster_core::proxy_header`).

use std::io;
use std::net::SocketAddr;

use cluster_core::proxy_header::{self, Parsed};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The client's address from the connection's PROXY header, in each request's extensions
/// when [`DrainOptions::proxy_protocol`](crate::http::DrainOptions::proxy_protocol) is on:
/// `None` when the header carries none (the load balancer's own health checks).
///
/// ```
/// use std::convert::Infallible;
///
/// use cluster::http::ProxiedAddr;
/// use cluster::http::hyper::body::Incoming;
/// use cluster::http::hyper::{Request, Response};
///
/// async fn handler(req: Request<Incoming>) -> Result<Response<String>, Infallible> {
///     let client = req.extensions().get::<ProxiedAddr>().and_then(|p| p.0);
///     Ok(Response::new(format!("hello {client:?}")))
/// }
/// # let _ = handler;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProxiedAddr(pub Option<SocketAddr>);

/// Reads the PROXY header at the start of `io` and returns the client's address in it. An
/// error for a connection that does not start with a valid header: it is closed unserved,
/// since a server that expects the header cannot tell a client's bytes from a forged one.
pub(super) async fn read_header<I: AsyncRead + Unpin>(
    io: &mut I,
) -> io::Result<Option<SocketAddr>> {
    let invalid =
        |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("PROXY header: {why}"));
    let mut header = vec![0u8; 8];
    io.read_exact(&mut header).await?;
    loop {
        match proxy_header::parse(&header) {
            Parsed::Header { len, source } if len == header.len() => return Ok(source),
            Parsed::Header { .. } => return Err(invalid("longer than announced")),
            Parsed::Invalid(why) => return Err(invalid(why)),
            Parsed::Partial => {}
        }
        // Version 2 announces its length once its 16 fixed bytes are in; version 1 is read
        // to its `\r\n`.
        let more = if header.starts_with(b"PROXY ") {
            1
        } else if header.len() < 16 {
            16 - header.len()
        } else {
            16 + usize::from(u16::from_be_bytes([header[14], header[15]])) - header.len()
        };
        let start = header.len();
        header.resize(start + more, 0);
        io.read_exact(&mut header[start..]).await?;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn reads_exactly_the_header_of_each_version() {
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        v2.extend_from_slice(&[10, 0, 0, 9, 10, 0, 0, 1, 0x1f, 0x90, 0, 80]);
        for (header, source) in [
            (
                b"PROXY TCP4 10.0.0.9 10.0.0.1 8080 80\r\n".to_vec(),
                Some("10.0.0.9:8080"),
            ),
            (v2, Some("10.0.0.9:8080")),
            (b"PROXY UNKNOWN\r\n".to_vec(), None),
        ] {
            let (mut client, mut server) = tokio::io::duplex(1024);
            client.write_all(&header).await.unwrap();
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            let got = read_header(&mut server).await.unwrap();
            assert_eq!(got, source.map(|s| s.parse().unwrap()));
            let mut rest = [0u8; 16];
            server.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"GET / HTTP/1.1\r\n");
        }
    }

    #[tokio::test]
    async fn refuses_a_connection_without_a_header() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let e = read_header(&mut server).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"PROXY TCP4 garbage\r\n").await.unwrap();
        assert!(read_header(&mut server).await.is_err());
    }
}
