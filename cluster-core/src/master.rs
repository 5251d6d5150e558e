//! The master's side of the app: its context and the events it sees.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::event_queue::EventReceiver;
use crate::messaging::{self, Pending};
use crate::model::{ExitKind, SlotKey, WorkerId, WorkerInfo};
use crate::protocol::ToWorker;
use crate::request::{ReplyTo, Request};
use crate::store::Store;
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
    /// A live worker is being replaced the reload way (its replacement is started now and
    /// takes over once ready): it went over `max_memory`, stopped reading its channel, or
    /// reached its `max_requests` or `max_lifetime`. Never a restart.
    Recycling {
        /// The worker being replaced.
        id: WorkerId,
        /// `memory`, `unread_channel`, `max_requests` or `max_lifetime`.
        reason: &'static str,
    },
    /// The autoscaler changed a group's size (`autoscale`): a scale-down retires the least
    /// busy worker, gracefully.
    Autoscaled {
        /// The group.
        group: String,
        /// Its workers before.
        from: usize,
        /// Its workers now.
        to: usize,
        /// The figures that caused it, such as `cpu 1.93 cores avg over 10s > 0.80 x 2`.
        reason: String,
    },
    /// A worker process could not be started (the descriptor or process limit, the binary
    /// missing or being replaced). Its slot tries again after `retry_in`, backing off while
    /// it keeps failing; this is not a restart and never counts toward `max_restarts`.
    SpawnFailed {
        /// The worker that was to start.
        id: WorkerId,
        /// Why it could not.
        error: String,
        /// When the slot tries again.
        retry_in: Duration,
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
///
/// Every method goes through the supervisor's command queue. A command is queued when its
/// future is first polled, and the supervisor carries it out whether or not anyone still waits
/// for the answer: dropping a future (a `select!` arm that lost, a timeout) gives up the
/// answer, not the command. Once the cluster has stopped, the supervisor is gone and every
/// method fails with [`ErrorKind::Disconnected`](crate::ErrorKind::Disconnected).
///
/// The master's function gets it (see [`Cluster::master`](crate::Cluster::master)) and runs
/// beside the supervision; it is cheap to clone, so tasks of its own can have one. A master
/// that asks each worker that becomes ready for its version, passes every worker's report on
/// to all of them, and logs crashes:
///
/// ```no_run
/// # use cluster_core as cluster; // the facade crate `cluster` re-exports these names
/// use std::time::Duration;
/// use cluster::{Cluster, Event, Incoming, MasterContext};
///
/// async fn master(ctx: MasterContext<String, String>) {
///     // `None` once the cluster has stopped: the loop ends by itself.
///     while let Some(event) = ctx.next_event().await {
///         match event {
///             Event::Ready { id } => {
///                 // `key()`: the worker's slot, whichever process fills it.
///                 let question = "version?".to_owned();
///                 match ctx.request(&id.key(), &question, Duration::from_secs(1)).await {
///                     Ok(version) => println!("{id} runs {version}"),
///                     Err(e) => eprintln!("{id} did not answer: {e}"),
///                 }
///             }
///             Event::Message { from, msg } => {
///                 if let Err(e) = ctx.broadcast(&format!("{from} says {msg}")).await {
///                     eprintln!("broadcast failed: {e}");
///                 }
///             }
///             Event::Exit { id, exit, expected: false, .. } => eprintln!("{id} {exit}"),
///             _ => {}
///         }
///     }
/// }
///
/// fn main() -> std::process::ExitCode {
///     Cluster::<String, String>::new()
///         .master(master)
///         .worker(|ctx| async move {
///             ctx.send(&"hello".to_owned()).await?;
///             while let Some(incoming) = ctx.recv().await {
///                 match incoming {
///                     Incoming::Request(request) => request.respond(&"1.0".to_owned()).await?,
///                     Incoming::Message(text) => println!("{}: {text}", ctx.id()),
///                 }
///             }
///             Ok::<_, cluster::Error>(())
///         })
///         .run()
/// }
/// ```
pub struct MasterContext<D = (), U = ()> {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) events: Arc<Mutex<EventReceiver<RawEvent>>>,
    pub(crate) pending: Arc<Pending>,
    pub(crate) store: Store,
    pub(crate) _types: PhantomData<fn(D) -> U>,
}

