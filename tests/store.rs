//! The master's store with real workers (tests/fixture/store_fixture.rs): exact counters from
//! concurrent workers by `incr` and by compare-and-swap, publish/subscribe across workers, a
//! subscriber that stops reading (a stopped process) holding up neither the master nor the
//! other workers, the snapshot across a master restart, and a rolling reload in the middle
//! of the increments.

mod support;

use std::collections::BTreeMap;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{Exit, Fixture, Line, WAIT};

const STORE_FIXTURE: &str = env!("CARGO_BIN_EXE_cluster-store-fixture");

fn start(env: &[(&str, &str)]) -> Fixture {
    Fixture::start_program(std::path::Path::new(STORE_FIXTURE), env, |_| {})
}

/// Waits for `n` workers' hello and readiness; returns their pids by id.
fn ready(fx: &mut Fixture, n: usize) -> BTreeMap<String, i32> {
    let hellos = fx.wait_hellos("worker/", n);
    for id in hellos.keys() {
        fx.wait_line("READY", &[("id", id)]);
    }
    hellos
}

/// The value the master reads for `key`, asked after everything before it.
fn get(fx: &mut Fixture, key: &str) -> String {
    let before = fx.history.len();
    fx.command(&format!("get {key}"));
    fx.wait_line_after(before, "VALUE", &[("key", key)])
        .get("value")
        .to_owned()
}

/// Waits for `n` lines of `kind` for `key`, each with `ok=<each>` and `errors=0`.
fn wait_done(fx: &mut Fixture, kind: &str, key: &str, n: usize, each: u64) -> Vec<Line> {
    let done = fx.wait_for(&format!("{n} {kind} key={key}"), WAIT, |lines| {
        let done: Vec<Line> = lines
            .iter()
            .filter(|l| l.is(kind, &[("key", key)]))
            .cloned()
            .collect();
        (done.len() >= n).then_some(done)
    });
    for line in &done {
        assert_eq!(line.get("errors"), "0", "{}\n{}", line.raw, fx.dump());
        assert_eq!(
            line.get("ok"),
            each.to_string(),
            "{}\n{}",
            line.raw,
            fx.dump()
        );
    }
    done
}

fn stop(mut fx: Fixture) {
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
}

#[test]
fn four_workers_incrementing_one_key_concurrently_count_exactly() {
    let mut fx = start(&[("CLUSTER_COUNT", "4")]);
    ready(&mut fx, 4);
    fx.command("incr hits 1000");
    wait_done(&mut fx, "INCR_DONE", "hits", 4, 1000);
    assert_eq!(get(&mut fx, "hits"), "4000", "{}", fx.dump());

    // Read-modify-write by compare-and-swap: as exact, and the races were real.
    fx.command("casincr swapped 1000");
    let done = wait_done(&mut fx, "CAS_DONE", "swapped", 4, 1000);
    assert_eq!(get(&mut fx, "swapped"), "4000", "{}", fx.dump());
    let retries: u64 = done
        .iter()
        .map(|l| l.get("retries").parse::<u64>().unwrap())
        .sum();
    assert!(
        retries > 0,
        "16 streams never raced: the test shows nothing\n{}",
        fx.dump()
    );
    stop(fx);
}

