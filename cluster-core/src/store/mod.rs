//! The master's store: keys and values, counters, compare-and-swap, expiry and
//! publish/subscribe on named topics, shared by every worker of one host and the master,
//! without Redis. The master owns it; workers reach it over their channel.
//!
//! Bottom to top: `state.rs` (keys, values, deadlines: the state machine), `subscribers.rs`
//! (topics and the fan-out of a publication), `snapshot.rs` (the `store_snapshot` file),
//! `server.rs` (the one task that owns both and applies every operation in turn), `link.rs`
//! (a worker's queues and their writer, on the master's side), `client.rs` (how a process
//! reaches the task, and its local fan-out of topics), and here the app's [`Store`].

mod client;
mod link;
mod server;
mod snapshot;
mod state;
mod subscribers;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

pub(crate) use client::{LocalTopics, Transport};
pub(crate) use link::WorkerLink;
pub(crate) use server::{Asked, Reply, StoreConfig, StoreHandle, start};
pub(crate) use subscribers::{Client, Push};

use crate::messaging;
use crate::protocol::{StoreFailure, StoreOp, StoreReply};
use crate::{Error, ErrorKind, Result};

/// How long a worker waits for the store's answer unless told otherwise
/// ([`Store::with_timeout`]).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The master's store, as the master's code or one worker sees it: get it with
/// `ctx.store()` on a [`WorkerContext`](crate::WorkerContext) or a
/// [`MasterContext`](crate::MasterContext). Cheap to clone.
///
/// Every operation is applied by one task of the master, one at a time, in the order they
/// reach it: each sees the effect of every operation answered before it was sent, whoever
/// sent it (linearizable, on this host). Values are bytes; [`Store::get_as`] and
/// [`Store::set_as`] encode typed values with the cluster's codec. Counters are decimal text,
/// as in Redis: `incr` on `"41"` makes `"42"`.
///
/// ```no_run
/// # async fn demo(ctx: cluster_core::WorkerContext) -> cluster_core::Result<()> {
/// use std::time::Duration;
/// let store = ctx.store();
/// let hits = store.incr("hits", 1).await?;
/// store.set("session:42", b"alice".to_vec(), Some(Duration::from_secs(600))).await?;
/// let mut news = store.subscribe("news").await?;
/// store.publish("news", b"hello".to_vec()).await?;
/// # drop((hits, news.recv().await));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Store {
    transport: Transport,
    topics: Arc<LocalTopics>,
    timeout: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The outcome of [`Store::cas`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Cas {
    /// The value was the one expected, and is now the new one.
    Swapped,
    /// The value was not the one expected: this is what it was (`None`: absent), to retry
    /// with.
    Current(Option<Vec<u8>>),
}

/// What a [`Subscription`] receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A value published on the topic.
    Message(Vec<u8>),
    /// This many values published on the topic were lost for this subscriber: it did not
    /// read them fast enough (the master never waits for a subscriber).
    Lagged(u64),
}

/// What is published on one topic from the moment [`Store::subscribe`] returned. Dropping
/// the last subscription of a process to a topic unsubscribes it.
#[derive(Debug)]
pub struct Subscription {
    topic: String,
    rx: broadcast::Receiver<StoreEvent>,
    topics: Arc<LocalTopics>,
}

impl Subscription {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next value published on the topic, or how many were lost; `None` once the store
    /// is gone (the master stopped, or refused a resubscription).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a value is taken only by a call that returns it.
    pub async fn recv(&mut self) -> Option<StoreEvent> {
        match self.rx.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(lost)) => Some(StoreEvent::Lagged(lost)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.topics.release(&self.topic);
    }
}

impl std::fmt::Debug for LocalTopics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTopics").finish_non_exhaustive()
    }
}

/// The reply, or the error it stands for.
pub(crate) fn check(reply: StoreReply) -> Result<StoreReply> {
    let StoreReply::Failed(failure) = reply else {
        return Ok(reply);
    };
    let message = match failure {
        StoreFailure::TooManyKeys(limit) => format!(
            "the store is full: it holds {limit} keys (`store_max_keys`); delete keys, give them a TTL, or raise the limit"
        ),
        StoreFailure::TooManyBytes(limit) => format!(
            "the store is full: the write would take it past {limit} bytes of keys and values (`store_max_bytes`); delete keys, give them a TTL, or raise the limit"
        ),
        StoreFailure::NotAnInteger => "incr: the value is not a decimal 64-bit integer".to_owned(),
        StoreFailure::Overflow => "incr: the result would overflow a 64-bit integer".to_owned(),
        StoreFailure::TooManySubscriptions(limit) => format!(
            "this process is subscribed to {limit} topics already (`store_subscriptions`); drop a subscription or raise the limit"
        ),
    };
    Err(Error::new(ErrorKind::Store, message))
}

