//! Typed messaging between the master and its workers, through real processes: targeted
//! sends, broadcasts, the sender's id on worker messages, request/response both ways and the
//! timeout of an unanswered request.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{Exit, Fixture, WAIT, id};

const COUNT: usize = 3;

fn start() -> (Fixture, BTreeMap<String, i32>) {
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "3")]);
    let workers = fx.wait_hellos("worker/", COUNT);
    (fx, workers)
}

fn pongs(fx: &Fixture, slot: usize, n: &str) -> usize {
    fx.lines("PONG", &[("id", &id("worker", slot, 1)), ("n", n)])
        .len()
}

fn stop(mut fx: Fixture) {
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
}

#[test]
fn worker_messages_arrive_with_the_senders_id() {
    let (mut fx, workers) = start();
    assert_eq!(workers.len(), COUNT);
    for hello in fx.lines("HELLO", &[]) {
        // `id` is who the master says sent it; `self` is who the worker says it is.
        assert_eq!(hello.get("id"), hello.get("self"), "{}", fx.dump());
        let spawned = fx.wait_line("SPAWNED", &[("id", hello.get("id"))]);
        assert_eq!(
            spawned.pid(),
            hello.pid(),
            "the sender is the process spawned in that slot"
        );
    }
    stop(fx);
}

#[test]
fn a_send_reaches_only_its_worker_and_a_broadcast_reaches_each_worker_once() {
    let (mut fx, _) = start();

    fx.command("send worker 1 7");
    fx.wait_line("SENT", &[("to", "worker/1"), ("ok", "true")]);
    fx.wait_line("PONG", &[("id", &id("worker", 1, 1)), ("n", "7")]);

    fx.command("broadcast 8");
    fx.wait_line("BROADCAST", &[("n", "3")]);
    // A worker answers in order and the master reports its messages in order: once a worker's
    // PONG 8 is in, a PONG 7 from it would be in too, and a second PONG 8 would come before
    // its PONG 9.
    for slot in 0..COUNT {
        fx.wait_line("PONG", &[("id", &id("worker", slot, 1)), ("n", "8")]);
        fx.command(&format!("send worker {slot} 9"));
    }
    for slot in 0..COUNT {
        fx.wait_line("PONG", &[("id", &id("worker", slot, 1)), ("n", "9")]);
    }
    for slot in 0..COUNT {
        assert_eq!(
            pongs(&fx, slot, "7"),
            usize::from(slot == 1),
            "only worker/1 got 7\n{}",
            fx.dump()
        );
        assert_eq!(
            pongs(&fx, slot, "8"),
            1,
            "worker/{slot} got the broadcast once\n{}",
            fx.dump()
        );
        assert_eq!(pongs(&fx, slot, "9"), 1, "{}", fx.dump());
    }

    // A slot that does not exist is an error, not a silent drop.
    fx.command("send worker 7 1");
    fx.wait_line("SENT", &[("to", "worker/7"), ("ok", "false")]);
    stop(fx);
}

#[test]
fn requests_work_both_ways_and_an_unanswered_one_times_out() {
    let (mut fx, _) = start();

    // Master -> worker: the worker doubles the number.
    fx.command("request worker 2 21 10000");
    fx.wait_line("RESPONSE", &[("to", "worker/2"), ("ok", "42")]);

    // Worker -> master: the worker asks, the master adds 1000, the worker reports the answer.
    fx.command("askmaster worker 0 5");
    fx.wait_line("QUESTION", &[("id", &id("worker", 0, 1)), ("n", "5")]);
    fx.wait_line("MASTERSAID", &[("id", &id("worker", 0, 1)), ("v", "1005")]);

    // A worker that keeps the request without answering: ErrorKind::Timeout after the timeout.
    let asked = Instant::now();
    fx.command("silent worker 1 300");
    let response = fx.wait_line("RESPONSE", &[("to", "worker/1"), ("err", "timeout")]);
    let took = asked.elapsed();
    // The error names the timeout it waited for.
    let msg = response.get("msg").replace('_', " ");
    assert!(msg.contains("within 300 ms"), "{msg}\n{}", fx.dump());
    let measured: u64 = response.get("ms").parse().unwrap();
    assert!(
        measured >= 300,
        "not before the timeout: {measured} ms\n{}",
        fx.dump()
    );
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < WAIT, "{took:?}");

    // The worker is still fine afterwards.
    fx.command("request worker 1 4 10000");
    fx.wait_line("RESPONSE", &[("to", "worker/1"), ("ok", "8")]);
    stop(fx);
}