impl<D, U> Clone for MasterContext<D, U> {
    fn clone(&self) -> Self {
        MasterContext {
            commands: self.commands.clone(),
            events: self.events.clone(),
            pending: self.pending.clone(),
            store: self.store.clone(),
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
    /// The master's store, which every worker shares (see [`Store`]): the master's own
    /// operations go straight to its task.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .map_err(|_| Error::disconnected("supervisor"))?;
        rx.await.map_err(|_| Error::disconnected("supervisor"))
    }

    /// Sends a message to the worker currently in `to`. Returns once the message is written
    /// to that worker's channel, not when the worker has read it. The message waits in the
    /// worker's outbox (never in the supervisor) while the worker's channel is full.
    ///
    /// # Errors
    ///
    /// - [`Codec`](crate::ErrorKind::Codec): `msg` cannot be encoded; nothing was sent.
    /// - [`NoWorker`](crate::ErrorKind::NoWorker): no worker in `to`, or its worker is not
    ///   online yet (between spawn and its channel's handshake), or its outbox is full (it
    ///   has not read its last 1,024 messages); nothing was sent.
    /// - [`Disconnected`](crate::ErrorKind::Disconnected): the worker's channel is closed (it
    ///   is exiting), or the cluster has stopped.
    /// - [`Ipc`](crate::ErrorKind::Ipc): the channel refused the message (larger than its
    ///   frame limit) or broke.
    ///
    /// # Cancel safety
    ///
    /// Once polled, the message is the supervisor's to send: dropping the future does not take
    /// it back, the worker may still receive it; only the outcome is lost.
    pub async fn send(&self, to: &SlotKey, msg: &D) -> Result<()> {
        let msg = ToWorker::User(messaging::encode(msg)?);
        self.ask(|reply| Command::Send {
            to: to.clone(),
            msg,
            reply,
        })
        .await?
    }

    /// Sends a message to every worker that serves, or is starting to serve, a slot (not to
    /// those stopping); returns how many it was queued for. A worker still starting (a
    /// replacement during a reload, a restart) gets it as soon as its channel is up, before
    /// anything else, so a configuration broadcast during a reload reaches the new workers. A
    /// worker whose channel is closed, or whose outbox is full (it has not read its last 1,024
    /// messages), is left out of the count rather than failing the broadcast.
    ///
    /// # Errors
    ///
    /// - [`Codec`](crate::ErrorKind::Codec): `msg` cannot be encoded; nothing was sent.
    /// - [`Disconnected`](crate::ErrorKind::Disconnected): the cluster has stopped.
    ///
    /// # Cancel safety
    ///
    /// Once polled, the broadcast is the supervisor's to carry out: dropping the future does
    /// not stop it, only the count is lost.
    pub async fn broadcast(&self, msg: &D) -> Result<usize> {
        let msg = ToWorker::User(messaging::encode(msg)?);
        self.ask(|reply| Command::Broadcast {
            group: None,
            msg,
            reply,
        })
        .await
    }

    /// Sends a message to every worker of one group, as [`MasterContext::broadcast`]
    /// does; a group that does not exist gets it 0 times. The group of
    /// [`Cluster::worker`](crate::Cluster::worker) is [`DEFAULT_GROUP`](crate::DEFAULT_GROUP).
    ///
    /// # Errors
    ///
    /// - [`Codec`](crate::ErrorKind::Codec): `msg` cannot be encoded; nothing was sent.
    /// - [`Disconnected`](crate::ErrorKind::Disconnected): the cluster has stopped.
    ///
    /// # Cancel safety
    ///
    /// As for [`MasterContext::broadcast`]: dropping the future loses only the count.
    pub async fn broadcast_group(&self, group: &str, msg: &D) -> Result<usize> {
        let msg = ToWorker::User(messaging::encode(msg)?);
        self.ask(|reply| Command::Broadcast {
            group: Some(group.into()),
            msg,
            reply,
        })
        .await
    }

    /// Asks the worker in `to` and waits up to `timeout` for its answer. The timeout counts
    /// from when the request is written to the worker's channel.
    ///
    /// # Errors
    ///
    /// - [`Codec`](crate::ErrorKind::Codec): `msg` cannot be encoded (nothing was sent), or
    ///   the answer does not decode as `U`.
    /// - [`NoWorker`](crate::ErrorKind::NoWorker): no worker in `to`, it is not online yet, or
    ///   its outbox is full (it has not read its last 1,024 messages).
    /// - [`Timeout`](crate::ErrorKind::Timeout): no answer within `timeout` (the worker dropped
    ///   the [`Request`], is busy, or exited meanwhile).
    /// - [`Disconnected`](crate::ErrorKind::Disconnected): the worker's channel is closed, or
    ///   the cluster has stopped.
    /// - [`Ipc`](crate::ErrorKind::Ipc): the channel refused the request or broke.
    ///
    /// # Cancel safety
    ///
    /// Once polled, the request is the supervisor's to send: dropping the future does not take
    /// it back, so the worker may still receive it and answer. The answer is then discarded.
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

    /// The next event; `None` once the cluster has stopped and every event before has been
    /// read. Clones of the context share one queue: each event goes to one caller.
    ///
    /// Lifecycle events (spawns, readiness, exits, reloads) are never crowded out by workers'
    /// messages: those have a bound of their own (4,096 messages or 64 MiB), past which the
    /// supervisor drops new ones with a warning rather than wait, so a master function should
    /// keep reading. Lifecycle events beyond 4,096 unread lose the oldest.
    ///
    /// # Errors
    ///
    /// None: the end of the cluster is `None`. A message from a worker that does not decode as
    /// `U` is an [`Event::BadMessage`], not an error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is taken off the queue only by a call that returns it, so
    /// dropping the future loses none.
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
                ..
            } => Event::Exit {
                id,
                exit,
                expected,
                restarting,
            },
            RawEvent::RestartLimit { id, exit } => Event::RestartLimit { id, exit },
            RawEvent::SpawnFailed {
                id,
                error,
                retry_in,
            } => Event::SpawnFailed {
                id,
                error,
                retry_in,
            },
            RawEvent::ReloadStarted => Event::ReloadStarted,
            RawEvent::ReloadFinished => Event::ReloadFinished,
            RawEvent::ReloadFailed { error } => Event::ReloadFailed { error },
            RawEvent::Recycling { id, reason } => Event::Recycling { id, reason },
            RawEvent::Autoscaled {
                group,
                from,
                to,
                reason,
            } => Event::Autoscaled {
                group,
                from,
                to,
                reason,
            },
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
                        to: from.clone(),
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
    ///
    /// # Errors
    ///
    /// [`Disconnected`](crate::ErrorKind::Disconnected): the cluster has stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it changes nothing; a dropped future's snapshot is thrown away.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        self.ask(|reply| Command::Workers { reply }).await
    }

    /// Sets the number of workers of `group`: new slots start at once; removed slots (the
    /// highest) stop gracefully. Returns once the change has begun, not when the new workers
    /// are ready or the removed ones have exited. The group of
    /// [`Cluster::worker`](crate::Cluster::worker) is [`DEFAULT_GROUP`](crate::DEFAULT_GROUP):
    /// `ctx.scale(DEFAULT_GROUP, 4)`.
    ///
    /// # Errors
    ///
    /// - [`NoWorker`](crate::ErrorKind::NoWorker): no group named `group`.
    /// - [`Disconnected`](crate::ErrorKind::Disconnected): the cluster has stopped.
    ///
    /// # Cancel safety
    ///
    /// Once polled, the scaling is the supervisor's to do: dropping the future does not undo
    /// or stop it.
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
    ///
    /// # Errors
    ///
    /// [`Disconnected`](crate::ErrorKind::Disconnected): the cluster has stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it changes nothing; a dropped future's snapshot is thrown away.
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
