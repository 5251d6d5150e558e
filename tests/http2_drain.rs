//! The HTTP/2 and TLS deadlines of `cluster::http::serve`, in-process on 127.0.0.1: a client
//! that ignores GOAWAY and keeps opening streams is closed at `max_drain`, and a TLS client
//! that never finishes its handshake is dropped at the handshake timeout. Both clients are
//! written by hand (raw HTTP/2 frames, raw TLS bytes), since no well-behaved client library
//! misbehaves this way.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cluster::http::http_body_util::Full;
use cluster::http::hyper::body::{Bytes, Incoming};
use cluster::http::hyper::{Request, Response};
use cluster::http::{CancellationToken, DrainOptions, ServeStats, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::time::Instant;

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// Starts `serve` on a free loopback port: its address, its shutdown token, its task.
async fn server(
    options: DrainOptions,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<ServeStats>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, hello, shutdown.clone(), options));
    (addr, shutdown, task)
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;

/// One HTTP/2 frame: its 9-byte header, then `payload`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// What the server sent the raw client, as it read it.
#[derive(Default)]
struct Seen {
    /// Response HEADERS frames.
    responses: AtomicU64,
    /// Responses that came after the first GOAWAY.
    responses_after_goaway: AtomicU64,
    goaway: AtomicBool,
}

#[tokio::test]
async fn a_client_that_ignores_goaway_is_closed_at_max_drain() {
    const MAX_DRAIN: Duration = Duration::from_secs(1);
    let options = DrainOptions::new()
        .max_drain(MAX_DRAIN)
        .quiet_period(Duration::from_millis(200));
    let (addr, shutdown, task) = server(options).await;

    let (mut read, write) = TcpStream::connect(addr).await.unwrap().into_split();
    let write = Arc::new(Mutex::new(write));
    {
        let mut w = write.lock().await;
        w.write_all(PREFACE).await.unwrap();
        w.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        // A connection window big enough for every response this test can get.
        w.write_all(&frame(WINDOW_UPDATE, 0, 0, &(1u32 << 30).to_be_bytes()))
            .await
            .unwrap();
    }
    let seen = Arc::new(Seen::default());
    // Reads frames until the server closes; acknowledges its SETTINGS, and nothing else: not
    // the PING that would let the server send its final GOAWAY.
    let reader = {
        let (seen, write) = (Arc::clone(&seen), Arc::clone(&write));
        tokio::spawn(async move {
            let mut header = [0u8; 9];
            loop {
                if read.read_exact(&mut header).await.is_err() {
                    return Instant::now();
                }
                let len = usize::from(header[0]) << 16
                    | usize::from(header[1]) << 8
                    | usize::from(header[2]);
                let mut payload = vec![0u8; len];
                if read.read_exact(&mut payload).await.is_err() {
                    return Instant::now();
                }
                match header[3] {
                    SETTINGS if header[4] & 0x1 == 0 => {
                        let ack = frame(SETTINGS, 0x1, 0, &[]);
                        let _ = write.lock().await.write_all(&ack).await;
                    }
                    GOAWAY => seen.goaway.store(true, Ordering::SeqCst),
                    HEADERS => {
                        seen.responses.fetch_add(1, Ordering::SeqCst);
                        if seen.goaway.load(Ordering::SeqCst) {
                            seen.responses_after_goaway.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    _ => {}
                }
            }
        })
    };
    // A new stream every 10 ms, GOAWAY or not (`GET /`, from HPACK's static table), for at
    // most 10 s or until the server closes.
    let writer = {
        let write = Arc::clone(&write);
        tokio::spawn(async move {
            let request = [0x82, 0x86, 0x84];
            let mut stream = 1u32;
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                let headers = frame(HEADERS, 0x5, stream, &request);
                if write.lock().await.write_all(&headers).await.is_err() {
                    return stream;
                }
                stream += 2;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stream
        })
    };
    // Served normally first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.responses.load(Ordering::SeqCst) < 5 {
        assert!(Instant::now() < deadline, "no responses to the raw client");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain_started = Instant::now();
    shutdown.cancel();
    let closed = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the server did not close the connection within 10 s")
        .unwrap();
    let took = closed - drain_started;
    let streams = writer.await.unwrap();
    let stats = task.await.unwrap().unwrap();
    eprintln!(
        "closed {took:?} after the drain began; {} responses, {} after the GOAWAY; {} \
         streams opened; {stats:?}",
        seen.responses.load(Ordering::SeqCst),
        seen.responses_after_goaway.load(Ordering::SeqCst),
        streams / 2
    );
    assert!(
        seen.goaway.load(Ordering::SeqCst),
        "no GOAWAY before the close"
    );
    // The first GOAWAY says "no new streams" but names no last one: streams opened after it
    // are still served, until max_drain ends the connection.
    assert!(seen.responses_after_goaway.load(Ordering::SeqCst) > 0);
    assert!(
        took >= MAX_DRAIN - Duration::from_millis(20),
        "closed after {took:?}, before max_drain"
    );
    assert!(
        took <= MAX_DRAIN + Duration::from_millis(1500),
        "closed after {took:?}, long after max_drain"
    );
    assert_eq!(stats.aborted, 1, "{stats:?}");
    assert_eq!(stats.http2_connections, 1, "{stats:?}");
    // The aborted connection's streams are counted too, each one answered at least.
    assert!(
        stats.requests >= seen.responses.load(Ordering::SeqCst),
        "{stats:?}"
    );
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn a_tls_handshake_that_never_finishes_is_dropped_at_its_timeout() {
    use cluster::http::TlsOptions;

    const HANDSHAKE: Duration = Duration::from_millis(400);
    let dir = std::env::temp_dir().join(format!("cluster-tls-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = TlsOptions::from_pem(&cert_path, &key_path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let (addr, shutdown, task) =
        server(DrainOptions::new().tls(tls.handshake_timeout(HANDSHAKE))).await;

    // One client sends nothing; the other the first bytes of a ClientHello whose record
    // header announces 200 bytes.
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
    ])
    .await
    .unwrap();
    let connected = Instant::now();
    let closed_after = |mut stream: TcpStream| async move {
        let mut buf = [0u8; 64];
        // EOF or a reset: either way the server dropped it. Anything read first would be
        // the server answering a handshake that cannot have finished.
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("not closed within 10 s");
        assert!(matches!(read, Ok(0) | Err(_)), "read {read:?}");
        connected.elapsed()
    };
    let (silent, half) = tokio::join!(closed_after(silent), closed_after(half));
    eprintln!("silent client dropped after {silent:?}, half a ClientHello after {half:?}");
    for took in [silent, half] {
        assert!(
            took >= HANDSHAKE - Duration::from_millis(20),
            "dropped after {took:?}"
        );
        assert!(
            took <= HANDSHAKE + Duration::from_secs(1),
            "dropped after {took:?}"
        );
    }
    shutdown.cancel();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.tls_handshake_timeouts, 2, "{stats:?}");
    assert_eq!(stats.requests, 0, "{stats:?}");
}
