//! The master's side of the control socket: binding it safely (a directory of its own, mode
//! 0600, a stale socket replaced, a live one refused), checking each peer's uid, and answering
//! requests by asking the supervisor over its command queue, like the status server does
//! (`logs` reads the workers' last lines instead: control_logs.rs).

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_ipc::{Channel, Receiver, Sender};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use crate::control::protocol::{CONTROL_VERSION, OptionRow, Request, Response};
use crate::control::{client, config};
use crate::observe::logs::{Filter, RecentLogs};
use crate::observe::status::ClusterStatus;
use crate::options::Options;
use crate::supervisor::Command;
use crate::supervisor::control::Ask;
use crate::supervisor::control_logs;
use crate::supervisor::notice;
use crate::{Error, ErrorKind, Result};

mod changes;
mod view;
use changes::{reload, restart, scale, upgrade};
use view::{master_info, rows, sample_cpu, slow_requests};

/// At most this many control connections at once: one more is refused (see [`refuse_busy`]),
/// so a client looping on connect cannot make the master hold unbounded tasks and buffers.
const MAX_CONNECTIONS: usize = 16;
/// Connections being told that the master is busy, at most: past that, one more is closed
/// without a word. Each lasts at most [`HELLO_TIMEOUT`].
const MAX_REFUSALS: usize = 4;
/// A peer gets this long for the handshake and its hello, and between two requests.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The socket file, removed when the master ends, unless another process has put a socket
/// of its own at that path since (then that one is left alone).
pub(crate) struct SocketFile {
    path: PathBuf,
    ino: Option<(u64, u64)>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.ino {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What the master's servers (this one and the status server) answer from and stop by.
#[derive(Clone)]
pub(crate) struct Parts {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    /// Ends the accept loops; connections already open are served to their end.
    pub(crate) stop: CancellationToken,
    pub(crate) logs: Option<Arc<RecentLogs>>,
    /// Every task serving a client. The old master of an upgrade waits for them before it
    /// exits: a client it accepted just before the hand-over is answered, not cut off.
    pub(crate) tasks: TaskTracker,
}

/// What every connection reads.
struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    name: String,
    path: PathBuf,
    started: Instant,
    exe_hash: tokio::sync::OnceCell<String>,
    /// CPU use by pid over the last sampling interval, in percent.
    cpu: Mutex<HashMap<u32, f64>>,
    /// Workers' last lines, when the master keeps them.
    logs: Option<Arc<RecentLogs>>,
}

/// The control socket this master serves: a copy of its listening socket and its path, for
/// a new master to take over, and the file, removed when the master ends.
pub(crate) struct ControlSocket {
    pub(crate) listener: std::os::fd::OwnedFd,
    pub(crate) path: PathBuf,
    file: SocketFile,
}

impl ControlSocket {
    /// A new master serves the socket now: its file is no longer this master's to remove.
    pub(crate) fn keep_file(&mut self) {
        self.file.ino = None;
    }
}

/// Binds the control socket and serves it until `stop`; `None` when `control_path` is off.
///
/// # Errors
///
/// [`ErrorKind::Listen`] when the socket's directory is not this user's, a live master
/// already serves the path, or the socket cannot be bound.
pub(crate) async fn start(options: &Options, parts: &Parts) -> Result<Option<ControlSocket>> {
    let name = options.name().resolve();
    let Some(path) = options.control_path().resolve(&name) else {
        return Ok(None);
    };
    let (listener, file) = bind(&path, &name).await?;
    serve(listener, file, name, options, parts).map(Some)
}

/// Serves the control socket an old master handed over at `path`, until `stop`.
///
/// # Errors
///
/// [`ErrorKind::Listen`] when the socket cannot be used.
pub(crate) fn start_handed(
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    options: &Options,
    parts: &Parts,
) -> Result<ControlSocket> {
    let listener = listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener))
        .map_err(|e| listen_error(&path, format!("cannot serve the socket handed over: {e}")))?;
    let ino = std::fs::symlink_metadata(&path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let file = SocketFile {
        path: path.clone(),
        ino,
    };
    serve(listener, file, options.name().resolve(), options, parts)
}