fn unexpected(op: &str) -> Error {
    Error::new(
        ErrorKind::Ipc,
        format!("the store answered {op} with another operation's answer"),
    )
}

fn millis(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Store {
    /// The store as a worker reaches it: over its channel to the master.
    pub(crate) fn new(transport: Transport) -> Self {
        let topics = LocalTopics::start(transport.clone(), DEFAULT_TIMEOUT);
        Store {
            transport,
            topics,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The store as the master's own code reaches it: straight to the store's task, its
    /// subscriptions fed by a task that reads the master's queue of pushed values.
    pub(crate) fn for_master(store: StoreHandle) -> Self {
        let (pushes, mut rx) = store.push_queue();
        let this = Store::new(Transport::Master { store, pushes });
        let topics = Arc::downgrade(&this.topics);
        tokio::spawn(async move {
            while let Some(push) = rx.recv().await {
                let Some(topics) = topics.upgrade() else {
                    return;
                };
                match push {
                    Push::Message { topic, value } => {
                        topics.deliver(&topic, StoreEvent::Message(value));
                    }
                    Push::Lagged { topic, lost } => {
                        topics.deliver(&topic, StoreEvent::Lagged(lost))
                    }
                }
            }
        });
        this
    }

    /// Where pushed values for this process go (the worker's reader, the master's pusher).
    pub(crate) fn topics(&self) -> &Arc<LocalTopics> {
        &self.topics
    }

    /// The same store, whose operations wait for the answer at most `timeout` (from a worker;
    /// the master's own are answered without a channel in between). The default is 10 s.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn call(&self, op: StoreOp) -> Result<StoreReply> {
        check(self.transport.call(op, self.timeout).await?)
    }

    /// The value of `key`, `None` if it is absent or expired.
    ///
    /// # Errors
    ///
    /// - [`Timeout`](crate::ErrorKind::Timeout): no answer within the timeout (the master is
    ///   overloaded or stuck).
    /// - [`Disconnected`](crate::ErrorKind::Disconnected): the master (or its store) is gone.
    /// - [`Ipc`](crate::ErrorKind::Ipc): the channel broke, or the key is larger than a frame.
    ///
    /// The other operations fail the same ways, and as they say.
    ///
    /// # Cancel safety
    ///
    /// Every operation, once polled, may reach the store even if its future is dropped: a
    /// dropped `set` or `incr` may have happened.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self
            .call(StoreOp::Get {
                key: key.to_owned(),
            })
            .await?
        {
            StoreReply::Value(value) => Ok(value),
            _ => Err(unexpected("get")),
        }
    }

    /// Sets `key` to `value`; with a `ttl` it expires that long from now, without one it
    /// never does (a TTL it had is cleared).
    ///
    /// # Errors
    ///
    /// [`Store`](crate::ErrorKind::Store): the store is full (`store_max_keys`,
    /// `store_max_bytes`); as [`Store::get`] otherwise.
    pub async fn set(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let op = StoreOp::Set {
            key: key.to_owned(),
            value: value.into(),
            ttl_ms: millis(ttl),
        };
        match self.call(op).await? {
            StoreReply::Done(_) => Ok(()),
            _ => Err(unexpected("set")),
        }
    }

    /// Adds `by` (which may be negative) to the counter at `key` and returns its new value.
    /// An absent key counts as 0; the key keeps its TTL.
    ///
    /// # Errors
    ///
    /// [`Store`](crate::ErrorKind::Store): the value is not a decimal i64, the sum would
    /// overflow, or the store is full; as [`Store::get`] otherwise.
    pub async fn incr(&self, key: &str, by: i64) -> Result<i64> {
        match self
            .call(StoreOp::Incr {
                key: key.to_owned(),
                by,
            })
            .await?
        {
            StoreReply::Int(n) => Ok(n),
            _ => Err(unexpected("incr")),
        }
    }

    /// Removes `key`; returns whether it was there.
    ///
    /// # Errors
    ///
    /// As [`Store::get`].
    pub async fn del(&self, key: &str) -> Result<bool> {
        match self
            .call(StoreOp::Del {
                key: key.to_owned(),
            })
            .await?
        {
            StoreReply::Done(was) => Ok(was),
            _ => Err(unexpected("del")),
        }
    }

    /// Compare-and-swap: sets `key` to `new` (without a TTL) only if its value is `expected`
    /// (`None`: only if it is absent). [`Cas::Current`] carries the value found, so that a
    /// retry loop needs one round trip per attempt.
    ///
    /// ```no_run
    /// # async fn demo(store: cluster_core::Store) -> cluster_core::Result<()> {
    /// use cluster_core::Cas;
    /// let mut seen = store.get("config").await?;
    /// loop {
    ///     let next = format!("{}+", String::from_utf8_lossy(seen.as_deref().unwrap_or(b"")));
    ///     match store.cas("config", seen.as_deref(), next).await? {
    ///         Cas::Swapped => break,
    ///         Cas::Current(now) => seen = now,
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Store`](crate::ErrorKind::Store): the store is full; as [`Store::get`] otherwise.
    pub async fn cas(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: impl Into<Vec<u8>>,
    ) -> Result<Cas> {
        let op = StoreOp::Cas {
            key: key.to_owned(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.into(),
        };
        match self.call(op).await? {
            StoreReply::Cas(None) => Ok(Cas::Swapped),
            StoreReply::Cas(Some(current)) => Ok(Cas::Current(current)),
            _ => Err(unexpected("cas")),
        }
    }

    /// Makes `key` expire `ttl` from now, or never (`None`); returns whether the key exists.
    ///
    /// # Errors
    ///
    /// As [`Store::get`].
    pub async fn expire(&self, key: &str, ttl: Option<Duration>) -> Result<bool> {
        let op = StoreOp::Expire {
            key: key.to_owned(),
            ttl_ms: millis(ttl),
        };
        match self.call(op).await? {
            StoreReply::Done(exists) => Ok(exists),
            _ => Err(unexpected("expire")),
        }
    }

    /// Sends `value` to every subscriber of `topic` (this process's own included); returns
    /// how many processes were subscribed. A subscriber that is behind loses the value and
    /// is told ([`StoreEvent::Lagged`]); the publisher never waits for it.
    ///
    /// # Errors
    ///
    /// As [`Store::get`].
    pub async fn publish(&self, topic: &str, value: impl Into<Vec<u8>>) -> Result<usize> {
        let op = StoreOp::Publish {
            topic: topic.to_owned(),
            value: value.into(),
        };
        match self.call(op).await? {
            StoreReply::Int(n) => Ok(usize::try_from(n).unwrap_or(0)),
            _ => Err(unexpected("publish")),
        }
    }

    /// Receives what is published on `topic` from now on. Subscriptions of one process to
    /// one topic share one subscription at the store (and count once toward
    /// `store_subscriptions`); they end with the process.
    ///
    /// # Errors
    ///
    /// [`Store`](crate::ErrorKind::Store): the process is subscribed to
    /// `store_subscriptions` topics already; as [`Store::get`] otherwise.
    pub async fn subscribe(&self, topic: &str) -> Result<Subscription> {
        let rx = self.topics.subscribe(topic).await?;
        Ok(Subscription {
            topic: topic.to_owned(),
            rx,
            topics: self.topics.clone(),
        })
    }

    /// [`Store::get`], decoding the value with the cluster's codec.
    ///
    /// # Errors
    ///
    /// [`Codec`](crate::ErrorKind::Codec): the value does not decode as `T`; as
    /// [`Store::get`] otherwise.
    pub async fn get_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.get(key)
            .await?
            .map(|bytes| messaging::decode(&bytes))
            .transpose()
    }

    /// [`Store::set`], encoding the value with the cluster's codec.
    ///
    /// # Errors
    ///
    /// [`Codec`](crate::ErrorKind::Codec): `value` cannot be encoded; as [`Store::set`]
    /// otherwise.
    pub async fn set_as<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.set(key, messaging::encode(value)?, ttl).await
    }
}
