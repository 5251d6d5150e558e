//! Helpers shared by the process-level tests (each includes them with `mod support;`): start
//! the fixture cluster (tests/fixture/cluster_fixture.rs), read its output lines with bounded
//! waits, check processes through /proc, and kill everything a test started when it ends, even
//! when it fails. `process` holds the machinery every fixture shares, `http` runs
//! examples/http and drives it with a raw HTTP client, `ops` drives the ops fixture
//! (tests/fixture/ops_fixture.rs), `faults` stops processes and moves program files away for
//! the fault tests, `ctl` runs `clusterctl` (feature `ctl`).
// Each test binary uses a subset of these helpers; the rest would warn as dead code.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

#[cfg(feature = "ctl")]
pub(crate) mod ctl;
pub(crate) mod faults;
pub(crate) mod http;
pub(crate) mod ops;
pub(crate) mod process;

use process::{Captured, Group, OutputLine, group_command, read_lines};

/// The bound on waits for things that must happen: generous, for a loaded 2-core machine
/// running the tests in parallel. A broken build fails at this bound instead of hanging.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// The fixture program, built by cargo alongside the tests.
pub(crate) const FIXTURE: &str = env!("CARGO_BIN_EXE_cluster-fixture");

/// How the master ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Code(i32),
    Signal(Signal),
}

/// One output line: `KIND key=value ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub raw: String,
    pub kind: String,
    pub fields: BTreeMap<String, String>,
}

impl Line {
    pub(crate) fn parse(raw: &str) -> Line {
        let mut words = raw.split_whitespace();
        // Skip anything before the kind (say, a log prefix added to worker output).
        let kind = words
            .by_ref()
            .find(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
            .unwrap_or("")
            .to_owned();
        let fields = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Line {
            raw: raw.to_owned(),
            kind,
            fields,
        }
    }

    /// The value of `key`; panics naming the line when it has none.
    pub(crate) fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("line {:?} has no `{key}`", self.raw))
    }

    /// Whether this line is of `kind` and has every `key=value` in `fields`.
    pub(crate) fn is(&self, kind: &str, fields: &[(&str, &str)]) -> bool {
        self.kind == kind
            && fields
                .iter()
                .all(|(k, v)| self.fields.get(*k).map(String::as_str) == Some(*v))
    }

    /// The pid in the line's `pid` field.
    pub(crate) fn pid(&self) -> i32 {
        self.get("pid").parse().expect("a pid")
    }
}

/// A worker id as the fixture prints it: `group/slot#generation`.
pub(crate) fn id(group: &str, slot: usize, generation: u64) -> String {
    format!("{group}/{slot}#{generation}")
}

/// Splits `group/slot#generation`.
pub(crate) fn parse_id(id: &str) -> (String, usize, u64) {
    let (group, rest) = id.split_once('/').expect("group/slot#generation");
    let (slot, generation) = rest.split_once('#').expect("group/slot#generation");
    (
        group.to_owned(),
        slot.parse().expect("slot"),
        generation.parse().expect("generation"),
    )
}

/// A running cluster-fixture cluster (see [`process::Fixture`] for the waits on its output):
/// its stdout is read as [`Line`]s, its stderr as a whole. The master leads its own process
/// group, which its workers share; dropping this kills the whole group and reaps the master.
pub(crate) type Fixture = process::Fixture<Line>;

impl OutputLine for Line {
    fn is(&self, kind: &str, fields: &[(&str, &str)]) -> bool {
        Line::is(self, kind, fields)
    }

    fn dump(fixture: &Fixture) -> String {
        let out: Vec<&str> = fixture.history.iter().map(|l| l.raw.as_str()).collect();
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            out.join("\n"),
            fixture.stderr()
        )
    }
}

impl Fixture {
    /// Starts the fixture with `env` (on top of this process's environment, without any
    /// cluster or fixture variable).
    pub(crate) fn start(env: &[(&str, &str)]) -> Fixture {
        Self::start_with(env, |_| {})
    }

    /// As [`Fixture::start`], letting `adjust` change the command before it starts.
    pub(crate) fn start_with(env: &[(&str, &str)], adjust: impl FnOnce(&mut Command)) -> Fixture {
        Self::start_program(std::path::Path::new(FIXTURE), env, adjust)
    }

    /// As [`Fixture::start_with`], running `program` (a copy of the fixture, say) instead.
    pub(crate) fn start_program(
        program: &std::path::Path,
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command),
    ) -> Fixture {
        let mut cmd = group_command(program, &["CLUSTER_", "FIXTURE_"]);
        cmd.envs(env.iter().copied()).stdin(Stdio::piped());
        adjust(&mut cmd);
        let (group, pipes) = Group::spawn(&mut cmd, "the fixture");
        let (tx, lines) = mpsc::channel();
        read_lines(pipes.stdout, tx, |line| Line::parse(&line));
        let stderr = Captured::start(pipes.stderr);
        Fixture::new(group, pipes.stdin, lines, Some(stderr))
    }

    /// Everything the cluster wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr.as_ref().map(Captured::text).unwrap_or_default()
    }

    /// Waits until `n` workers (with a given id prefix such as `worker/`) have said hello, and
    /// returns their ids and pids.
    pub(crate) fn wait_hellos(&mut self, prefix: &str, n: usize) -> BTreeMap<String, i32> {
        self.wait_for(
            &format!("{n} workers {prefix}* saying hello"),
            WAIT,
            |lines| {
                let hellos: BTreeMap<String, i32> = lines
                    .iter()
                    .filter(|l| l.kind == "HELLO" && l.get("id").starts_with(prefix))
                    .map(|l| (l.get("id").to_owned(), l.pid()))
                    .collect();
                (hellos.len() >= n).then_some(hellos)
            },
        )
    }
}