fn serve(
    listener: UnixListener,
    file: SocketFile,
    name: String,
    options: &Options,
    parts: &Parts,
) -> Result<ControlSocket> {
    use std::os::fd::AsFd;
    let path = file.path.clone();
    let copy = listener
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| listen_error(&path, format!("cannot copy its descriptor: {e}")))?;
    let shared = Arc::new(Shared {
        commands: parts.commands.clone(),
        name,
        path: path.clone(),
        started: Instant::now(),
        exe_hash: tokio::sync::OnceCell::new(),
        cpu: Mutex::new(HashMap::new()),
        logs: parts.logs.clone(),
    });
    tokio::spawn(sample_cpu(
        shared.clone(),
        options.sample_interval(),
        parts.stop.clone(),
    ));
    tokio::spawn(accept_loop(
        listener,
        shared,
        parts.stop.clone(),
        parts.tasks.clone(),
    ));
    Ok(ControlSocket {
        listener: copy,
        path,
        file,
    })
}

fn listen_error(path: &Path, what: String) -> Error {
    Error::new(
        ErrorKind::Listen,
        format!("control socket {}: {what}", path.display()),
    )
}

/// Binds `path`: creates its directory (0700) when missing, refuses a directory of another
/// user, replaces a stale socket, refuses a live one.
async fn bind(path: &Path, name: &str) -> Result<(UnixListener, SocketFile)> {
    let uid = nix::unistd::geteuid().as_raw();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| listen_error(path, format!("cannot create its directory: {e}")))?;
        }
        let meta = std::fs::metadata(dir)
            .map_err(|e| listen_error(path, format!("cannot read its directory: {e}")))?;
        // A directory of another user could hold a socket in our name that we would trust.
        // Root's sticky /tmp is fine for an explicit path: the socket itself is 0600.
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.uid() != uid && !(meta.uid() == 0 && sticky) {
            return Err(listen_error(
                path,
                format!(
                    "its directory {} belongs to uid {}, not to this user (uid {uid})",
                    dir.display(),
                    meta.uid()
                ),
            ));
        }
    }
    let listener = match UnixListener::bind(path) {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            replace_stale(path, name).await?;
            UnixListener::bind(path).map_err(|e| listen_error(path, e.to_string()))?
        }
        Err(e) => return Err(listen_error(path, e.to_string())),
    };
    // Bound with the umask's mode: narrow it before anyone is served (the peer check below
    // covers the moment in between).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| listen_error(path, format!("cannot set its mode: {e}")))?;
    let ino = std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            ino,
        },
    ))
}

/// Something is at `path`: a socket nobody listens on (a killed master's) is removed; a live
/// one is another master's, which is asked for its pid; anything else is left alone.
async fn replace_stale(path: &Path, name: &str) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| listen_error(path, e.to_string()))?;
    if !meta.file_type().is_socket() {
        return Err(listen_error(
            path,
            "the path exists and is not a socket; not replacing it".to_owned(),
        ));
    }
    match UnixStream::connect(path).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            notice!(
                info,
                "control socket {}: replacing a stale socket (its master is gone)",
                path.display()
            );
            std::fs::remove_file(path).map_err(|e| listen_error(path, e.to_string()))
        }
        Err(e) => Err(listen_error(path, e.to_string())),
        Ok(stream) => {
            let pid = match timeout(HELLO_TIMEOUT, client::Client::on_stream(stream)).await {
                Ok(Ok(client)) => client.pid().to_string(),
                _ => "unknown".to_owned(),
            };
            Err(Error::new(
                ErrorKind::Listen,
                format!(
                    "another master named {name} is running, pid {pid} (control socket {})",
                    path.display()
                ),
            ))
        }
    }
}

async fn accept_loop(
    listener: UnixListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let uid = nix::unistd::geteuid().as_raw();
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: wait a little instead of spinning.
                    tracing::warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                tasks.spawn(async move {
                    let _refusal = refusal;
                    let _ = timeout(HELLO_TIMEOUT, refuse_busy(stream)).await;
                });
            }
            continue;
        };
        // SO_PEERCRED: who connected, as the kernel recorded it at connect time.
        let peer = stream.peer_cred().ok().map(|c| c.uid());
        let allowed = peer.is_some_and(|p| p == uid || p == 0);
        let shared = shared.clone();
        let (stop, serving) = (stop.clone(), tasks.token());
        tokio::spawn(async move {
            let _permit = permit;
            let allowed = allowed.then_some(()).ok_or(peer);
            connection(stream, shared, allowed, (stop, serving)).await;
        });
    }
}

/// The client's side of a connection past the channel's handshake.
type Rx = cluster_ipc::Receiver<Request>;