#[test]
fn published_values_reach_every_worker_and_a_stopped_subscriber_holds_up_nobody() {
    let mut fx = start(&[("CLUSTER_COUNT", "3"), ("CLUSTER_STORE_QUEUE", "64")]);
    let workers = ready(&mut fx, 3);
    fx.command("subscribe news");
    for id in workers.keys() {
        fx.wait_line("SUBSCRIBED", &[("id", id), ("topic", "news")]);
    }
    // Across workers: worker 0 publishes, every subscriber (itself included) gets each value.
    fx.command("wpublish 0 news 50 w");
    fx.wait_line("WPUBLISHED", &[("tag", "w"), ("reached", "3")]);
    for id in workers.keys() {
        fx.wait_line("GOT", &[("id", id), ("value", "w-49")]);
        let got: Vec<String> = fx
            .lines("GOT", &[("id", id)])
            .iter()
            .map(|l| l.get("value").to_owned())
            .filter(|v| v.starts_with("w-"))
            .collect();
        let expected: Vec<String> = (0..50).map(|i| format!("w-{i}")).collect();
        assert_eq!(
            got,
            expected,
            "{id} got each value once, in order\n{}",
            fx.dump()
        );
    }

    // Worker 2 stops reading altogether (SIGSTOP): its socket, its channel's buffer and its
    // queue of 64 fill up.
    let (stopped_id, stopped_pid) = workers
        .iter()
        .find(|(id, _)| id.starts_with("worker/2#"))
        .map(|(id, pid)| (id.clone(), *pid))
        .unwrap();
    kill(Pid::from_raw(stopped_pid), Signal::SIGSTOP).unwrap();
    // 600 values of 4 KiB: far more than its socket buffer (about 200 KiB), its channel's
    // write buffer (256 KiB) and its queue hold.
    fx.command("publish news 600 4096 big");
    fx.wait_line("PUBLISHED", &[("tag", "big"), ("reached", "3")]);
    // The others got every one, and work on the store goes on for everyone else.
    for id in workers.keys().filter(|id| **id != stopped_id) {
        fx.wait_line("GOT", &[("id", id), ("value", "big-599")]);
        let got = fx
            .lines("GOT", &[("id", id)])
            .iter()
            .filter(|l| l.get("value").starts_with("big-"))
            .count();
        assert_eq!(got, 600, "{id}\n{}", fx.dump());
    }
    fx.command("incr during 200");
    wait_done(&mut fx, "INCR_DONE", "during", 2, 200);
    assert_eq!(get(&mut fx, "during"), "400", "{}", fx.dump());

    // Back, it is told how many it lost before the next value reaches it.
    kill(Pid::from_raw(stopped_pid), Signal::SIGCONT).unwrap();
    fx.wait_line("INCR_DONE", &[("id", &stopped_id), ("key", "during")]);
    fx.command("publish news 1 1 after");
    fx.wait_line("GOT", &[("id", &stopped_id), ("value", "after-0")]);
    let mine: Vec<Line> = fx
        .history
        .iter()
        .filter(|l| l.fields.get("id") == Some(&stopped_id))
        .cloned()
        .collect();
    let lagged = mine
        .iter()
        .position(|l| l.is("LAGGED", &[("topic", "news")]))
        .unwrap_or_else(|| panic!("no LAGGED for {stopped_id}\n{}", fx.dump()));
    let after = mine
        .iter()
        .position(|l| l.is("GOT", &[("value", "after-0")]))
        .unwrap();
    assert!(lagged < after, "told before the next value\n{}", fx.dump());
    let big = mine
        .iter()
        .filter(|l| l.kind == "GOT" && l.get("value").starts_with("big-"))
        .count();
    let lost: u64 = mine
        .iter()
        .filter(|l| l.kind == "LAGGED")
        .map(|l| l.get("lost").parse::<u64>().unwrap())
        .sum();
    assert!(lost > 0, "{big} received, none lost\n{}", fx.dump());
    // Each value either reached it or was counted lost: none vanished untold.
    assert_eq!(
        big as u64 + lost,
        600,
        "{big} received, {lost} lost\n{}",
        fx.dump()
    );
    assert!(
        fx.stderr().contains("store_lagged"),
        "the master counts the lag as the worker's\n{}",
        fx.dump()
    );
    stop(fx);
}

#[test]
fn the_store_survives_a_master_restart_only_through_its_snapshot() {
    let dir = std::env::temp_dir().join(format!("cluster-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("store.snap");
    let _ = std::fs::remove_file(&path);
    let snapshot = path.to_str().unwrap();
    let env = [("CLUSTER_COUNT", "2"), ("CLUSTER_STORE_SNAPSHOT", snapshot)];

    let mut fx = start(&env);
    ready(&mut fx, 2);
    fx.command("incr kept 500");
    wait_done(&mut fx, "INCR_DONE", "kept", 2, 500);
    fx.command("set name alice");
    fx.wait_line("SET", &[("key", "name")]);
    stop(fx);
    assert!(path.exists(), "the snapshot was written at the stop");

    let mut fx = start(&env);
    ready(&mut fx, 2);
    assert_eq!(get(&mut fx, "kept"), "1000", "{}", fx.dump());
    assert_eq!(get(&mut fx, "name"), "alice", "{}", fx.dump());
    // The workers of the new master count on from there.
    fx.command("incr kept 10");
    wait_done(&mut fx, "INCR_DONE", "kept", 2, 10);
    assert_eq!(get(&mut fx, "kept"), "1020", "{}", fx.dump());
    stop(fx);

    // Without the option, a new master starts empty.
    let mut fx = start(&[("CLUSTER_COUNT", "1")]);
    ready(&mut fx, 1);
    assert_eq!(get(&mut fx, "kept"), "-", "{}", fx.dump());
    stop(fx);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rolling_reload_in_the_middle_of_the_increments_loses_nothing() {
    let mut fx = start(&[("CLUSTER_COUNT", "4")]);
    ready(&mut fx, 4);
    fx.command("incr reloaded 5000");
    fx.command("reload");
    fx.wait_line("RELOAD_FINISHED", &[]);
    // Every first-generation worker finished its job before it exited.
    let done = wait_done(&mut fx, "INCR_DONE", "reloaded", 4, 5000);
    assert!(
        done.iter().all(|l| l.get("id").ends_with("#1")),
        "{}",
        fx.dump()
    );
    for slot in 0..4 {
        fx.wait_line("EXIT", &[("id", &format!("worker/{slot}#1"))]);
    }
    assert_eq!(get(&mut fx, "reloaded"), "20000", "{}", fx.dump());
    // The reload did overlap the increments: a replacement was ready before the last job
    // ended.
    let position = |pred: &dyn Fn(&Line) -> bool| fx.history.iter().position(pred).unwrap();
    let first_new = position(&|l: &Line| l.kind == "READY" && l.get("id").ends_with("#2"));
    let last_done = fx
        .history
        .iter()
        .rposition(|l| l.is("INCR_DONE", &[("key", "reloaded")]))
        .unwrap();
    assert!(
        first_new < last_done,
        "the reload came after the increments\n{}",
        fx.dump()
    );
    stop(fx);
}
