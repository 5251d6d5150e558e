//! `cluster::http::serve` drains without losing requests: real sockets on 127.0.0.1 and a
//! hand-written HTTP/1.1 client, so that keep-alive and the moment each byte is sent are
//! under the test's control.
#![cfg(feature = "http")]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cluster::http::http_body_util::combinators::BoxBody;
use cluster::http::http_body_util::{BodyExt, Full};
use cluster::http::hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use cluster::http::hyper::{Request, Response, StatusCode};
use cluster::http::{
    Accept, CancellationToken, DrainOptions, PeerAddr, Phase, Readiness, ServeStats, serve,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

/// Bound on any single wait that should be quick.
const STEP: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match timeout(STEP, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out: {what}"),
    }
}

// ---------------------------------------------------------------------------------------
// A raw HTTP/1.1 client
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }
}

#[derive(Debug)]
struct Client<S> {
    stream: S,
    buf: Vec<u8>,
}

impl Client<TcpStream> {
    async fn connect(addr: SocketAddr) -> io::Result<Self> {
        Ok(Client::new(TcpStream::connect(addr).await?))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(stream: S) -> Self {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, path: &str) -> io::Result<()> {
        self.send_raw(&request(path)).await
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads more input; EOF is an error here, since a response is still expected.
    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "EOF before a full response",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn read_response(&mut self) -> io::Result<Reply> {
        let head_end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| io::Error::other("the test server always sends content-length"))?;
        let body_start = head_end + 4;
        while self.buf.len() < body_start + length {
            self.fill().await?;
        }
        let body = self.buf[body_start..body_start + length].to_vec();
        self.buf.drain(..body_start + length);
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Expects a clean close: EOF with nothing more, not a reset.
    async fn read_eof(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk).await? {
            0 if self.buf.is_empty() => Ok(()),
            0 => Err(io::Error::other("unread bytes before EOF")),
            n => Err(io::Error::other(format!(
                "{n} more bytes instead of EOF: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ))),
        }
    }
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

// ---------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------

/// The size of `/big`: far more than a loopback connection's socket buffers hold (a few
/// MiB each way), so that a client that does not read leaves the server's write stuck.
const BIG: usize = 32 << 20;
/// The size of each of `/big`'s chunks.
const CHUNK: usize = 64 << 10;

/// `/big`'s body: [`BIG`] bytes in chunks, produced only as hyper has room to write them.
/// Reports on drop how many bytes it handed over, so a test learns when (and whether before
/// its end) the server gave up on the response.
struct BigBody {
    left: usize,
    chunk: Bytes,
    done: mpsc::UnboundedSender<usize>,
}

impl Body for BigBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let n = self.left.min(CHUNK);
        if n == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left as u64)
    }
}

impl Drop for BigBody {
    fn drop(&mut self) {
        let _ = self.done.send(BIG - self.left);
    }
}

/// The app: `/` answers at once, `/slow` after 300 ms, `/work` after 2 ms, `/hang` after
/// 10 s, `/big` with [`BIG`] bytes (reporting on `big_done` when its body is dropped),
/// `/readyz` 503 when not ready, `/peer` its peer's address. Each request's path is reported
/// on `started` when it reaches the handler.
type Answer = std::pin::Pin<
    Box<dyn Future<Output = Result<Response<BoxBody<Bytes, Infallible>>, Infallible>> + Send>,
>;

fn app(
    readiness: Readiness,
    started: mpsc::UnboundedSender<String>,
    big_done: mpsc::UnboundedSender<usize>,
) -> impl Fn(Request<Incoming>) -> Answer + Send + Sync + 'static {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    move |req: Request<Incoming>| {
        let path = req.uri().path().to_string();
        let _ = started.send(path.clone());
        let ready = readiness.is_ready();
        let peer = req
            .extensions()
            .get::<PeerAddr<SocketAddr>>()
            .map(|p| p.0.to_string());
        if path == "/big" {
            let body = BigBody {
                left: BIG,
                chunk: chunk.clone(),
                done: big_done.clone(),
            };
            return Box::pin(std::future::ready(Ok(Response::new(body.boxed()))));
        }
        Box::pin(async move {
            let (status, body) = match path.as_str() {
                "/slow" => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    (StatusCode::OK, "slow".to_string())
                }
                "/work" => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    (StatusCode::OK, "work".to_string())
                }
                "/hang" => {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    (StatusCode::OK, "hang".to_string())
                }
                "/readyz" if !ready => (StatusCode::SERVICE_UNAVAILABLE, "draining".to_string()),
                "/peer" => (StatusCode::OK, peer.unwrap_or_default()),
                _ => (StatusCode::OK, "ok".to_string()),
            };
            Ok(Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(body)).boxed())
                .unwrap_or_default())
        })
    }
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    readiness: Readiness,
    started: mpsc::UnboundedReceiver<String>,
    big_done: mpsc::UnboundedReceiver<usize>,
    handle: JoinHandle<io::Result<ServeStats>>,
}

