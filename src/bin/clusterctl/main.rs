//! `clusterctl`: operate a running cluster through its master's control socket (list, status,
//! monit, reload, restart, scale, upgrade, stop, logs), as `pm2` does for its processes.
//!
//! Exit codes: 0 done; 1 the cluster could not be reached or refused the request; 2 bad
//! usage; 3 a reload, restart or upgrade failed and was rolled back (the old workers, or the
//! old master, keep serving); 4 `--timeout` ran out before the reload, restart, upgrade or
//! stop ended.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use cluster::control::client::{Client, ClientError, find};
use cluster::control::protocol::{
    LOGS_VERSION, LogLine, LogStream, OptionRow, Progress, Request, Response,
    SLOW_REQUESTS_VERSION, ScaleTo, SlowRequestRow, UPGRADE_VERSION,
};
use cluster_core::options::parse_duration;

mod monit;
mod show;

/// A reload or restart failed and was rolled back.
const EXIT_ROLLED_BACK: u8 = 3;
/// `--timeout` ran out first.
const EXIT_TIMEOUT: u8 = 4;

/// Operate a running cluster: list its workers, reload, restart, scale or stop it, read its
/// workers' output.
///
/// The cluster is found by its name (`-n`, the socket `<name>.sock` in the default directory:
/// `$XDG_RUNTIME_DIR/cluster`, else `/run/cluster` for root, else `<tmp>/cluster-<uid>`), by its
/// socket path (`-s`), or as the only one running in the default directory.
///
/// Exit codes: 0 done; 1 the cluster could not be reached or refused; 2 bad usage; 3 a reload,
/// restart or upgrade failed and was rolled back; 4 --timeout ran out first.
#[derive(Debug, Parser)]
#[command(name = "clusterctl", version)]
struct Cli {
    /// The cluster's name (its `name` option; by default its executable's file name).
    #[arg(short, long, global = true)]
    name: Option<String>,
    /// The control socket's path (its `control_path` option).
    #[arg(short, long = "socket", global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// List the workers: group, slot, pid, generation, state, uptime, restarts, CPU, memory,
    /// connections.
    #[command(alias = "ls")]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show the master: pid, uptime, version and hash of its executable, the workers' requests
    /// under way for over a second, and every option in force with where its value came from
    /// (default, code, options file and line, environment variable).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A live view of the workers, refreshed every second: pid, state, uptime, CPU, memory,
    /// connections, restarts, event-loop lag. Quit with q or Ctrl-C. Needs a terminal; for
    /// scripts, use `list --json`.
    Monit,
    /// Replace every worker slot by slot (rolling reload); the old ones keep serving until
    /// their replacements are ready.
    Reload {
        /// Only this group's slots.
        #[arg(long, short)]
        group: Option<String>,
        /// Follow the reload slot by slot; exit 0 when every slot was replaced, 3 when it
        /// failed and was rolled back.
        #[arg(long, short)]
        wait: bool,
        /// With --wait: give up waiting after this long (`30s`, `2m`) and exit 4; the reload
        /// goes on.
        #[arg(long, value_parser = duration, requires = "wait")]
        timeout: Option<Duration>,
    },
    /// Gracefully replace one slot's worker: the new one takes over once ready. Exits 3 if it
    /// never becomes ready (the old one keeps serving).
    Restart {
        /// The slot, as GROUP/SLOT (`worker/0`).
        target: String,
        /// Give up waiting after this long and exit 4.
        #[arg(long, value_parser = duration)]
        timeout: Option<Duration>,
    },
    /// Resize a group: to N workers, or by +N / -N.
    Scale {
        /// The group (`worker` is the default group).
        group: String,
        /// N, +N or -N.
        #[arg(allow_hyphen_values = true)]
        count: String,
    },
    /// Upgrade the master itself: start the executable on disk as a new master, hand it the
    /// listening sockets, the control socket and the status port; once `min_ready` of its
    /// workers are ready the old master stops accepting, drains its workers and exits. No
    /// socket is ever closed. If the new master fails first (bad options, a worker that is
    /// never ready, a crash, `upgrade_timeout`), the old one serves on as before.
    Upgrade {
        /// Follow the upgrade to its end; exit 0 when the new master serves, 3 when it was
        /// given up (with the failing worker's last lines).
        #[arg(long, short)]
        wait: bool,
        /// With --wait: give up waiting after this long and exit 4; the upgrade goes on.
        #[arg(long, value_parser = duration, requires = "wait")]
        timeout: Option<Duration>,
    },
    /// Shut the cluster down gracefully and wait for the master to exit.
    Stop {
        /// The workers' grace period for this stop (instead of the `grace` option).
        #[arg(long, value_parser = duration)]
        grace: Option<Duration>,
        /// Give up waiting after this long and exit 4.
        #[arg(long, value_parser = duration)]
        timeout: Option<Duration>,
    },
    /// Print the workers' last output lines, prefixed as the master prints them
    /// (`[web/0 pid 123] ...`): the last --lines of each slot, in the order they were printed.
    /// Lines workers wrote to stdout go to stdout, those to stderr to stderr.
    ///
    /// The master keeps each slot's last lines (option `log_lines`, 1,000 by default), those
    /// of its earlier workers included. With -f, new lines follow as the workers print them,
    /// until Ctrl-C or the master exits (exit 0 then); if this command reads slower than the
    /// workers write, the lines it missed are shown as `[N lines dropped]`.
    Logs {
        /// Only this group (`web`) or slot (`web/0`).
        #[arg(value_name = "GROUP[/SLOT]")]
        target: Option<String>,
        /// Go on printing new lines as they are written.
        #[arg(short, long)]
        follow: bool,
        /// How many of each slot's last lines to print first.
        #[arg(long, value_name = "N", default_value_t = 15)]
        lines: usize,
    },
    /// Print shell completions for clusterctl.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// What went wrong, and the exit code that says so.
struct Failure(u8, String);

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure(1, e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "clusterctl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("clusterctl: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("clusterctl: {message}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if matches!(cli.command, Cmd::Monit) {
        monit::check_terminal()?;
    }
    let path = find(cli.name.as_deref(), cli.socket.as_deref()).map_err(|e| Failure(1, e))?;
    let mut client = Client::connect(&path).await.map_err(|e| match e {
        ClientError::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound && cli.name.is_some() =>
        {
            Failure(
                1,
                format!(
                    "no cluster named {:?} is running (no socket {})",
                    cli.name.unwrap_or_default(),
                    path.display()
                ),
            )
        }
        e => e.into(),
    })?;
    match cli.command {
        Cmd::List { json } => {
            let Response::Workers(rows) = client.request(&Request::List).await? else {
                return Err(Failure(1, "unexpected answer to list".to_owned()));
            };
            if json {
                print_json(&rows)
            } else {
                print!("{}", show::table(&rows));
                Ok(())
            }
        }
        Cmd::Status { json } => {
            let Response::Status(info) = client.request(&Request::Status).await? else {
                return Err(Failure(1, "unexpected answer to status".to_owned()));
            };
            let options = options(&mut client).await?;
            let slow = slow_requests(&mut client).await?;
            if json {
                print_json(&show::status_json(
                    &info,
                    options.as_deref(),
                    slow.as_deref(),
                ))
            } else {
                print!(
                    "{}",
                    show::status_text(&info, options.as_deref(), slow.as_deref())
                );
                Ok(())
            }
        }
        Cmd::Monit => monit::run(client).await,
        Cmd::Reload {
            group,
            wait,
            timeout,
        } => {
            let first = client.request(&Request::Reload { group, wait }).await?;
            say(&first, client.version());
            if !wait {
                return Ok(());
            }
            follow(&mut client, timeout, "reload").await
        }
        Cmd::Restart { target, timeout } => {
            let (group, slot) = target
                .rsplit_once('/')
                .and_then(|(g, s)| Some((g.to_owned(), s.parse().ok()?)))
                .ok_or_else(|| Failure(2, format!("{target:?} is not GROUP/SLOT (`worker/0`)")))?;
            let first = client.request(&Request::Restart { group, slot }).await?;
            say(&first, client.version());
            follow(&mut client, timeout, "restart").await
        }
        Cmd::Scale { group, count } => {
            let to = scale_to(&count).ok_or_else(|| {
                Failure(2, format!("{count:?} is not a count: expected N, +N or -N"))
            })?;
            let answer = client.request(&Request::Scale { group, to }).await?;
            say(&answer, client.version());
            Ok(())
        }
        Cmd::Upgrade { wait, timeout } => upgrade(&mut client, wait, timeout).await,
        Cmd::Stop { grace, timeout } => {
            let grace_ms = grace.map(|g| u64::try_from(g.as_millis()).unwrap_or(u64::MAX));
            let Response::Stopping { pid } = client.request(&Request::Stop { grace_ms }).await?
            else {
                return Err(Failure(1, "unexpected answer to stop".to_owned()));
            };
            println!("stopping the cluster {} (master pid {pid})", client.name());
            let wait = async {
                // The master holds the connection open until it exits.
                while let Ok(Some(_)) = client.next().await {}
                while process_alive(pid) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            within(timeout, wait, "stop").await?;
            println!("stopped");
            Ok(())
        }
        Cmd::Logs {
            target,
            follow,
            lines,
        } => logs(&mut client, target.as_deref(), follow, lines).await,
        Cmd::Completions { .. } => Ok(()),
    }
}

/// `clusterctl upgrade`: starts the upgrade; with `wait`, prints how it ended.
async fn upgrade(client: &mut Client, wait: bool, limit: Option<Duration>) -> Result<(), Failure> {
    if client.version() < UPGRADE_VERSION {
        return Err(Failure(
            1,
            format!(
                "the master (pid {}) speaks control protocol version {}, which has no upgrade; it needs a restart on a newer build",
                client.pid(),
                client.version()
            ),
        ));
    }
    let first = client.request(&Request::Upgrade { wait }).await?;
    say(&first, client.version());
    if !wait {
        return Ok(());
    }
    let old = client.pid();
    let work = async {
        match client.next().await {
            Ok(Some(Response::Upgraded { pid, millis })) => {
                println!(
                    "upgrade: done, master pid {pid} serves ({millis} ms after the request); the old master (pid {old}) drains its workers and exits"
                );
                Ok(())
            }
            Ok(Some(Response::UpgradeFailed { error, lines })) => {
                let mut message =
                    format!("upgrade failed: {error}; the old master (pid {old}) serves on");
                if !lines.is_empty() {
                    message += "\nthe failing worker's last lines:";
                    for line in &lines {
                        message += "\n  ";
                        message += line;
                    }
                }
                Err(Failure(EXIT_ROLLED_BACK, message))
            }
            Ok(Some(other)) => Err(Failure(1, format!("unexpected answer: {other:?}"))),
            Ok(None) => Err(Failure(
                1,
                "the master closed the connection before the upgrade ended".to_owned(),
            )),
            Err(e) => Err(e.into()),
        }
    };
    within(limit, work, "upgrade").await?
}

/// `clusterctl logs`: the backlog, then with `follow` new lines until the master goes away.
async fn logs(
    client: &mut Client,
    target: Option<&str>,
    follow: bool,
    lines: usize,
) -> Result<(), Failure> {
    if client.version() < LOGS_VERSION {
        return Err(Failure(
            1,
            format!(
                "the master (pid {}) speaks control protocol version {}, which has no logs; it needs a restart on a newer build",
                client.pid(),
                client.version()
            ),
        ));
    }
    let (group, slot) = match target {
        None => (None, None),
        Some(target) => match target.split_once('/') {
            None => (Some(target.to_owned()), None),
            Some((group, slot)) => {
                let slot = slot.parse().map_err(|_| {
                    Failure(
                        2,
                        format!("{target:?} is not GROUP or GROUP/SLOT (`worker/0`)"),
                    )
                })?;
                (Some(group.to_owned()), Some(slot))
            }
        },
    };
    let request = Request::Logs {
        group,
        slot,
        lines,
        follow,
    };
    let mut answer = Some(client.request(&request).await?);
    loop {
        let response = match answer.take() {
            Some(response) => response,
            None => match client.next().await {
                Ok(Some(response)) => response,
                // The connection ended: with -f, the way a follow ends when the master exits.
                Ok(None) | Err(ClientError::Channel(_)) if follow => {
                    eprintln!(
                        "clusterctl: the master (pid {}) went away; no more lines",
                        client.pid()
                    );
                    return Ok(());
                }
                Ok(None) => return Err(ClientError::Closed.into()),
                Err(e) => return Err(e.into()),
            },
        };
        let printed = match response {
            Response::Logs(lines) => print_lines(&lines),
            Response::LogsDropped(n) => write_out(
                &mut std::io::stdout().lock(),
                format!("[{n} line{} dropped]\n", if n == 1 { "" } else { "s" }).as_bytes(),
            ),
            Response::LogsUpToDate if !follow => return Ok(()),
            Response::LogsUpToDate => Ok(()),
            other => return Err(Failure(1, format!("unexpected answer to logs: {other:?}"))),
        };
        if printed.is_err() {
            // Whoever read our output is gone (`clusterctl logs -f | head`): nothing to do.
            return Ok(());
        }
    }
}

/// Writes `lines` to stdout or stderr, as the worker wrote each.
fn print_lines(lines: &[LogLine]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for line in lines {
        match line.stream {
            LogStream::Stdout => write_line(&mut out, &line.text)?,
            LogStream::Stderr => write_line(&mut err, &line.text)?,
        }
    }
    out.flush()?;
    err.flush()
}

fn write_line(to: &mut impl Write, text: &[u8]) -> std::io::Result<()> {
    to.write_all(text)?;
    to.write_all(b"\n")
}

fn write_out(to: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    to.write_all(bytes)?;
    to.flush()
}

async fn within<T>(
    limit: Option<Duration>,
    work: impl std::future::Future<Output = T>,
    what: &str,
) -> Result<T, Failure> {
    match limit {
        None => Ok(work.await),
        Some(limit) => tokio::time::timeout(limit, work).await.map_err(|_| {
            Failure(
                EXIT_TIMEOUT,
                format!(
                    "the {what} has not ended after {}; no longer waiting (it goes on)",
                    cluster_core::options::duration_text(&limit)
                ),
            )
        }),
    }
}

/// How many of a failed replacement's last lines to show.
const FAILED_LINES: usize = 20;

/// Prints a reload's or restart's progress until it ends.
async fn follow(client: &mut Client, limit: Option<Duration>, what: &str) -> Result<(), Failure> {
    let work = async {
        // The failing replacement's last lines, which the master sends before the failure.
        let mut last_lines: Vec<LogLine> = Vec::new();
        loop {
            match client.next().await {
                Ok(Some(Response::ReloadFinished)) => {
                    println!("{what}: done, every slot it replaced is ready");
                    return Ok(());
                }
                Ok(Some(Response::ReloadFailed { slot, error })) => {
                    let at = slot
                        .as_ref()
                        .map(|s| format!(" at {s}"))
                        .unwrap_or_default();
                    let mut message = format!(
                        "{what} failed{at}: {error}; rolled back, the old workers keep serving"
                    );
                    let skip = last_lines.len().saturating_sub(FAILED_LINES);
                    if skip < last_lines.len() {
                        message += "\nthe replacement's last lines:";
                        for line in &last_lines[skip..] {
                            message += "\n  ";
                            message += &String::from_utf8_lossy(&line.text);
                        }
                    }
                    return Err(Failure(EXIT_ROLLED_BACK, message));
                }
                Ok(Some(Response::Logs(lines))) => last_lines.extend(lines),
                Ok(Some(other)) => say(&other, client.version()),
                Ok(None) => {
                    return Err(Failure(
                        1,
                        format!("the master closed the connection before the {what} ended"),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    within(limit, work, what).await?
}

/// Every option with its source, from a master that can say (protocol version 2 on).
async fn options(client: &mut Client) -> Result<Option<Vec<OptionRow>>, Failure> {
    if client.version() < 2 {
        return Ok(None);
    }
    match client.request(&Request::Options).await? {
        Response::Options(rows) => Ok(Some(rows)),
        other => Err(Failure(
            1,
            format!("unexpected answer to the options request: {other:?}"),
        )),
    }
}

/// The workers' slow requests, from a master that can say (protocol version 3 on).
async fn slow_requests(client: &mut Client) -> Result<Option<Vec<SlowRequestRow>>, Failure> {
    if client.version() < SLOW_REQUESTS_VERSION {
        return Ok(None);
    }
    match client.request(&Request::SlowRequests).await? {
        Response::SlowRequests(rows) => Ok(Some(rows)),
        other => Err(Failure(
            1,
            format!("unexpected answer to the slow requests request: {other:?}"),
        )),
    }
}

/// One line for an answer that is only words, from a master of protocol version `version`.
fn say(response: &Response, version: u32) {
    let line = match response {
        Response::Done(what) => what.clone(),
        Response::Progress(Progress::Replacing {
            slot,
            generation,
            pid,
        }) => format!("{slot}: starting {slot}#{generation} (pid {pid})"),
        Response::Progress(Progress::Replaced { slot, generation }) => {
            format!("{slot}: {slot}#{generation} is ready and took over; the old worker drains")
        }
        Response::Progress(Progress::Exited {
            slot,
            generation,
            how,
        }) if version < 2 => format!("{slot}: {slot}#{generation} {how} before it became ready"),
        Response::Progress(Progress::Exited {
            slot,
            generation,
            how,
        }) => format!("{slot}: {slot}#{generation} {how}"),
        other => format!("{other:?}"),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn scale_to(text: &str) -> Option<ScaleTo> {
    let text = text.trim();
    if let Some(n) = text.strip_prefix('+') {
        n.parse().ok().map(ScaleTo::Add)
    } else if let Some(n) = text.strip_prefix('-') {
        n.parse().ok().map(ScaleTo::Remove)
    } else {
        text.parse().ok().map(ScaleTo::Exactly)
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure(1, e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// Whether `pid` still runs (a zombie waiting for its parent has exited).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
