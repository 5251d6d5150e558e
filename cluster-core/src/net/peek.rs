//! `Balance::StickyKey`'s read of a connection's first bytes: `MSG_PEEK`, so that every
//! byte stays in the socket for the worker, in a task per connection, bounded in size
//! ([`PEEK_MAX`]) and time (`sticky_peek_timeout`).

use std::net::TcpStream;
use std::os::fd::OwnedFd;

use super::sticky_key::{KeyRules, PEEK_MAX, find};

/// Peeks at `fd` until its bytes settle the key, the buffer is full, the client closes its
/// side or `sticky_peek_timeout` passes, and gives the connection back with the key found
/// (`None`: route it by load). Never fails: a connection that cannot be peeked at is handed
/// out without a key, and its worker sees whatever is wrong with it.
pub(super) async fn peek_key(fd: OwnedFd, rules: &KeyRules) -> (OwnedFd, Option<u64>) {
    let stream = TcpStream::from(fd);
    // The accepted socket is blocking; the worker sets its own copy non-blocking anyway
    // (the flag belongs to the open file, which both descriptors share).
    if let Err(e) = stream.set_nonblocking(true) {
        tracing::debug!("sticky-key: cannot peek at a connection ({e}): routed by load");
        return (stream.into(), None);
    }
    let watched = match crate::sys::watch_stream(stream) {
        Ok(watched) => watched,
        Err((stream, e)) => {
            tracing::debug!("sticky-key: cannot watch a connection ({e}): routed by load");
            return (stream.into(), None);
        }
    };
    let mut buf = vec![0u8; PEEK_MAX];
    let mut key = None;
    let read = async {
        loop {
            let Ok(mut ready) = watched.readable().await else {
                return;
            };
            match ready.try_io(|s| s.get_ref().peek(&mut buf)) {
                // Readiness was stale: wait for the next edge.
                Err(_would_block) => continue,
                // The client closed its side, or the connection failed: nothing more to read.
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(n)) => {
                    let found = find(rules, &buf[..n]);
                    key = found.key;
                    if found.settled || n == buf.len() {
                        return;
                    }
                    // The bytes stay queued, so the socket stays readable: wait for more
                    // to arrive instead (tokio clears only if no new edge came since).
                    ready.clear_ready();
                }
            }
        }
    };
    let _ = tokio::time::timeout(rules.peek_timeout, read).await;
    (watched.into_inner().into(), key)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;

    fn rules() -> KeyRules {
        KeyRules {
            cookie: Some("sid".into()),
            header: None,
            proxy: false,
            peek_timeout: Duration::from_millis(300),
        }
    }

    fn pair() -> (std::net::TcpStream, OwnedFd) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server.into())
    }

    #[tokio::test]
    async fn a_key_in_pieces_is_found_and_every_byte_stays_for_the_worker() {
        let (mut client, server) = pair();
        let request = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: sid=42\r\n\r\n";
        let writer = std::thread::spawn(move || {
            for piece in request.chunks(7) {
                client.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            client
        });
        let started = std::time::Instant::now();
        let (fd, key) = peek_key(server, &rules()).await;
        let _client = writer.join().unwrap();
        assert_eq!(key, find(&rules(), request).key);
        assert!(key.is_some());
        assert!(started.elapsed() < Duration::from_millis(300));
        let mut left = vec![0u8; 100];
        let stream = TcpStream::from(fd);
        stream.set_nonblocking(false).unwrap();
        let n = std::io::Read::read(&mut &stream, &mut left).unwrap();
        assert_eq!(&left[..n], request);
    }

    #[tokio::test]
    async fn a_silent_client_is_held_only_the_timeout() {
        let (_client, server) = pair();
        let started = std::time::Instant::now();
        let (_fd, key) = peek_key(server, &rules()).await;
        let held = started.elapsed();
        assert_eq!(key, None);
        assert!(held >= Duration::from_millis(300), "{held:?}");
        assert!(held < Duration::from_secs(2), "{held:?}");
    }
}
