//! Unit tests of the parts of the drain that need no socket.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::{Empty, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::header::CONNECTION;
use tokio::time::Instant;

use super::deadline::{Deadlines, Expired};
use super::drain::{ConnState, is_clients_last};
use super::options::DrainOptions;

/// Whether a bodiless request with these `Connection` headers ends the client's input.
fn last(version: hyper::Version, connection: &[&str]) -> bool {
    last_among(version, connection, 0)
}

/// The same, the `Connection` headers coming after `others` other headers.
fn last_among(version: hyper::Version, connection: &[&str], others: usize) -> bool {
    let mut builder = Request::builder().version(version).uri("/");
    for i in 0..others {
        builder = builder.header(format!("x-other-{i}"), "close");
    }
    for value in connection {
        builder = builder.header(CONNECTION, *value);
    }
    is_clients_last(&builder.body(Empty::<Bytes>::new()).unwrap_or_default())
}

#[test]
fn a_close_asked_by_the_client_ends_its_input() {
    const HTTP_10: hyper::Version = hyper::Version::HTTP_10;
    const HTTP_11: hyper::Version = hyper::Version::HTTP_11;
    assert!(last(HTTP_11, &["close"]));
    assert!(last(HTTP_11, &["Close"]));
    assert!(last(HTTP_11, &["Upgrade, CLOSE"]));
    assert!(last(HTTP_11, &["te", "close"]));
    assert!(last(HTTP_10, &[]));
    assert!(!last(HTTP_10, &["keep-alive"]));
    assert!(!last(HTTP_11, &[]));
    assert!(!last(HTTP_11, &["keep-alive"]));
    assert!(!last(HTTP_11, &["closed"]));
    // A body may still be arriving: the close has to linger for it.
    let upload = Request::builder()
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::from_static(b"data")))
        .unwrap_or_default();
    assert!(!is_clients_last(&upload));
}

#[test]
fn the_close_is_found_among_other_headers() {
    const HTTP_10: hyper::Version = hyper::Version::HTTP_10;
    const HTTP_11: hyper::Version = hyper::Version::HTTP_11;
    // Wherever the `Connection` header is among the others.
    for others in [1, 7, 30] {
        assert!(last_among(HTTP_11, &["close"], others), "{others}");
        assert!(last_among(HTTP_11, &["te", "close"], others), "{others}");
        assert!(last_among(HTTP_10, &[], others), "{others}");
        assert!(!last_among(HTTP_10, &["keep-alive"], others), "{others}");
        // Other headers that say `close` are not `Connection`.
        assert!(!last_among(HTTP_11, &[], others), "{others}");
        assert!(!last_among(HTTP_11, &["keep-alive"], others), "{others}");
    }
}

const SEC: Duration = Duration::from_secs(1);

/// A connection whose latest write found the socket full.
fn blocked(conn: &ConnState) {
    conn.write_blocked.store(true, Ordering::Relaxed);
}

/// A write that made progress.
fn progressed(conn: &ConnState) {
    conn.wrote.store(true, Ordering::Relaxed);
    conn.write_blocked.store(false, Ordering::Relaxed);
}

#[test]
fn a_stuck_write_expires_only_after_a_whole_timeout_without_progress() {
    let t0 = Instant::now();
    let conn = ConnState::new(t0, Arc::default());
    let mut deadlines = Deadlines::new(None, Some(2 * SEC), None, t0);
    assert_eq!(deadlines.next(), Some(t0 + 2 * SEC));
    progressed(&conn);
    blocked(&conn);
    // Progress since the last check: the stall counts from this check.
    assert_eq!(deadlines.check(&conn, t0 + 2 * SEC), None);
    assert_eq!(deadlines.next(), Some(t0 + 4 * SEC));
    assert_eq!(deadlines.check(&conn, t0 + 4 * SEC), Some(Expired::Write));
}