/// The channel's handshake and the client's hello (with the client's protocol version);
/// `None` when the peer does not speak the
/// protocol (it has been told why when it got as far as sending a frame) or is too slow.
async fn hello(stream: UnixStream) -> Option<(Tx, Rx, u32)> {
    let channel = timeout(
        HELLO_TIMEOUT,
        Channel::<Response, Request>::handshake(stream, config()),
    )
    .await
    .ok()?
    .ok()?;
    let (tx, mut rx) = channel.split();
    match timeout(HELLO_TIMEOUT, rx.recv()).await {
        Ok(Ok(Some(Request::Hello { version }))) => Some((tx, rx, version)),
        Ok(Ok(Some(_))) => {
            refuse(&tx, "the first request must be hello".to_owned()).await;
            None
        }
        Ok(Err(e)) => {
            refuse_garbled(&tx, &e).await;
            None
        }
        Ok(Ok(None)) | Err(_) => None,
    }
}

/// Sends `why` as a refusal and waits until it is written, before the connection is dropped.
async fn refuse(tx: &Tx, why: String) {
    let _ = tx.send(&Response::Refused(why)).await;
    let _ = tx.flush().await;
}

/// A frame that does not decode as a request: a client of another build, or not a client at
/// all. Said before closing, so that the client reads why instead of a bare hang-up.
async fn refuse_garbled(tx: &Tx, error: &cluster_ipc::Error) {
    if matches!(
        error,
        cluster_ipc::Error::Io(_) | cluster_ipc::Error::Closed
    ) {
        // The client went away: nobody to tell.
        return;
    }
    tracing::warn!("control socket: closing a connection whose request does not decode: {error}");
    let why = format!(
        "the master could not read the request ({error}); is this clusterctl built from the same version of cluster as the master? closing the connection"
    );
    refuse(tx, why).await;
}

/// Tells a client past [`MAX_CONNECTIONS`] that the master is busy.
async fn refuse_busy(stream: UnixStream) {
    if let Some((tx, _rx, _)) = hello(stream).await {
        let why = format!(
            "the master is busy: {MAX_CONNECTIONS} control connections are open, the most it serves at once; try again when one has closed"
        );
        refuse(&tx, why).await;
    }
}

/// One connection: its hello, then requests one at a time until it closes, idles out or sends
/// something that does not decode (which ends this connection only, with a refusal saying
/// why). Once `stop` fired (a new master serves the socket now) it ends after its next
/// answer: a client that connected before is answered, and asks the new master next time.
/// `serving` counts it among the tasks the master waits for before it exits.
async fn connection(
    stream: UnixStream,
    shared: Arc<Shared>,
    allowed: Result<(), Option<u32>>,
    (stop, serving): (CancellationToken, TaskTrackerToken),
) {
    let Some((tx, mut rx, version)) = hello(stream).await else {
        return;
    };
    if let Err(peer) = allowed {
        let who = peer.map_or_else(|| "an unknown uid".to_owned(), |uid| format!("uid {uid}"));
        let me = nix::unistd::geteuid();
        notice!(warn, "control socket: refused a client of {who}");
        let why = format!(
            "permission denied: the master runs as uid {me}; a client of {who} may not control it"
        );
        refuse(&tx, why).await;
        return;
    }
    let hello = Response::Hello {
        version: CONTROL_VERSION,
        pid: std::process::id(),
        name: shared.name.clone(),
    };
    if tx.send(&hello).await.is_err() {
        return;
    }
    let mut answered = false;
    loop {
        let next = async {
            tokio::select! {
                // A request already sent is read first: the client is owed its answer.
                biased;
                received = timeout(IDLE_TIMEOUT, rx.recv()) => Some(received),
                () = stop.cancelled(), if answered => None,
            }
        };
        let Some(received) = next.await else {
            return;
        };
        let request = match received {
            Ok(Ok(Some(request))) => request,
            Ok(Err(e)) => {
                refuse_garbled(&tx, &e).await;
                return;
            }
            // Closed, or idle too long.
            Ok(Ok(None)) | Err(_) => return,
        };
        let result = match request {
            Request::Logs {
                group,
                slot,
                lines,
                follow,
            } => {
                let filter = Filter { group, slot };
                if follow {
                    // A follow lasts as long as the client likes: this master does not wait
                    // for it to exit, and the client sees the follow end when it does.
                    drop(serving);
                    // It ends only when the client has closed or spoken.
                    let _ = logs(filter, lines, follow, &tx, &mut rx, &shared).await;
                    return;
                }
                logs(filter, lines, follow, &tx, &mut rx, &shared).await
            }
            request => answer(request, &tx, &shared, version).await,
        };
        if result.is_err() {
            return;
        }
        answered = true;
    }
}

