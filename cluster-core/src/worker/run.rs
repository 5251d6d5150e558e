//! A worker process's life: the bootstrap of its channel, the tasks beside the app's
//! function, the function itself, and the report of how it ended. Apart from the context,
//! which the app sees, because this runs once per process and the app never calls it.

use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use cluster_ipc::{Channel, Config, bootstrap};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use super::context::WorkerContext;
use super::heartbeat::{heartbeat, heartbeat_interval, master_level};
use super::reader::read_master;
use super::shared::WorkerShared;
use crate::identity::ENV_IPC_FD;
use crate::messaging::Pending;
use crate::model::WorkerId;
use crate::net::listener;
use crate::protocol::{ToMaster, ToWorker};
use crate::{Error, ErrorKind, Result};

/// How long a worker waits for the master's hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Signals that reach a worker directly. A terminal's Ctrl-C (SIGINT) and hang-up (SIGHUP) go
/// to the whole foreground process group, master and workers alike: workers ignore them so the
/// master alone coordinates exactly one graceful shutdown. SIGTERM sent to one worker stops
/// that worker gracefully.
fn handle_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    for kind in [SignalKind::interrupt(), SignalKind::hangup()] {
        if let Ok(mut stream) = signal(kind) {
            tokio::spawn(async move { while stream.recv().await.is_some() {} });
        }
    }
    if let Ok(mut term) = signal(SignalKind::terminate()) {
        tokio::spawn(async move {
            while term.recv().await.is_some() {
                shutdown.cancel();
            }
        });
    }
}

/// How a worker, master or hook function ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It returned normally.
    Ok,
    /// It returned an error (or panicked), described here.
    Failed(String),
}

/// The message a panic was raised with, for saying why a function failed.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "a panic without a message"
    }
}

/// How a worker function that panicked is reported, wherever the panic happened.
fn panicked(payload: &(dyn std::any::Any + Send)) -> Outcome {
    Outcome::Failed(format!(
        "the worker function panicked: {}",
        panic_message(payload)
    ))
}

/// The worker's function as a future that never panics: a panic while calling the function or
/// in any poll of its future ends it with [`panicked`]'s outcome. The panic hook has printed
/// the panic already (once: `catch_unwind` does not run it again).
enum CatchPanic<Fut> {
    Running(Pin<Box<Fut>>),
    /// Ended: with the outcome still to give when the function panicked before returning its
    /// future, with none once the outcome was given.
    Panicked(Option<Outcome>),
}

impl<Fut: Future<Output = Outcome>> CatchPanic<Fut> {
    fn new<C, F: FnOnce(C) -> Fut>(f: F, ctx: C) -> Self {
        // Unwind safety: after a panic, nothing that `f` or the future could have left half
        // updated is used again: a future that panicked is dropped, never polled again.
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(ctx))) {
            Ok(work) => CatchPanic::Running(Box::pin(work)),
            Err(payload) => CatchPanic::Panicked(Some(panicked(&*payload))),
        }
    }
}

impl<Fut: Future<Output = Outcome>> Future for CatchPanic<Fut> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        // `Unpin`: the function's future is boxed.
        let this = self.get_mut();
        let outcome = match this {
            CatchPanic::Running(work) => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(outcome)) => outcome,
                    Err(payload) => panicked(&*payload),
                }
            }
            CatchPanic::Panicked(outcome) => outcome.take().unwrap_or_else(|| {
                Outcome::Failed("the worker function was polled after it ended".into())
            }),
        };
        // Never poll a future again once it has finished or panicked.
        *this = CatchPanic::Panicked(None);
        Poll::Ready(outcome)
    }
}