impl Server {
    async fn start(options: DrainOptions) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        Server::on(listener, addr, CancellationToken::new(), options)
    }

    fn on<A: Accept>(
        listener: A,
        addr: SocketAddr,
        shutdown: CancellationToken,
        options: DrainOptions,
    ) -> Server {
        let readiness = Readiness::new();
        let (tx, started) = mpsc::unbounded_channel();
        let (big_tx, big_done) = mpsc::unbounded_channel();
        let handle = tokio::spawn(serve(
            listener,
            app(readiness.clone(), tx, big_tx),
            shutdown.clone(),
            options.readiness(&readiness),
        ));
        Server {
            addr,
            shutdown,
            readiness,
            started,
            big_done,
            handle,
        }
    }

    async fn started(&mut self) -> String {
        within("a request reaching the handler", self.started.recv())
            .await
            .expect("the handler is alive")
    }

    async fn stopped(self) -> ServeStats {
        within("serve to return", self.handle)
            .await
            .expect("serve does not panic")
            .expect("serve succeeds")
    }
}

async fn ok_response<S: AsyncRead + AsyncWrite + Unpin>(client: &mut Client<S>) -> Reply {
    let reply = within("a response", client.read_response())
        .await
        .expect("a full response");
    assert_eq!(reply.status, 200, "{reply:?}");
    reply
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn in_flight_request_finishes_after_shutdown() {
    let mut server = Server::start(DrainOptions::new()).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    client.send("/slow").await.unwrap();
    assert_eq!(server.started().await, "/slow");
    server.shutdown.cancel();

    let reply = ok_response(&mut client).await;
    assert_eq!(reply.body, b"slow");
    assert!(
        reply.closes(),
        "the drain closes through the response: {reply:?}"
    );
    within("EOF", client.read_eof()).await.unwrap();

    let stats = server.stopped().await;
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.closed_after_response, 1);
    assert_eq!(stats.closed_idle, 0);
}

#[tokio::test]
async fn next_request_on_keep_alive_gets_connection_close() {
    let server = Server::start(DrainOptions::new()).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    client.send("/").await.unwrap();
    let first = ok_response(&mut client).await;
    assert!(!first.closes(), "keep-alive before shutdown: {first:?}");

    server.shutdown.cancel();
    within("draining", server.readiness.reached(Phase::Draining)).await;
    client.send("/").await.unwrap();
    let second = ok_response(&mut client).await;
    assert!(second.closes(), "{second:?}");
    within("EOF", client.read_eof()).await.unwrap();
    // The close was the server's idea, so it lingers: the client may have sent its next
    // request already.
    assert!(
        !server_socket_gone(&mut client, Duration::from_millis(300)).await,
        "the server reset a connection it closed on its own initiative"
    );
    drop(client);

    let stats = server.stopped().await;
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.closed_after_response, 1);
    assert_eq!(stats.closed_idle, 0);
}

#[tokio::test]
async fn idle_connection_closes_after_quiet_period() {
    let quiet = Duration::from_millis(400);
    let server = Server::start(DrainOptions::new().quiet_period(quiet)).await;
    // One connection that served a request, one that never sent anything.
    let mut used = Client::connect(server.addr).await.unwrap();
    used.send("/").await.unwrap();
    ok_response(&mut used).await;
    let mut fresh = Client::connect(server.addr).await.unwrap();
    // The fresh connection must be accepted before shutdown, or it is a queued one.
    let mut probe = Client::connect(server.addr).await.unwrap();
    probe.send("/").await.unwrap();
    ok_response(&mut probe).await;
    drop(probe);

    let fired = Instant::now();
    server.shutdown.cancel();
    for client in [&mut used, &mut fresh] {
        within("EOF after the quiet period", client.read_eof())
            .await
            .unwrap();
        let waited = fired.elapsed();
        assert!(
            waited >= quiet / 2,
            "closed after {waited:?}, before half of {quiet:?}"
        );
        assert!(
            waited <= quiet + Duration::from_millis(1500),
            "closed after {waited:?}, long past {quiet:?}"
        );
    }
    drop((used, fresh));
    let stats = server.stopped().await;
    assert_eq!(stats.closed_idle, 2, "{stats:?}");
}

