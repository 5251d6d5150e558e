//! Helpers of the control socket's tests (tests/control.rs, tests/control_logs.rs,
//! tests/control_socket.rs, tests/monit.rs): run `clusterctl` against a fixture cluster whose
//! control socket is in a directory of the test's own (`FIXTURE_CONTROL_PATH`), so that tests
//! run in parallel, and read its answers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::{Fixture, TempDir, WAIT, poll};

pub(crate) const CTL: &str = env!("CARGO_BIN_EXE_clusterctl");

/// Runs `clusterctl -s socket args...` to its end.
pub(crate) fn ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(CTL)
        .arg("-s")
        .arg(socket)
        .args(args)
        .output()
        .expect("run clusterctl")
}

pub(crate) fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// An output, for an assertion's message.
pub(crate) fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// A cluster whose socket is `<dir>/ctl.sock`.
pub(crate) fn start(dir: &TempDir, env: &[(&str, &str)]) -> (Fixture, PathBuf) {
    let socket = dir.0.join("ctl.sock");
    let path = socket.to_str().expect("a UTF-8 path").to_owned();
    let mut all = vec![("FIXTURE_CONTROL_PATH", path.as_str())];
    all.extend_from_slice(env);
    (Fixture::start(&all), socket)
}

/// `list --json`, once the socket answers.
pub(crate) fn rows(socket: &Path) -> Vec<Value> {
    let out = ctl(socket, &["list", "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let value: Value = serde_json::from_slice(&out.stdout).expect("list --json is JSON");
    value.as_array().cloned().unwrap_or_default()
}

/// Waits until `n` workers are ready and no other process is listed.
pub(crate) fn wait_ready(socket: &Path, n: usize) -> Vec<Value> {
    poll(&format!("{n} ready workers"), WAIT, || {
        let rows = rows(socket);
        let ready = rows.iter().filter(|r| r["state"] == "ready").count();
        if ready == n && rows.len() == n {
            Ok(rows)
        } else {
            Err(format!("{rows:?}"))
        }
    })
}
