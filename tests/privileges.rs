//! Least privilege: a master started as root binds a port below 1024 and serves it through
//! workers running as `nobody`, with the limits, umask, nice value, CPUs, `no_new_privs` and
//! environment the options give them, each checked where the kernel shows it (/proc). And a
//! user that does not exist, or a drop that fails in the child, stops the master with exit
//! code 2 before any worker runs.
//!
//! These need root, as CI runs them; run elsewhere they say so and pass without checking.

mod support;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{FIXTURE, Fixture, TempPath, WAIT, pid_alive, wait_until};

const NOBODY: &str = "65534";

fn is_root() -> bool {
    proc_field(std::process::id(), "status", "Uid:").is_some_and(|ids| ids.starts_with("0\t"))
}

/// The value after `key` in /proc/PID/FILE, trimmed.
fn proc_field(pid: u32, file: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
}

/// The soft and hard values of a row of /proc/PID/limits (`Max open files`).
fn limit(pid: u32, row: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("no {row:?} in\n{limits}"));
    let mut values = line[row.len()..].split_whitespace();
    (
        values.next().unwrap_or_default().to_owned(),
        values.next().unwrap_or_default().to_owned(),
    )
}

/// The nice value of `pid`: field 19 of /proc/PID/stat.
fn nice(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    // Fields from 3 (state) on; the nice value is field 19.
    after
        .split_whitespace()
        .nth(16)
        .unwrap_or_default()
        .to_owned()
}

/// A port below 1024 that nothing listens on, bound here (as root) to check it, and released
/// for the master to bind.
fn free_privileged_port() -> u16 {
    (600..1024)
        .rev()
        .find(|&port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok())
        .expect("a free port below 1024")
}

/// The CPUs this process may run on, from /proc (`0-1` -> [0, 1]).
fn allowed_cpus() -> Vec<String> {
    let list = proc_field(std::process::id(), "status", "Cpus_allowed_list:").expect("cpus");
    list.split(',')
        .flat_map(|item| match item.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().expect("cpu"), b.parse().expect("cpu"));
                (a..=b).map(|c| c.to_string()).collect::<Vec<_>>()
            }
            None => vec![item.to_owned()],
        })
        .collect()
}

#[test]
fn workers_run_as_nobody_on_a_port_below_1024_the_master_bound_with_their_limits() {
    if !is_root() {
        eprintln!("skipped: needs root to bind below 1024 and to switch users");
        return;
    }
    let secret = TempPath::new("secret");
    std::fs::write(&secret.0, "root only\n").expect("write the secret");
    std::fs::set_permissions(&secret.0, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let port = free_privileged_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let addr_text = addr.to_string();
    let mut fx = Fixture::start(&[
        ("FIXTURE_COUNT", "2"),
        ("FIXTURE_LISTEN", &addr_text),
        ("FIXTURE_SERVE", "1"),
        ("FIXTURE_PROBE", secret.as_str()),
        ("CLUSTER_USER", "nobody"),
        (
            "CLUSTER_RLIMITS",
            "nofile=777:888, nproc=500, core=0, as=8GiB",
        ),
        ("CLUSTER_UMASK", "0027"),
        ("CLUSTER_NICE", "7"),
        ("CLUSTER_CPU_AFFINITY", "spread"),
        ("CLUSTER_NO_NEW_PRIVS", "true"),
        ("CLUSTER_ENV_CLEAR", "true"),
        ("CLUSTER_ENV_ALLOW", "FIXTURE_*, PROBE_ALLOWED"),
        ("PROBE_ALLOWED", "yes"),
        ("PROBE_DENIED", "leaked"),
    ]);
    let hellos = fx.wait_hellos("worker/", 2);
    let cpus = allowed_cpus();
    for slot in 0..2usize {
        let probe = fx.wait_line("PROBE", &[("id", &support::id("worker", slot, 1))]);
        let pid = probe.pid() as u32;
        assert_eq!(probe.get("uid"), NOBODY, "{}", fx.dump());
        assert_eq!(
            probe.get("read"),
            "denied",
            "the 0600 root file\n{}",
            fx.dump()
        );
        assert_eq!(
            probe.get("allowed"),
            "yes",
            "an allowed variable\n{}",
            fx.dump()
        );
        assert_eq!(
            probe.get("denied"),
            "-",
            "a variable not allowed\n{}",
            fx.dump()
        );
        // What the worker was started with (its bootstrap removes the cluster's variables
        // from its live environment, not from this copy): the cluster's own, the allowed
        // ones, nothing else of the master's.
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
        let environ: Vec<String> = environ
            .split(|&b| b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        for var in [
            "CLUSTER_WORKER_GROUP=worker",
            "CLUSTER_WORKER_SLOT=",
            "CLUSTER_IPC_FD=",
            "CLUSTER_HEARTBEAT_MS=",
            "PROBE_ALLOWED=yes",
            "FIXTURE_PROBE=",
        ] {
            assert!(
                environ.iter().any(|v| v.starts_with(var)),
                "{var} in {environ:?}"
            );
        }
        for var in ["PROBE_DENIED=", "PATH=", "CLUSTER_USER="] {
            assert!(
                !environ.iter().any(|v| v.starts_with(var)),
                "no {var} in {environ:?}"
            );
        }
        let ids = |key| proc_field(pid, "status", key).unwrap_or_default();
        assert_eq!(
            ids("Uid:"),
            format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}")
        );
        assert_eq!(
            ids("Gid:"),
            format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}")
        );
        // initgroups: nobody's own groups, none of root's.
        assert_eq!(ids("Groups:"), NOBODY);
        assert_eq!(ids("Umask:"), "0027");
        assert_eq!(ids("NoNewPrivs:"), "1");
        assert_eq!(
            ids("Cpus_allowed_list:"),
            cpus[slot % cpus.len()],
            "slot {slot}"
        );
        assert_eq!(nice(pid), "7");
        assert_eq!(limit(pid, "Max open files"), ("777".into(), "888".into()));
        assert_eq!(limit(pid, "Max processes"), ("500".into(), "500".into()));
        assert_eq!(limit(pid, "Max core file size"), ("0".into(), "0".into()));
        let as_bytes = (8u64 << 30).to_string();
        assert_eq!(
            limit(pid, "Max address space"),
            (as_bytes.clone(), as_bytes)
        );
    }
    // The master keeps root, its limits and its nice value: it binds for the workers.
    let master = fx.pid() as u32;
    assert!(proc_field(master, "status", "Uid:").is_some_and(|u| u.starts_with("0\t")));
    assert_eq!(
        proc_field(master, "status", "NoNewPrivs:").as_deref(),
        Some("0")
    );
    // The port the master bound as root is served by the workers running as nobody.
    let worker_pids: Vec<String> = hellos.values().map(|p| p.to_string()).collect();
    let mut served = String::new();
    let mut stream = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.read_to_string(&mut served).expect("read the answer");
    let line = support::Line::parse(served.trim());
    assert_eq!(line.kind, "SERVED", "{served:?}");
    assert_eq!(line.get("uid"), NOBODY);
    assert!(
        worker_pids.iter().any(|p| p == line.get("pid")),
        "{served:?} from {worker_pids:?}"
    );
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit_code(WAIT), 0, "{}", fx.dump());
}

