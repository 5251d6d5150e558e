//! What an operator learns of slow and stuck requests, driven as real processes
//! (tests/fixture/ops_fixture.rs): a slow request shows in `/status` with its path and age;
//! a stuck one gets 503 at `request_timeout`, logged with its path; a request that hangs its
//! worker's runtime is named in the watchdog's kill report, or by the worker's own stall
//! watch when it froze the runtime before any heartbeat could report it.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::ops::{self, Fixture, local};
use support::{free_port, poll};

/// `GET path` on a thread of its own, so the test goes on while it is under way.
fn request_in_background(
    addr: SocketAddr,
    path: &'static str,
) -> std::thread::JoinHandle<(std::io::Result<ops::Response>, Duration)> {
    std::thread::spawn(move || {
        let asked = Instant::now();
        let result = ops::get(addr, path, Duration::from_secs(30));
        (result, asked.elapsed())
    })
}

/// The slow requests `/status` shows for any worker: (path, age in ms).
fn slow_requests(status: &serde_json::Value) -> Vec<(String, u64)> {
    status["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|w| w["slow_requests"].as_array().cloned().unwrap_or_default())
        .map(|r| {
            (
                r["path"].as_str().unwrap_or_default().to_owned(),
                r["age_ms"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Waits until `/status` shows no slow request (at most 10 s).
fn wait_no_slow_request(status: SocketAddr) {
    poll("no slow request left", Duration::from_secs(10), || {
        let slow = slow_requests(&ops::status(status));
        if slow.is_empty() {
            Ok(())
        } else {
            Err(format!("{slow:?}"))
        }
    });
}

/// One worker serving HTTP, beating every 200 ms, with the master's status port; `more`
/// options besides. Returns the fixture, the HTTP address and the status address.
fn start_with_status(more: &[(&str, String)]) -> (Fixture, SocketAddr, SocketAddr) {
    let (http, status) = (free_port(), free_port());
    let mut options = vec![
        ("OPS_COUNT", "1".to_string()),
        ("OPS_HTTP_PORT", http.to_string()),
        ("OPS_STATUS_PORT", status.to_string()),
        ("OPS_HEARTBEAT_MS", "200".into()),
    ];
    options.extend(more.iter().cloned());
    let mut fx = Fixture::start(&options);
    fx.wait_ready(1);
    (fx, local(http), local(status))
}

/// One worker on the current-thread runtime serving HTTP on `http`, beating every 200 ms,
/// killed after `timeout_ms` without a beat.
fn start_hanging(http: u16, timeout_ms: u64) -> Fixture {
    let mut fx = Fixture::start(&[
        ("OPS_COUNT", "1".to_string()),
        ("OPS_HTTP_PORT", http.to_string()),
        ("OPS_CURRENT_THREAD", "1".into()),
        ("OPS_HEARTBEAT_MS", "200".into()),
        ("OPS_HEARTBEAT_TIMEOUT_MS", timeout_ms.to_string()),
    ]);
    fx.wait_ready(1);
    fx
}

fn output(fx: &Fixture) -> String {
    fx.history
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_slow_request_shows_in_status_and_a_stuck_one_gets_503_at_its_timeout() {
    let (mut fx, http, status) = start_with_status(&[("OPS_REQUEST_TIMEOUT_MS", "2500".into())]);

    let stuck = request_in_background(http, "/await-600000");
    // Seen under way for over a second, with its path, while it waits.
    let seen = poll(
        "the stuck request in /status",
        Duration::from_secs(10),
        || {
            let slow = slow_requests(&ops::status(status));
            match slow.iter().find(|(path, _)| path == "/await-600000") {
                Some(found) if found.1 >= 1000 => Ok(found.clone()),
                _ => Err(format!("{slow:?}")),
            }
        },
    );
    let (answer, took) = stuck.join().expect("the client thread");
    let answer = answer.expect("an answer");
    assert_eq!(answer.status, 503, "{answer:?}");
    // Between one and one and a half timeouts, plus scheduling.
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_millis(6000),
        "503 after {took:?}"
    );
    let log = fx.wait_for("the timeout's log line", Duration::from_secs(5), |lines| {
        lines
            .iter()
            .find(|l| l.text.contains("request GET /await-600000 still under way"))
            .cloned()
    });
    assert!(log.text.contains("request_timeout"), "{}", log.text);
    // Done: the report empties, and the worker serves on.
    wait_no_slow_request(status);
    let after = ops::get(http, "/", Duration::from_secs(10)).expect("served after");
    assert_eq!(after.status, 200);
    eprintln!("seen in /status as {seen:?}; 503 after {took:?}");
    fx.stop_cleanly();
}

#[test]
fn the_watchdogs_kill_report_names_the_request_that_hung_the_worker() {
    let http = free_port();
    let mut fx = start_hanging(http, 2000);
    // Awaits long enough to be reported as slow by a heartbeat, then blocks the runtime.
    let _client = request_in_background(local(http), "/await-1500-block");
    let kill = fx.wait_for(
        "the watchdog's kill report",
        Duration::from_secs(20),
        |lines| {
            lines
                .iter()
                .find(|l| l.text.contains("is hung") && l.text.contains("worker/0#1"))
                .cloned()
        },
    );
    assert!(
        kill.text
            .contains("requests under way at its last heartbeat: GET /await-1500-block ("),
        "{}\n{}",
        kill.text,
        output(&fx)
    );
    fx.wait_line("READY", &[("id", "worker/0#2")]);
    fx.stop_cleanly();
}

#[test]
fn a_request_that_freezes_the_runtime_at_once_is_named_by_the_workers_stall_watch() {
    let http = free_port();
    let mut fx = start_hanging(http, 3000);
    // Blocks before any heartbeat can report it: only a thread outside the runtime can.
    let _client = request_in_background(local(http), "/block");
    let stall = fx.wait_for("the stall watch's line", Duration::from_secs(20), |lines| {
        lines
            .iter()
            .find(|l| l.text.contains("runtime has not run for"))
            .cloned()
    });
    assert!(
        stall.text.starts_with("[worker/0 pid ") && stall.text.contains("GET /block ("),
        "{}\n{}",
        stall.text,
        output(&fx)
    );
    // Written before the watchdog's kill, which follows.
    let kill = fx.wait_for("the kill", Duration::from_secs(20), |lines| {
        lines.iter().position(|l| l.text.contains("is hung"))
    });
    let stall_at = fx
        .history
        .iter()
        .position(|l| l.text.contains("runtime has not run for"))
        .unwrap_or(usize::MAX);
    assert!(stall_at < kill, "{}", output(&fx));
    fx.stop_cleanly();
}

/// HTTP/2 streams under way at once on one connection each show in `/status` with its own
/// path and age, and leave it when their client goes (each stream's slot in its connection's
/// table is freed with the stream).
#[test]
fn http2_streams_under_way_show_each_in_status_and_leave_with_their_client() {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (mut fx, http, status) = start_with_status(&[]);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // Two streams that wait a minute, on one h2c connection driven by a thread of its own;
    // dropping `stop` ends that thread and closes the connection with its streams.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (opened, streams_open) = std::sync::mpsc::channel();
    let client = std::thread::spawn(move || {
        runtime.block_on(async move {
            let io = TokioIo::new(tokio::net::TcpStream::connect(http).await?);
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            let connection = tokio::spawn(connection);
            let mut requests = Vec::new();
            for path in ["/await-60000", "/await-60001"] {
                let request = hyper::Request::get(format!("http://{http}{path}"))
                    .body(Empty::<Bytes>::new())?;
                requests.push(tokio::spawn(sender.clone().send_request(request)));
            }
            let _ = opened.send(());
            let _ = stopped.await;
            for request in requests {
                request.abort();
            }
            connection.abort();
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
    });
    streams_open
        .recv_timeout(Duration::from_secs(10))
        .expect("the HTTP/2 client connected");
    let seen = poll("both streams in /status", Duration::from_secs(10), || {
        let mut slow = slow_requests(&ops::status(status));
        slow.retain(|(path, age)| path.starts_with("/await-6000") && *age >= 1000);
        slow.sort();
        if slow.len() == 2 && slow[0].0 == "/await-60000" && slow[1].0 == "/await-60001" {
            Ok(slow)
        } else {
            Err(format!("{slow:?}"))
        }
    });
    drop(stop);
    client
        .join()
        .expect("the client thread")
        .expect("the HTTP/2 client");
    wait_no_slow_request(status);
    eprintln!("seen in /status as {seen:?}");
    fx.stop_cleanly();
}