#[test]
fn progress_or_no_waiting_write_restarts_the_write_deadline() {
    let t0 = Instant::now();
    let conn = ConnState::new(t0, Arc::default());
    let mut deadlines = Deadlines::new(None, Some(SEC), None, t0);
    // Slow but moving: every period some bytes went out.
    for tick in 1..=5 {
        progressed(&conn);
        blocked(&conn);
        assert_eq!(deadlines.check(&conn, t0 + tick * SEC), None, "{tick}");
    }
    // Nothing waiting to be written (a handler producing its body slowly) is not a stall.
    conn.write_blocked.store(false, Ordering::Relaxed);
    for tick in 6..=8 {
        assert_eq!(deadlines.check(&conn, t0 + tick * SEC), None, "{tick}");
    }
}

#[test]
fn one_timer_serves_both_deadlines_at_the_shorter_period() {
    let t0 = Instant::now();
    let conn = ConnState::new(t0, Arc::default());
    let mut deadlines = Deadlines::new(Some(3 * SEC), Some(SEC), None, t0);
    assert_eq!(deadlines.next(), Some(t0 + SEC));
    // No head and no write: the header deadline is the one that passes, at 3 s, not 1 s.
    assert_eq!(deadlines.check(&conn, t0 + SEC), None);
    assert_eq!(deadlines.check(&conn, t0 + 2 * SEC), None);
    assert_eq!(deadlines.check(&conn, t0 + 3 * SEC), Some(Expired::Header));

    // A request under way keeps the header deadline away.
    let conn = ConnState::new(t0, Arc::default());
    let mut deadlines = Deadlines::new(Some(SEC), None, None, t0);
    conn.busy.store(1, Ordering::Relaxed);
    assert_eq!(deadlines.check(&conn, t0 + SEC), None);
    assert_eq!(deadlines.check(&conn, t0 + 2 * SEC), None);
    conn.busy.store(0, Ordering::Relaxed);
    conn.heads.store(1, Ordering::Relaxed);
    assert_eq!(deadlines.check(&conn, t0 + 3 * SEC), None);
    assert_eq!(deadlines.check(&conn, t0 + 4 * SEC), Some(Expired::Header));

    // Both off: no timer at all.
    assert_eq!(Deadlines::new(None, None, None, t0).next(), None);
}

#[test]
fn default_max_drain_ends_before_the_default_grace() {
    let options = DrainOptions::new();
    let grace = cluster_core::Options::new().grace();
    let max_drain = options.max_drain.unwrap_or(Duration::MAX);
    assert_eq!(max_drain, 4 * SEC);
    assert!(
        options.shutdown_delay + max_drain < grace,
        "{max_drain:?} vs {grace:?}"
    );
    assert_eq!(options.write_timeout, Some(30 * SEC));
    assert_eq!(options.header_read_timeout, Some(30 * SEC));
    assert_eq!(options.max_connections, None);
}

#[test]
fn deadline_and_cap_builders() {
    let options = DrainOptions::new()
        .write_timeout(2 * SEC)
        .max_connections(100)
        .max_drain(None);
    assert_eq!(options.write_timeout, Some(2 * SEC));
    assert_eq!(options.max_connections, Some(100));
    assert_eq!(options.max_drain, None);
    let options = options.write_timeout(None).max_connections(None);
    assert_eq!(options.write_timeout, None);
    assert_eq!(options.max_connections, None);
    // A cap of zero would never accept: it counts as one.
    assert_eq!(
        DrainOptions::new().max_connections(0).max_connections,
        Some(1)
    );
}

