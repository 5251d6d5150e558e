//! Supervision benchmark: how fast a killed worker is replaced, how fast a cluster comes up,
//! and what the idle master costs. Run with `cargo bench --bench supervisor`.
//!
//! The bench binary plays two parts. As the driver (no env var) it starts itself as a
//! cluster master (`BENCH_CLUSTER=<workers>`) and reads the master's report lines:
//! - `READY_ALL`: every worker reported ready (cold start, timed by the driver from spawn);
//! - `REPLACED <micros>`: the master SIGKILLed a worker and saw its replacement ready.
//!
//! When `node` is installed, Node's cluster module runs the same scenario
//! (bench/node_cluster.js) alternately with ours in the same run, and the ratios are printed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluster::{Cluster, Event, Runtime};

const ROUNDS: usize = 5;
const REPLACEMENTS: usize = 10;

fn main() {
    if let Ok(workers) = std::env::var("BENCH_CLUSTER") {
        std::process::exit(i32::from(
            cluster_main(workers.parse().unwrap_or(2)) != std::process::ExitCode::SUCCESS,
        ));
    }
    driver();
}

/// The cluster under test: workers that only wait for shutdown; the master measures
/// replacements itself (kill, then the replacement's Ready event) and reports on stdout.
fn cluster_main(workers: usize) -> std::process::ExitCode {
    Cluster::<(), ()>::new()
        .count(workers)
        // Each slot is killed once: raise the limit so giving up is not what is measured.
        .max_restarts(1000)
        .worker_runtime(Runtime::CurrentThread)
        .worker(|ctx| async move { ctx.shutdown_requested().await })
        .master(move |ctx| async move {
            let mut ready = 0;
            let mut killed: Option<(cluster::SlotKey, Instant)> = None;
            let mut replaced = 0;
            let replacements = std::env::var("BENCH_REPLACEMENTS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while let Some(event) = ctx.next_event().await {
                let Event::Ready { id } = event else { continue };
                ready += 1;
                if ready == workers {
                    println!("READY_ALL");
                }
                if let Some((key, t0)) = &killed {
                    if *key == id.key() {
                        println!("REPLACED {}", t0.elapsed().as_micros());
                        replaced += 1;
                        killed = None;
                    }
                }
                if ready >= workers && killed.is_none() && replaced < replacements {
                    // Kill the next slot's first process (each slot once, so the figure is a
                    // first-crash replacement, not a backoff streak) and time its replacement.
                    let workers = ctx.workers().await.unwrap_or_default();
                    if let Some(victim) = workers
                        .iter()
                        .find(|w| w.id.slot == replaced && w.pid.is_some())
                    {
                        let pid = victim.pid.unwrap_or(0) as i32;
                        killed = Some((victim.id.key(), Instant::now()));
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                if replaced == replacements && replacements > 0 && killed.is_none() {
                    println!("REPLACED_ALL");
                }
            }
        })
        .run()
}

/// Kills the process (and, through the parent-death signal, its workers) on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command) -> (Guard, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn bench cluster");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Guard(child), rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, prefix: &str, limit: Duration) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let line = rx.recv_timeout(left).ok()?;
        if line.starts_with(prefix) {
            return Some(line);
        }
    }
}

fn ours(workers: usize, replacements: usize) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("bench path"));
    cmd.env("BENCH_CLUSTER", workers.to_string())
        .env("BENCH_REPLACEMENTS", replacements.to_string());
    cmd
}

fn node(workers: usize, replacements: usize) -> Option<Command> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/node_cluster.js");
    let ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| {
        let mut cmd = Command::new("node");
        cmd.arg(script)
            .env("BENCH_WORKERS", workers.to_string())
            .env("BENCH_REPLACEMENTS", replacements.to_string());
        cmd
    })
}

/// Cold start until `workers` are ready, in milliseconds.
fn cold_start(mut cmd: Command) -> Option<f64> {
    let t0 = Instant::now();
    let (guard, rx) = spawn(&mut cmd);
    let line = wait_line(&rx, "READY_ALL", Duration::from_secs(30));
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    drop(guard);
    line.map(|_| ms)
}

