//! The store's task: the one owner of the keys, values and subscriptions. Every client (the
//! master's code and each worker's reporter) sends its operations into one bounded inbox, and
//! the task applies them one at a time, so that each sees every one before it: the store is
//! linearizable on its host. It never awaits a client: answers and publications go into the
//! client's own queue.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::snapshot;
use super::state::{Limits, StoreState};
use super::subscribers::{Client, Push, Subscribers};
use crate::protocol::{StoreOp, StoreReply};
use crate::violations::{Violations, notice};
use crate::{Error, Result};

/// Operations waiting for the store's task, from all clients together. A worker's reporter
/// waits for room, so that a worker flooding the store is slowed down at its own channel.
const INBOX: usize = 4096;

/// What the store's task needs from the options.
#[derive(Debug, Clone)]
pub(crate) struct StoreConfig {
    pub(crate) limits: Limits,
    pub(crate) max_subscriptions: u64,
    pub(crate) queue: usize,
    pub(crate) snapshot: Option<PathBuf>,
    pub(crate) snapshot_interval: Option<Duration>,
}

impl StoreConfig {
    pub(crate) fn from_options(options: &crate::options::Options) -> Self {
        StoreConfig {
            limits: Limits {
                max_keys: options.store_max_keys(),
                max_bytes: options.store_max_bytes(),
            },
            max_subscriptions: options.store_subscriptions(),
            queue: usize::try_from(options.store_queue()).unwrap_or(usize::MAX),
            snapshot: options.store_snapshot().map(PathBuf::from),
            snapshot_interval: options.store_snapshot_interval(),
        }
    }
}

/// Where an answer goes.
pub(crate) enum Reply {
    /// The master's code, waiting on its oneshot.
    Local(oneshot::Sender<StoreReply>),
    /// A worker, through the queue its link writes from; the credit is the worker's (see
    /// `supervisor/report.rs`) and is given back once the answer is written.
    Remote {
        id: u64,
        answers: mpsc::UnboundedSender<Answer>,
        credit: OwnedSemaphorePermit,
    },
}

/// An answer on its way to a worker.
pub(crate) struct Answer {
    pub(crate) id: u64,
    pub(crate) reply: StoreReply,
    pub(crate) credit: OwnedSemaphorePermit,
}

impl Reply {
    fn send(self, reply: StoreReply) {
        match self {
            Reply::Local(tx) => {
                let _ = tx.send(reply);
            }
            Reply::Remote {
                id,
                answers,
                credit,
            } => {
                let _ = answers.send(Answer { id, reply, credit });
            }
        }
    }
}

/// One operation and who asked it.
pub(crate) struct Asked {
    pub(crate) from: Client,
    pub(crate) op: StoreOp,
    pub(crate) reply: Reply,
    /// Where the asker's publications go, should it subscribe.
    pub(crate) pushes: mpsc::Sender<Push>,
}

enum Inbox {
    Op(Asked),
    /// The client is gone: its subscriptions end.
    Gone(Client),
    /// Save the snapshot (if configured) and stop.
    Stop(oneshot::Sender<Result<()>>),
}

/// A handle on the store's task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct StoreHandle {
    inbox: mpsc::Sender<Inbox>,
    queue: usize,
}

impl StoreHandle {
    /// Queues `asked`, waiting while the inbox is full; `false` once the store has stopped.
    pub(crate) async fn ask(&self, asked: Asked) -> bool {
        self.inbox.send(Inbox::Op(asked)).await.is_ok()
    }

    /// Ends `client`'s subscriptions.
    pub(crate) fn gone(&self, client: Client) {
        if let Err(mpsc::error::TrySendError::Full(msg)) = self.inbox.try_send(Inbox::Gone(client))
        {
            // After whatever the client sent before: the inbox is first come, first served.
            let inbox = self.inbox.clone();
            tokio::spawn(async move {
                let _ = inbox.send(msg).await;
            });
        }
    }

    /// A queue for one client's publications, of `store_queue` values.
    pub(crate) fn push_queue(&self) -> (mpsc::Sender<Push>, mpsc::Receiver<Push>) {
        mpsc::channel(self.queue)
    }

    /// Saves the snapshot, if one is configured, and stops the task; the error says why the
    /// save failed.
    pub(crate) async fn stop(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.inbox.send(Inbox::Stop(tx)).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }
}