type Tx = Sender<Response>;

/// Answers a `logs` request, or refuses it when the master keeps no lines or the group or
/// slot does not exist.
async fn logs(
    filter: Filter,
    lines: usize,
    follow: bool,
    tx: &Tx,
    rx: &mut Receiver<Request>,
    shared: &Shared,
) -> cluster_ipc::Result<()> {
    let Some(logs) = &shared.logs else {
        return tx
            .send(&Response::Refused(control_logs::NOT_KEPT.to_owned()))
            .await;
    };
    // Only a named group or slot needs checking against the live workers.
    let status = match filter.group {
        Some(_) => status(shared).await,
        None => None,
    };
    match control_logs::refusal(logs, &filter, status.as_ref()) {
        Some(why) => tx.send(&Response::Refused(why)).await,
        None => control_logs::serve(logs, filter, lines, follow, tx, rx).await,
    }
}

async fn ask<T>(shared: &Shared, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
    let (reply, rx) = oneshot::channel();
    shared.commands.send(make(reply)).ok()?;
    rx.await.ok()
}

async fn status(shared: &Shared) -> Option<ClusterStatus> {
    ask(shared, |reply| Command::Status { reply }).await
}

/// The options in force, as the supervisor holds them (a reload may have changed some).
async fn options(shared: &Shared) -> Option<Vec<OptionRow>> {
    ask(shared, |reply| Command::Control(Ask::Options { reply })).await
}

const GONE: &str = "the master is shutting down";

/// Asks the supervisor to do something it may refuse; `Err` is the answer to send back when
/// it refused or is gone.
async fn ask_to<T>(
    shared: &Shared,
    make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
) -> std::result::Result<T, Response> {
    match ask(shared, make).await {
        Some(Ok(done)) => Ok(done),
        Some(Err(e)) => Err(Response::Refused(e.to_string())),
        None => Err(Response::Refused(GONE.to_owned())),
    }
}

/// Answers one request of a client of protocol `version`; an error means the client has gone.
async fn answer(
    request: Request,
    tx: &Tx,
    shared: &Shared,
    version: u32,
) -> cluster_ipc::Result<()> {
    let response = match request {
        Request::Hello { .. } => Response::Refused("hello was already said".to_owned()),
        Request::List => match status(shared).await {
            Some(status) => Response::Workers(rows(&status, shared)),
            None => Response::Refused(GONE.to_owned()),
        },
        Request::Status => match (status(shared).await, options(shared).await) {
            (Some(status), Some(options)) => {
                Response::Status(Box::new(master_info(&status, options, shared).await))
            }
            _ => Response::Refused(GONE.to_owned()),
        },
        Request::Options => match options(shared).await {
            Some(options) => Response::Options(options),
            None => Response::Refused(GONE.to_owned()),
        },
        Request::SlowRequests => match status(shared).await {
            Some(status) => Response::SlowRequests(slow_requests(&status)),
            None => Response::Refused(GONE.to_owned()),
        },
        Request::Reload { group, wait } => {
            return reload(group, wait, tx, shared, version).await;
        }
        Request::Restart { group, slot } => {
            return restart(group, slot, tx, shared, version).await;
        }
        Request::Scale { group, to } => scale(group, to, shared).await,
        Request::Upgrade { wait } => return upgrade(wait, tx, shared).await,
        Request::Stop { grace_ms } => {
            let grace = grace_ms.map(Duration::from_millis);
            let _ = shared.commands.send(Command::Control(Ask::Stop { grace }));
            tx.send(&Response::Stopping {
                pid: std::process::id(),
            })
            .await?;
            tx.flush().await?;
            // Held open until the master exits and its runtime drops this task: the client
            // reads the end of the stream as "the master has exited".
            std::future::pending::<()>().await;
            return Ok(());
        }
        // Served by `connection`, which hands it the receiving half.
        Request::Logs { .. } => Response::Refused("logs is answered elsewhere".to_owned()),
    };
    tx.send(&response).await
}

#[cfg(test)]
mod tests;
