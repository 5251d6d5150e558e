//! An address the master (or, with `ReusePort`, the worker) cannot bind gives the worker's
//! `listen` a clear error naming the cause, at once: no hang, no crash loop.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{Exit, Fixture, WAIT, id};

/// A listening socket bound without SO_REUSEADDR or SO_REUSEPORT: nobody else can bind its
/// port.
fn hold_a_port() -> (socket2::Socket, SocketAddr) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket.set_reuse_address(false).expect("no SO_REUSEADDR");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).expect("bind");
    socket.listen(16).expect("listen");
    let addr = socket
        .local_addr()
        .expect("local address")
        .as_socket()
        .expect("an inet address");
    (socket, addr)
}

fn listen_once(addr: SocketAddr, balance: &str) -> (Fixture, support::Line, Duration) {
    let started = Instant::now();
    let addr = addr.to_string();
    let mut fx = Fixture::start(&[
        ("FIXTURE_COUNT", "1"),
        ("FIXTURE_LISTEN", &addr),
        ("FIXTURE_BALANCE", balance),
    ]);
    let line = fx.wait_line("LISTEN", &[("id", &id("worker", 0, 1))]);
    (fx, line, started.elapsed())
}

#[test]
fn an_address_in_use_is_a_clear_listen_error_not_a_hang() {
    let (holder, addr) = hold_a_port();
    for balance in ["shared", "round-robin", "reuseport"] {
        let (mut fx, line, took) = listen_once(addr, balance);
        assert_eq!(line.get("ok"), "false", "{balance}: {}", fx.dump());
        let err = line.get("err").replace('_', " ");
        assert!(
            err.to_lowercase().contains("in use") && err.contains(&addr.to_string()),
            "{balance}: an unclear error: {err:?}\n{}",
            fx.dump()
        );
        assert!(
            took < Duration::from_secs(15),
            "{balance}: the error took {took:?}"
        );
        // The worker goes on (its error is its to handle) and the cluster stops cleanly.
        fx.wait_line("HELLO", &[("id", &id("worker", 0, 1))]);
        fx.signal(Signal::SIGTERM);
        assert_eq!(
            fx.wait_exit(WAIT),
            Exit::Code(0),
            "{balance}: {}",
            fx.dump()
        );
    }

    // The same address works once it is free: the error above was the port's, not the
    // fixture's.
    drop(holder);
    let (mut fx, line, _) = listen_once(addr, "shared");
    assert_eq!(line.get("ok"), "true", "{}", fx.dump());
    assert_eq!(line.get("local"), addr.to_string(), "{}", fx.dump());
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
}
