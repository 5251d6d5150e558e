//! The worker side: its context, and the process's life from bootstrap to exit.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use cluster_ipc::{Channel, Config, bootstrap};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use crate::identity::{ENV_IPC_FD, WorkerId};
use crate::messaging::{self, Pending, ReplyTo, Request};
use crate::protocol::{ToMaster, ToWorker};
use crate::{Error, Result};

/// Exit code of a worker whose environment names no usable channel (EX_CONFIG).
pub const EXIT_BOOTSTRAP: i32 = 78;
/// Exit code of a worker whose master vanished.
pub const EXIT_MASTER_GONE: i32 = 69;
/// How long a worker waits for the master's hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a worker receives from the master.
#[derive(Debug)]
pub enum Incoming<D, U> {
    /// A message sent with `send` or `broadcast`.
    Message(D),
    /// A request: answer it with [`Request::respond`].
    Request(Request<D, U>),
}

/// A worker's handle on the cluster: its identity, messages to and from the master, and the
/// shutdown signal. `D` is the type of messages the master sends, `U` of those it receives.
/// Cheap to clone.
pub struct WorkerContext<D = (), U = ()> {
    id: WorkerId,
    sender: cluster_ipc::Sender<ToMaster>,
    incoming: Arc<Mutex<mpsc::Receiver<Incoming<D, U>>>>,
    shutdown: CancellationToken,
    pending: Arc<Pending>,
    _up: PhantomData<fn(U)>,
}

impl<D, U> Clone for WorkerContext<D, U> {
    fn clone(&self) -> Self {
        WorkerContext {
            id: self.id.clone(),
            sender: self.sender.clone(),
            incoming: self.incoming.clone(),
            shutdown: self.shutdown.clone(),
            pending: self.pending.clone(),
            _up: PhantomData,
        }
    }
}