/// An axum `Router`, with state, served by `serve_tower` as it is: it answers its routes on a
/// keep-alive connection, and the server drains and counts them when told to stop.
#[tokio::test]
async fn serve_tower_serves_an_axum_router() -> std::io::Result<()> {
    use axum::Router;
    use axum::extract::State;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/",
            get(|State(name): State<&'static str>| async move { name }),
        )
        .with_state("hello from axum");
    let shutdown = super::CancellationToken::new();
    let server = tokio::spawn(super::serve_tower(
        listener,
        app,
        shutdown.clone(),
        DrainOptions::new().shutdown_delay(Duration::ZERO),
    ));

    let mut client = tokio::net::TcpStream::connect(addr).await?;
    // Two requests on one connection, the second asking for the close, then read it all.
    client
        .write_all(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await?;
    let mut answer = String::new();
    tokio::time::timeout(10 * SEC, client.read_to_string(&mut answer)).await??;
    // The first response's body ends where the second response begins.
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("\r\n\r\nhello from axumHTTP/1.1 404 Not Found\r\n"),
        "{answer}"
    );

    shutdown.cancel();
    let stats = tokio::time::timeout(10 * SEC, server)
        .await?
        .map_err(std::io::Error::other)??;
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.connections, 1);
    Ok(())
}

#[test]
fn a_request_expires_after_a_whole_timeout_under_way() {
    let t0 = Instant::now();
    let conn = ConnState::new(t0, Arc::default());
    let mut deadlines = Deadlines::new(None, None, Some(2 * SEC), t0);
    // Half the timeout: a stuck request ends within one and a half timeouts.
    assert_eq!(deadlines.next(), Some(t0 + SEC));
    // A request starts before the first check: seen under way from then on.
    conn.busy.store(1, Ordering::Relaxed);
    conn.heads.store(1, Ordering::Relaxed);
    assert_eq!(deadlines.check(&conn, t0 + SEC), None);
    assert_eq!(deadlines.check(&conn, t0 + 2 * SEC), None);
    assert_eq!(deadlines.check(&conn, t0 + 3 * SEC), Some(Expired::Request));
    // Counted once, not at every later check.
    assert_eq!(deadlines.check(&conn, t0 + 4 * SEC), None);

    // A new request on the connection starts the count again.
    conn.heads.store(2, Ordering::Relaxed);
    assert_eq!(deadlines.check(&conn, t0 + 5 * SEC), None);
    conn.heads.store(3, Ordering::Relaxed);
    assert_eq!(deadlines.check(&conn, t0 + 6 * SEC), None);
    assert_eq!(deadlines.check(&conn, t0 + 7 * SEC), None);
    // Idle (no request under way) never expires a request.
    conn.busy.store(0, Ordering::Relaxed);
    for s in 8..20 {
        assert_eq!(deadlines.check(&conn, t0 + s * SEC), None);
    }
}

/// Reads from `client` until `done` says the bytes so far are complete, or EOF.
async fn read_until(
    client: &mut tokio::net::TcpStream,
    done: impl Fn(&str) -> bool,
) -> std::io::Result<(String, bool)> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if done(&text) {
            return Ok((text, false));
        }
        let n = tokio::time::timeout(10 * SEC, client.read(&mut buf)).await??;
        if n == 0 {
            return Ok((String::from_utf8_lossy(&seen).into_owned(), true));
        }
        seen.extend_from_slice(&buf[..n]);
    }
}

/// A server with `request_timeout` whose `/` answers "ok", `/stuck` never answers, and
/// `/stream` sends one chunk of its body and then stalls.
async fn stuck_server(
    timeout: Duration,
) -> std::io::Result<(
    std::net::SocketAddr,
    super::CancellationToken,
    tokio::task::JoinHandle<std::io::Result<super::ServeStats>>,
)> {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/stuck", get(std::future::pending::<&'static str>))
        .route(
            "/stream",
            get(|| async {
                let first = one_chunk_then_stall(Bytes::from_static(b"first chunk"));
                Body::from_stream(first)
            }),
        );
    let shutdown = super::CancellationToken::new();
    let server = tokio::spawn(super::serve_tower(
        listener,
        app,
        shutdown.clone(),
        DrainOptions::new().request_timeout(timeout),
    ));
    Ok((addr, shutdown, server))
}

