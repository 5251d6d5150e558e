//! Upgrading the master itself (`clusterctl upgrade`): a new master takes over the listening
//! sockets, the control socket and the status port, under load, without a failed request;
//! every way the new master can fail leaves the old one serving.
//!
//! The masters of a test share the first one's process group (a new master is its old one's
//! child, in its group), so the guard that kills the group at the end kills them all.

mod support;

use std::collections::BTreeSet;
use std::io::IoSliceMut;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::unistd::Pid;
use support::ctl::{ctl, describe, text};
use support::http::{HttpCluster, Load};
use support::{
    TempDir, WAIT, copy_executable, deploy_modified_copy, example, file_hash, listening_inodes,
    poll, socket_inodes,
};

/// `clusterctl -s socket upgrade --wait`: the new master's pid and the milliseconds from the
/// request to it serving, or the whole output when it failed.
fn upgrade(socket: &Path) -> Result<(u32, u64), std::process::Output> {
    let out = ctl(socket, &["upgrade", "--wait", "--timeout", "60s"]);
    let stdout = text(&out.stdout);
    let done = stdout
        .lines()
        .find_map(|l| l.strip_prefix("upgrade: done, master pid "));
    match (out.status.success(), done) {
        (true, Some(rest)) => {
            let pid = rest.split(' ').next().and_then(|p| p.parse().ok());
            let ms = rest
                .split('(')
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|m| m.parse().ok());
            match (pid, ms) {
                (Some(pid), Some(ms)) => Ok((pid, ms)),
                _ => Err(out),
            }
        }
        _ => Err(out),
    }
}

/// The build the master on `socket` says it runs (`clusterctl status`: its executable's hash)
/// and its pid.
fn reported_build(socket: &Path) -> (String, u64) {
    let out = ctl(socket, &["status", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    (
        status["exe_hash"].as_str().expect("exe_hash").to_owned(),
        status["pid"].as_u64().expect("pid"),
    )
}

/// Whether `pid` has exited (gone, or a zombie left for its parent).
fn exited(pid: u32) -> bool {
    support::proc_state(pid as i32).is_none_or(|s| s == 'Z')
}

/// The workers `socket`'s master lists: pid → its parent.
fn workers(socket: &Path) -> Vec<(u32, Option<u32>)> {
    support::ctl::rows(socket)
        .iter()
        .filter_map(|r| r["pid"].as_u64())
        .map(|pid| (pid as u32, support::parent_of(pid as u32)))
        .collect()
}

/// Loops asking the status port (`/healthz`, a new connection each time) and the control
/// socket (`clusterctl list`) while the masters change: neither may go unanswered.
struct Probes {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl Probes {
    fn start(status: std::net::SocketAddr, socket: PathBuf) -> Probes {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let status_loop = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match support::ops::get(status, "/healthz", support::http::IO_TIMEOUT) {
                        Ok(r) if r.status == 200 => ok += 1,
                        other => failed.push(format!("/healthz: {other:?}")),
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                (ok, failed)
            })
        };
        let control_loop = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let out = ctl(&socket, &["list", "--json"]);
                    if out.status.success() {
                        ok += 1;
                    } else {
                        failed.push(format!("clusterctl list: {}", describe(&out)));
                    }
                }
                (ok, failed)
            })
        };
        Probes {
            stop,
            threads: vec![status_loop, control_loop],
        }
    }

    /// Answers from the status port, from the control socket, and every failure.
    fn stop(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut results = self
            .threads
            .into_iter()
            .map(|t| t.join().expect("a probe loop panicked"));
        let (status_ok, mut failed) = results.next().unwrap_or_default();
        let (control_ok, more) = results.next().unwrap_or_default();
        failed.extend(more);
        (status_ok, control_ok, failed)
    }
}

