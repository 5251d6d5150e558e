//! The `watch` option with real processes: a copy of the fixture runs from a directory of its
//! own with `watch` on, and a new build replaces the file on disk as a deploy or cargo does
//! (written next to it and renamed over it), or is written slowly in place. The master reloads
//! the workers onto each complete new build, keeps its listening socket open throughout, and
//! rolls back a build whose workers cannot start. Also SIGTTIN and SIGTTOU on a real master.

mod support;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::{
    Exit, FIXTURE, Fixture, TempDir, WAIT, copy_executable, deploy_modified_copy, file_hash,
    free_port, id, pid_alive, proc_state,
};

/// Starts the copy `app` with `watch` on and `env`; waits for its `count` first workers.
fn start_watching(app: &Path, count: usize, env: &[(&str, &str)]) -> Fixture {
    let count_text = count.to_string();
    let mut all = vec![
        ("FIXTURE_COUNT", count_text.as_str()),
        ("FIXTURE_EXE_HASH", "1"),
        ("FIXTURE_WATCH", "1"),
        ("FIXTURE_WATCH_DEBOUNCE_MS", "500"),
    ];
    all.extend_from_slice(env);
    let mut fx = Fixture::start_program(app, &all, |_| {});
    fx.wait_hellos("worker/", count);
    fx
}

/// Waits until a worker of every slot in `0..count` said hello from the build `hash`; returns
/// their ids.
fn wait_on_build(fx: &mut Fixture, count: usize, hash: &str) -> Vec<String> {
    fx.wait_for(&format!("{count} workers on build {hash}"), WAIT, |lines| {
        let mut ids: Vec<String> = lines
            .iter()
            .filter(|l| l.kind == "HELLO" && l.get("exe") == hash)
            .map(|l| l.get("id").to_owned())
            .collect();
        ids.sort();
        (ids.len() >= count).then_some(ids)
    })
}

/// Reads the fixture's output for `d`, so that `lines` sees what came meanwhile.
fn idle(fx: &mut Fixture, d: Duration) {
    let until = Instant::now() + d;
    fx.wait_for("time to pass", d + Duration::from_millis(10), |_| {
        (Instant::now() >= until).then_some(())
    });
}

fn stop(mut fx: Fixture) {
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
}

#[test]
fn a_build_renamed_over_the_executable_reloads_the_workers_while_the_socket_stays_open() {
    let dir = TempDir::new("watch-rename");
    let app = copy_executable(Path::new(FIXTURE), &dir.0, "app");
    let v1 = file_hash(&app);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let addr_text = addr.to_string();
    let mut fx = start_watching(
        &app,
        2,
        &[
            ("FIXTURE_LISTEN", &addr_text),
            // New workers take a while to be ready, so the reload lasts a while.
            ("FIXTURE_READY_DELAY_MS", "300"),
        ],
    );
    fx.wait_line("LISTEN", &[("id", &id("worker", 0, 1)), ("ok", "true")]);
    assert_eq!(wait_on_build(&mut fx, 2, &v1).len(), 2);
    // Starting workers opens the file (exec) without changing it: no reload.
    idle(&mut fx, Duration::from_millis(1500));
    assert!(fx.lines("RELOAD_STARTED", &[]).is_empty(), "{}", fx.dump());

    let v2 = deploy_modified_copy(&app, b"\n-- build 2 --\n");
    // The listening socket stays open throughout: every connection attempt succeeds (the
    // kernel queues it) before, during and after the reload.
    let deadline = Instant::now() + WAIT;
    let mut connects = 0;
    while fx.lines("RELOAD_FINISHED", &[]).is_empty() {
        assert!(Instant::now() < deadline, "no reload\n{}", fx.dump());
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect {addr} during the reload: {e}\n{}", fx.dump()));
        connects += 1;
        idle(&mut fx, Duration::from_millis(50));
    }
    assert!(connects >= 3, "{connects} connects\n{}", fx.dump());
    let ids = wait_on_build(&mut fx, 2, &v2);
    assert_eq!(
        ids,
        [id("worker", 0, 2), id("worker", 1, 2)],
        "{}",
        fx.dump()
    );
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect after the reload");
    assert_eq!(fx.lines("RELOAD_STARTED", &[]).len(), 1, "{}", fx.dump());
    assert!(
        fx.stderr().contains("rolling reload"),
        "the master says why it reloads\n{}",
        fx.dump()
    );

    // A touch (same bytes, new mtime) is no new build.
    let same = std::fs::read(&app).expect("read the build");
    deploy_bytes(&app, &same);
    idle(&mut fx, Duration::from_millis(1500));
    assert_eq!(fx.lines("RELOAD_STARTED", &[]).len(), 1, "{}", fx.dump());
    stop(fx);
}

/// Replaces `path` with `bytes` the way `deploy_modified_copy` does: written next to it, then
/// renamed over it.
fn deploy_bytes(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    write_executable(&tmp, bytes);
    std::fs::rename(&tmp, path).expect("rename the new build over the old one");
}

fn write_executable(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(bytes).expect("write the build");
}

