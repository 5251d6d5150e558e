//! The control protocol: what `clusterctl` asks a master over its control socket, and what the
//! master answers.
//!
//! It rides on cluster-ipc's channel (length-prefixed frames, the codec, and the channel's
//! hello with the framing version and codec name); on top of that the client's first request
//! is [`Request::Hello`] with [`CONTROL_VERSION`], answered by [`Response::Hello`]. A client
//! and a master of different builds must keep understanding each other, and the codecs are
//! positional, so these enums and structs are **append-only**: new variants and new fields go
//! at the end, nothing is reordered or removed. `tests::pinned_bytes` pins the encoding.

use serde::{Deserialize, Serialize};

/// The control protocol's version, raised when a request or answer is appended.
///
/// 2: [`Request::Logs`] and its answers (a failed reload or restart followed by a client of
/// version 2 or later gets the failing replacement's last lines, [`Response::Logs`], before
/// [`Response::ReloadFailed`]); [`Request::Options`] and [`Response::Options`] (each
/// option's source).
///
/// 3: [`Request::Upgrade`], [`Response::Upgraded`], [`Response::UpgradeFailed`];
/// [`Request::SlowRequests`] and [`Response::SlowRequests`] (the workers' requests under
/// way for over a second).
pub const CONTROL_VERSION: u32 = 3;

/// The first [`CONTROL_VERSION`] with [`Request::Upgrade`].
pub const UPGRADE_VERSION: u32 = 3;

/// The first [`CONTROL_VERSION`] with [`Request::Logs`] and the lines of a failed replacement.
pub const LOGS_VERSION: u32 = 2;

/// The first [`CONTROL_VERSION`] with [`Request::SlowRequests`].
pub const SLOW_REQUESTS_VERSION: u32 = 3;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// The first request on a connection: the client's [`CONTROL_VERSION`].
    Hello {
        /// The client's protocol version.
        version: u32,
    },
    /// Every live worker: answered by [`Response::Workers`].
    List,
    /// The master itself: answered by [`Response::Status`].
    Status,
    /// A rolling reload of every slot, or of one group's. Answered by [`Response::Done`] once
    /// started; with `wait`, followed by [`Response::Progress`] lines and then
    /// [`Response::ReloadFinished`] or [`Response::ReloadFailed`].
    Reload {
        /// Only this group's slots.
        group: Option<String>,
        /// Follow the reload to its end.
        wait: bool,
    },
    /// A graceful replacement of one slot's worker: its replacement starts beside it and
    /// takes over once ready. Followed like a reload with `wait`.
    Restart {
        /// The group.
        group: String,
        /// The slot.
        slot: usize,
    },
    /// Resize a group.
    Scale {
        /// The group.
        group: String,
        /// The new size.
        to: ScaleTo,
    },
    /// A graceful shutdown, optionally with another grace period than the option's.
    /// Answered by [`Response::Stopping`]; the connection closes when the master exits.
    Stop {
        /// The grace period, in milliseconds.
        grace_ms: Option<u64>,
    },
    /// Workers' last output lines (since version 2): the last `lines` of each slot wanted,
    /// in [`Response::Logs`] answers, then [`Response::LogsUpToDate`]. With `follow`, new
    /// lines follow as the workers print them, until the client closes the connection (or
    /// sends anything); a client that falls behind loses lines, told by
    /// [`Response::LogsDropped`].
    Logs {
        /// Only this group's slots.
        group: Option<String>,
        /// Only this slot (of `group`).
        slot: Option<usize>,
        /// How many of each slot's last lines.
        lines: usize,
        /// Go on with new lines.
        follow: bool,
    },
    /// Every option in force with where its value came from: answered by
    /// [`Response::Options`]. Since version 2: a client asks it only of a master whose hello
    /// said 2 or more (an older one would close the connection on it).
    Options,
    /// Upgrade the master (since version 3): start the executable on disk as a new master,
    /// hand it the sockets, and leave once it serves. Answered by [`Response::Done`] once
    /// started; with `wait`, then by [`Response::Upgraded`] or [`Response::UpgradeFailed`].
    Upgrade {
        /// Follow the upgrade to its end.
        wait: bool,
    },
    /// The workers' requests under way for over a second at their last heartbeat: answered
    /// by [`Response::SlowRequests`]. Since version 3, asked only of a master whose hello
    /// said 3 or more.
    SlowRequests,
}