fn five_upgrades_under_load(policy: &str) {
    let dir = TempDir::new(&format!("upgrade-{policy}"));
    let app = copy_executable(&example("http"), &dir.0, "app");
    let v1 = file_hash(&app);
    let socket = dir.0.join("ctl.sock");
    let socket_text = socket.to_str().expect("UTF-8").to_owned();
    let cluster = HttpCluster::start_with_env(
        &app,
        2,
        policy,
        &[("CLUSTER_CONTROL_PATH", socket_text.as_str())],
    );
    let port = cluster.addr().port();
    let first_master = cluster.pid() as u32;
    let listening: BTreeSet<u64> = listening_inodes(port).into_iter().collect();
    assert_eq!(listening.len(), 1, "{}", cluster.dump());
    let before: BTreeSet<u32> = workers(&socket).into_iter().map(|(p, _)| p).collect();
    assert_eq!(before.len(), 2, "{}", cluster.dump());

    let (build_before, _) = reported_build(&socket);
    // A new build on disk: the masters after the first run it.
    let v2 = deploy_modified_copy(&app, b"\n-- build 2 --\n");
    assert_ne!(v1, v2);
    let load = Load::start(cluster.addr(), 4, 4);
    let probes = Probes::start(cluster.status_addr(), socket.clone());
    load.wait_more_ok(200);
    let mut masters = vec![first_master];
    let mut figures = Vec::new();
    for round in 0..5 {
        let old = *masters.last().expect("a master");
        let old_sockets = socket_inodes(old);
        let asked = Instant::now();
        let (new, serving_ms) = upgrade(&socket).unwrap_or_else(|out| {
            panic!("upgrade {round}: {}\n{}", describe(&out), cluster.dump())
        });
        poll("the old master's exit", WAIT, || {
            if exited(old) {
                Ok(())
            } else {
                Err(format!("master {old} still runs"))
            }
        });
        let old_gone_ms = asked.elapsed().as_millis();
        // No descriptor of the old master reached the new one but those handed over: the
        // listening socket, the status port, the control socket.
        let shared: BTreeSet<u64> = socket_inodes(new)
            .intersection(&old_sockets)
            .copied()
            .collect();
        assert_eq!(
            shared.len(),
            3,
            "round {round}: sockets of {old} {old_sockets:?} in {new} {:?}\n{}",
            socket_inodes(new),
            cluster.dump()
        );
        // The same listening socket all along: never closed, never bound again.
        assert!(
            shared.is_superset(&listening),
            "round {round}: {shared:?} {listening:?}"
        );
        load.wait_more_ok(200);
        figures.push((new, serving_ms, old_gone_ms));
        masters.push(new);
    }
    let tally = load.stop();
    tally.assert_none_failed("5 upgrades of the master", &cluster);
    // Clients the old master accepted just before a hand-over were answered by it, not cut off.
    let (status_ok, control_ok, probe_failures) = probes.stop();
    assert!(
        probe_failures.is_empty(),
        "the status port or the control socket did not answer: {probe_failures:#?}\n{}",
        cluster.dump()
    );
    assert!(status_ok > 0 && control_ok > 0, "{status_ok} {control_ok}");
    let last = *masters.last().expect("a master");
    // Every worker is the last master's, none of the first master's is left.
    let now = workers(&socket);
    assert_eq!(now.len(), 2, "{now:?}\n{}", cluster.dump());
    for (pid, parent) in &now {
        assert_eq!(*parent, Some(last), "worker {pid}\n{}", cluster.dump());
        assert!(
            !before.contains(pid),
            "worker {pid} survived\n{}",
            cluster.dump()
        );
    }
    assert_eq!(
        file_hash(Path::new(&format!("/proc/{last}/exe"))),
        v2,
        "the last master does not run the new build"
    );
    // And the master itself says so.
    let (build_after, reporter) = reported_build(&socket);
    assert_eq!(reporter, u64::from(last));
    assert_ne!(
        build_after, build_before,
        "the master reports the old build"
    );
    let stderr = cluster.stderr();
    assert!(!stderr.contains("leaked"), "{stderr}");
    assert_eq!(
        stderr.matches("upgrade: started by master").count(),
        5,
        "{stderr}"
    );
    println!(
        "{policy}: 5 upgrades under 4 keep-alive + 4 connection-per-request clients: {} requests, {} failed; /healthz on the status port answered {status_ok} times and `clusterctl list` {control_ok} times, 0 failed",
        tally.ok(),
        tally.failures().len()
    );
    for (i, (pid, serving, gone)) in figures.iter().enumerate() {
        println!(
            "  upgrade {}: new master {pid} serving {serving} ms after the request, old master gone after {gone} ms",
            i + 1
        );
    }
}

#[test]
fn five_upgrades_under_load_fail_no_request_shared() {
    five_upgrades_under_load("shared");
}

#[test]
fn five_upgrades_under_load_fail_no_request_round_robin() {
    five_upgrades_under_load("round-robin");
}

/// An ops-fixture cluster serving HTTP, with its control socket in `dir`.
fn ops_cluster(dir: &TempDir, env: &[(&str, String)]) -> (support::ops::Fixture, PathBuf, u16) {
    let socket = dir.0.join("ctl.sock");
    let port = support::free_port();
    let mut all = vec![
        ("CLUSTER_CONTROL_PATH", socket.display().to_string()),
        ("OPS_HTTP_PORT", port.to_string()),
    ];
    all.extend(env.iter().cloned());
    let mut fx = support::ops::Fixture::start(&all);
    fx.wait_ready(2);
    support::ctl::wait_ready(&socket, 2);
    (fx, socket, port)
}