#[test]
fn a_build_written_slowly_in_place_is_started_only_once_complete() {
    let dir = TempDir::new("watch-slow");
    let app = copy_executable(Path::new(FIXTURE), &dir.0, "app");
    let mut fx = start_watching(&app, 2, &[]);
    let mut bytes = std::fs::read(&app).expect("read the build");
    bytes.extend_from_slice(b"\n-- build 2, slowly --\n");

    // As a linker does: the old file unlinked (running processes keep it), a new one created
    // executable at the same path and written piece by piece, each pause shorter than the
    // debounce. A reload started on any piece would find a half-written binary (a cut ELF
    // file, and one still open for writing, which exec refuses).
    std::fs::remove_file(&app).expect("unlink the old build");
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&app)
            .expect("create the new build");
        let pieces = 8;
        let piece = bytes.len().div_ceil(pieces);
        for chunk in bytes.chunks(piece) {
            file.write_all(chunk).expect("write a piece");
            file.flush().expect("flush a piece");
            idle(&mut fx, Duration::from_millis(150));
            assert!(
                fx.lines("RELOAD_STARTED", &[]).is_empty(),
                "a reload started on a half-written build\n{}",
                fx.dump()
            );
        }
    }
    let v2 = file_hash(&app);
    let ids = wait_on_build(&mut fx, 2, &v2);
    assert_eq!(
        ids,
        [id("worker", 0, 2), id("worker", 1, 2)],
        "{}",
        fx.dump()
    );
    fx.wait_line("RELOAD_FINISHED", &[]);
    assert_eq!(fx.lines("RELOAD_STARTED", &[]).len(), 1, "{}", fx.dump());
    assert!(fx.lines("RELOAD_FAILED", &[]).is_empty(), "{}", fx.dump());
    stop(fx);
}

#[test]
fn a_build_whose_workers_cannot_start_is_rolled_back_and_the_next_build_is_reloaded() {
    let dir = TempDir::new("watch-rollback");
    let app = copy_executable(Path::new(FIXTURE), &dir.0, "app");
    let fixture = std::fs::read(&app).expect("read the build");
    let v1 = file_hash(&app);
    let mut fx = start_watching(&app, 2, &[]);
    let old = fx.wait_hellos("worker/", 2);

    // A build that exits at once.
    deploy_bytes(&app, b"#!/bin/sh\nexit 3\n");
    let failed = fx.wait_line("RELOAD_FAILED", &[]);
    assert!(!failed.get("error").is_empty(), "{}", fx.dump());
    assert!(fx.lines("RELOAD_FINISHED", &[]).is_empty(), "{}", fx.dump());
    // The old workers serve on.
    std::thread::sleep(Duration::from_millis(500));
    for (worker, pid) in &old {
        assert!(pid_alive(*pid), "{worker} is gone\n{}", fx.dump());
    }
    assert_eq!(wait_on_build(&mut fx, 2, &v1).len(), 2);

    // The fix: the workers move onto it.
    let mut fixed = fixture;
    fixed.extend_from_slice(b"\n-- build 3 --\n");
    deploy_bytes(&app, &fixed);
    let v3 = file_hash(&app);
    let ids = wait_on_build(&mut fx, 2, &v3);
    assert_eq!(
        ids,
        [id("worker", 0, 3), id("worker", 1, 2)],
        "{}",
        fx.dump()
    );
    fx.wait_line("RELOAD_FINISHED", &[]);
    stop(fx);
}

/// The fixture's `workers` command: the ids of the workers that are not leaving, once the
/// list is `want` long.
fn wait_workers(fx: &mut Fixture, want: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let before = fx.lines("WORKERS", &[]).len();
        fx.command("workers");
        let line = fx.wait_for("a WORKERS answer", WAIT, |lines| {
            let all: Vec<_> = lines.iter().filter(|l| l.kind == "WORKERS").collect();
            all.get(before).map(|l| (*l).clone())
        });
        let ids: Vec<String> = line
            .get("list")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if ids.len() == want {
            return ids;
        }
        assert!(
            Instant::now() < deadline,
            "never {want} workers: {ids:?}\n{}",
            fx.dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigttin_and_sigttou_add_and_remove_a_worker_but_never_the_last() {
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "2")]);
    let first = fx.wait_hellos("worker/", 2);
    fx.signal(Signal::SIGTTIN);
    fx.wait_line("HELLO", &[("id", &id("worker", 2, 1))]);
    assert_eq!(wait_workers(&mut fx, 3).len(), 3);

    // One at a time: the kernel merges a signal into the same one still pending.
    fx.signal(Signal::SIGTTOU);
    fx.wait_line("EXIT", &[("id", &id("worker", 2, 1))]);
    fx.signal(Signal::SIGTTOU);
    fx.wait_line("EXIT", &[("id", &id("worker", 1, 1))]);
    assert_eq!(wait_workers(&mut fx, 1), [id("worker", 0, 1)]);
    fx.signal(Signal::SIGTTOU);
    let deadline = Instant::now() + WAIT;
    while !fx.stderr().contains("keeps its last worker") {
        assert!(
            Instant::now() < deadline,
            "the master never said why nothing changed\n{}",
            fx.dump()
        );
        idle(&mut fx, Duration::from_millis(50));
    }
    idle(&mut fx, Duration::from_millis(300));
    assert!(
        fx.lines("EXIT", &[("id", &id("worker", 0, 1))]).is_empty(),
        "the last worker was removed\n{}",
        fx.dump()
    );
    assert_eq!(wait_workers(&mut fx, 1), [id("worker", 0, 1)]);

    // Sent to the whole process group, as `kill -TTIN -PGID` does: the master scales, the
    // workers (which ignore it) are not stopped.
    fx.signal_group(Signal::SIGTTIN);
    fx.wait_line("HELLO", &[("id", &id("worker", 1, 2))]);
    let slot0 = first[&id("worker", 0, 1)];
    std::thread::sleep(Duration::from_millis(200));
    assert_ne!(proc_state(slot0), Some('T'), "a worker was stopped");
    assert_eq!(wait_workers(&mut fx, 2).len(), 2);
    stop(fx);
}