/// Runs a worker process's whole life inside a runtime: bootstrap, handshake, the user's
/// function, then a final message to the master. Returns once the function has ended and the
/// master has been told how; the error says why the worker failed.
pub(crate) async fn run<D, U, F, Fut>(
    id: WorkerId,
    boot: Boot,
    auto_ready: bool,
    f: F,
) -> Result<()>
where
    D: DeserializeOwned + Send + 'static,
    U: Serialize + Send + 'static,
    F: FnOnce(WorkerContext<D, U>) -> Fut,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let channel = connect(boot.stream).await?;
    let (sender, receiver) = channel.split();
    let shutdown = CancellationToken::new();
    let pending = Arc::new(Pending::default());
    let (queue, incoming) = mpsc::channel(super::reader::APP_QUEUE);
    let (closes, closes_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(WorkerShared::new(
        sender.clone(),
        closes,
        !auto_ready,
        boot.level,
    ));
    handle_signals(shutdown.clone());
    let stall_mark = Arc::new(AtomicU64::new(0));
    super::in_flight::watch_stalls(stall_mark.clone(), boot.heartbeat);
    tokio::spawn(heartbeat(
        sender.clone(),
        boot.heartbeat,
        shared.live.clone(),
        boot.level,
        stall_mark,
    ));
    tokio::spawn(listener::report_closes(closes_rx, sender.clone()));
    tokio::spawn(read_master(
        receiver,
        sender.clone(),
        queue,
        shutdown.clone(),
        pending.clone(),
        shared.clone(),
    ));
    let ctx = WorkerContext {
        id: id.clone(),
        sender: sender.clone(),
        incoming: Arc::new(Mutex::new(incoming)),
        shutdown,
        pending,
        shared: shared.clone(),
        _up: PhantomData,
    };
    // Poll the worker's function once here, so the listens it starts before its first real
    // wait are known: the worker is ready when they are done, or now if there are none. That
    // poll runs on this task, outside `tokio::spawn`'s panic guard: `CatchPanic` makes a panic
    // there (or in `f` itself) the same failure as one after the first `.await`.
    let mut work = CatchPanic::new(f, ctx);
    let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut work).poll(cx))).await;
    shared.first_poll_done.store(true, Ordering::SeqCst);
    shared.maybe_ready().await.map_err(|e| {
        Error::new(
            ErrorKind::Disconnected,
            "the master is gone: the worker could not report that it is ready",
        )
        .with_source(e)
    })?;
    let outcome = match first {
        Poll::Ready(outcome) => outcome,
        // `CatchPanic` turned a panic into an outcome already; the task can only be cancelled
        // (the runtime shutting down), which ends the worker as a failure too.
        Poll::Pending => match tokio::spawn(work).await {
            Ok(outcome) => outcome,
            Err(e) => match e.try_into_panic() {
                Ok(payload) => panicked(&*payload),
                Err(e) => Outcome::Failed(e.to_string()),
            },
        },
    };
    let failed = matches!(outcome, Outcome::Failed(_));
    let _ = sender.send(&ToMaster::Exiting { failed }).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sender.flush()).await;
    match outcome {
        Outcome::Ok => Ok(()),
        Outcome::Failed(reason) => Err(Error::new(ErrorKind::WorkerFailed, reason)),
    }
}

/// What a worker takes from the environment its master gave it, before anything else runs.
pub(crate) struct Boot {
    stream: std::os::unix::net::UnixStream,
    heartbeat: Duration,
    /// The master's protocol level: which messages it can decode.
    level: u32,
}

impl Boot {
    /// Takes the channel to the master (which must be this process's parent) and the
    /// heartbeat interval, then removes every `CLUSTER_*` variable of the master's: a program
    /// this worker starts, itself built with cluster, must not believe it is a worker. Call
    /// it while the process has one thread. Every failure is `Bootstrap`.
    pub(crate) fn take() -> Result<Boot> {
        let stream = bootstrap::from_parent(ENV_IPC_FD)
            .map_err(|e| {
                Error::new(ErrorKind::Bootstrap, "cannot take the channel to the master")
                    .with_source(e)
            })?
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Bootstrap,
                    format!(
                        "{ENV_IPC_FD} is not set: this process has the cluster worker variables but no channel to a master"
                    ),
                )
            })?;
        let heartbeat = heartbeat_interval();
        let level = master_level();
        for (var, _) in std::env::vars_os() {
            if crate::identity::is_cluster_var(&var) {
                crate::sys::remove_env(&var);
            }
        }
        Ok(Boot {
            stream,
            heartbeat,
            level,
        })
    }

    #[cfg(feature = "testing")]
    pub(crate) fn into_stream(self) -> std::os::unix::net::UnixStream {
        self.stream
    }
}

async fn connect(stream: std::os::unix::net::UnixStream) -> Result<Channel<ToMaster, ToWorker>> {
    let bootstrap = |message: &'static str| Error::new(ErrorKind::Bootstrap, message);
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        Channel::from_std(stream, Config::default()),
    )
    .await
    .map_err(|_| bootstrap("the master did not answer the handshake within 10 s"))?
    .map_err(|e| bootstrap("the handshake with the master failed").with_source(e))
}