/// Medians of the replacement times, in milliseconds.
fn replacement(mut cmd: Command) -> Vec<f64> {
    let (guard, rx) = spawn(&mut cmd);
    let mut times = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while times.len() < REPLACEMENTS && Instant::now() < deadline {
        match wait_line(&rx, "REPLACED ", Duration::from_secs(10)) {
            Some(line) => times.push(line[9..].trim().parse::<f64>().unwrap_or(f64::NAN) / 1e3),
            None => break,
        }
    }
    drop(guard);
    times
}

/// Idle RSS (MiB) and CPU (% of one core over 3 s) of a master with 2 ready workers.
fn idle(mut cmd: Command) -> Option<(f64, f64)> {
    let (guard, rx) = spawn(&mut cmd);
    wait_line(&rx, "READY_ALL", Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(500));
    let pid = guard.0.id();
    let cpu = |pid: u32| -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit(") ").next()?.split_whitespace().collect();
        Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
    };
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let before = cpu(pid)?;
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    let used = (cpu(pid)? - before) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    drop(guard);
    Some((rss_kib / 1024.0, 100.0 * used / window.as_secs_f64()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn driver() {
    let has_node = node(2, 0).is_some();
    println!(
        "supervision benchmark: {ROUNDS} alternating rounds; workers on a current-thread runtime; release build"
    );
    let (mut c2, mut c64, mut rep) = (Vec::new(), Vec::new(), Vec::new());
    let (mut n2, mut n64, mut nrep) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        c2.extend(cold_start(ours(2, 0)));
        if let Some(cmd) = node(2, 0) {
            n2.extend(cold_start(cmd));
        }
        c64.extend(cold_start(ours(64, 0)));
        if let Some(cmd) = node(64, 0) {
            n64.extend(cold_start(cmd));
        }
        rep.push(median(replacement(ours(REPLACEMENTS, REPLACEMENTS))));
        if let Some(cmd) = node(REPLACEMENTS, REPLACEMENTS) {
            nrep.push(median(replacement(cmd)));
        }
    }
    let idle_ours = idle(ours(2, 0));
    let idle_node = node(2, 0).and_then(idle);
    let row = |name: &str, ours: f64, node: Option<f64>, target: &str, pass: bool| {
        let node = node.filter(|n| n.is_finite());
        let ratio = match node {
            Some(n) if ours > 0.0 => format!("{:.1}x", n / ours),
            _ => "-".to_string(),
        };
        let node = node.map_or("-".to_string(), |n| format!("{n:.1}"));
        println!(
            "{name:<34} {ours:>9.2} {node:>9} {ratio:>14}   target {target:<9} {}",
            if pass { "PASS" } else { "MISS" }
        );
    };
    println!(
        "{:<34} {:>9} {:>9} {:>14}",
        "median", "ours", "node", "node / ours"
    );
    let (r, a, b) = (median(rep), median(c2), median(c64));
    row(
        "replacement after SIGKILL (ms)",
        r,
        has_node.then(|| median(nrep)),
        "<= 15",
        r <= 15.0,
    );
    row(
        "cold start, 2 workers ready (ms)",
        a,
        has_node.then(|| median(n2)),
        "<= 20",
        a <= 20.0,
    );
    row(
        "cold start, 64 workers ready (ms)",
        b,
        has_node.then(|| median(n64)),
        "<= 1000",
        b <= 1000.0,
    );
    match idle_ours {
        Some((rss, cpu)) => {
            let (nrss, ncpu) = idle_node.map_or((None, None), |(r, c)| (Some(r), Some(c)));
            row("master idle RSS (MiB)", rss, nrss, "<= 5", rss <= 5.0);
            row("master idle CPU (% of a core)", cpu, ncpu, "~0", cpu < 0.5);
        }
        None => println!("master idle: could not measure"),
    }
}
