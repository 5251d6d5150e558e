//! `clusterctl status` and the control socket's robustness, against real clusters: each
//! option's value and source (code, options file and line, environment variable), in the
//! table and in JSON, and after a reload re-read the file; a client that sends a frame that
//! is no request is told why and the master serves on; past 16 connections a client is
//! refused with a reason, and `clusterctl list` works again once they close.

mod support;

use std::path::Path;

use cluster::control::client::{Client, ClientError};
use cluster::control::protocol::Response;
use cluster::ipc::{Channel, Config};
use serde::Serialize;
use serde_json::Value;
use support::ctl::{ctl, describe, start, text, wait_ready};
use support::{Fixture, TempDir, WAIT, poll};

/// The words of `status`'s line for `option`: name, value, source...
fn status_line(status: &str, option: &str) -> Vec<String> {
    status
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .find(|words| words.first().map(String::as_str) == Some(option))
        .unwrap_or_else(|| panic!("no line for {option} in\n{status}"))
}

/// `status --json`'s entry for `option`.
fn json_option(status: &Value, option: &str) -> Value {
    status["options"]
        .as_array()
        .and_then(|all| all.iter().find(|o| o["name"] == option))
        .cloned()
        .unwrap_or_else(|| panic!("no {option} in {status:#}"))
}

