//! The control socket and `clusterctl`, driven as real processes: every command against a
//! cluster-fixture cluster, `reload --wait`'s exit codes, a second master of the same name, a
//! stale socket, a peer of another uid, and the time `clusterctl list` takes on 64 workers.
//! Each test's socket is in a directory of its own (`FIXTURE_CONTROL_PATH`), so they run in
//! parallel.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::ctl::{CTL, ctl, describe, rows, start, text, wait_ready};
use support::{Fixture, TempDir, WAIT, poll};

#[test]
fn every_command_list_status_scale_restart_stop() {
    let dir = TempDir::new("ctl-every");
    let (mut fx, socket) = start(&dir, &[("FIXTURE_COUNT", "2")]);
    let first = wait_ready(&socket, 2);
    assert_eq!(first[0]["group"], "worker");
    assert_eq!(first[0]["generation"], 1);

    let list = ctl(&socket, &["list"]);
    assert!(list.status.success(), "{}", describe(&list));
    let table = text(&list.stdout);
    for header in [
        "group", "slot", "pid", "gen", "state", "uptime", "cpu", "mem", "conns",
    ] {
        assert!(table.contains(header), "{header} in\n{table}");
    }
    assert_eq!(table.matches("│ worker ").count(), 2, "{table}");

    let status = ctl(&socket, &["status", "--json"]);
    assert!(status.status.success(), "{}", describe(&status));
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["pid"], fx.pid());
    assert_eq!(status["name"], "cluster-fixture");
    assert_eq!(status["exe_hash"].as_str().unwrap().len(), 16);
    let options = status["options"].as_array().unwrap();
    assert!(
        options
            .iter()
            .any(|o| o["name"] == "count" && o["value"] == "2"),
        "{options:?}"
    );
    assert!(
        options
            .iter()
            .any(|o| o["name"] == "control_path" && o["value"] == socket.to_str().unwrap()),
        "{options:?}"
    );
    let human = ctl(&socket, &["status"]);
    assert!(
        text(&human.stdout).contains("options in force:"),
        "{}",
        describe(&human)
    );

    for (arg, n) in [("+2", 4), ("-1", 3), ("2", 2)] {
        let out = ctl(&socket, &["scale", "worker", arg]);
        assert!(out.status.success(), "scale {arg}: {}", describe(&out));
        assert!(
            text(&out.stdout).contains(&format!("scaled to {n}")),
            "{}",
            describe(&out)
        );
        wait_ready(&socket, n);
    }
    let out = ctl(&socket, &["scale", "worker", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("at least 1"),
        "{}",
        describe(&out)
    );
    let out = ctl(&socket, &["scale", "nope", "+1"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("no group named \"nope\""),
        "{}",
        describe(&out)
    );

    let out = ctl(&socket, &["restart", "worker/1"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains("worker/1#2 is ready"),
        "{}",
        describe(&out)
    );
    let rows = wait_ready(&socket, 2);
    let slot1 = rows.iter().find(|r| r["slot"] == 1).unwrap();
    assert_eq!(slot1["generation"], 2, "{rows:?}");
    let out = ctl(&socket, &["restart", "worker/7"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    let out = ctl(&socket, &["stop", "--grace", "2s"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(text(&out.stdout).contains("stopped"), "{}", describe(&out));
    // `stop` returned once the master had exited: its socket is gone with it.
    assert_eq!(fx.wait_exit_code(Duration::from_secs(5)), 0);
    assert!(!socket.exists(), "the socket is removed on exit");
}

#[test]
fn reload_wait_exits_0_when_every_slot_was_replaced() {
    let dir = TempDir::new("ctl-reload-ok");
    let (_fx, socket) = start(&dir, &[("FIXTURE_COUNT", "3")]);
    wait_ready(&socket, 3);
    let out = ctl(&socket, &["reload", "--wait", "--timeout", "30s"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = text(&out.stdout);
    for slot in 0..3 {
        assert!(
            stdout.contains(&format!("worker/{slot}: worker/{slot}#2 is ready")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("reload: done"), "{stdout}");
    let rows = wait_ready(&socket, 3);
    assert!(rows.iter().all(|r| r["generation"] == 2), "{rows:?}");
}

#[test]
fn reload_wait_exits_3_naming_the_slot_when_a_replacement_never_becomes_ready() {
    let dir = TempDir::new("ctl-reload-bad");
    let (_fx, socket) = start(
        &dir,
        &[
            ("FIXTURE_COUNT", "2"),
            ("FIXTURE_UNREADY_FROM", "2"),
            ("FIXTURE_READY_TIMEOUT_MS", "1000"),
        ],
    );
    let before = wait_ready(&socket, 2);
    let out = ctl(&socket, &["reload", "--wait"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("reload failed at worker/0"), "{stderr}");
    assert!(stderr.contains("rolled back"), "{stderr}");
    // The ready timer's kill says so, not just "killed by SIGKILL".
    let not_ready = "worker/0#2 was not ready within ready_timeout (1s) and was killed";
    assert!(stderr.contains(not_ready), "{stderr}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("worker/0: starting worker/0#2"),
        "{}",
        describe(&out)
    );
    assert!(
        stdout.contains(&format!("worker/0: {not_ready}\n")),
        "{}",
        describe(&out)
    );
    // The old workers keep serving.
    let after = wait_ready(&socket, 2);
    let pids = |rows: &[Value]| rows.iter().map(|r| r["pid"].clone()).collect::<Vec<_>>();
    assert_eq!(pids(&before), pids(&after));
}

#[test]
fn reload_wait_exits_4_when_the_timeout_runs_out_first() {
    let dir = TempDir::new("ctl-reload-timeout");
    let (_fx, socket) = start(
        &dir,
        &[("FIXTURE_COUNT", "1"), ("FIXTURE_UNREADY_FROM", "2")],
    );
    wait_ready(&socket, 1);
    let out = ctl(&socket, &["reload", "--wait", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("no longer waiting"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_second_master_of_the_same_name_is_refused_with_the_first_ones_pid() {
    let dir = TempDir::new("ctl-second");
    let (first, socket) = start(&dir, &[("FIXTURE_COUNT", "1")]);
    wait_ready(&socket, 1);
    let (mut second, _) = start(&dir, &[("FIXTURE_COUNT", "1")]);
    let code = second.wait_exit_code(WAIT);
    // Its stderr is read by a thread that may not have drained the pipe yet when the exit is
    // seen: wait for the pipe's end, as the other tests of a master's last words do.
    second.finish(WAIT);
    assert_ne!(code, 0);
    let stderr = second.stderr();
    assert!(
        stderr.contains(&format!(
            "another master named cluster-fixture is running, pid {}",
            first.pid()
        )),
        "{stderr}"
    );
    assert!(
        second.lines("HELLO", &[]).is_empty(),
        "no worker of the second started"
    );
    // The first one's socket is untouched.
    assert_eq!(rows(&socket).len(), 1);
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = TempDir::new("ctl-stale");
    let socket = dir.0.join("ctl.sock");
    // A socket file nobody listens on, as a SIGKILLed master leaves.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let (fx, socket) = start(&dir, &[("FIXTURE_COUNT", "1")]);
    wait_ready(&socket, 1);
    drop(fx); // SIGKILL: the socket stays behind, stale.
    assert!(socket.exists());
    let (_fx, socket) = start(&dir, &[("FIXTURE_COUNT", "1")]);
    wait_ready(&socket, 1);
}

#[test]
fn a_peer_of_another_uid_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run the client as nobody");
        return;
    }
    let dir = TempDir::new("ctl-uid");
    let (_fx, socket) = start(&dir, &[("FIXTURE_COUNT", "1")]);
    wait_ready(&socket, 1);
    // A copy of clusterctl that nobody may run (the target directory may not be reachable).
    let exe = dir.0.join("clusterctl");
    std::fs::copy(CTL, &exe).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let open = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    open(&dir.0, 0o755);
    open(&exe, 0o755);
    let as_nobody = || {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .arg("-s")
            .arg(&socket)
            .arg("list")
            .output()
            .expect("run setpriv")
    };
    // The socket's mode keeps others out first...
    let out = as_nobody();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        describe(&out)
    );
    // ...and with the mode opened, the master's uid check (SO_PEERCRED) still refuses.
    open(&socket, 0o777);
    let out = as_nobody();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("a client of uid 65534 may not control it"),
        "{}",
        describe(&out)
    );
    // Root still may.
    assert!(ctl(&socket, &["list"]).status.success());
}

#[test]
fn help_for_every_command_and_completions() {
    for command in [
        vec!["--help"],
        vec!["list", "--help"],
        vec!["status", "--help"],
        vec!["monit", "--help"],
        vec!["reload", "--help"],
        vec!["restart", "--help"],
        vec!["scale", "--help"],
        vec!["stop", "--help"],
        vec!["completions", "--help"],
    ] {
        let out = Command::new(CTL).args(&command).output().unwrap();
        assert!(out.status.success(), "{command:?}: {}", describe(&out));
        assert!(
            text(&out.stdout).contains("Usage: clusterctl"),
            "{command:?}"
        );
    }
    let out = Command::new(CTL)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("_clusterctl"));
    // Found by name when no socket is given: a name nobody runs says where it looked.
    let out = Command::new(CTL)
        .env("XDG_RUNTIME_DIR", &TempDir::new("ctl-none").0)
        .args(["-n", "nothing-here", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no cluster named \"nothing-here\""),
        "{}",
        describe(&out)
    );
}

#[test]
fn found_by_name_and_as_the_only_one_running() {
    let runtime = TempDir::new("ctl-byname");
    let mut fx = Fixture::start_with(&[("FIXTURE_COUNT", "1"), ("FIXTURE_NAME", "shop")], |cmd| {
        cmd.env("XDG_RUNTIME_DIR", &runtime.0);
    });
    fx.wait_hellos("worker/", 1);
    let run = |args: &[&str]| {
        Command::new(CTL)
            .env("XDG_RUNTIME_DIR", &runtime.0)
            .args(args)
            .output()
            .unwrap()
    };
    let out = poll("the socket by name", WAIT, || {
        let out = run(&["-n", "shop", "status", "--json"]);
        if out.status.success() {
            Ok(out)
        } else {
            Err(describe(&out))
        }
    });
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["name"], "shop");
    let socket = runtime.0.join("cluster/shop.sock");
    assert_eq!(status["control_path"], socket.to_str().unwrap());
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(&runtime.0.join("cluster")), 0o700);
    // The only one running.
    assert!(run(&["list"]).status.success());
}

/// `clusterctl list` against 64 workers: the median of 20 runs, printed (run with
/// `--nocapture` to see it) and bounded loosely, since CI machines vary.
#[test]
fn list_against_64_workers_median_of_20() {
    let dir = TempDir::new("ctl-64");
    let (_fx, socket) = start(&dir, &[("FIXTURE_COUNT", "64")]);
    wait_ready(&socket, 64);
    let mut times: Vec<Duration> = (0..20)
        .map(|_| {
            let start = Instant::now();
            let out = ctl(&socket, &["list"]);
            let took = start.elapsed();
            assert!(out.status.success(), "{}", describe(&out));
            assert_eq!(text(&out.stdout).matches("│ worker ").count(), 64);
            took
        })
        .collect();
    times.sort();
    let median = (times[9] + times[10]) / 2;
    println!(
        "clusterctl list, 64 workers: median {:.2} ms of 20 runs (min {:.2}, max {:.2})",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[19].as_secs_f64() * 1e3
    );
    assert!(median < Duration::from_millis(500), "{median:?}");
}

#[test]
fn status_shows_the_requests_under_way_for_over_a_second() {
    use support::ops::{self, local};
    let dir = TempDir::new("ctl-slow");
    let socket = dir.0.join("ctl.sock");
    let http = support::free_port();
    let mut fx = ops::Fixture::start(&[
        ("OPS_COUNT", "1".into()),
        ("OPS_HTTP_PORT", http.to_string()),
        ("OPS_HEARTBEAT_MS", "200".into()),
        (
            "CLUSTER_CONTROL_PATH",
            socket.to_str().expect("a UTF-8 path").to_owned(),
        ),
    ]);
    let pid = fx.wait_ready(1)["worker/0#1"];
    let human = ctl(&socket, &["status"]);
    assert!(
        text(&human.stdout).contains("slow      no request under way for over 1 s\n"),
        "{}",
        describe(&human)
    );
    let held = std::thread::spawn(move || {
        ops::get(local(http), "/await-4000", Duration::from_secs(20)).map(|r| r.status)
    });
    let slow = poll("the request in `status --json`", WAIT, || {
        let out = ctl(&socket, &["status", "--json"]);
        let status: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        match status["slow_requests"].as_array() {
            Some(slow) if !slow.is_empty() => Ok(slow[0].clone()),
            _ => Err(status["slow_requests"].to_string()),
        }
    });
    assert_eq!(slow["path"], "/await-4000", "{slow}");
    assert_eq!(slow["method"], "GET", "{slow}");
    assert_eq!(slow["group"], "worker", "{slow}");
    assert_eq!(slow["pid"], pid, "{slow}");
    assert!(slow["age_ms"].as_u64().unwrap() >= 1000, "{slow}");
    let human = ctl(&socket, &["status"]);
    let out = text(&human.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("GET /await-4000"))
        .unwrap_or_else(|| panic!("{}", describe(&human)));
    assert!(
        line.trim_start()
            .starts_with(&format!("worker/0#1  pid {pid}  "))
            && line.contains(" ms "),
        "{line}"
    );
    assert_eq!(held.join().unwrap().unwrap(), 200);
    fx.stop_cleanly();
}
