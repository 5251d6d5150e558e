//! `Balance::StickyKey` with real processes (examples/http, 4 workers): the master peeks at
//! each connection's first bytes for its key and routes by it.
//!
//! - a session cookie keeps its worker across 200 connections from varied source addresses,
//!   and different sessions spread over the workers;
//! - behind a real haproxy (`send-proxy-v2`, Debian's package; `.ci/run` installs it), where
//!   every connection comes from haproxy's address, the client's own address in the PROXY
//!   header keeps its worker, and different clients spread;
//! - a client that sends nothing delays no other connection and is held by the master only
//!   for `sticky_peek_timeout`: then it is handed to a worker by load (not closed).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::http::{Conn, HttpCluster, Response};
use support::{TempDir, WAIT, example, free_port, ops, poll};

/// `GET /` from `from` with `head` (more header lines, each ending in `\r\n`), after `prefix`
/// (a PROXY header, say); returns the answering slot.
fn slot_of(addr: SocketAddr, from: IpAddr, prefix: &[u8], head: &str) -> usize {
    let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Connection: close\r\n\r\n");
    let resp: Result<Response, String> = Conn::connect_from(from, addr).and_then(|mut c| {
        c.send_raw(&[prefix, request.as_bytes()].concat())?;
        c.read_response()
    });
    let resp = resp.unwrap_or_else(|e| panic!("GET / from {from} with {head:?}: {e}"));
    resp.worker()
        .unwrap_or_else(|| panic!("not an answer of examples/http: {resp:?}"))
        .0
}

fn loopback(n: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 2 + (n % 200) as u8])
}

#[test]
fn a_session_cookie_keeps_its_worker_and_sessions_spread() {
    let cluster = HttpCluster::start_with_env(
        &example("http"),
        4,
        "sticky-key",
        &[("CLUSTER_STICKY_COOKIE", "sid")],
    );
    let addr = cluster.addr();
    // 200 connections of one session, from 200 source addresses: the cookie decides, not
    // the address (which `sticky` would route by).
    let slots: BTreeSet<usize> = (0..200)
        .map(|i| slot_of(addr, loopback(i), b"", "Cookie: theme=dark; sid=alice\r\n"))
        .collect();
    assert_eq!(slots.len(), 1, "session alice reached slots {slots:?}");
    // 32 sessions, 3 connections each from different addresses: each keeps its slot, and
    // together they use every worker.
    let mut by_session = BTreeMap::new();
    for session in 0..32 {
        let seen: BTreeSet<usize> = (0..3)
            .map(|k| {
                slot_of(
                    addr,
                    loopback(session * 3 + k),
                    b"",
                    &format!("Cookie: sid=user-{session}\r\n"),
                )
            })
            .collect();
        assert_eq!(
            seen.len(),
            1,
            "session user-{session} reached slots {seen:?}"
        );
        by_session.insert(session, seen.into_iter().next().unwrap_or_default());
    }
    let used: BTreeSet<usize> = by_session.values().copied().collect();
    assert_eq!(
        used.len(),
        4,
        "32 sessions used only slots {used:?}: {by_session:?}"
    );
    // Without a cookie, connections go by load (here: over more than one worker).
    let unkeyed: BTreeSet<usize> = (0..16)
        .map(|i| slot_of(addr, loopback(0), b"", &format!("X-N: {i}\r\n")))
        .collect();
    assert!(
        unkeyed.len() > 1,
        "connections without a key all went to {unkeyed:?}"
    );
}