#[test]
fn a_worker_running_as_nobody_still_dies_with_its_master() {
    if !is_root() {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "1"), ("CLUSTER_USER", "nobody")]);
    let worker = fx
        .wait_hellos("worker/", 1)
        .into_values()
        .next()
        .expect("a worker");
    assert_eq!(
        proc_field(worker as u32, "status", "Uid:")
            .and_then(|u| u.split('\t').next().map(str::to_owned)),
        Some(NOBODY.to_owned())
    );
    // Stopped, the worker cannot notice its channel closing and exit by itself: only the
    // parent-death signal (SIGKILL) ends it, and the kernel clears that signal when the
    // credentials change, so it must have been set after the drop.
    kill(Pid::from_raw(worker), Signal::SIGSTOP).expect("stop the worker");
    fx.signal(Signal::SIGKILL);
    wait_until("the stopped worker killed with its master", WAIT, || {
        !pid_alive(worker)
    });
}

#[test]
fn a_user_that_does_not_exist_stops_the_master_with_exit_2_before_any_worker() {
    let mut fx = Fixture::start(&[("CLUSTER_USER", "no-such-user-here")]);
    let code = fx.wait_exit_code(WAIT);
    fx.finish(WAIT);
    assert_eq!(code, 2, "{}", fx.dump());
    let stderr = fx.stderr();
    assert!(stderr.contains("invalid option `user`"), "{stderr}");
    assert!(
        stderr.contains("no user named \"no-such-user-here\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("getpwnam"),
        "says what was looked up: {stderr}"
    );
    assert!(fx.history.is_empty(), "no worker, no event\n{}", fx.dump());
}

#[test]
fn a_drop_that_fails_in_the_child_stops_the_master_with_exit_2_not_a_retry_loop() {
    if !is_root()
        || std::process::Command::new("unshare")
            .arg("--help")
            .output()
            .is_err()
    {
        eprintln!("skipped: needs root and unshare(1)");
        return;
    }
    // Root in a user namespace of its own where only uid 0 is mapped, and where setgroups is
    // denied: the master's checks pass (it is root, nobody exists), the child's drop fails.
    let mut fx = Fixture::start_program(
        std::path::Path::new("unshare"),
        &[("CLUSTER_USER", "nobody")],
        |cmd| {
            cmd.args(["--user", "--map-root-user", FIXTURE]);
        },
    );
    let code = fx.wait_exit_code(WAIT);
    fx.finish(WAIT);
    assert_eq!(code, 2, "{}", fx.dump());
    let stderr = fx.stderr();
    assert!(stderr.contains("(to run as nobody (uid 65534"), "{stderr}");
    assert!(
        stderr.contains("failed setting its supplementary groups"),
        "{stderr}"
    );
    assert!(!stderr.contains("retrying"), "no retry loop: {stderr}");
    assert!(
        fx.lines("WSTART", &[]).is_empty(),
        "no worker ran\n{}",
        fx.dump()
    );
    // Bounded: the master stopped at the first failure rather than after a backoff.
    assert!(fx.lines("SPAWNED", &[]).is_empty(), "{}", fx.dump());
}
