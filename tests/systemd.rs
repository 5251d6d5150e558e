//! Running under systemd and as a container's PID 1, with real processes: the `sd_notify`
//! messages a service manager receives (a datagram socket bound here plays systemd), socket
//! activation through `systemd-socket-activate` (Debian package systemd) with a restart of the
//! whole master under load, and orphans reaped by the master as a subreaper and as PID 1 of a
//! new PID namespace (`unshare`).

mod support;

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::http::{Load, get_once};
use support::process::{Captured, Group, group_command};
use support::{
    Exit, FIXTURE, Fixture, TempDir, WAIT, example, free_port, id, listening_inodes, parent_of,
    poll, proc_state, socket_inodes, wait_until,
};

// ---------------------------------------------------------------------------------------
// sd_notify
// ---------------------------------------------------------------------------------------

/// A datagram socket playing systemd's `NOTIFY_SOCKET`: every message received, with when.
struct FakeSystemd {
    path: std::path::PathBuf,
    got: Arc<Mutex<Vec<(Instant, String)>>>,
    _dir: TempDir,
}

impl FakeSystemd {
    fn bind() -> FakeSystemd {
        let dir = TempDir::new("notify");
        let path = dir.0.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let got: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let sink = got.clone();
        // Ends with the test binary: a blocked recv on a socket nobody else holds.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n])
                    .trim_end()
                    .replace('\n', ";");
                sink.lock().unwrap().push((Instant::now(), text));
            }
        });
        FakeSystemd {
            path,
            got,
            _dir: dir,
        }
    }

    fn messages(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    fn watchdogs_since(&self, since: Instant) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, m)| *at >= since && m == "WATCHDOG=1")
            .count()
    }

    /// Waits until a message after the first `after` messages satisfies `want`; returns its
    /// index.
    fn wait_message(&self, what: &str, after: usize, want: impl Fn(&str) -> bool) -> usize {
        poll(what, WAIT, || {
            let got = self.messages();
            got.iter()
                .enumerate()
                .skip(after)
                .find(|(_, m)| want(m))
                .map(|(i, _)| i)
                .ok_or_else(|| format!("received {got:#?}"))
        })
    }
}

fn monotonic_usec() -> i128 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    i128::from(now.tv_sec()) * 1_000_000 + i128::from(now.tv_nsec()) / 1_000
}