/// A haproxy in TCP mode in front of `backend`, sending a PROXY v2 header on each connection;
/// killed on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Haproxy {
    fn start(backend: SocketAddr) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let port = free_port();
        let config = format!(
            "global\n    maxconn 512\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
             frontend front\n    bind 127.0.0.1:{port}\n    default_backend cluster\n\
             backend cluster\n    server c {backend} send-proxy-v2\n"
        );
        let path = dir.0.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start haproxy ({e}): install it (apt-get install haproxy)")
            });
        let mut haproxy = Haproxy {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        let addr = haproxy.addr;
        poll("haproxy to pass a request through", WAIT, || {
            if let Ok(Some(status)) = haproxy.child.try_wait() {
                panic!("haproxy exited at start ({status}): port {port} taken?");
            }
            TcpStream::connect(addr).map_err(|e| e.to_string())?;
            Conn::connect(addr)?.get(true).map(|_| ())
        });
        haproxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn behind_haproxy_the_client_address_in_the_proxy_header_keeps_its_worker() {
    let cluster = HttpCluster::start_with_env(
        &example("http"),
        4,
        "sticky-key",
        &[("CLUSTER_STICKY_PROXY", "true"), ("PROXY_PROTOCOL", "1")],
    );
    let haproxy = Haproxy::start(cluster.addr());
    // Every connection reaches the cluster from haproxy's 127.0.0.1; only the header tells
    // the clients apart. 16 clients, 10 connections each.
    let mut by_client = BTreeMap::new();
    for client in 0..16 {
        let from = loopback(client * 7);
        let seen: BTreeSet<usize> = (0..10)
            .map(|_| slot_of(haproxy.addr, from, b"", ""))
            .collect();
        assert_eq!(seen.len(), 1, "client {from} reached slots {seen:?}");
        by_client.insert(from, seen.into_iter().next().unwrap_or_default());
    }
    let used: BTreeSet<usize> = by_client.values().copied().collect();
    assert!(
        used.len() >= 3,
        "16 clients used only slots {used:?}: {by_client:?}"
    );

    // Hand-built headers of both versions, straight to the cluster, route the same way: the
    // key is the client's IP, whatever the version or the source port.
    let cluster_addr = cluster.addr();
    for (from, slot) in by_client.iter().take(4) {
        let IpAddr::V4(ip) = from else { unreachable!() };
        let v1 = format!(
            "PROXY TCP4 {ip} 127.0.0.1 40000 {}\r\n",
            cluster_addr.port()
        );
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        v2.extend_from_slice(&ip.octets());
        v2.extend_from_slice(&[127, 0, 0, 1]);
        v2.extend_from_slice(&50000u16.to_be_bytes());
        v2.extend_from_slice(&cluster_addr.port().to_be_bytes());
        let local = loopback(199);
        assert_eq!(
            slot_of(cluster_addr, local, v1.as_bytes(), ""),
            *slot,
            "v1 from {from}"
        );
        assert_eq!(
            slot_of(cluster_addr, local, &v2, ""),
            *slot,
            "v2 from {from}"
        );
    }
}

#[test]
fn a_silent_client_is_held_only_the_peek_timeout_and_delays_no_one() {
    const PEEK: Duration = Duration::from_secs(2);
    const SILENT: usize = 20;
    let cluster = HttpCluster::start_with_env(
        &example("http"),
        4,
        "sticky-key",
        &[
            ("CLUSTER_STICKY_COOKIE", "sid"),
            ("CLUSTER_STICKY_PEEK_TIMEOUT", "2s"),
        ],
    );
    let addr = cluster.addr();
    let open = || -> u64 {
        ops::status(cluster.status_addr())["workers"]
            .as_array()
            .map_or(0, |ws| {
                ws.iter().filter_map(|w| w["connections"].as_u64()).sum()
            })
    };
    // Let the start-up probes' connections close first.
    poll("no connection open", WAIT, || {
        let n = open();
        (n == 0).then_some(()).ok_or_else(|| format!("{n} open"))
    });
    let started = Instant::now();
    let silent: Vec<TcpStream> = (0..SILENT)
        .map(|_| TcpStream::connect(addr).expect("connect a silent client"))
        .collect();
    // A client with a key is served at once, not after the silent ones' timeouts.
    let before = Instant::now();
    slot_of(addr, loopback(1), b"", "Cookie: sid=bob\r\n");
    let took = before.elapsed();
    assert!(
        took < PEEK / 2,
        "a keyed request waited {took:?} behind silent clients"
    );
    // The silent ones are still with the master, peeked at...
    let held = open();
    assert!(
        held < SILENT as u64 && started.elapsed() < PEEK,
        "{held} connections handed out after {:?}",
        started.elapsed()
    );
    // ...until the timeout hands them to workers by load (they are not closed).
    poll("the silent clients handed to workers", PEEK + WAIT, || {
        let n = open();
        (n >= SILENT as u64)
            .then_some(())
            .ok_or_else(|| format!("{n} open"))
    });
    let handed_after = started.elapsed();
    assert!(
        handed_after >= PEEK && handed_after < PEEK + Duration::from_secs(3),
        "the silent clients were handed out after {handed_after:?}, not about {PEEK:?}"
    );
    for stream in &silent {
        stream.set_nonblocking(true).expect("non-blocking");
        let mut byte = [0u8; 1];
        // Still open: nothing to read, no EOF.
        assert!(
            matches!(std::io::Read::read(&mut &*stream, &mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a silent client was closed"
        );
    }
    eprintln!(
        "a keyed request took {took:?} beside {SILENT} silent clients, handed out after {handed_after:?}"
    );
}
