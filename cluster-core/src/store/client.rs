//! The client's side of the store, in a worker and in the master alike: how an operation
//! reaches the store's task ([`Transport`]), and the local fan-out of the topics this process
//! subscribed to ([`LocalTopics`]), one subscription at the store per topic however many
//! [`Subscription`](super::Subscription)s share it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::StoreEvent;
use super::server::{Asked, Reply, StoreHandle};
use super::subscribers::{Client, Push};
use crate::messaging::Pending;
use crate::protocol::{StoreOp, StoreReply, ToMaster};
use crate::{Error, Result};

/// Values that wait for one local [`Subscription`](super::Subscription) before it lags.
pub(crate) const LOCAL_QUEUE: usize = 1024;

/// How an operation reaches the store's task.
#[derive(Clone)]
pub(crate) enum Transport {
    /// From the master's code: straight into the task's inbox.
    Master {
        store: StoreHandle,
        pushes: mpsc::Sender<Push>,
    },
    /// From a worker: over its channel, the answer matched by id.
    Worker {
        sender: cluster_ipc::Sender<ToMaster>,
        pending: Arc<Pending<StoreReply>>,
        /// The master's protocol level: a master below 2 has no store.
        level: u32,
    },
}

impl Transport {
    pub(crate) async fn call(&self, op: StoreOp, timeout: Duration) -> Result<StoreReply> {
        match self {
            Transport::Master { store, pushes } => {
                let (tx, rx) = oneshot::channel();
                let asked = Asked {
                    from: Client::Master,
                    op,
                    reply: Reply::Local(tx),
                    pushes: pushes.clone(),
                };
                if !store.ask(asked).await {
                    return Err(Error::disconnected("store"));
                }
                rx.await.map_err(|_| Error::disconnected("store"))
            }
            Transport::Worker {
                sender,
                pending,
                level,
            } => {
                if *level < 2 {
                    // An older master (a deploy of this build under it) would take the
                    // operation for a broken frame and kill this worker.
                    return Err(Error::new(
                        crate::ErrorKind::Store,
                        "the master runs an older build without the store: restart the master with this build first",
                    ));
                }
                let (guard, rx) = pending.register();
                sender.send(&ToMaster::Store { id: guard.id, op }).await?;
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(reply)) => Ok(reply),
                    Ok(Err(_)) => Err(Error::disconnected("master")),
                    Err(_) => Err(Error::timeout("master's store", timeout)),
                }
            }
        }
    }
}

/// A change of local subscriptions for the manager to carry to the store.
struct Change {
    topic: String,
    done: Option<oneshot::Sender<Result<()>>>,
}

/// The topics this process subscribed to: each one's local broadcast, and the one task that
/// tells the store, in order, which topics are wanted.
pub(crate) struct LocalTopics {
    senders: Mutex<HashMap<String, broadcast::Sender<StoreEvent>>>,
    changes: mpsc::UnboundedSender<Change>,
}

impl LocalTopics {
    /// The topics of a process whose operations go through `transport`; starts the task that
    /// subscribes and unsubscribes at the store.
    pub(crate) fn start(transport: Transport, timeout: Duration) -> Arc<Self> {
        let (changes, rx) = mpsc::unbounded_channel();
        let topics = Arc::new(LocalTopics {
            senders: Mutex::new(HashMap::new()),
            changes,
        });
        tokio::spawn(manage(Arc::downgrade(&topics), transport, timeout, rx));
        topics
    }

    /// A value (or a lag notice) the store pushed.
    pub(crate) fn deliver(&self, topic: &str, event: StoreEvent) {
        let senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = senders.get(topic) {
            let _ = tx.send(event);
        }
    }

    /// A receiver of `topic`, once the store has this process subscribed.
    pub(crate) async fn subscribe(&self, topic: &str) -> Result<broadcast::Receiver<StoreEvent>> {
        let rx = self
            .senders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(topic.to_owned())
            .or_insert_with(|| broadcast::channel(LOCAL_QUEUE).0)
            .subscribe();
        let (done, result) = oneshot::channel();
        self.changes
            .send(Change {
                topic: topic.to_owned(),
                done: Some(done),
            })
            .map_err(|_| Error::disconnected("store"))?;
        match result.await {
            Ok(Ok(())) => Ok(rx),
            Ok(Err(e)) => {
                drop(rx);
                self.release(topic);
                Err(e)
            }
            Err(_) => Err(Error::disconnected("store")),
        }
    }

    /// A receiver of `topic` is about to be dropped: the last one ends the subscription at
    /// the store.
    pub(crate) fn release(&self, topic: &str) {
        let mut senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        if senders
            .get(topic)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            senders.remove(topic);
            drop(senders);
            let _ = self.changes.send(Change {
                topic: topic.to_owned(),
                done: None,
            });
        }
    }

    fn wanted(&self, topic: &str) -> bool {
        self.senders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(topic)
    }
}

/// Brings the store's subscriptions of this process in line with the local ones, one change
/// at a time, so that an unsubscribe and a later subscribe to the same topic reach the store
/// in that order.
async fn manage(
    topics: std::sync::Weak<LocalTopics>,
    transport: Transport,
    timeout: Duration,
    mut changes: mpsc::UnboundedReceiver<Change>,
) {
    let mut at_store = HashSet::new();
    while let Some(Change { topic, done }) = changes.recv().await {
        let Some(local) = topics.upgrade() else {
            return;
        };
        let wanted = local.wanted(&topic);
        drop(local);
        let result = match (wanted, at_store.contains(&topic)) {
            (true, false) => {
                let op = StoreOp::Subscribe {
                    topic: topic.clone(),
                };
                let answer = transport.call(op, timeout).await.and_then(super::check);
                if answer.is_ok() {
                    at_store.insert(topic);
                }
                answer.map(drop)
            }
            (false, true) => {
                at_store.remove(&topic);
                let op = StoreOp::Unsubscribe { topic };
                transport
                    .call(op, timeout)
                    .await
                    .and_then(super::check)
                    .map(drop)
            }
            _ => Ok(()),
        };
        if let Some(done) = done {
            let _ = done.send(result);
        }
    }
}
