//! Zero-downtime deploys: the program runs from a directory of its own; a new build is written
//! next to it and renamed over it (never written in place: the running file is busy), and a
//! rolling reload moves every worker onto the new file while messages and requests keep
//! flowing. The master itself keeps running the old file.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use nix::sys::signal::Signal;
use support::example;
use support::http::{HttpCluster, Load};
use support::{
    Exit, FIXTURE, Fixture, TempDir, WAIT, copy_executable, deploy_modified_copy, file_hash, id,
};

/// The hash of the file process `pid` runs (its inode, even once its path was replaced).
fn running_hash(pid: u32) -> String {
    file_hash(Path::new(&format!("/proc/{pid}/exe")))
}

#[test]
fn fixture_deploy_moves_workers_to_the_new_binary_while_messages_flow() {
    let dir = TempDir::new("deploy-fixture");
    let app = copy_executable(Path::new(FIXTURE), &dir.0, "app");
    let v1 = file_hash(&app);
    let mut fx = Fixture::start_program(
        &app,
        &[
            ("FIXTURE_COUNT", "2"),
            ("FIXTURE_EXE_HASH", "1"),
            // New workers take 300 ms to become ready, so the deploy lasts a while.
            ("FIXTURE_READY_DELAY_MS", "300"),
        ],
        |_| {},
    );
    let old = fx.wait_hellos("worker/", 2);
    for slot in 0..2 {
        let hello = fx.wait_line("HELLO", &[("id", &id("worker", slot, 1))]);
        assert_eq!(hello.get("exe"), v1, "{}", fx.dump());
    }

    let v2 = deploy_modified_copy(&app, b"\n-- build 2 --\n");
    assert_ne!(v1, v2);
    fx.signal(Signal::SIGUSR2);
    // Messages keep flowing while the slots are replaced: every send finds a worker in its
    // slot (never "no worker"), and the workers keep answering.
    let mut sent = 0usize;
    let deadline = Instant::now() + WAIT;
    while fx.lines("RELOAD_FINISHED", &[]).is_empty() {
        assert!(Instant::now() < deadline, "no reload\n{}", fx.dump());
        let n = 1000 + sent;
        fx.command(&format!("send worker {} {n}", sent % 2));
        sent += 1;
        fx.wait_for("the send's result", WAIT, |lines| {
            (lines.iter().filter(|l| l.kind == "SENT").count() >= sent).then_some(())
        });
    }
    let sends = fx.lines("SENT", &[]);
    assert!(
        sends.iter().all(|l| l.get("ok") == "true"),
        "a message found no worker during the deploy\n{}",
        fx.dump()
    );
    assert!(
        sent >= 5,
        "only {sent} messages during the deploy\n{}",
        fx.dump()
    );
    assert!(!fx.lines("PONG", &[]).is_empty(), "{}", fx.dump());

    // Every new worker runs the new file; the master still runs the old one.
    for slot in 0..2 {
        let hello = fx.wait_line("HELLO", &[("id", &id("worker", slot, 2))]);
        assert_eq!(hello.get("exe"), v2, "{}", fx.dump());
        assert_eq!(running_hash(hello.pid() as u32), v2);
        let n = 1_000_000 + slot;
        fx.command(&format!("send worker {slot} {n}"));
        let pong = fx.wait_line("PONG", &[("n", &n.to_string())]);
        assert_eq!(pong.get("id"), id("worker", slot, 2), "{}", fx.dump());
    }
    assert_eq!(running_hash(fx.pid() as u32), v1);
    for worker in old.keys() {
        let exit = fx.wait_line("EXIT", &[("id", worker)]);
        assert_eq!(exit.get("expected"), "true", "{}", fx.dump());
    }
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
}

#[test]
fn http_deploy_moves_workers_to_the_new_binary_without_a_failed_request() {
    let dir = TempDir::new("deploy-http");
    let app = copy_executable(&example("http"), &dir.0, "http");
    let v1 = file_hash(&app);
    let cluster = HttpCluster::start(&app, 2, "shared");
    let before = cluster.serving_slots();
    for pid in before.values() {
        assert_eq!(running_hash(*pid), v1);
    }

    let load = Load::start(cluster.addr(), 16, 1);
    load.wait_more_ok(200);
    let v2 = deploy_modified_copy(&app, b"\n-- build 2 --\n");
    assert_ne!(v1, v2);
    cluster.reload();
    load.wait_more_ok(200);
    let tally = load.stop();

    tally.assert_none_failed("the deploy", &cluster);
    let old: BTreeSet<u32> = before.values().copied().collect();
    let after = cluster.serving_slots_except(&old);
    for (slot, pid) in &after {
        assert_eq!(
            running_hash(*pid),
            v2,
            "slot {slot} (pid {pid}) does not run the new build"
        );
    }
    assert_eq!(running_hash(cluster.pid() as u32), v1);
    eprintln!(
        "deploy: {} requests, 0 failed; new workers {after:?} run the new build",
        tally.ok()
    );
}