/// The size a group is scaled to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScaleTo {
    /// Exactly this many slots.
    Exactly(usize),
    /// This many more.
    Add(usize),
    /// This many fewer.
    Remove(usize),
}

/// What the master answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The answer to [`Request::Hello`].
    Hello {
        /// The master's [`CONTROL_VERSION`].
        version: u32,
        /// The master's pid.
        pid: u32,
        /// The cluster's name.
        name: String,
    },
    /// The request was refused (a peer of another user, an unknown group, a reload during a
    /// shutdown): why.
    Refused(String),
    /// The answer to [`Request::List`].
    Workers(Vec<WorkerRow>),
    /// The answer to [`Request::Status`].
    Status(Box<MasterInfo>),
    /// The request was carried out (or started): what happened, in words.
    Done(String),
    /// A step of a reload or restart being followed.
    Progress(Progress),
    /// The reload or restart being followed replaced every slot it had to.
    ReloadFinished,
    /// The reload or restart being followed failed and was rolled back: the old workers keep
    /// serving.
    ReloadFailed {
        /// The slot whose replacement failed (`group/slot`), when known.
        slot: Option<String>,
        /// Why.
        error: String,
    },
    /// The master is shutting down.
    Stopping {
        /// Its pid, for the client to wait on.
        pid: u32,
    },
    /// Workers' output lines, in the order the master printed them.
    Logs(Vec<LogLine>),
    /// This many lines were dropped here because the client did not read fast enough.
    LogsDropped(u64),
    /// Every line kept so far was sent: without `follow` the answer ends here; with it, new
    /// lines come next.
    LogsUpToDate,
    /// The answer to [`Request::Options`], in the order of the options table.
    Options(Vec<OptionRow>),
    /// The upgrade being followed is done: the new master serves, this one drains and exits.
    Upgraded {
        /// The new master's pid.
        pid: u32,
        /// From the request to the new master serving, in milliseconds.
        millis: u64,
    },
    /// The upgrade being followed was given up: this master serves on.
    UpgradeFailed {
        /// Why.
        error: String,
        /// The last output lines of the new master's worker that failed, if one did.
        lines: Vec<String>,
    },
    /// The answer to [`Request::SlowRequests`]: oldest first.
    SlowRequests(Vec<SlowRequestRow>),
}

/// A request under way for over a second, as the worker serving it last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowRequestRow {
    /// The worker's group.
    pub group: String,
    /// Its slot.
    pub slot: usize,
    /// Its pid.
    pub pid: Option<u32>,
    /// Its generation.
    pub generation: u64,
    /// The request's method (or, for another protocol than HTTP, its kind).
    pub method: String,
    /// Its path (or name).
    pub path: String,
    /// How long it had been under way at the worker's last report, at least, in
    /// milliseconds.
    pub age_ms: u64,
}

/// Which of a worker's streams a line was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    /// Its standard output.
    Stdout,
    /// Its standard error.
    Stderr,
}

/// One line a worker wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Where the worker wrote it (and the master printed it).
    pub stream: LogStream,
    /// The line as the master printed it, prefix included (`[web/0 pid 123] listening`),
    /// without its newline. Bytes: a worker's output need not be UTF-8.
    pub text: Vec<u8>,
}

/// One step of a reload or restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress {
    /// A replacement process was started for a slot.
    Replacing {
        /// `group/slot`.
        slot: String,
        /// The replacement's generation.
        generation: u64,
        /// The replacement's pid.
        pid: u32,
    },
    /// The replacement is ready and took over its slot; the old worker drains.
    Replaced {
        /// `group/slot`.
        slot: String,
        /// The replacement's generation.
        generation: u64,
    },
    /// The replacement ended before it became ready.
    Exited {
        /// `group/slot`.
        slot: String,
        /// The replacement's generation.
        generation: u64,
        /// How it ended, as a clause: `exited with code 3 before it became ready`, `was not
        /// ready within ready_timeout (30s) and was killed`. (Before version 2, without
        /// `before it became ready`.)
        how: String,
    },
}

