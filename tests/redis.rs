//! examples/redis_counter against a real `redis-server` (Debian's package; `.ci/run`
//! installs it): 2,000 `GET /counter` from 8 concurrent clients through 4 workers and a
//! rolling reload get exactly the counters 1..=2000, none twice, none skipped, none failed;
//! then Redis is killed, `/counter` answers 503 with a clear body at once, and once Redis is
//! back on the same port every worker serves counters again, without a restart.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::http::{Conn, HttpCluster, Response};
use support::{WAIT, example, free_port, poll};

const REQUESTS: usize = 2000;
const CLIENTS: usize = 8;
/// The requests let through before the reload finishes; the rest wait for its end, so that
/// the reload runs under load and the new workers serve the second half.
const BEFORE_RELOAD_DONE: usize = REQUESTS / 2;
/// The reload starts once this many have been answered.
const RELOAD_AT: usize = 300;
/// How soon after Redis is back every worker must serve counters again.
const RECOVERY: Duration = Duration::from_secs(10);

/// A `redis-server` without persistence on a free loopback port, killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let mut redis = Redis {
            child: None,
            port: free_port(),
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts it (again, on the same port) and waits until it answers PING.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start redis-server ({e}): install it (apt-get install redis-server)")
            });
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        poll("redis-server to answer PING", WAIT, || {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "redis-server exited at start ({status}): port {} taken?",
                        self.port
                    );
                }
            }
            ping(addr)
        });
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(addr: SocketAddr) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    stream.write_all(b"PING\r\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    (line == "+PONG\r\n")
        .then_some(())
        .ok_or_else(|| format!("answered {line:?}"))
}

/// `{"worker": pid, "counter": n}` -> (pid, n).
fn counter(resp: &Response) -> Result<(u32, u64), String> {
    let json: serde_json::Value = serde_json::from_str(&resp.body)
        .map_err(|e| format!("status {}, body {:?}: {e}", resp.status, resp.body))?;
    match (json["worker"].as_u64(), json["counter"].as_u64()) {
        (Some(pid), Some(n)) if resp.status == 200 => Ok((pid as u32, n)),
        _ => Err(format!("status {}, body {:?}", resp.status, resp.body)),
    }
}

fn get_counter(addr: SocketAddr) -> Result<Response, String> {
    Conn::connect(addr)?.get_path("/counter", true)
}

#[test]
fn counters_stay_exact_through_a_reload_and_recover_after_an_outage() {
    let mut redis = Redis::start();
    let url = redis.url();
    let cluster = HttpCluster::start_with_env(
        &example("redis_counter"),
        4,
        "shared",
        &[("REDIS_URL", url.as_str())],
    );
    let addr = cluster.addr();
    let before: BTreeSet<u32> = cluster.serving_slots().into_values().collect();

    // 2,000 requests from 8 clients: half on keep-alive connections, half on a connection
    // each. A ticket is a request to send; past BEFORE_RELOAD_DONE, tickets wait for the
    // reload's end.
    let tickets = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let reloaded = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<(u32, u64)>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|lane| {
            let (tickets, answered, reloaded, seen, failures) = (
                tickets.clone(),
                answered.clone(),
                reloaded.clone(),
                seen.clone(),
                failures.clone(),
            );
            std::thread::spawn(move || {
                let keep_alive = lane % 2 == 0;
                let mut conn: Option<Conn> = None;
                loop {
                    let ticket = tickets.fetch_add(1, Ordering::SeqCst);
                    if ticket >= REQUESTS {
                        return;
                    }
                    if ticket >= BEFORE_RELOAD_DONE {
                        let deadline = Instant::now() + WAIT;
                        while !reloaded.load(Ordering::SeqCst) && Instant::now() < deadline {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    let resp = match conn.take() {
                        Some(c) => Ok(c),
                        None => Conn::connect(addr),
                    }
                    .and_then(|mut c| {
                        let resp = c.get_path("/counter", !keep_alive)?;
                        if keep_alive && !resp.close {
                            conn = Some(c);
                        }
                        Ok(resp)
                    });
                    match resp.and_then(|r| counter(&r)) {
                        Ok(got) => seen.lock().unwrap().push(got),
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(format!("ticket {ticket}: {e}")),
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    support::wait_until("the first requests", WAIT, || {
        answered.load(Ordering::SeqCst) >= RELOAD_AT
    });
    let reload_started = answered.load(Ordering::SeqCst);
    cluster.reload();
    let reload_finished = answered.load(Ordering::SeqCst);
    reloaded.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("a client panicked");
    }

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} requests failed: {failures:#?}\n{}",
        failures.len(),
        cluster.dump()
    );
    let seen = seen.lock().unwrap().clone();
    let mut counters: Vec<u64> = seen.iter().map(|(_, n)| *n).collect();
    counters.sort_unstable();
    let expected: Vec<u64> = (1..=REQUESTS as u64).collect();
    if counters != expected {
        let unique: BTreeSet<u64> = counters.iter().copied().collect();
        let missing: Vec<u64> = expected
            .iter()
            .filter(|n| !unique.contains(n))
            .copied()
            .collect();
        panic!(
            "the counters are not exactly 1..={REQUESTS}: {} answers, {} distinct, missing {missing:?}",
            counters.len(),
            unique.len()
        );
    }
    let pids: BTreeSet<u32> = seen.iter().map(|(pid, _)| *pid).collect();
    let new_pids = pids.difference(&before).count();
    assert!(
        new_pids >= 4,
        "the reload's new workers did not serve: pids {pids:?}, before {before:?}"
    );
    eprintln!(
        "{REQUESTS} requests, 0 failed, counters exactly 1..={REQUESTS}; {} answered while the reload ran; {} workers answered ({new_pids} started by the reload)",
        reload_finished - reload_started,
        pids.len()
    );

    // Redis goes away: every request gets a prompt 503 that says why.
    redis.kill();
    for i in 0..20 {
        let started = Instant::now();
        let resp =
            get_counter(addr).unwrap_or_else(|e| panic!("request {i} while Redis is down: {e}"));
        let took = started.elapsed();
        assert_eq!(
            resp.status, 503,
            "request {i} while Redis is down: {resp:?}"
        );
        assert!(
            resp.body.starts_with("redis unavailable: "),
            "request {i}: an unclear body {:?}",
            resp.body
        );
        assert!(took < Duration::from_secs(3), "request {i} took {took:?}");
    }

    // Back on the same port, with an empty database: every worker serves again, promptly.
    redis.restart();
    let back = Instant::now();
    let mut recovered = BTreeSet::new();
    let mut counters = BTreeSet::new();
    poll("every worker to serve counters again", RECOVERY, || {
        for _ in 0..8 {
            let resp = get_counter(addr)?;
            if resp.status == 503 {
                continue;
            }
            let (pid, n) = counter(&resp)?;
            assert!(
                counters.insert(n),
                "counter {n} given twice after the restart"
            );
            recovered.insert(pid);
        }
        (recovered.len() == 4)
            .then_some(())
            .ok_or_else(|| format!("workers serving again: {recovered:?}"))
    });
    // Once recovered, nothing fails.
    for i in 0..40 {
        let resp = get_counter(addr).unwrap_or_else(|e| panic!("request {i} after recovery: {e}"));
        let (_, n) = counter(&resp).unwrap_or_else(|e| panic!("request {i} after recovery: {e}"));
        assert!(
            counters.insert(n),
            "counter {n} given twice after the restart"
        );
    }
    eprintln!(
        "Redis down: 20 of 20 requests 503; back: all 4 workers served again {:?} after the restart",
        back.elapsed()
    );
}