#[test]
fn an_upgrade_whose_workers_never_become_ready_rolls_back_and_loses_nothing() {
    let dir = TempDir::new("upgrade-unready");
    let (mut fx, socket, port) = ops_cluster(
        &dir,
        &[
            ("OPS_UNREADY_FROM", "2".into()),
            ("CLUSTER_READY_TIMEOUT", "3s".into()),
        ],
    );
    let before = workers(&socket);
    let load = Load::start(support::ops::local(port), 2, 2);
    load.wait_more_ok(100);
    let first = {
        let socket = socket.clone();
        std::thread::spawn(move || upgrade(&socket))
    };
    // While the new master waits for workers that never become ready, one upgrade at a
    // time: a second one, a reload and a scale are refused, saying why.
    fx.wait_for("the new master's workers", WAIT, |lines| {
        (lines.iter().filter(|l| l.is("UNREADY", &[])).count() == 2).then_some(())
    });
    for args in [&["upgrade"][..], &["reload"], &["scale", "worker", "3"]] {
        let out = ctl(&socket, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", describe(&out));
        assert!(
            text(&out.stderr).contains("an upgrade of the master is under way"),
            "{args:?}: {}",
            describe(&out)
        );
    }
    let out = first
        .join()
        .expect("the upgrade's thread")
        .expect_err("the upgrade should fail");
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("of the new master was not ready within ready_timeout (3s)"),
        "{}",
        describe(&out)
    );
    assert!(stderr.contains("UNREADY id=worker/"), "{}", describe(&out));
    load.wait_more_ok(100);
    let tally = load.stop();
    assert!(
        tally.failures().is_empty(),
        "{:#?}\n{}",
        tally.failures(),
        fx.dump()
    );
    // The old master and its workers serve on; the control socket is still its.
    assert_eq!(workers(&socket), before, "{}", fx.dump());
    println!(
        "never-ready upgrade: rolled back, {} requests, 0 failed; clusterctl said:\n{}",
        tally.ok(),
        stderr
    );
}

#[test]
fn an_upgrade_to_invalid_options_rolls_back() {
    let dir = TempDir::new("upgrade-invalid");
    let config = dir.0.join("cluster.toml");
    std::fs::write(&config, "grace = \"2s\"\n").expect("write the options file");
    let (fx, socket, port) = ops_cluster(&dir, &[("CLUSTER_CONFIG", config.display().to_string())]);
    let before = workers(&socket);
    std::fs::write(&config, "grace = \"2s\"\ncount = 0\n").expect("write the options file");
    let out = upgrade(&socket).expect_err("the upgrade should fail");
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(text(&out.stderr).contains("count"), "{}", describe(&out));
    assert_eq!(workers(&socket), before, "{}", fx.dump());
    support::ops::must_get(support::ops::local(port), "/");
}

