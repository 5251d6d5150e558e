//! The axum example (examples/axum.rs), a `Router` served by `cluster::http::serve_tower`,
//! drains like the hyper one: 16 keep-alive connections and a
//! connection-per-request loop run through 3 rolling reloads (SIGUSR2, each waited for)
//! without a failed request, and every worker is replaced. Its `/slow` route answers, and a
//! slow request in flight on a worker that a reload replaces still gets its answer.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::http::{Conn, HttpCluster, Response, reload_under_load};
use support::{WAIT, example, pid_alive, wait_until};

const RELOADS: usize = 3;
const KEEP_ALIVE: usize = 16;
const FRESH: usize = 1;

/// Sends `GET path` on `conn`, keeping the connection open, and reads the answer.
fn get(conn: &mut Conn, path: &str) -> Response {
    send(conn, path);
    conn.read_response()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn send(conn: &mut Conn, path: &str) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let mut stream = conn.stream();
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("send GET {path}: {e}"));
}

#[test]
fn rolling_reloads_of_the_axum_example_lose_no_request() {
    let cluster = HttpCluster::start(&example("axum"), 2, "shared");
    let tally = reload_under_load(&cluster, RELOADS, KEEP_ALIVE, FRESH);
    eprintln!(
        "{} requests, 0 failed, {} workers answered across {RELOADS} reloads",
        tally.ok(),
        tally.pids().len()
    );
}

#[test]
fn the_slow_route_answers_even_across_a_reload() {
    let cluster = HttpCluster::start(&example("axum"), 2, "shared");
    let mut conn = Conn::connect(cluster.addr()).unwrap_or_else(|e| panic!("connect: {e}"));

    let (slot, pid) = get(&mut conn, "/")
        .worker()
        .unwrap_or_else(|| panic!("GET / did not name its worker\n{}", cluster.dump()));
    let quick = get(&mut conn, "/slow?ms=10");
    assert_eq!(quick.status, 200, "{quick:?}");
    assert_eq!(
        quick.body,
        format!("Slept 10 ms in worker {slot} (pid {pid})")
    );
    assert_eq!(get(&mut conn, "/slow?ms=soon").status, 400);
    assert_eq!(get(&mut conn, "/nowhere").status, 404);

    // The request is on the wire before the reload is asked for, on a connection the old
    // worker already serves: that worker must answer it before it exits.
    let started = Instant::now();
    send(&mut conn, "/slow?ms=1000");
    cluster.reload();
    let slow = conn
        .read_response()
        .unwrap_or_else(|e| panic!("GET /slow across a reload: {e}\n{}", cluster.dump()));
    assert_eq!(slow.status, 200, "{slow:?}\n{}", cluster.dump());
    assert_eq!(
        slow.body,
        format!("Slept 1000 ms in worker {slot} (pid {pid})")
    );
    assert!(started.elapsed() >= Duration::from_millis(1000));
    wait_until("the replaced worker to exit", WAIT, || {
        !pid_alive(pid as i32)
    });
}
