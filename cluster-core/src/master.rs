//! The master's side of the app: its context and the events it sees.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::messaging::{self, Pending};
use crate::model::{ExitKind, SlotKey, WorkerId, WorkerInfo};
use crate::protocol::ToWorker;
use crate::request::{ReplyTo, Request};
use crate::supervisor::{Command, RawEvent};
use crate::{Error, Result};

/// What the master's code sees happen in the cluster.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<D, U> {
    /// A worker process was started.
    Spawned {
        /// Which.
        id: WorkerId,
        /// Its pid.
        pid: u32,
    },
    /// Its channel is up.
    Online {
        /// Which.
        id: WorkerId,
    },
    /// It is ready for work.
    Ready {
        /// Which.
        id: WorkerId,
    },
    /// It exited.
    Exit {
        /// Which.
        id: WorkerId,
        /// How.
        exit: ExitKind,
        /// Whether the master asked it to stop (shutdown, reload, scale-down) or it returned
        /// cleanly on its own. Unexpected exits count toward `max_restarts`.
        expected: bool,
        /// Whether its slot will be restarted.
        restarting: bool,
    },
    /// Too many unexpected exits: the master gives up and shuts the cluster down.
    RestartLimit {
        /// The worker whose exit crossed the limit.
        id: WorkerId,
        /// How it exited.
        exit: ExitKind,
    },
    /// A worker sent a message.
    Message {
        /// The sender.
        from: WorkerId,
        /// The message.
        msg: U,
    },
    /// A worker asks; answer with [`Request::respond`].
    Request {
        /// The asker.
        from: WorkerId,
        /// The request.
        request: Request<U, D>,
    },
    /// A rolling reload began.
    ReloadStarted,
    /// Every slot of a rolling reload was replaced.
    ReloadFinished,
    /// A replacement failed to become ready: the reload stopped and the old workers kept
    /// serving.
    ReloadFailed {
        /// What went wrong.
        error: String,
    },
    /// A worker's message did not decode as `U` (the worker runs other message types).
    BadMessage {
        /// The sender.
        from: WorkerId,
        /// The decoding error.
        error: String,
    },
}

/// The master's handle on the cluster: messages to workers, events from them, scaling and
/// shutdown. `D` is the type of messages sent to workers, `U` of those they send back.
pub struct MasterContext<D = (), U = ()> {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) events: Arc<Mutex<mpsc::Receiver<RawEvent>>>,
    pub(crate) pending: Arc<Pending>,
    pub(crate) _types: PhantomData<fn(D) -> U>,
}

impl<D, U> Clone for MasterContext<D, U> {
    fn clone(&self) -> Self {
        MasterContext {
            commands: self.commands.clone(),
            events: self.events.clone(),
            pending: self.pending.clone(),
            _types: PhantomData,
        }
    }
}

impl<D, U> fmt::Debug for MasterContext<D, U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterContext").finish_non_exhaustive()
    }
}

impl<D, U> MasterContext<D, U>
where
    D: Serialize + Send + 'static,
    U: DeserializeOwned + Send + 'static,
{
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .map_err(|_| Error::disconnected("supervisor"))?;
        rx.await.map_err(|_| Error::disconnected("supervisor"))
    }

    /// Sends a message to the worker currently in `to`.
    pub async fn send(&self, to: &SlotKey, msg: &D) -> Result<()> {
        let msg = ToWorker::User(messaging::encode(msg)?);
        self.ask(|reply| Command::Send {
            to: to.clone(),
            msg,
            reply,
        })
        .await?
    }

    /// Sends a message to every worker that is online; returns how many it went to.
    pub async fn broadcast(&self, msg: &D) -> Result<usize> {
        let msg = ToWorker::User(messaging::encode(msg)?);
        self.ask(|reply| Command::Broadcast {
            group: None,
            msg,
            reply,
        })
        .await
    }

    /// Sends a message to every online worker of one group.
    pub async fn broadcast_group(&self, group: &str, msg: &D) -> Result<usize> {
        let msg = ToWorker::User(messaging::encode(msg)?);
        self.ask(|reply| Command::Broadcast {
            group: Some(group.into()),
            msg,
            reply,
        })
        .await
    }

    /// Asks the worker in `to` and waits up to `timeout` for its answer.
    pub async fn request(&self, to: &SlotKey, msg: &D, timeout: Duration) -> Result<U> {
        let payload = messaging::encode(msg)?;
        let (guard, rx) = self.pending.register();
        let msg = ToWorker::Request {
            id: guard.id,
            payload,
        };
        self.ask(|reply| Command::Send {
            to: to.clone(),
            msg,
            reply,
        })
        .await??;
        messaging::await_response(guard, rx, timeout, "worker").await
    }

    /// The next event; `None` once the cluster has stopped.
    pub async fn next_event(&self) -> Option<Event<D, U>> {
        let raw = self.events.lock().await.recv().await?;
        Some(match raw {
            RawEvent::Spawned { id, pid } => Event::Spawned { id, pid },
            RawEvent::Online { id } => Event::Online { id },
            RawEvent::Ready { id } => Event::Ready { id },
            RawEvent::Exit {
                id,
                exit,
                expected,
                restarting,
            } => Event::Exit {
                id,
                exit,
                expected,
                restarting,
            },
            RawEvent::RestartLimit { id, exit } => Event::RestartLimit { id, exit },
            RawEvent::ReloadStarted => Event::ReloadStarted,
            RawEvent::ReloadFinished => Event::ReloadFinished,
            RawEvent::ReloadFailed { error } => Event::ReloadFailed { error },
            RawEvent::Message { from, payload } => match messaging::decode::<U>(&payload) {
                Ok(msg) => Event::Message { from, msg },
                Err(e) => Event::BadMessage {
                    from,
                    error: format!("{e:#}"),
                },
            },
            RawEvent::Request { from, id, payload } => match messaging::decode::<U>(&payload) {
                Ok(msg) => {
                    let reply = ReplyTo::Worker {
                        to: from.key(),
                        commands: self.commands.clone(),
                    };
                    Event::Request {
                        from,
                        request: Request::new(msg, id, reply),
                    }
                }
                Err(e) => Event::BadMessage {
                    from,
                    error: format!("{e:#}"),
                },
            },
        })
    }

    /// A snapshot of every worker.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        self.ask(|reply| Command::Workers { reply }).await
    }

    /// Sets the number of workers of `group`: new slots start at once; removed slots (the
    /// highest) stop gracefully.
    pub async fn scale(&self, group: &str, count: usize) -> Result<()> {
        self.ask(|reply| Command::Scale {
            group: group.into(),
            count,
            reply,
        })
        .await?
    }

    /// The cluster's state now: the master's figures and every live worker's (the data
    /// behind `GET /status`).
    pub async fn status(&self) -> Result<crate::observe::status::ClusterStatus> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// Starts a rolling reload, as a reload signal would: each slot gets a new worker (from
    /// the executable on disk now), which takes over once ready while the old one drains.
    /// A reload asked for during a reload runs as one more pass after it.
    pub fn reload(&self) {
        let _ = self.commands.send(Command::Reload);
    }

    /// Starts a graceful shutdown of the cluster, as a shutdown signal would.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}