/// The `MONOTONIC_USEC=` value of a message.
fn monotonic_of(message: &str) -> Option<i128> {
    message
        .split(';')
        .find_map(|f| f.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
}

/// A process's environment variable names, from /proc.
fn env_names(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("read a worker's environ");
    raw.split(|&b| b == 0)
        .filter_map(|kv| kv.split(|&b| b == b'=').next())
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// The messages with each run of watchdog pings shown once, with its length.
fn condensed(messages: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut pings = 0;
    for m in messages {
        if m == "WATCHDOG=1" {
            pings += 1;
            continue;
        }
        if pings > 0 {
            out.push(format!("WATCHDOG=1 x{pings}"));
            pings = 0;
        }
        out.push(m.clone());
    }
    if pings > 0 {
        out.push(format!("WATCHDOG=1 x{pings}"));
    }
    out
}

#[test]
fn systemd_hears_ready_reloading_ready_and_stopping_and_the_watchdog_stops_with_the_master() {
    let systemd = FakeSystemd::bind();
    let socket = systemd.path.to_str().expect("a UTF-8 path").to_owned();
    let mut fx = Fixture::start(&[
        ("FIXTURE_COUNT", "2"),
        ("CLUSTER_MIN_READY", "2"),
        // The replacements take a while, so the reload spans several loop turns.
        ("FIXTURE_READY_DELAY_MS", "300"),
        ("NOTIFY_SOCKET", &socket),
        // A ping every 100 ms.
        ("WATCHDOG_USEC", "200000"),
    ]);
    let workers = fx.wait_hellos("worker/", 2);
    let ready = systemd.wait_message("READY=1", 0, |m| m.starts_with("READY=1"));
    assert_eq!(
        systemd.messages()[ready],
        "READY=1;STATUS=2/2 workers ready, 0 restarts",
        "{}",
        fx.dump()
    );
    // The protocol is the master's: its workers do not inherit it.
    for pid in workers.values() {
        let names = env_names(*pid);
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            assert!(!names.iter().any(|n| n == var), "a worker has {var}");
        }
    }

    let before = monotonic_usec();
    fx.signal(Signal::SIGUSR2);
    let reloading = systemd.wait_message("RELOADING=1", ready, |m| m.starts_with("RELOADING=1"));
    let after = monotonic_usec();
    let at = monotonic_of(&systemd.messages()[reloading]).expect("MONOTONIC_USEC with RELOADING");
    assert!(
        (before..=after).contains(&at),
        "MONOTONIC_USEC {at} is not when the reload started ({before}..{after})"
    );
    let ready_again =
        systemd.wait_message("READY=1 after the reload", reloading, |m| m == "READY=1");
    fx.wait_line("RELOAD_FINISHED", &[]);
    let during: Vec<String> = systemd.messages()[reloading..ready_again].to_vec();
    assert!(
        during
            .iter()
            .any(|m| m.starts_with("STATUS=2/2 workers ready, 0 restarts, reloading 1/2")),
        "{during:#?}"
    );

    // Stopped, the master's loop does not turn, and the pings stop; they resume with it.
    fx.signal(Signal::SIGSTOP);
    wait_until("the master stopped", WAIT, || {
        proc_state(fx.pid()) == Some('T')
    });
    // A ping already sent may still be in the socket's queue: count from a moment later.
    std::thread::sleep(Duration::from_millis(50));
    let stopped_at = Instant::now();
    // Ten ping intervals.
    std::thread::sleep(Duration::from_secs(1));
    let while_stopped = systemd.watchdogs_since(stopped_at);
    fx.signal(Signal::SIGCONT);
    let resumed = Instant::now();
    wait_until("a watchdog ping after SIGCONT", WAIT, || {
        systemd.watchdogs_since(resumed) > 0
    });
    assert_eq!(while_stopped, 0, "pings while the master was stopped");

    let before_stop = systemd.messages().len();
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit_code(WAIT), 0, "{}", fx.dump());
    let stopping = systemd.wait_message("STOPPING=1", before_stop, |m| m == "STOPPING=1");

    let all = systemd.messages();
    assert!(
        ready < reloading && reloading < ready_again && ready_again < stopping,
        "{all:#?}"
    );
    // STATUS= is sent on change only.
    let statuses: Vec<&String> = all.iter().filter(|m| m.contains("STATUS=")).collect();
    for pair in statuses.windows(2) {
        let text = |m: &str| m.split("STATUS=").nth(1).map(str::to_owned);
        assert_ne!(text(pair[0]), text(pair[1]), "{all:#?}");
    }
    println!(
        "notifications received over start, reload (SIGUSR2), SIGSTOP/SIGCONT and stop:\n{}",
        condensed(&all).join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Socket activation
// ---------------------------------------------------------------------------------------

/// examples/http started by `systemd-socket-activate`, which holds the listening socket. The
/// program it starts is a shell that runs the master again each time it exits, with
/// `LISTEN_PID` set to the master's pid as systemd would: the activator's socket outlives
/// every master, as a socket unit's does across service restarts.
struct Activated {
    group: Group,
    addr: std::net::SocketAddr,
    stdout: Captured,
    stderr: Captured,
}

impl Activated {
    fn start(policy: &str) -> Activated {
        let activate = "/usr/bin/systemd-socket-activate";
        assert!(
            Path::new(activate).exists(),
            "{activate} is missing: apt-get install systemd (as .ci/run does)"
        );
        let program = example("http");
        let port = free_port();
        let mut cmd = group_command(Path::new(activate), &["CLUSTER_"]);
        cmd.args(["-l", &format!("127.0.0.1:{port}"), "--fdname=web"])
            // The activator passes on only the variables named with -E (a value given to the
            // command, or none: the activator's own).
            .args(["-E", "HOST", "-E", "PORT", "-E", "WORKERS", "-E", "POLICY"])
            .args(["-E", "STATUS_PORT", "-E", "XDG_RUNTIME_DIR", "-E", "PATH"])
            .args([
                "sh",
                "-c",
                r#"while :; do sh -c 'LISTEN_PID=$$; export LISTEN_PID; exec "$0"' "$0"; done"#,
            ])
            .arg(&program)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("WORKERS", "2")
            .env("POLICY", policy)
            .env("STATUS_PORT", "off");
        let (group, pipes) = Group::spawn(&mut cmd, "systemd-socket-activate");
        Activated {
            group,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            stdout: Captured::start(pipes.stdout),
            stderr: Captured::start(pipes.stderr),
        }
    }

    fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }

    /// The master running now: the activator's (the looping shell's) child.
    fn master(&self) -> Option<u32> {
        children(self.group.pid() as u32).into_iter().next()
    }
}

/// The children of `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Waits until `cluster`'s master (another than `not`) serves with `workers` of its workers;
/// returns its pid. The first request is what makes the activator start it.
fn wait_serving(cluster: &Activated, not: Option<u32>, workers: usize) -> u32 {
    poll("the socket-activated master serving", WAIT, || {
        // Before looking for the master: the activator starts it on the first connection.
        get_once(cluster.addr).map_err(|e| format!("{e}\n{}", cluster.dump()))?;
        let master = cluster
            .master()
            .filter(|m| Some(*m) != not)
            .ok_or_else(|| format!("no new master yet\n{}", cluster.dump()))?;
        let mut pids = BTreeSet::new();
        for _ in 0..8 {
            let resp = get_once(cluster.addr).map_err(|e| format!("{e}\n{}", cluster.dump()))?;
            if let Some((_, pid)) = resp.worker() {
                if parent_of(pid) == Some(master) {
                    pids.insert(pid);
                }
            }
        }
        if pids.len() == workers {
            Ok(master)
        } else {
            Err(format!("workers of {master} answering: {pids:?}"))
        }
    })
}

/// The master serves the activator's socket without binding one of its own: the only
/// listening socket on the port is the one the activator made, and the master holds it.
fn assert_inherited(cluster: &Activated, master: u32) {
    let port = cluster.addr.port();
    let listening = listening_inodes(port);
    assert_eq!(
        listening.len(),
        1,
        "listening sockets on {port}: {listening:?}"
    );
    let activator = socket_inodes(cluster.group.pid() as u32);
    assert!(activator.contains(&listening[0]), "the activator's socket");
    assert!(
        socket_inodes(master).contains(&listening[0]),
        "the master does not hold the inherited socket {}\n{}",
        listening[0],
        cluster.dump()
    );
    // The variables were for the master alone: its workers do not see them.
    for worker in children(master) {
        if let Ok(raw) = std::fs::read(format!("/proc/{worker}/environ")) {
            let text = String::from_utf8_lossy(&raw);
            assert!(
                !text.contains("LISTEN_FDS="),
                "worker {worker} has LISTEN_FDS"
            );
        }
    }
}

#[test]
fn a_socket_activated_master_restarts_under_load_without_a_failed_request() {
    let cluster = Activated::start("shared");
    let first = wait_serving(&cluster, None, 2);
    assert_inherited(&cluster, first);

    // Connection-per-request clients while the whole master stops and a new one starts:
    // connections made meanwhile wait in the activator's socket's queue.
    let load = Load::start(cluster.addr, 0, 4);
    load.wait_more_ok(200);
    kill(Pid::from_raw(first as i32), Signal::SIGTERM).expect("signal the master");
    let second = wait_serving(&cluster, Some(first), 2);
    assert_inherited(&cluster, second);
    load.wait_more_ok(200);
    let tally = load.stop();
    let failed = tally.failures();
    println!(
        "socket-activated restart of the whole master (pid {first} -> {second}) under 4 connection-per-request clients: {} requests, {} failed",
        tally.ok() + failed.len() as u64,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} requests failed: {failed:#?}\n{}",
        failed.len(),
        cluster.dump()
    );
    assert!(
        cluster.stderr.text().contains("1 inherited socket"),
        "{}",
        cluster.dump()
    );
}

#[test]
fn every_balance_policy_serves_an_inherited_socket() {
    for policy in ["round-robin", "least-connections", "sticky", "reuseport"] {
        let cluster = Activated::start(policy);
        // Every request of this one client (one address) goes to the same worker.
        let workers = if policy == "sticky" { 1 } else { 2 };
        let master = wait_serving(&cluster, None, workers);
        assert_inherited(&cluster, master);
        if policy != "reuseport" {
            // The master accepts: no worker holds the listening socket, so the inherited
            // descriptor was not leaked into them (CLOEXEC).
            let listening = listening_inodes(cluster.addr.port());
            for worker in children(master) {
                assert!(
                    socket_inodes(worker).is_disjoint(&listening.iter().copied().collect()),
                    "{policy}: worker {worker} holds the listening socket"
                );
            }
        }
        assert!(
            !cluster.stderr.text().contains("no worker listens on"),
            "{policy}: {}",
            cluster.dump()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Orphans
// ---------------------------------------------------------------------------------------

/// Whether `pid` runs `name`.
fn is_command(pid: u32, name: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
}

/// Worker 0's first process starts `sleep` and dies: the sleep is reparented to the master,
/// which reaps it when it ends (no zombie left), and the worker's own exit is still seen with
/// its real code.
fn the_orphan_of_a_dead_worker_is_reaped_by(fx: &mut Fixture, master: u32) {
    fx.wait_line("ORPHAN", &[("id", &id("worker", 0, 1))]);
    // The master's own worker: its exit status is the master's (tokio's) to collect.
    fx.wait_line("EXIT", &[("id", &id("worker", 0, 1)), ("how", "code:4")]);
    let orphan = poll("the orphaned sleep reparented to the master", WAIT, || {
        children(master)
            .into_iter()
            .find(|&c| is_command(c, "sleep"))
            .ok_or_else(|| format!("children of {master}: {:?}", children(master)))
    });
    wait_until("the orphan reaped once it ended", WAIT, || {
        proc_state(orphan as i32).is_none()
    });
    let zombies: Vec<u32> = children(master)
        .into_iter()
        .filter(|&c| proc_state(c as i32) == Some('Z'))
        .collect();
    assert!(
        zombies.is_empty(),
        "zombies left: {zombies:?}\n{}",
        fx.dump()
    );
    // The slot was restarted as after any crash.
    fx.wait_line("READY", &[("id", &id("worker", 0, 2))]);
}

#[test]
fn the_master_is_a_subreaper_and_reaps_the_orphans_of_dead_workers() {
    let mut fx = Fixture::start(&[("FIXTURE_COUNT", "2"), ("FIXTURE_ORPHAN_MS", "1500")]);
    let master = fx.pid() as u32;
    the_orphan_of_a_dead_worker_is_reaped_by(&mut fx, master);
    fx.signal(Signal::SIGTERM);
    assert_eq!(fx.wait_exit_code(WAIT), 0, "{}", fx.dump());
}

#[test]
fn as_pid_1_of_a_pid_namespace_the_master_reaps_orphans_and_stops_on_sigterm() {
    let unshare = Path::new("/usr/bin/unshare");
    assert!(unshare.exists(), "unshare (util-linux) is missing");
    let mut fx = Fixture::start_program(
        unshare,
        &[("FIXTURE_COUNT", "2"), ("FIXTURE_ORPHAN_MS", "1500")],
        |cmd| {
            cmd.args(["--pid", "--fork", "--mount-proc", FIXTURE]);
        },
    );
    fx.wait_hellos("worker/1", 1);
    // unshare's child is the master, PID 1 of the new namespace.
    let master = poll("the master under unshare", WAIT, || {
        children(fx.pid() as u32)
            .into_iter()
            .next()
            .ok_or_else(|| "no child yet".to_string())
    });
    let status = std::fs::read_to_string(format!("/proc/{master}/status")).expect("status");
    let nspid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .expect("NSpid");
    assert_eq!(
        nspid.split_whitespace().last(),
        Some("1"),
        "not PID 1: {nspid}"
    );
    the_orphan_of_a_dead_worker_is_reaped_by(&mut fx, master);
    // PID 1 has no default action for SIGTERM: only the master's handler makes it stop, and
    // gracefully (workers asked to stop, exit 0).
    kill(Pid::from_raw(master as i32), Signal::SIGTERM).expect("signal the master");
    assert_eq!(fx.wait_exit(WAIT), Exit::Code(0), "{}", fx.dump());
    assert!(
        fx.stderr().contains("SIGTERM: shutting down gracefully"),
        "{}",
        fx.dump()
    );
}