#[test]
fn sigkill_of_the_new_master_during_the_handover_leaves_the_old_one_serving() {
    let dir = TempDir::new("upgrade-killed");
    let (mut fx, socket, port) = ops_cluster(&dir, &[("OPS_UNREADY_FROM", "2".into())]);
    let before = workers(&socket);
    let load = Load::start(support::ops::local(port), 2, 2);
    let out = ctl(&socket, &["upgrade"]);
    assert!(out.status.success(), "{}", describe(&out));
    let new: u32 = text(&out.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{}", describe(&out)));
    // Its workers are up, and will never be ready: the handover is under way.
    let unready = fx.wait_for("the new master's workers", WAIT, |lines| {
        let pids: Vec<i32> = lines
            .iter()
            .filter(|l| l.is("UNREADY", &[]))
            .map(support::ops::Line::pid)
            .collect();
        (pids.len() == 2).then_some(pids)
    });
    kill(Pid::from_raw(new as i32), Signal::SIGKILL).expect("kill the new master");
    fx.wait_for("the old master's report", WAIT, |lines| {
        lines
            .iter()
            .any(|l| {
                l.text
                    .contains("upgrade failed: the new master was killed by SIGKILL")
            })
            .then_some(())
    });
    // Its workers died with it (their parent-death signal), and were reaped.
    for pid in unready {
        poll("the new master's worker's end", WAIT, || {
            if exited(pid as u32) {
                Ok(())
            } else {
                Err(format!("{pid} runs"))
            }
        });
    }
    load.wait_more_ok(100);
    let tally = load.stop();
    assert!(
        tally.failures().is_empty(),
        "{:#?}\n{}",
        tally.failures(),
        fx.dump()
    );
    assert_eq!(workers(&socket), before, "{}", fx.dump());
    // A second upgrade may start now.
    let out = ctl(&socket, &["upgrade"]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn a_crash_loop_cannot_reset_its_restart_count_by_upgrading() {
    let dir = TempDir::new("upgrade-intensity");
    let (mut fx, socket, _) = ops_cluster(
        &dir,
        &[
            ("OPS_MAX_RESTARTS", "3".into()),
            ("OPS_RESTART_WINDOW_MS", "120000".into()),
        ],
    );
    let crash = |_: &mut support::ops::Fixture, n: usize| {
        for i in 0..n {
            let (pid, _) = workers(&socket)[i % 2];
            kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill a worker");
            poll("the restart", WAIT, || {
                let rows = workers(&socket);
                if rows.len() == 2 && rows.iter().all(|(p, _)| *p != pid) {
                    Ok(())
                } else {
                    Err(format!("{rows:?}"))
                }
            });
            support::ctl::wait_ready(&socket, 2);
        }
    };
    crash(&mut fx, 2);
    let (new, _) = upgrade(&socket).unwrap_or_else(|out| panic!("{}", describe(&out)));
    poll("the new master's workers", WAIT, || {
        let rows = workers(&socket);
        if rows.len() == 2 && rows.iter().all(|(_, parent)| *parent == Some(new)) {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    });
    support::ctl::wait_ready(&socket, 2);
    // Two more crashes: four in the window, one past `max_restarts`, only if the new master
    // counts the two before it.
    crash(&mut fx, 1);
    let (pid, _) = workers(&socket)[0];
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill a worker");
    fx.wait_for("the restart limit", WAIT, |lines| {
        lines.iter().any(|l| l.is("LIMIT", &[])).then_some(())
    });
    poll("the new master's exit", WAIT, || {
        if exited(new) {
            Ok(())
        } else {
            Err(format!("{new} runs"))
        }
    });
}

/// A datagram socket playing systemd's `NOTIFY_SOCKET`, recording each message with the pid
/// that sent it (`SO_PASSCRED`).
struct FakeSystemd {
    path: PathBuf,
    got: Arc<Mutex<Vec<(u32, String)>>>,
    _dir: TempDir,
}

impl FakeSystemd {
    fn bind() -> FakeSystemd {
        let dir = TempDir::new("upgrade-notify");
        let path = dir.0.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        setsockopt(&socket, sockopt::PassCred, &true).expect("SO_PASSCRED");
        let got: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
                let mut iov = [IoSliceMut::new(&mut buf)];
                let Ok(msg) = recvmsg::<()>(
                    socket.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                ) else {
                    return;
                };
                let pid = msg
                    .cmsgs()
                    .ok()
                    .and_then(|mut c| {
                        c.find_map(|c| match c {
                            ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid() as u32),
                            _ => None,
                        })
                    })
                    .unwrap_or(0);
                let n = msg.bytes;
                let text = String::from_utf8_lossy(&buf[..n])
                    .trim_end()
                    .replace('\n', ";");
                sink.lock().unwrap().push((pid, text));
            }
        });
        FakeSystemd {
            path,
            got,
            _dir: dir,
        }
    }

    fn messages(&self) -> Vec<(u32, String)> {
        self.got.lock().unwrap().clone()
    }
}

#[test]
fn systemd_hears_the_new_main_pid_before_the_old_master_exits() {
    let systemd = FakeSystemd::bind();
    let dir = TempDir::new("upgrade-systemd");
    let (fx, socket, port) = ops_cluster(
        &dir,
        &[("NOTIFY_SOCKET", systemd.path.display().to_string())],
    );
    let old = fx.pid() as u32;
    poll("READY=1 from the old master", WAIT, || {
        let got = systemd.messages();
        got.iter()
            .any(|(pid, m)| *pid == old && m.contains("READY=1"))
            .then_some(())
            .ok_or_else(|| format!("{got:?}"))
    });
    let (new, _) = upgrade(&socket).unwrap_or_else(|out| panic!("{}", describe(&out)));
    poll("the old master's exit", WAIT, || {
        if exited(old) {
            Ok(())
        } else {
            Err(format!("{old} runs"))
        }
    });
    let got = systemd.messages();
    let main_pid = format!("MAINPID={new}");
    let from_old = got
        .iter()
        .position(|(pid, m)| *pid == old && m.contains(&main_pid))
        .unwrap_or_else(|| panic!("the old master never announced {new}: {got:#?}"));
    let from_new = got
        .iter()
        .position(|(pid, m)| *pid == new && m.contains(&main_pid) && m.contains("READY=1"))
        .unwrap_or_else(|| panic!("the new master never said READY: {got:#?}"));
    assert!(from_old < from_new, "{got:#?}");
    // Nothing from the new master before it took over, nothing from the old one after.
    assert!(
        got[..from_new].iter().all(|(pid, _)| *pid != new),
        "{got:#?}"
    );
    assert!(
        got[from_old + 1..].iter().all(|(pid, _)| *pid != old),
        "the old master spoke after handing over (a STOPPING=1 would stop the service): {got:#?}"
    );
    support::ops::must_get(support::ops::local(port), "/");
    println!("systemd heard: {got:?}");
}