impl<D, U> fmt::Debug for WorkerContext<D, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerContext")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<D, U> WorkerContext<D, U>
where
    D: DeserializeOwned + Send + 'static,
    U: Serialize + Send + 'static,
{
    /// This worker's identity.
    pub fn id(&self) -> &WorkerId {
        &self.id
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.id.group
    }

    /// The slot in the group, `0..count`.
    pub fn slot(&self) -> usize {
        self.id.slot
    }

    /// Sends a message to the master.
    pub async fn send(&self, msg: &U) -> Result<()> {
        let payload = messaging::encode(msg)?;
        Ok(self.sender.send(&ToMaster::User(payload)).await?)
    }

    /// Asks the master and waits up to `timeout` for its answer.
    pub async fn request(&self, msg: &U, timeout: Duration) -> Result<D> {
        let payload = messaging::encode(msg)?;
        let (guard, rx) = self.pending.register();
        self.sender
            .send(&ToMaster::Request {
                id: guard.id,
                payload,
            })
            .await?;
        messaging::await_response(guard, rx, timeout, "master").await
    }

    /// The next message or request from the master; `None` once the master has asked this
    /// worker to stop and every message sent before has been received.
    pub async fn recv(&self) -> Option<Incoming<D, U>> {
        self.incoming.lock().await.recv().await
    }

    /// Tells the master this worker is ready (only needed when the group's readiness is
    /// manual).
    pub async fn ready(&self) -> Result<()> {
        Ok(self.sender.send(&ToMaster::Ready).await?)
    }

    /// A token cancelled when the master asks this worker to stop (shutdown, reload,
    /// scale-down) or the worker gets SIGTERM. Servers select on `cancelled()` to start
    /// draining.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Resolves when this worker is asked to stop.
    pub async fn shutdown_requested(&self) {
        self.shutdown.cancelled().await
    }

    /// Whether this worker has been asked to stop.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

/// Reads the master's messages until the channel ends; the worker exits when it does, since
/// the master is gone.
async fn read_master<D: DeserializeOwned + Send + 'static, U: Send + 'static>(
    mut rx: cluster_ipc::Receiver<ToWorker>,
    reply: cluster_ipc::Sender<ToMaster>,
    incoming: mpsc::Sender<Incoming<D, U>>,
    shutdown: CancellationToken,
    pending: Arc<Pending>,
) {
    let mut incoming = Some(incoming);
    loop {
        let msg = match rx.recv().await {
            Ok(Some(msg)) => msg,
            Ok(None) | Err(_) => {
                // The master died (its parent-death signal normally gets here first).
                eprintln!(
                    "cluster worker {}: the master is gone, exiting",
                    std::process::id()
                );
                std::process::exit(EXIT_MASTER_GONE);
            }
        };
        match msg {
            ToWorker::Shutdown => {
                shutdown.cancel();
                // Close the queue so `recv` returns None once drained.
                incoming = None;
            }
            ToWorker::User(payload) => match messaging::decode::<D>(&payload) {
                Ok(msg) => deliver(&incoming, Incoming::Message(msg)).await,
                Err(e) => tracing::warn!("dropped a message from the master: {e}"),
            },
            ToWorker::Request { id, payload } => match messaging::decode::<D>(&payload) {
                Ok(msg) => {
                    let request = Request::new(msg, id, ReplyTo::Master(reply.clone()));
                    deliver(&incoming, Incoming::Request(request)).await
                }
                Err(e) => tracing::warn!("dropped a request from the master: {e}"),
            },
            ToWorker::Response { id, payload } => pending.complete(id, payload),
        }
    }
}

async fn deliver<D, U>(queue: &Option<mpsc::Sender<Incoming<D, U>>>, item: Incoming<D, U>) {
    if let Some(queue) = queue {
        let _ = queue.send(item).await;
    }
}

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

/// Runs a worker process's whole life inside a runtime: bootstrap, handshake, the user's
/// function, then a final message to the master. Returns the process exit code.
pub(crate) async fn run<D, U, F, Fut>(id: WorkerId, auto_ready: bool, f: F) -> i32
where
    D: DeserializeOwned + Send + 'static,
    U: Serialize + Send + 'static,
    F: FnOnce(WorkerContext<D, U>) -> Fut,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let channel = match connect().await {
        Ok(channel) => channel,
        Err(e) => {
            eprintln!("cluster worker {id}: {e}");
            return EXIT_BOOTSTRAP;
        }
    };
    let (sender, receiver) = channel.split();
    let shutdown = CancellationToken::new();
    let pending = Arc::new(Pending::default());
    let (queue, incoming) = mpsc::channel(1024);
    handle_signals(shutdown.clone());
    tokio::spawn(read_master(
        receiver,
        sender.clone(),
        queue,
        shutdown.clone(),
        pending.clone(),
    ));
    if auto_ready && sender.send(&ToMaster::Ready).await.is_err() {
        return EXIT_MASTER_GONE;
    }
    let ctx = WorkerContext {
        id: id.clone(),
        sender: sender.clone(),
        incoming: Arc::new(Mutex::new(incoming)),
        shutdown,
        pending,
        _up: PhantomData,
    };
    // A panic in the worker's function is a failure like any other, reported to the master.
    let outcome = match tokio::spawn(f(ctx)).await {
        Ok(outcome) => outcome,
        Err(e) if e.is_panic() => Outcome::Failed("the worker function panicked".into()),
        Err(e) => Outcome::Failed(e.to_string()),
    };
    let failed = match &outcome {
        Outcome::Ok => false,
        Outcome::Failed(reason) => {
            eprintln!("cluster worker {id}: {reason}");
            true
        }
    };
    let _ = sender.send(&ToMaster::Exiting { failed }).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sender.flush()).await;
    if failed { 1 } else { 0 }
}

async fn connect() -> Result<Channel<ToMaster, ToWorker>> {
    let stream = bootstrap::from_env(ENV_IPC_FD)?.ok_or_else(|| {
        Error::Bootstrap(format!(
            "{ENV_IPC_FD} is not set: this process has the cluster worker variables but no channel to a master"
        ))
    })?;
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        Channel::from_std(stream, Config::default()),
    )
    .await
    .map_err(|_| Error::Bootstrap("the master did not answer the handshake within 10 s".into()))?
    .map_err(Error::from)
}