/// `target/<profile>/examples/<name>`, next to this test's `target/<profile>/deps/`, brought
/// up to date once per test binary: a filtered `cargo test --test X` builds no example, and a
/// stale binary would test yesterday's code. Built with this test build's features, so the
/// unfiltered `cargo test` (which already built it) finds nothing to do.
pub(crate) fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let path = profile_dir.join("examples").join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let target_dir = profile_dir.parent().expect("target/<profile>");
        let mut features = Vec::new();
        if cfg!(feature = "default") {
            features.push("default");
        }
        if cfg!(feature = "http") {
            features.push("http");
        }
        if cfg!(feature = "postcard") {
            features.push("postcard");
        }
        if cfg!(feature = "tls") {
            features.push("tls");
        }
        let mut build = Command::new(env!("CARGO"));
        build
            .args([
                "build",
                "--quiet",
                "--example",
                name,
                "--no-default-features",
            ])
            .args(["--features", &features.join(",")])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build --example");
        assert!(status.success(), "cargo build --example {name} failed");
        built.push(name.to_string());
    }
    path
}

/// Whether `pid` is a live process: false once it is gone or a zombie (dead, not yet reaped
/// by whoever inherited it).
pub(crate) fn pid_alive(pid: i32) -> bool {
    !matches!(proc_state(pid), None | Some('Z' | 'X' | 'x'))
}

/// The state letter of `pid` in /proc (`R`, `S`, `T`, `Z`, ...), `None` once it is gone.
pub(crate) fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses and may contain anything.
    let i = stat.rfind(')')?;
    stat[i + 1..].trim_start().chars().next()
}

/// The parent pid of `pid`, from /proc.
pub(crate) fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let i = stat.rfind(')')?;
    stat[i + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// A free TCP port on the loopback interface: bound to port 0, read, released. Whoever needs
/// it binds it again at once (the small race with another process taking it meanwhile is the
/// price of not being told the port by the program).
pub(crate) fn free_port() -> u16 {
    // The kernel may give the same port to two binds in a row once the first is closed: two
    // ports of one cluster, or of two tests running at once, were then the same (a load
    // answered 404 by a status server on its HTTP port). Never hand out a port twice.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
        let port = listener.local_addr().expect("its address").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no port not handed out before in 100 binds");
}

/// Polls `cond` every `every` until it gives a value, failing the test after `timeout` with
/// `what` and the last value's description.
fn poll_every<T>(
    every: Duration,
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match cond() {
            Ok(found) => return found,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        std::thread::sleep(every);
    }
}

/// Polls `cond` every few milliseconds until it gives a value, failing the test after
/// `timeout` with `what` and the last value's description.
pub(crate) fn poll<T>(what: &str, timeout: Duration, cond: impl FnMut() -> Result<T, String>) -> T {
    poll_every(Duration::from_millis(20), what, timeout, cond)
}

/// Polls `cond` until it holds, failing the test after `timeout`.
pub(crate) fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    poll_every(Duration::from_millis(5), what, timeout, || {
        cond().then_some(()).ok_or_else(|| "false".to_owned())
    });
}

/// A file path in the temporary directory, unique to this test, removed on drop.
pub(crate) struct TempPath(pub PathBuf);

impl TempPath {
    pub(crate) fn new(name: &str) -> TempPath {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        TempPath(std::env::temp_dir().join(format!(
            "cluster-test-{}-{n}-{nanos}-{name}",
            std::process::id()
        )))
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A hash of a file's bytes, the same one the fixture reports for its executable
/// (`FIXTURE_EXE_HASH=1`).
pub(crate) fn file_hash(path: &std::path::Path) -> String {
    use std::hash::Hasher;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut hasher = std::hash::DefaultHasher::new();
    hasher.write(&bytes);
    format!("{:016x}", hasher.finish())
}

/// A directory in the temporary directory, unique to this test, removed with its contents on
/// drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        let path = TempPath::new(name).0.clone();
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies `from` into `dir` as `name`, executable, and returns its path.
pub(crate) fn copy_executable(
    from: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
) -> PathBuf {
    let to = dir.join(name);
    std::fs::copy(from, &to)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    to
}

/// Deploys a new build of the program at `path` the way a deploy tool should: the new bytes
/// (here the old ones with `extra` appended, which an ELF loader ignores) go to a temporary
/// file in the same directory, which is then renamed over the old path in one step. Running
/// processes keep their old inode; the next exec of `path` runs the new file. Returns the new
/// file's hash.
pub(crate) fn deploy_modified_copy(path: &std::path::Path, extra: &[u8]) -> String {
    use std::os::unix::fs::PermissionsExt;
    let mut bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    bytes.extend_from_slice(extra);
    let tmp = path.with_extension("new");
    {
        let mut file = std::fs::File::create(&tmp).expect("create the new build");
        file.write_all(&bytes).expect("write the new build");
        file.sync_all().expect("sync the new build");
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .expect("make the new build executable");
    std::fs::rename(&tmp, path).expect("rename the new build over the old one");
    file_hash(path)
}

/// The inodes of the TCP sockets listening on `port` (IPv4, this network namespace). Read while
/// connections come and go, `/proc/net/tcp` can miss rows: read it before a load starts.
pub(crate) fn listening_inodes(port: u16) -> Vec<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            let listening = *f.get(3)? == "0A";
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The socket inodes among `pid`'s descriptors.
pub(crate) fn socket_inodes(pid: u32) -> std::collections::BTreeSet<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return std::collections::BTreeSet::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}