fn status_json(socket: &Path) -> Value {
    let out = ctl(socket, &["status", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

/// The master is still running and never panicked.
fn still_serving(fx: &mut Fixture, socket: &Path) {
    assert_eq!(fx.try_exit(), None, "the master exited\n{}", fx.dump());
    assert!(!fx.stderr().contains("panicked"), "{}", fx.dump());
    let out = ctl(socket, &["list"]);
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn status_shows_each_options_value_and_where_it_came_from() {
    let dir = TempDir::new("ctl-sources");
    let file = dir.0.join("cluster.toml");
    std::fs::write(&file, "# options\nmax_restarts = 7\ngrace = \"4s\"\n").unwrap();
    let path = file.to_str().unwrap();
    // count: 3 in the fixture's code (the default is 2); max_restarts and grace: the file;
    // max_memory: the environment.
    let (_fx, socket) = start(
        &dir,
        &[
            ("FIXTURE_COUNT", "3"),
            ("CLUSTER_CONFIG", path),
            ("CLUSTER_MAX_MEMORY", "512MiB"),
        ],
    );
    wait_ready(&socket, 3);

    let out = ctl(&socket, &["status"]);
    assert!(out.status.success(), "{}", describe(&out));
    let human = text(&out.stdout);
    assert!(human.contains("options in force:"), "{human}");
    assert_eq!(status_line(&human, "option"), ["option", "value", "source"]);
    assert_eq!(status_line(&human, "count"), ["count", "3", "code"]);
    let in_file = |line: usize| format!("{path}:{line}");
    assert_eq!(
        status_line(&human, "max_restarts"),
        ["max_restarts", "7", "file", &in_file(2)]
    );
    assert_eq!(
        status_line(&human, "grace"),
        ["grace", "4s", "file", &in_file(3)]
    );
    assert_eq!(
        status_line(&human, "max_memory"),
        ["max_memory", "512MiB", "env", "CLUSTER_MAX_MEMORY"]
    );
    assert_eq!(
        status_line(&human, "config_file"),
        ["config_file", path, "env", "CLUSTER_CONFIG"]
    );
    assert_eq!(
        status_line(&human, "balance"),
        ["balance", "shared", "default"]
    );

    let json = status_json(&socket);
    assert_eq!(
        json_option(&json, "count"),
        serde_json::json!({"name": "count", "value": "3", "source": "code"})
    );
    assert_eq!(
        json_option(&json, "grace"),
        serde_json::json!({"name": "grace", "value": "4s", "source": "file", "path": path, "line": 3})
    );
    assert_eq!(
        json_option(&json, "max_memory"),
        serde_json::json!({"name": "max_memory", "value": "512MiB", "source": "env", "var": "CLUSTER_MAX_MEMORY"})
    );
    assert_eq!(json_option(&json, "balance")["source"], "default");

    // A reload re-reads the file: status shows what it applied, from where.
    std::fs::write(&file, "max_restarts = 7\n\n\ngrace = \"6s\"\n").unwrap();
    let out = ctl(&socket, &["reload", "--wait", "--timeout", "60s"]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = ctl(&socket, &["status"]);
    let human = text(&out.stdout);
    assert_eq!(
        status_line(&human, "grace"),
        ["grace", "6s", "file", &in_file(4)]
    );
    assert_eq!(
        status_line(&human, "max_restarts"),
        ["max_restarts", "7", "file", &in_file(1)]
    );
}

/// Written like a request, but no request decodes from it: the codecs are positional, so
/// `Hello` is the real hello, and `Junk` is variant 1 (`List`) with a byte after it.
#[derive(Serialize)]
enum Fake {
    Hello { version: u32 },
    Junk(u8),
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Connects, speaks the channel's handshake, sends `frames` and returns the first answer
/// after them and what follows it (the end of the connection: `None` or an error).
async fn send_frames(socket: &Path, frames: &[Fake]) -> (Vec<Response>, String) {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let channel = Channel::<Fake, Response>::handshake(stream, Config::default())
        .await
        .expect("the channel's handshake");
    let (tx, mut rx) = channel.split();
    for frame in frames {
        tx.send(frame).await.unwrap();
    }
    let mut answers = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Ok(Some(answer))) => answers.push(answer),
            Ok(Ok(None)) => return (answers, "closed".to_owned()),
            Ok(Err(e)) => return (answers, format!("error: {e}")),
            Err(_) => panic!("no end of the connection within {WAIT:?}: {answers:?}"),
        }
    }
}

#[test]
fn a_garbled_frame_gets_a_clear_refusal_and_the_master_serves_on() {
    let dir = TempDir::new("ctl-garbled");
    let (mut fx, socket) = start(&dir, &[("FIXTURE_COUNT", "1")]);
    wait_ready(&socket, 1);
    let rt = runtime();
    let refused = |answers: &[Response]| match answers.last() {
        Some(Response::Refused(why)) => why.clone(),
        other => panic!("expected a refusal, got {other:?} after {answers:?}"),
    };
    // As the first frame, instead of the hello.
    let (answers, end) = rt.block_on(send_frames(&socket, &[Fake::Junk(7)]));
    assert_eq!(answers.len(), 1, "{answers:?} then {end}");
    let why = refused(&answers);
    assert!(
        why.contains("could not read the request") && why.contains("trailing bytes"),
        "{why}"
    );
    assert_eq!(end, "closed");
    // After a good hello, in the request loop; a client beside it is served throughout.
    let mut beside = rt
        .block_on(Client::connect(&socket))
        .expect("a client beside");
    let (answers, end) = rt.block_on(send_frames(
        &socket,
        &[Fake::Hello { version: 2 }, Fake::Junk(7)],
    ));
    assert!(
        matches!(answers.first(), Some(Response::Hello { .. })),
        "{answers:?}"
    );
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(refused(&answers).contains("closing the connection"));
    assert_eq!(end, "closed");
    let listed = rt.block_on(beside.request(&cluster::control::protocol::Request::List));
    assert!(
        matches!(listed, Ok(Response::Workers(ref w)) if w.len() == 1),
        "{listed:?}"
    );
    still_serving(&mut fx, &socket);
}

#[test]
fn past_16_connections_a_client_is_refused_and_list_works_once_they_close() {
    let dir = TempDir::new("ctl-limit");
    let (mut fx, socket) = start(&dir, &[("FIXTURE_COUNT", "1")]);
    wait_ready(&socket, 1);
    let rt = runtime();
    let held: Vec<Client> = (0..16)
        .map(|i| {
            rt.block_on(Client::connect(&socket))
                .unwrap_or_else(|e| panic!("connection {i} of 16: {e}"))
        })
        .collect();
    match rt.block_on(Client::connect(&socket)) {
        Err(ClientError::Refused(why)) => assert!(
            why.contains("the master is busy: 16 control connections are open"),
            "{why}"
        ),
        other => panic!("the 17th connection: {other:?}"),
    }
    let out = ctl(&socket, &["list"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("the master is busy"),
        "{}",
        describe(&out)
    );
    // Their tasks end with the runtime, which closes their sockets.
    drop(held);
    drop(rt);
    // The master frees a connection's slot once it has read its end.
    poll("list working again", WAIT, || {
        let out = ctl(&socket, &["list"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(describe(&out))
        }
    });
    still_serving(&mut fx, &socket);
}