/// One worker process, as `clusterctl list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRow {
    /// Its group.
    pub group: String,
    /// Its slot.
    pub slot: usize,
    /// Its pid, once spawned.
    pub pid: Option<u32>,
    /// Which process of the slot it is (1 for the first).
    pub generation: u64,
    /// `starting`, `online`, `ready` or `stopping`.
    pub state: String,
    /// Milliseconds since it was spawned.
    pub uptime_ms: u64,
    /// Restarts of its slot after unexpected exits.
    pub restarts: u64,
    /// CPU use over the last sampling interval, in percent of one core.
    pub cpu_percent: Option<f64>,
    /// Resident memory at the last sample.
    pub memory_bytes: Option<u64>,
    /// Open connections.
    pub connections: u64,
    /// How late its runtime ran its last heartbeat, in milliseconds.
    pub lag_ms: Option<f64>,
}

/// The master, as `clusterctl status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MasterInfo {
    /// The cluster's name.
    pub name: String,
    /// The master's pid.
    pub pid: u32,
    /// Milliseconds since the master started.
    pub uptime_ms: u64,
    /// The version of the `cluster` library it was built with.
    pub version: String,
    /// The executable it started from.
    pub exe: String,
    /// A hash (64-bit FNV-1a, hex) of that executable as it was when the master started.
    pub exe_hash: String,
    /// Its control socket.
    pub control_path: String,
    /// Live worker processes.
    pub workers: u64,
    /// Workers ready.
    pub ready: u64,
    /// Worker restarts after unexpected exits.
    pub restarts_total: u64,
    /// Completed rolling reloads.
    pub reloads_total: u64,
    /// Every option in force, as `(name, value as text)`; secrets are shown as `(set)`.
    pub options: Vec<(String, String)>,
}

/// One option in force, as `clusterctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionRow {
    /// The option's name (its TOML key).
    pub name: String,
    /// Its value as text, as the option's parser reads it; a secret only as `(set)`.
    pub value: String,
    /// Where the value came from.
    pub source: OptionSource,
}

/// Where an option's value came from (`options::Source` on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptionSource {
    /// Nothing set it (or the code set it to its default, which cannot be told apart).
    Default,
    /// The code: the builder, `#[cluster::main]` or `Master::options`.
    Code,
    /// The options file.
    File {
        /// The file as it was named.
        path: String,
        /// The line of the key, from 1.
        line: u64,
    },
    /// An environment variable.
    Env {
        /// Its name (`CLUSTER_GRACE`, `WEB_CONCURRENCY`).
        var: String,
    },
}

impl From<&crate::options::Source> for OptionSource {
    fn from(source: &crate::options::Source) -> Self {
        use crate::options::Source;
        match source {
            Source::Default => OptionSource::Default,
            Source::Code => OptionSource::Code,
            Source::File { path, line } => OptionSource::File {
                path: path.display().to_string(),
                line: *line as u64,
            },
            Source::Env { var } => OptionSource::Env { var: var.clone() },
        }
    }
}

impl std::fmt::Display for OptionSource {
    /// As `options::Source` writes itself: `default`, `code`, `file app.toml:3`,
    /// `env CLUSTER_GRACE`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionSource::Default => f.write_str("default"),
            OptionSource::Code => f.write_str("code"),
            OptionSource::File { path, line } => write!(f, "file {path}:{line}"),
            OptionSource::Env { var } => write!(f, "env {var}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_ipc::{Bincode, Codec};

    fn bytes<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        Bincode.encode(value, &mut out).unwrap();
        out
    }