/// A stuck handler gets 503 at its request timeout and its connection goes on serving; a
/// response whose body stalls has its connection closed. Both are counted.
#[tokio::test]
async fn a_stuck_request_is_answered_503_at_its_timeout() -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;

    let timeout = Duration::from_millis(400);
    let (addr, shutdown, server) = stuck_server(timeout).await?;

    let mut client = tokio::net::TcpStream::connect(addr).await?;
    let asked = Instant::now();
    client
        .write_all(b"GET /stuck HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let (answer, eof) = read_until(&mut client, |t| t.contains("\r\n\r\n")).await?;
    let took = asked.elapsed();
    assert!(!eof, "{answer}");
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(
        took >= timeout && took < 3 * timeout,
        "answered after {took:?}"
    );
    // The connection serves on.
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let (answer, eof) = read_until(&mut client, |t| t.ends_with("ok")).await?;
    assert!(
        !eof && answer.starts_with("HTTP/1.1 200 OK\r\n"),
        "{answer}"
    );

    // Its head and first chunk out, the body stalls: the connection is closed.
    let mut client = tokio::net::TcpStream::connect(addr).await?;
    client
        .write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let (answer, eof) = read_until(&mut client, |_| false).await?;
    assert!(eof, "{answer}");
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.contains("first chunk"),
        "{answer}"
    );

    shutdown.cancel();
    let stats = tokio::time::timeout(10 * SEC, server)
        .await?
        .map_err(std::io::Error::other)??;
    assert_eq!(stats.requests_timed_out, 2, "{stats:?}");
    Ok(())
}

/// A stream of one chunk that then never ends.
fn one_chunk_then_stall(
    chunk: Bytes,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let mut first = Some(chunk);
    futures_util::stream::poll_fn(move |_| match first.take() {
        Some(chunk) => std::task::Poll::Ready(Some(Ok(chunk))),
        None => std::task::Poll::Pending,
    })
}

/// The same over HTTP/2, where each stream keeps its own timer (its response future is then
/// boxed, unlike a stream's without `request_timeout`): a stuck handler's stream gets 503 at
/// the timeout while the connection's other streams are served, and a stream whose body
/// stalls is reset, not its connection.
#[tokio::test]
async fn a_stuck_http2_stream_is_answered_503_at_its_timeout_and_its_connection_serves_on()
-> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let timeout = Duration::from_millis(400);
    let (addr, shutdown, server) = stuck_server(timeout).await?;

    let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await?);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
    let connection = tokio::spawn(connection);
    let get = |path: &str| Request::get(format!("http://{addr}{path}")).body(Empty::<Bytes>::new());

    let asked = Instant::now();
    let stuck = sender.send_request(get("/stuck")?);
    // Another stream on the same connection, served while the first one hangs.
    let ok = tokio::time::timeout(10 * SEC, sender.clone().send_request(get("/")?)).await??;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.into_body().collect().await?.to_bytes(), "ok");
    let stuck = tokio::time::timeout(10 * SEC, stuck).await??;
    let took = asked.elapsed();
    assert_eq!(stuck.status(), 503);
    assert!(
        took >= timeout && took < 3 * timeout,
        "answered after {took:?}"
    );

    // Its head and first chunk out, the body stalls: the stream is reset, the connection
    // serves on.
    let stream =
        tokio::time::timeout(10 * SEC, sender.clone().send_request(get("/stream")?)).await??;
    assert_eq!(stream.status(), 200);
    let mut body = stream.into_body();
    let first = tokio::time::timeout(10 * SEC, body.frame()).await?;
    let first = first
        .ok_or("no first chunk")??
        .into_data()
        .map_err(|_| "not data")?;
    assert_eq!(first, "first chunk");
    let rest = tokio::time::timeout(10 * SEC, body.frame()).await?;
    assert!(
        matches!(rest, Some(Err(_))),
        "the stalled body ended with {rest:?}, not a reset"
    );
    let again = tokio::time::timeout(10 * SEC, sender.send_request(get("/")?)).await??;
    assert_eq!(again.status(), 200);

    shutdown.cancel();
    let stats = tokio::time::timeout(10 * SEC, server).await???;
    assert_eq!(stats.requests_timed_out, 2, "{stats:?}");
    assert_eq!(stats.http2_connections, 1, "{stats:?}");
    connection.abort();
    Ok(())
}
