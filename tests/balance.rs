//! The balance policies of the main job (examples/http), seen from clients: `RoundRobin`
//! hands new connections out in strict rotation, `LeastConnections` sends new connections to
//! the worker with fewer open ones, `Sticky` keeps a client IP on one worker, and `Shared`
//! spreads a burst of long-lived connections over its workers rather than leaving most of
//! them with whichever worker woke first.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use support::WAIT;
use support::example;
use support::http::{Conn, HttpCluster, get_once, get_once_from};

fn slot_of(resp: Result<support::http::Response, String>, what: &str) -> usize {
    let resp = resp.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(resp.status, 200, "{what}: {resp:?}");
    resp.worker().expect("a worker's hello").0
}

#[test]
fn round_robin_hands_out_new_connections_in_strict_rotation() {
    const WORKERS: usize = 3;
    let cluster = HttpCluster::start(&example("http"), WORKERS, "round-robin");
    // Every worker has joined the rotation once each has answered.
    cluster.serving_slots();
    let slots: Vec<usize> = (0..30)
        .map(|i| slot_of(get_once(cluster.addr()), &format!("request {i}")))
        .collect();
    // Rotation: any WORKERS consecutive connections go to WORKERS different workers, and the
    // order repeats.
    for (i, window) in slots.windows(WORKERS).enumerate() {
        let distinct: BTreeSet<_> = window.iter().collect();
        assert_eq!(
            distinct.len(),
            WORKERS,
            "connections {i}..{} did not go to {WORKERS} different workers: {slots:?}",
            i + WORKERS
        );
    }
    for i in WORKERS..slots.len() {
        assert_eq!(slots[i], slots[i - WORKERS], "not a rotation: {slots:?}");
    }
}

#[test]
fn least_connections_sends_new_connections_to_the_idle_worker() {
    const HELD: usize = 6;
    let cluster = HttpCluster::start(&example("http"), 2, "least-connections");
    cluster.serving_slots();
    // Open connections (kept open) until slot 0 holds HELD of them; least-connections spreads
    // them, so slot 1 gets about as many.
    let mut held: Vec<(usize, Conn)> = Vec::new();
    while held.iter().filter(|(slot, _)| *slot == 0).count() < HELD {
        assert!(held.len() < 8 * HELD, "slot 0 gets no connections");
        let mut conn = Conn::connect(cluster.addr()).expect("connect");
        let slot = slot_of(conn.get(false), "a held connection");
        held.push((slot, conn));
    }
    // Close slot 1's connections: it becomes the idle worker. Each is closed once the server
    // has seen its end (EOF both ways), so the worker reports it closed right away.
    let mut kept = Vec::new();
    for (slot, conn) in held {
        if slot == 0 {
            kept.push(conn);
            continue;
        }
        conn.stream()
            .shutdown(std::net::Shutdown::Write)
            .expect("shut the connection");
        let mut conn = conn;
        let end = conn.read_response();
        assert!(end.is_err(), "the server answered a closed connection");
    }
    // The master learns of the closes asynchronously: wait until a new connection lands on
    // the idle worker, then every next one must, one after the other, while slot 0 holds
    // HELD open connections (a plain rotation would alternate).
    let deadline = Instant::now() + WAIT;
    while slot_of(get_once(cluster.addr()), "a probe") != 1 {
        assert!(
            Instant::now() < deadline,
            "new connections never went to the idle worker"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let slots: Vec<usize> = (0..12)
        .map(|i| slot_of(get_once(cluster.addr()), &format!("request {i}")))
        .collect();
    assert!(
        slots.iter().all(|&s| s == 1),
        "with {HELD} connections open on slot 0 and none on slot 1, new connections went to {slots:?}"
    );
    // The held connections are still served by slot 0.
    for conn in &mut kept {
        assert_eq!(slot_of(conn.get(false), "a held connection"), 0);
    }
}

#[test]
fn sticky_keeps_each_client_ip_on_one_worker() {
    let cluster = HttpCluster::start(&example("http"), 2, "sticky");
    cluster.serving_slots();
    let mut by_ip = BTreeMap::new();
    for last in 1..=16u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
        let slots: BTreeSet<usize> = (0..8)
            .map(|i| {
                slot_of(
                    get_once_from(ip, cluster.addr()),
                    &format!("{ip} request {i}"),
                )
            })
            .collect();
        assert_eq!(
            slots.len(),
            1,
            "connections from {ip} went to several workers: {slots:?}"
        );
        by_ip.insert(ip, slots.into_iter().next().expect("a slot"));
    }
    // Again, later and interleaved: every IP still lands on its worker.
    for (ip, slot) in &by_ip {
        assert_eq!(
            slot_of(get_once_from(*ip, cluster.addr()), &format!("{ip} again")),
            *slot,
            "{ip} moved"
        );
    }
    // And the hashing spreads IPs over the workers.
    let used: BTreeSet<_> = by_ip.values().collect();
    assert_eq!(used.len(), 2, "every IP went to one worker: {by_ip:?}");
}

#[test]
fn shared_spreads_a_burst_of_keep_alive_connections_over_the_workers() {
    const CONNS: usize = 32;
    let cluster = HttpCluster::start(&example("http"), 2, "shared");
    cluster.serving_slots();
    // All open at once, as a load balancer or a benchmark opens its pool: each is accepted
    // (and counted) while the others arrive.
    let mut conns: Vec<Conn> = (0..CONNS)
        .map(|i| Conn::connect(cluster.addr()).unwrap_or_else(|e| panic!("connection {i}: {e}")))
        .collect();
    let mut by_slot = BTreeMap::<usize, usize>::new();
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.send_get(false)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        *by_slot
            .entry(slot_of(conn.read_response(), &format!("connection {i}")))
            .or_default() += 1;
    }
    // Even would be 16 each; without the load table a burst often went 3:1 or worse.
    assert!(
        by_slot.len() == 2 && by_slot.values().all(|&n| n >= CONNS * 3 / 8),
        "{CONNS} connections opened at once went {by_slot:?}\n{}",
        cluster.dump()
    );
    eprintln!("shared: {CONNS} connections opened at once went {by_slot:?}");
}