    /// If this fails, a variant or field was inserted, removed or reordered: a `clusterctl`
    /// and a master of different builds would misread each other. Append instead.
    #[test]
    fn pinned_bytes() {
        assert_eq!(bytes(&Request::Hello { version: 1 }), [0, 1]);
        assert_eq!(bytes(&Request::List), [1]);
        assert_eq!(bytes(&Request::Status), [2]);
        assert_eq!(
            bytes(&Request::Reload {
                group: Some("w".into()),
                wait: true
            }),
            [3, 1, 1, b'w', 1]
        );
        assert_eq!(
            bytes(&Request::Restart {
                group: "w".into(),
                slot: 2
            }),
            [4, 1, b'w', 2]
        );
        assert_eq!(
            bytes(&Request::Scale {
                group: "w".into(),
                to: ScaleTo::Remove(3)
            }),
            [5, 1, b'w', 2, 3]
        );
        assert_eq!(bytes(&Request::Stop { grace_ms: None }), [6, 0]);
        assert_eq!(bytes(&Request::Options), [8]);
        assert_eq!(bytes(&Request::Upgrade { wait: true }), [9, 1]);
        assert_eq!(
            bytes(&Response::Upgraded {
                pid: 7,
                millis: 200
            }),
            [13, 7, 200]
        );
        assert_eq!(
            bytes(&Response::UpgradeFailed {
                error: "e".into(),
                lines: vec!["l".into()]
            }),
            [14, 1, b'e', 1, 1, b'l']
        );
        assert_eq!(
            bytes(&Response::Hello {
                version: 1,
                pid: 7,
                name: "n".into()
            }),
            [0, 1, 7, 1, b'n']
        );
        assert_eq!(bytes(&Response::Refused("x".into())), [1, 1, b'x']);
        assert_eq!(bytes(&Response::Done("d".into())), [4, 1, b'd']);
        assert_eq!(
            bytes(&Response::Progress(Progress::Replaced {
                slot: "s".into(),
                generation: 2
            })),
            [5, 1, 1, b's', 2]
        );
        assert_eq!(bytes(&Response::ReloadFinished), [6]);
        assert_eq!(
            bytes(&Response::ReloadFailed {
                slot: None,
                error: "e".into()
            }),
            [7, 0, 1, b'e']
        );
        assert_eq!(bytes(&Response::Stopping { pid: 9 }), [8, 9]);
        let options = vec![
            OptionRow {
                name: "a".into(),
                value: "1".into(),
                source: OptionSource::Default,
            },
            OptionRow {
                name: "b".into(),
                value: "2".into(),
                source: OptionSource::Code,
            },
            OptionRow {
                name: "c".into(),
                value: "3".into(),
                source: OptionSource::File {
                    path: "f".into(),
                    line: 4,
                },
            },
            OptionRow {
                name: "d".into(),
                value: "5".into(),
                source: OptionSource::Env { var: "V".into() },
            },
        ];
        assert_eq!(
            bytes(&Response::Options(options)),
            [
                12, 4, //
                1, b'a', 1, b'1', 0, //
                1, b'b', 1, b'2', 1, //
                1, b'c', 1, b'3', 2, 1, b'f', 4, //
                1, b'd', 1, b'5', 3, 1, b'V',
            ]
        );
        let row = WorkerRow {
            group: "g".into(),
            slot: 1,
            pid: Some(5),
            generation: 2,
            state: "r".into(),
            uptime_ms: 3,
            restarts: 0,
            cpu_percent: None,
            memory_bytes: Some(4),
            connections: 6,
            lag_ms: None,
        };
        assert_eq!(
            bytes(&Response::Workers(vec![row])),
            [2, 1, 1, b'g', 1, 1, 5, 2, 1, b'r', 3, 0, 0, 1, 4, 6, 0]
        );
        // Version 2.
        assert_eq!(
            bytes(&Request::Logs {
                group: Some("w".into()),
                slot: Some(1),
                lines: 20,
                follow: true
            }),
            [7, 1, 1, b'w', 1, 1, 20, 1]
        );
        assert_eq!(
            bytes(&Response::Logs(vec![LogLine {
                stream: LogStream::Stderr,
                text: b"x".to_vec()
            }])),
            [9, 1, 1, 1, b'x']
        );
        assert_eq!(bytes(&Response::LogsDropped(3)), [10, 3]);
        assert_eq!(bytes(&Response::LogsUpToDate), [11]);
        // Version 3.
        assert_eq!(bytes(&Request::SlowRequests), [10]);
        assert_eq!(
            bytes(&Response::SlowRequests(vec![SlowRequestRow {
                group: "g".into(),
                slot: 1,
                pid: Some(5),
                generation: 2,
                method: "M".into(),
                path: "/p".into(),
                age_ms: 7,
            }])),
            [15, 1, 1, b'g', 1, 1, 5, 2, 1, b'M', 2, b'/', b'p', 7]
        );
    }

    #[test]
    fn round_trip() {
        for req in [
            Request::List,
            Request::Scale {
                group: "web".into(),
                to: ScaleTo::Add(2),
            },
            Request::Stop {
                grace_ms: Some(1500),
            },
        ] {
            assert_eq!(Bincode.decode::<Request>(&bytes(&req)).unwrap(), req);
        }
    }
}