// Single-threaded so that no connection task runs between the client's writes and the
// token firing: the early requests really sit unread in their sockets when draining starts.
#[tokio::test]
async fn request_sent_as_drain_starts_is_answered() {
    let server = Server::start(DrainOptions::new()).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut client = Client::connect(server.addr).await.unwrap();
        client.send("/").await.unwrap();
        ok_response(&mut client).await;
        clients.push(client);
    }
    // Half write just before the token fires (the request sits unread in the socket when
    // draining starts), half just after.
    let (before, after) = clients.split_at_mut(10);
    for client in before.iter_mut() {
        client.send("/").await.unwrap();
    }
    server.shutdown.cancel();
    for client in after.iter_mut() {
        client.send("/").await.unwrap();
    }
    for client in &mut clients {
        let reply = ok_response(client).await;
        assert!(reply.closes(), "{reply:?}");
        within("EOF", client.read_eof()).await.unwrap();
    }
    drop(clients);
    let stats = server.stopped().await;
    assert_eq!(stats.requests, 40);
    assert_eq!(stats.closed_after_response, 20);
    assert_eq!(stats.closed_idle, 0);
}

#[tokio::test]
async fn pipelined_requests_get_one_answer_then_a_clean_close() {
    let mut server = Server::start(DrainOptions::new()).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    client.send("/").await.unwrap();
    ok_response(&mut client).await;
    assert_eq!(server.started().await, "/");

    server.shutdown.cancel();
    within("draining", server.readiness.reached(Phase::Draining)).await;
    // Two requests in one write: hyper reads both at once.
    let mut two = request("/slow");
    two.extend_from_slice(&request("/"));
    client.send_raw(&two).await.unwrap();
    // The first is answered and says the connection closes; the second was never
    // processed (the client knows it may retry it), and the close is a FIN, not a reset.
    let reply = ok_response(&mut client).await;
    assert_eq!(reply.body, b"slow");
    assert!(reply.closes(), "{reply:?}");
    within("EOF", client.read_eof()).await.unwrap();
    drop(client);

    let stats = server.stopped().await;
    assert_eq!(stats.requests, 2);
}

/// A request sent while the previous one is being handled stays unread in the socket when
/// the server closes after its response; closing then would make the kernel reset the
/// connection, and a reset can destroy the response before the client reads it.
#[tokio::test]
async fn request_behind_a_closing_response_gets_no_reset() {
    let mut server = Server::start(DrainOptions::new()).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    client.send("/slow").await.unwrap();
    assert_eq!(server.started().await, "/slow");
    server.shutdown.cancel();
    client.send("/").await.unwrap();
    let reply = ok_response(&mut client).await;
    assert_eq!(reply.body, b"slow");
    assert!(reply.closes(), "{reply:?}");
    within("EOF", client.read_eof()).await.unwrap();
    // The request behind it is still unread: the server must be reading and discarding,
    // not gone, or the kernel resets the connection (which, on a real network, can overtake
    // and destroy the response).
    assert!(
        !server_socket_gone(&mut client, Duration::from_millis(300)).await,
        "the server closed with the next request unread"
    );
    drop(client);
    let stats = server.stopped().await;
    assert_eq!(stats.requests, 1);
}

