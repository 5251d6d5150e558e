//! What the SO_REUSEPORT baselines of the HTTP benchmark share (`bench/baseline_reuseport.rs`,
//! `bench/baseline_h2.rs`, `bench/baseline_tls.rs`, each `#[path]`-includes this): one
//! single-threaded process per core, each with its own `SO_REUSEPORT` listening socket on the
//! same port (the kernel spreads connections), no supervision, no IPC, no master in the data
//! path; and the handler of `examples/http.rs`. Each baseline gives only how it serves one
//! accepted connection.
//!
//! The parent re-executes itself once per worker with `BASELINE_REUSEPORT_SLOT=<slot>` set,
//! then only waits: on SIGINT, SIGTERM or the exit of any child it kills the children and
//! exits. Each child also asks the kernel for SIGKILL if the parent dies, so none is left
//! behind.
//!
//! `HOST` (default 127.0.0.1), `PORT` (default 8000), `WORKERS` (default one per core).

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

/// Set in a child's environment: which worker slot it is.
const SLOT_VAR: &str = "BASELINE_REUSEPORT_SLOT";
/// Set in a child's environment: the parent's pid, to tell whether it is still there.
const PARENT_VAR: &str = "BASELINE_REUSEPORT_PARENT";

pub(crate) fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// `HOST:PORT` from the environment, with the defaults of `examples/http.rs`.
fn listen_addr() -> std::io::Result<SocketAddr> {
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".to_owned());
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".to_owned());
    let port: u16 = port
        .parse()
        .map_err(|e| invalid(format!("PORT={port}: {e}")))?;
    (host.as_str(), port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| invalid(format!("HOST={host}: no address")))
}

/// `WORKERS` from the environment, default one per core.
fn workers() -> std::io::Result<usize> {
    match std::env::var("WORKERS") {
        Ok(n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(invalid(format!("WORKERS={n}: want a positive integer"))),
        },
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// The handler of `examples/http.rs`, line for line, so that the comparison measures the
/// serving and not the handler: the body is formatted per request there, so it is here too.
pub(crate) async fn hello(
    req: Request<Incoming>,
    slot: usize,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/" => (
            StatusCode::OK,
            format!("Hello from worker {slot} (pid {})", std::process::id()),
        ),
        _ => (StatusCode::NOT_FOUND, "not found".to_string()),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default())
}

/// A listening socket of this process's own, sharing the port with its siblings.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// One worker: a current-thread runtime serving its own `SO_REUSEPORT` socket, each
/// connection in a task of its own, served by what `make` returns for this slot.
fn child<F, Fut>(
    name: &str,
    slot: &str,
    make: impl FnOnce(usize) -> std::io::Result<F>,
) -> std::io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slot: usize = slot
        .parse()
        .map_err(|e| invalid(format!("{SLOT_VAR}={slot}: {e}")))?;
    // Die with the parent, whatever kills it. If it died before this line, go now.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    let parent = std::env::var(PARENT_VAR)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    if parent != Some(nix::unistd::getppid().as_raw()) {
        return Ok(());
    }
    let addr = listen_addr()?;
    let serve = make(slot)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = reuseport_listener(addr)?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                // EMFILE and the like: keep serving the connections we have.
                Err(e) => {
                    eprintln!("{name} worker {slot}: accept: {e}");
                    continue;
                }
            };
            tokio::spawn(serve(stream));
        }
    })
}

/// The parent: spawn the children, wait for a signal or a child's exit, kill them all.
fn parent(name: &str) -> std::io::Result<ExitCode> {
    let addr = listen_addr()?;
    let n = workers()?;
    let exe = std::env::current_exe()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (exited_tx, mut exited_rx) = mpsc::unbounded_channel();
        let mut tasks = tokio::task::JoinSet::new();
        for slot in 0..n {
            let mut child = tokio::process::Command::new(&exe)
                .env(SLOT_VAR, slot.to_string())
                .env(PARENT_VAR, std::process::id().to_string())
                .kill_on_drop(true)
                .spawn()?;
            let mut stop = stop_rx.clone();
            let exited = exited_tx.clone();
            tasks.spawn(async move {
                tokio::select! {
                    status = child.wait() => {
                        let _ = exited.send((slot, status));
                    }
                    // The only change ever sent is the stop.
                    _ = stop.changed() => {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                    }
                }
            });
        }
        eprintln!(
            "{name}: {n} workers on {addr} (parent pid {})",
            std::process::id()
        );
        let code = tokio::select! {
            _ = sigint.recv() => ExitCode::SUCCESS,
            _ = sigterm.recv() => ExitCode::SUCCESS,
            Some((slot, status)) = exited_rx.recv() => {
                eprintln!("{name}: worker {slot} exited ({status:?}); stopping");
                ExitCode::FAILURE
            }
        };
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        Ok(code)
    })
}

/// The whole program of a baseline called `name`: the parent, or in a child the server, whose
/// connections are served by what `make` gives for the child's slot.
pub(crate) fn run<F, Fut>(name: &str, make: impl FnOnce(usize) -> std::io::Result<F>) -> ExitCode
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let result = match std::env::var(SLOT_VAR) {
        Ok(slot) => child(name, &slot, make).map(|()| ExitCode::SUCCESS),
        Err(_) => parent(name),
    };
    result.unwrap_or_else(|e| {
        eprintln!("{name}: {e}");
        ExitCode::FAILURE
    })
}
