//! Which HTTP a plain-text connection speaks: HTTP/2 with prior knowledge (h2c) starts with
//! the client's connection preface (RFC 9113, section 3.4), anything else is HTTP/1.1. The
//! bytes read to tell are handed back in front of the connection ([`Rewound`]), so that hyper
//! reads them as if nothing had. Apart from the connection's task because this runs before
//! either protocol's server exists, once per connection.
//!
//! hyper-util's `auto` builder does the same, but its connection gives neither
//! `poll_without_shutdown` nor `into_parts`, which the HTTP/1.1 path needs to get its socket
//! back for the lingering close and for closing at a deadline; and it reads 24 bytes first,
//! which costs an HTTP/1.1 connection a second read before its head is parsed. Here the first
//! read takes what the kernel has (up to [`FIRST_READ`]), so a connection-per-request client
//! pays one read as before, and a keep-alive one pays nothing per request but a branch in
//! the connection's I/O wrapper.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The client connection preface of HTTP/2.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most the first read takes: a whole request head of a usual HTTP/1.1 client, so that
/// hyper finds it complete in what is handed back.
const FIRST_READ: usize = 4096;

/// The HTTP a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Protocol {
    Http1,
    Http2,
}

/// Reads the start of `io` until it tells the protocol: the preface's 24 bytes for HTTP/2,
/// the first byte that differs from it for HTTP/1.1. Returns the protocol and the bytes read.
/// An error for a connection that closes first (`UnexpectedEof`) or fails.
pub(super) async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<(Protocol, Vec<u8>)> {
    let mut read = Vec::with_capacity(FIRST_READ);
    loop {
        if io.read_buf(&mut read).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = read.len().min(PREFACE.len());
        if read[..n] != PREFACE[..n] {
            return Ok((Protocol::Http1, read));
        }
        if n == PREFACE.len() {
            return Ok((Protocol::Http2, read));
        }
        // A prefix of the preface (a client writing it in pieces): read on. `read_buf` grows
        // the vector only if it is full, which needs FIRST_READ bytes that all match.
    }
}

/// Bytes read from a connection to tell its protocol, to be read again first. Handed out by
/// the connection's one I/O wrapper (`Tracked`), rather than by a wrapper of its own: every
/// read of a keep-alive connection would go through both (about 45 instructions a request).
pub(super) struct Rewound {
    bytes: Vec<u8>,
    /// How far `bytes` has been handed out.
    at: usize,
}

impl Rewound {
    /// `bytes` to be read first; `None` when there are none.
    pub(super) fn new(bytes: Vec<u8>) -> Option<Self> {
        (!bytes.is_empty()).then_some(Rewound { bytes, at: 0 })
    }

    /// Hands out as much as `buf` takes; whether all is now handed out.
    pub(super) fn fill(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let n = buf.remaining().min(self.bytes.len() - self.at);
        buf.put_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        self.at == self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniffed(pieces: &[&[u8]]) -> (Protocol, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for piece in pieces {
                client.write_all(&piece).await.unwrap();
                client.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let (protocol, prefix) = sniff(&mut server).await.unwrap();
        drop(writer.await.unwrap());
        // What was read comes back first, then the rest of the stream.
        let mut all = vec![0u8; prefix.len()];
        if let Some(mut rewound) = Rewound::new(prefix) {
            // In two pieces, as a small read buffer takes it.
            let half = all.len() / 2;
            let (first, second) = all.split_at_mut(half);
            assert_eq!(
                rewound.fill(&mut ReadBuf::new(first)),
                half == 0 || second.is_empty()
            );
            assert!(rewound.fill(&mut ReadBuf::new(second)));
        }
        server.read_to_end(&mut all).await.unwrap();
        (protocol, all)
    }

    #[tokio::test]
    async fn http1_is_told_at_its_first_byte_and_its_bytes_come_back() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(sniffed(&[head]).await, (Protocol::Http1, head.to_vec()));
        // "P" of a POST matches the preface's first byte: told at the second.
        let post = b"POST / HTTP/1.1\r\n\r\n";
        assert_eq!(
            sniffed(&[b"P", b"OST / HTTP/1.1\r\n\r\n"]).await.0,
            Protocol::Http1
        );
        assert_eq!(sniffed(&[post]).await.1, post.to_vec());
    }

    #[tokio::test]
    async fn the_preface_in_pieces_is_http2() {
        let mut all = PREFACE.to_vec();
        all.extend_from_slice(b"\0\0\0\x04\0\0\0\0\0");
        let got = sniffed(&[&PREFACE[..3], &PREFACE[3..20], &all[20..]]).await;
        assert_eq!(got, (Protocol::Http2, all));
    }

    #[tokio::test]
    async fn a_connection_closed_before_it_tells_is_an_error() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&PREFACE[..10]).await.unwrap();
        drop(client);
        let err = sniff(&mut server).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