/// A client that never finishes its request head (slowloris) is cut off once a whole
/// header read timeout passes without a request, even while it keeps trickling bytes.
#[tokio::test]
async fn unfinished_request_head_is_closed_after_the_header_read_timeout() {
    let period = Duration::from_millis(150);
    let server = Server::start(DrainOptions::new().header_read_timeout(period)).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    client
        .send_raw(b"GET / HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    let start = Instant::now();
    let closed = async {
        let mut chunk = [0u8; 64];
        loop {
            // A byte now and then, never the end of the head.
            let _ = client.stream.write_all(b"s").await;
            match timeout(Duration::from_millis(50), client.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => panic!("a response to an unfinished head: {n} bytes"),
                Err(_) => {}
            }
        }
    };
    within("the server to close the connection", closed).await;
    assert!(start.elapsed() >= period, "{:?}", start.elapsed());
}

/// A keep-alive connection idle for a whole period is closed too; one that keeps sending
/// requests, or whose request takes longer than the period, is not.
#[tokio::test]
async fn header_read_timeout_spares_busy_connections_and_closes_idle_ones() {
    let period = Duration::from_millis(150);
    let server = Server::start(DrainOptions::new().header_read_timeout(period)).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    let start = Instant::now();
    // Requests 50 ms apart for more than three periods.
    while start.elapsed() < 4 * period {
        client.send("/").await.unwrap();
        let reply = ok_response(&mut client).await;
        assert!(!reply.closes(), "{reply:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A request that takes 300 ms, twice the period.
    client.send("/slow").await.unwrap();
    assert_eq!(ok_response(&mut client).await.body, b"slow");
    // Then nothing: the idle connection goes.
    within("EOF on the idle connection", client.read_eof())
        .await
        .unwrap();
}

/// With the timeout off, an unfinished head keeps its connection.
#[tokio::test]
async fn header_read_timeout_none_keeps_unfinished_heads() {
    let server = Server::start(DrainOptions::new().header_read_timeout(None)).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    client
        .send_raw(b"GET / HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    let mut chunk = [0u8; 64];
    let read = timeout(Duration::from_millis(500), client.stream.read(&mut chunk)).await;
    assert!(read.is_err(), "the connection ended: {read:?}");
    client.send_raw(b"st\r\n\r\n").await.unwrap();
    assert_eq!(ok_response(&mut client).await.body, b"ok");
}

/// Probes a connection the server has closed on its side: writes a byte at a time until the
/// kernel answers with a reset, which it does only once the server's socket is gone (a
/// lingering close reads and discards instead). True if that happens within `within`.
async fn server_socket_gone(client: &mut Client<TcpStream>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if client.stream.write_all(b"x").await.is_err() {
            return true;
        }
        let mut chunk = [0u8; 16];
        // Anything but an error (EOF again, the FIN came long ago; or nothing yet) means
        // probe again.
        let read = timeout(Duration::from_millis(20), client.stream.read(&mut chunk)).await;
        if let Ok(Err(_)) = read {
            return true;
        }
    }
    false
}

/// A client that asks for the close with a request that has no body sends nothing more
/// (RFC 9112, section 9.6): the server closes at once instead of lingering until the client
/// closes too, which would cost it a wake-up and a timer per connection.
#[tokio::test]
async fn client_closing_request_gets_an_immediate_close() {
    let server = Server::start(DrainOptions::new()).await;
    for head in [
        "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: test\r\nConnection: TE, Close\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: test\r\n\r\n",
    ] {
        let mut client = Client::connect(server.addr).await.unwrap();
        client.send_raw(head.as_bytes()).await.unwrap();
        let reply = ok_response(&mut client).await;
        assert_eq!(reply.body, b"ok");
        within("EOF", client.read_eof()).await.unwrap();
        // The client keeps its socket open: a lingering server would hold its own for
        // seconds, reading what comes; one that closed at once answers with a reset.
        assert!(
            server_socket_gone(&mut client, Duration::from_secs(1)).await,
            "the server kept the connection of {head:?} open after its response"
        );
    }
}

/// A client that asks for the close but whose body the handler left unread: more of the
/// body may still come, so the close lingers and the response is not destroyed by a reset.
#[tokio::test]
async fn client_closing_request_with_unread_body_gets_no_reset() {
    let server = Server::start(DrainOptions::new()).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    let body = vec![b'x'; 64 * 1024];
    let head = format!(
        "POST / HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        2 * body.len()
    );
    client.send_raw(head.as_bytes()).await.unwrap();
    client.send_raw(&body).await.unwrap();
    let reply = ok_response(&mut client).await;
    assert!(reply.closes(), "{reply:?}");
    within("EOF", client.read_eof()).await.unwrap();
    // The rest of the body is still to come: the server must be reading and discarding it,
    // not gone (the kernel would reset the connection, and a reset that overtakes a
    // response on a real network destroys it).
    let _ = client.send_raw(&body).await;
    assert!(
        !server_socket_gone(&mut client, Duration::from_millis(300)).await,
        "the server closed without reading the rest of the body"
    );
}

/// A response that ends its connection before the request's body was read (an upload the
/// handler refuses, say): the unread body must not make the close a reset, which could
/// destroy the response before the client reads it (RFC 9112, section 9.6).
#[tokio::test]
async fn unread_request_body_gets_no_reset() {
    let mut server = Server::start(DrainOptions::new()).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    client.send("/").await.unwrap();
    ok_response(&mut client).await;
    assert_eq!(server.started().await, "/");
    server.shutdown.cancel();
    within("draining", server.readiness.reached(Phase::Draining)).await;

    // The handler of `/` answers without reading the body; part of it is sent first, the
    // rest once the response is out.
    let body = vec![b'x'; 64 * 1024];
    let head = format!(
        "POST / HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        2 * body.len()
    );
    client.send_raw(head.as_bytes()).await.unwrap();
    client.send_raw(&body).await.unwrap();
    assert_eq!(server.started().await, "/");
    let reply = ok_response(&mut client).await;
    assert!(reply.closes(), "{reply:?}");
    within("EOF", client.read_eof()).await.unwrap();
    // The rest of the body comes after the response: the server must be reading and
    // discarding it, not gone (the kernel would answer it with a reset).
    let _ = client.send_raw(&body).await;
    assert!(
        !server_socket_gone(&mut client, Duration::from_millis(300)).await,
        "the server closed with the body unread"
    );
    drop(client);
    server.stopped().await;
}

#[tokio::test]
async fn connections_in_the_listen_queue_are_served() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Connected (the kernel completed the handshake) and request sent, but not accepted:
    // the server starts with its token already fired.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut client = Client::connect(addr).await.unwrap();
        client.send("/").await.unwrap();
        clients.push(client);
    }
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let server = Server::on(listener, addr, shutdown, DrainOptions::new());
    for client in &mut clients {
        let reply = ok_response(client).await;
        assert!(reply.closes(), "{reply:?}");
        within("EOF", client.read_eof()).await.unwrap();
    }
    drop(clients);
    let stats = server.stopped().await;
    assert_eq!(stats.queued, 8);
    assert_eq!(stats.connections, 8);
    assert_eq!(stats.requests, 8);
    // Drained: nobody accepts any more.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn unix_listener_queue_is_served() {
    let dir = std::env::temp_dir().join(format!("cluster-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("drain.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let mut client = Client::new(tokio::net::UnixStream::connect(&path).await.unwrap());
    client.send("/").await.unwrap();

    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let (tx, _started) = mpsc::unbounded_channel();
    let (big_tx, _big_done) = mpsc::unbounded_channel();
    let readiness = Readiness::new();
    let handle = tokio::spawn(serve(
        listener,
        app(readiness.clone(), tx, big_tx),
        shutdown,
        DrainOptions::new(),
    ));
    let reply = ok_response(&mut client).await;
    assert!(reply.closes());
    within("EOF", client.read_eof()).await.unwrap();
    drop(client);
    let stats = within("serve", handle).await.unwrap().unwrap();
    assert_eq!(stats.queued, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    closed_by_server: AtomicU64,
    failures: AtomicU64,
}

/// Sends requests back to back over keep-alive connections until `stop`, reconnecting
/// whenever a response says `Connection: close`. A failure is anything else that ends a
/// request: a reset, EOF before a full response, a non-200, or no connection at all.
async fn load_client(addr: SocketAddr, stop: impl Fn() -> bool, tally: Arc<Tally>, me: u64) {
    let mut n = me;
    'connections: while !stop() {
        let mut client = match timeout(STEP, Client::connect(addr)).await {
            Ok(Ok(client)) => client,
            outcome => {
                eprintln!("client {me}: connect failed: {outcome:?}");
                tally.failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        while !stop() {
            n += 1;
            let path = if n.is_multiple_of(4) { "/work" } else { "/" };
            let exchange = async {
                client.send(path).await?;
                client.read_response().await
            };
            match timeout(STEP, exchange).await {
                Ok(Ok(reply)) if reply.status == 200 => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                    if reply.closes() {
                        tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        continue 'connections;
                    }
                }
                outcome => {
                    eprintln!("client {me}: request failed: {outcome:?}");
                    tally.failures.fetch_add(1, Ordering::Relaxed);
                    continue 'connections;
                }
            }
        }
    }
}

async fn wait_for_ok(tally: &Tally, at_least: u64) {
    within("load to make progress", async {
        while tally.ok.load(Ordering::Relaxed) < at_least {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// The scenario of the issue: a rolling reload under keep-alive load. An old and a new
/// server take turns on one listening socket (as an old and a new worker do on the
/// cluster's port); the old one is told to stop mid-run; not one request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_reload_under_keep_alive_load_loses_nothing() {
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let addr = listener.local_addr().unwrap();
    let old = Server::on(
        Arc::clone(&listener),
        addr,
        CancellationToken::new(),
        DrainOptions::new(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..16)
        .map(|me| {
            let stop = stop.clone();
            let stop = move || stop.load(Ordering::Relaxed);
            tokio::spawn(load_client(addr, stop, tally.clone(), me))
        })
        .collect();

    // As in a reload: the replacement starts while the old one serves every connection,
    // then the old one is told to stop.
    wait_for_ok(&tally, 2000).await;
    let new = Server::on(
        listener,
        addr,
        CancellationToken::new(),
        DrainOptions::new(),
    );
    within("the new server", new.readiness.reached(Phase::Serving)).await;
    old.shutdown.cancel();
    let old_stats = old.stopped().await;
    let done = tally.ok.load(Ordering::Relaxed);
    wait_for_ok(&tally, done + 2000).await;

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        within("a load client to stop", client).await.unwrap();
    }
    new.shutdown.cancel();
    let new_stats = new.stopped().await;

    let failures = tally.failures.load(Ordering::Relaxed);
    assert_eq!(
        failures, 0,
        "failed requests: {failures}; old {old_stats:?}, new {new_stats:?}"
    );
    assert!(new_stats.requests > 0, "{new_stats:?}");
    assert!(
        old_stats.closed_after_response > 0,
        "the old server's keep-alive connections closed through responses: {old_stats:?}"
    );
    assert!(tally.closed_by_server.load(Ordering::Relaxed) >= old_stats.closed_after_response);
}

/// The same load against a lone server: every request sent on a connection the server
/// accepted is answered, and the connections it held are closed through responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lone_server_under_load_answers_every_accepted_request() {
    let server = Server::start(DrainOptions::new()).await;
    let tally = Arc::new(Tally::default());
    // Clients stop once the server is draining: after that a reconnect would find no
    // server (with a cluster, another worker takes it; see the rolling reload test). They
    // look at the phase itself, which turns to Draining before any response says
    // `Connection: close`, so no client reconnects to a closed port.
    let clients: Vec<_> = (0..16)
        .map(|me| {
            let readiness = server.readiness.clone();
            let stop = move || readiness.phase() >= Phase::Draining;
            tokio::spawn(load_client(server.addr, stop, tally.clone(), me))
        })
        .collect();
    wait_for_ok(&tally, 2000).await;
    server.shutdown.cancel();
    for client in clients {
        within("a load client to stop", client).await.unwrap();
    }
    let stats = server.stopped().await;
    assert_eq!(tally.failures.load(Ordering::Relaxed), 0, "{stats:?}");
    assert_eq!(
        stats.requests,
        tally.ok.load(Ordering::Relaxed),
        "{stats:?}"
    );
    assert!(stats.closed_after_response > 0, "{stats:?}");
}

#[tokio::test]
async fn shutdown_delay_keeps_serving_while_not_ready() {
    let delay = Duration::from_millis(1500);
    let server = Server::start(DrainOptions::new().shutdown_delay(delay)).await;
    within("serving", server.readiness.reached(Phase::Serving)).await;
    assert!(server.readiness.is_ready());
    let mut old = Client::connect(server.addr).await.unwrap();
    old.send("/readyz").await.unwrap();
    ok_response(&mut old).await;

    let fired = Instant::now();
    server.shutdown.cancel();
    within("the delay", server.readiness.reached(Phase::ShutdownDelay)).await;
    assert!(!server.readiness.is_ready());

    // A new connection is accepted and served normally, keep-alive included, while the
    // readiness endpoint reports 503.
    let mut new = Client::connect(server.addr).await.unwrap();
    new.send("/readyz").await.unwrap();
    let readyz = within("readyz", new.read_response()).await.unwrap();
    assert_eq!(readyz.status, 503, "{readyz:?}");
    assert!(!readyz.closes(), "{readyz:?}");
    new.send("/").await.unwrap();
    assert!(!ok_response(&mut new).await.closes());
    old.send("/").await.unwrap();
    assert!(!ok_response(&mut old).await.closes());
    assert_eq!(server.readiness.phase(), Phase::ShutdownDelay);

    within("draining", server.readiness.reached(Phase::Draining)).await;
    let waited = fired.elapsed();
    assert!(
        waited >= delay,
        "drained after {waited:?}, before the delay"
    );
    for client in [&mut old, &mut new] {
        client.send("/").await.unwrap();
        assert!(ok_response(client).await.closes());
        within("EOF", client.read_eof()).await.unwrap();
    }
    drop((old, new));
    let stats = server.stopped().await;
    assert_eq!(stats.connections, 2);
    assert_eq!(stats.closed_after_response, 2);
}

#[tokio::test]
async fn max_drain_drops_what_is_left() {
    let mut server = Server::start(DrainOptions::new().max_drain(Duration::from_millis(300))).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    client.send("/hang").await.unwrap();
    assert_eq!(server.started().await, "/hang");
    let fired = Instant::now();
    server.shutdown.cancel();
    let stats = server.stopped().await;
    assert!(fired.elapsed() < Duration::from_secs(3));
    assert_eq!(stats.aborted, 1);
    // Counted though its connection was aborted: a connection adds its requests when it ends.
    assert_eq!(stats.requests, 1, "{stats:?}");
    // The client sees the connection end without a response.
    assert!(within("the end", client.read_response()).await.is_err());
}

#[tokio::test]
async fn handler_sees_the_peer_address() {
    let server = Server::start(DrainOptions::new()).await;
    let mut client = Client::connect(server.addr).await.unwrap();
    let local = client.stream.local_addr().unwrap();
    client.send("/peer").await.unwrap();
    let reply = ok_response(&mut client).await;
    assert_eq!(String::from_utf8_lossy(&reply.body), local.to_string());
    drop(client);
    server.shutdown.cancel();
    server.stopped().await;
}

// ---------------------------------------------------------------------------------------
// Deadlines and the connection cap
// ---------------------------------------------------------------------------------------

impl Server {
    /// Waits until `/big`'s body is dropped and returns how many bytes it handed to hyper.
    async fn big_done(&mut self) -> usize {
        within("the /big body to be dropped", self.big_done.recv())
            .await
            .expect("the handler is alive")
    }
}

/// Asks for `/big` and never reads: once the socket buffers are full, the server's write
/// stays stuck.
async fn stalled_client(server: &mut Server) -> Client<TcpStream> {
    let mut client = Client::connect(server.addr).await.unwrap();
    client.send("/big").await.unwrap();
    assert_eq!(server.started().await, "/big");
    client
}

/// The issue 12 fault: during a drain, a client that never reads its response cannot keep
/// the server (the worker) alive past `max_drain`, whose default is under the cluster's
/// default `grace`; the other request in flight still completes.
#[tokio::test]
async fn a_client_that_never_reads_cannot_hold_the_drain_past_max_drain() {
    // The defaults, as a worker gets them.
    let mut server = Server::start(DrainOptions::new()).await;
    let _stalled = stalled_client(&mut server).await;
    let mut other = Client::connect(server.addr).await.unwrap();
    other.send("/slow").await.unwrap();
    assert_eq!(server.started().await, "/slow");

    let fired = Instant::now();
    server.shutdown.cancel();
    let reply = ok_response(&mut other).await;
    assert_eq!(reply.body, b"slow");
    assert!(reply.closes(), "{reply:?}");
    within("EOF", other.read_eof()).await.unwrap();

    // 4 s of drain, then the stuck connection is dropped: `serve` returns (the worker's
    // function ends normally) before the cluster's default grace of 5 s would SIGKILL it.
    let stats = match timeout(Duration::from_secs(5), server.handle).await {
        Ok(joined) => joined
            .expect("serve does not panic")
            .expect("serve succeeds"),
        Err(_) => panic!("serve still draining 5 s after the shutdown"),
    };
    let waited = fired.elapsed();
    assert!(
        waited >= Duration::from_millis(3900),
        "returned after {waited:?}, before max_drain"
    );
    assert_eq!(stats.aborted, 1, "{stats:?}");
    assert_eq!(stats.requests, 2, "{stats:?}");
    assert_eq!(stats.closed_after_response, 1, "{stats:?}");
    // The stuck response was dropped unfinished.
    let handed = within("the /big body", server.big_done.recv()).await;
    assert!(handed.is_some_and(|n| n < BIG), "{handed:?}");
}

/// The write deadline holds during the drain too: with it shorter than `max_drain`, the
/// stuck connection goes at the write deadline and the drain ends then.
#[tokio::test]
async fn write_timeout_ends_a_stuck_response_during_the_drain() {
    let write = Duration::from_millis(300);
    let mut server = Server::start(DrainOptions::new().write_timeout(write).max_drain(None)).await;
    let _stalled = stalled_client(&mut server).await;
    server.shutdown.cancel();
    let handed = server.big_done().await;
    assert!(handed < BIG, "the whole body went out: {handed}");
    let stats = server.stopped().await;
    assert_eq!(stats.closed_write_timeout, 1, "{stats:?}");
    assert_eq!(stats.aborted, 0, "{stats:?}");
}

/// Outside a drain: a client that stops reading loses its connection after the write
/// deadline (not before), and the server goes on serving others meanwhile and after.
#[tokio::test]
async fn write_timeout_closes_a_connection_whose_client_stopped_reading() {
    let write = Duration::from_millis(400);
    let mut server = Server::start(DrainOptions::new().write_timeout(write)).await;
    let mut stalled = stalled_client(&mut server).await;
    let asked = Instant::now();
    let mut other = Client::connect(server.addr).await.unwrap();
    other.send("/").await.unwrap();
    assert!(!ok_response(&mut other).await.closes());

    let handed = server.big_done().await;
    let waited = asked.elapsed();
    assert!(handed < BIG, "the whole body went out: {handed}");
    assert!(waited >= write, "closed after {waited:?}, before {write:?}");

    // The client finds the response cut short: what the buffers held, then the end.
    let mut received = 0;
    let mut chunk = vec![0u8; 1 << 16];
    let end = async {
        loop {
            match stalled.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    };
    within("the cut connection to end", end).await;
    assert!(received < BIG, "received {received} bytes");

    other.send("/").await.unwrap();
    assert_eq!(ok_response(&mut other).await.body, b"ok");
    drop(other);
    server.shutdown.cancel();
    let stats = server.stopped().await;
    assert_eq!(stats.closed_write_timeout, 1, "{stats:?}");
}

/// The header read (idle) deadline holds during the drain too: a client trickling a head
/// keeps its connection from being quiet, but not past the deadline.
#[tokio::test]
async fn header_read_timeout_ends_a_trickled_head_during_the_drain() {
    let period = Duration::from_millis(200);
    let server = Server::start(
        DrainOptions::new()
            .header_read_timeout(period)
            .quiet_period(Duration::from_millis(100))
            .max_drain(None),
    )
    .await;
    let mut client = Client::connect(server.addr).await.unwrap();
    client.send("/").await.unwrap();
    ok_response(&mut client).await;
    client
        .send_raw(b"GET / HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    server.shutdown.cancel();
    let trickle = async {
        let mut chunk = [0u8; 64];
        loop {
            // Faster than the quiet period, so only the deadline can end it.
            if client.stream.write_all(b"s").await.is_err() {
                return;
            }
            match timeout(Duration::from_millis(20), client.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => panic!("a response to an unfinished head: {n} bytes"),
                Err(_) => {}
            }
        }
    };
    within("the server to close the trickling connection", trickle).await;
    let stats = server.stopped().await;
    assert_eq!(stats.closed_header_timeout, 1, "{stats:?}");
    assert_eq!(stats.closed_idle, 0, "{stats:?}");
}

/// At the cap the server does not accept: the next client waits in the listen queue
/// (neither answered nor closed) until a connection closes, then is served.
#[tokio::test]
async fn max_connections_leaves_the_next_connection_queued_until_one_closes() {
    let server = Server::start(DrainOptions::new().max_connections(1)).await;
    let mut first = Client::connect(server.addr).await.unwrap();
    first.send("/").await.unwrap();
    assert!(!ok_response(&mut first).await.closes());

    let mut second = Client::connect(server.addr).await.unwrap();
    second.send("/").await.unwrap();
    let mut chunk = [0u8; 64];
    let early = timeout(Duration::from_millis(300), second.stream.read(&mut chunk)).await;
    assert!(early.is_err(), "served or closed past the cap: {early:?}");

    drop(first);
    assert_eq!(ok_response(&mut second).await.body, b"ok");
    drop(second);
    server.shutdown.cancel();
    let stats = server.stopped().await;
    assert_eq!(stats.connections, 2, "{stats:?}");
    assert_eq!(stats.requests, 2, "{stats:?}");
}