/// Loads the snapshot (if configured) and starts the store's task.
///
/// # Errors
///
/// [`ErrorKind::Store`](crate::ErrorKind::Store): the snapshot exists but cannot be read.
pub(crate) fn start(
    config: StoreConfig,
    violations: Arc<Violations>,
) -> Result<(StoreHandle, JoinHandle<()>)> {
    let mut state = StoreState::new(config.limits);
    if let Some(path) = &config.snapshot {
        let loaded = snapshot::load(path, &mut state)?;
        if loaded > 0 {
            notice!(
                info,
                "the store loaded {loaded} keys from {}",
                path.display()
            );
        }
    }
    let (tx, rx) = mpsc::channel(INBOX);
    let handle = StoreHandle {
        inbox: tx,
        queue: config.queue.max(1),
    };
    let task = tokio::spawn(run(state, config, violations, rx));
    Ok((handle, task))
}

async fn run(
    mut state: StoreState,
    config: StoreConfig,
    violations: Arc<Violations>,
    mut inbox: mpsc::Receiver<Inbox>,
) {
    let mut subscribers = Subscribers::default();
    let mut next_save = config
        .snapshot
        .as_ref()
        .and(config.snapshot_interval)
        .map(|every| (every, Instant::now() + every));
    // A periodic save in progress: the next one waits for it.
    let mut saving: Option<JoinHandle<Result<()>>> = None;
    loop {
        let deadline = state.next_deadline();
        tokio::select! {
            biased;
            msg = inbox.recv() => match msg {
                Some(Inbox::Op(asked)) => {
                    let reply = handle(&mut state, &mut subscribers, &config, &violations, asked.from, asked.op, asked.pushes);
                    asked.reply.send(reply);
                }
                Some(Inbox::Gone(client)) => subscribers.forget(&client),
                Some(Inbox::Stop(done)) => {
                    if let Some(save) = saving.take() {
                        report(save.await);
                    }
                    let _ = done.send(save_now(&state, &config).await);
                    return;
                }
                None => return,
            },
            () = sleep_until(deadline) => {
                state.sweep(Instant::now());
            }
            () = sleep_until(next_save.map(|(_, at)| at)) => {
                if let Some((every, at)) = &mut next_save {
                    *at = Instant::now() + *every;
                }
                if let Some(done) = saving.take_if(|save| save.is_finished()) {
                    report(done.await);
                }
                if let (None, Some(path)) = (&saving, &config.snapshot) {
                    let bytes = snapshot::encode(&state);
                    let path = path.clone();
                    saving = Some(tokio::task::spawn_blocking(move || {
                        bytes.and_then(|bytes| snapshot::write(&path, &bytes))
                    }));
                }
            }
        }
    }
}

/// Logs a periodic save that failed: the store goes on, and the next save may succeed.
fn report(result: std::result::Result<Result<()>, tokio::task::JoinError>) {
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => notice!(warn, "{e:#}"),
        Err(e) => notice!(warn, "the store's snapshot writer failed: {e}"),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn handle(
    state: &mut StoreState,
    subscribers: &mut Subscribers,
    config: &StoreConfig,
    violations: &Violations,
    from: Client,
    op: StoreOp,
    pushes: mpsc::Sender<Push>,
) -> StoreReply {
    match op {
        StoreOp::Subscribe { topic } => {
            subscribers.subscribe(&from, topic, pushes, config.max_subscriptions)
        }
        StoreOp::Unsubscribe { topic } => subscribers.unsubscribe(&from, &topic),
        StoreOp::Publish { topic, value } => {
            let reached = subscribers.publish(&topic, &value, violations);
            StoreReply::Int(i64::try_from(reached).unwrap_or(i64::MAX))
        }
        op => state.apply(op, Instant::now()),
    }
}

async fn save_now(state: &StoreState, config: &StoreConfig) -> Result<()> {
    let Some(path) = &config.snapshot else {
        return Ok(());
    };
    let bytes = snapshot::encode(state)?;
    let path = path.clone();
    tokio::task::spawn_blocking(move || snapshot::write(&path, &bytes))
        .await
        .map_err(|e| {
            Error::new(
                crate::ErrorKind::Store,
                format!("the snapshot's writer failed: {e}"),
            )
        })?
}
