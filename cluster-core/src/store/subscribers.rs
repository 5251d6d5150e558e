//! Who subscribed to which topic of the store, and the fan-out of a publication. A publisher
//! never waits for a subscriber: each subscriber has a bounded queue (`store_queue`), a value
//! that finds it full is lost for that subscriber and counted, and the subscriber is told how
//! many it lost before the next value that reaches it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use tokio::sync::mpsc;

use crate::model::WorkerId;
use crate::protocol::{StoreFailure, StoreReply};
use crate::violations::{Violation, Violations, notice};

/// Who asks the store: the master's own code, or one worker process (its generation
/// included, so that a replacement in the same slot is another client).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Client {
    Master,
    Worker(WorkerId),
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::Master => f.write_str("the master"),
            Client::Worker(id) => write!(f, "worker {id}"),
        }
    }
}

/// What the store pushes to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Push {
    Message { topic: String, value: Vec<u8> },
    Lagged { topic: String, lost: u64 },
}

/// One client's subscription to one topic.
struct Subscription {
    queue: mpsc::Sender<Push>,
    /// Values lost since the subscriber was last told.
    lost: u64,
}

/// Every topic's subscribers.
#[derive(Default)]
pub(crate) struct Subscribers {
    topics: HashMap<String, BTreeMap<Client, Subscription>>,
    /// Topics per client, for the bound and for dropping a client that is gone.
    by_client: HashMap<Client, Vec<String>>,
}

impl Subscribers {
    /// Subscribes `client` to `topic`, its pushes going to `queue`; at most `limit` topics
    /// per client. Subscribing again to the same topic changes nothing.
    pub(crate) fn subscribe(
        &mut self,
        client: &Client,
        topic: String,
        queue: mpsc::Sender<Push>,
        limit: u64,
    ) -> StoreReply {
        let topics = self.by_client.entry(client.clone()).or_default();
        if topics.contains(&topic) {
            return StoreReply::Done(false);
        }
        if topics.len() as u64 >= limit {
            return StoreReply::Failed(StoreFailure::TooManySubscriptions(limit));
        }
        topics.push(topic.clone());
        self.topics
            .entry(topic)
            .or_default()
            .insert(client.clone(), Subscription { queue, lost: 0 });
        StoreReply::Done(true)
    }

    pub(crate) fn unsubscribe(&mut self, client: &Client, topic: &str) -> StoreReply {
        let Some(topics) = self.by_client.get_mut(client) else {
            return StoreReply::Done(false);
        };
        let Some(at) = topics.iter().position(|t| t == topic) else {
            return StoreReply::Done(false);
        };
        topics.swap_remove(at);
        if topics.is_empty() {
            self.by_client.remove(client);
        }
        self.remove(client, topic);
        StoreReply::Done(true)
    }

    fn remove(&mut self, client: &Client, topic: &str) {
        if let Some(subscribers) = self.topics.get_mut(topic) {
            subscribers.remove(client);
            if subscribers.is_empty() {
                self.topics.remove(topic);
            }
        }
    }

    /// Drops every subscription of a client that is gone (a worker that exited).
    pub(crate) fn forget(&mut self, client: &Client) {
        for topic in self.by_client.remove(client).unwrap_or_default() {
            self.remove(client, &topic);
        }
    }

    /// How many topics `client` is subscribed to.
    #[cfg(test)]
    pub(crate) fn count(&self, client: &Client) -> usize {
        self.by_client.get(client).map_or(0, Vec::len)
    }

    /// Sends `value` to each subscriber of `topic` that has room; returns how many
    /// subscribers there were (reached or not).
    pub(crate) fn publish(&mut self, topic: &str, value: &[u8], violations: &Violations) -> usize {
        let Some(subscribers) = self.topics.get_mut(topic) else {
            return 0;
        };
        for (client, sub) in subscribers.iter_mut() {
            if sub.lost > 0 {
                let told = sub.queue.try_send(Push::Lagged {
                    topic: topic.to_owned(),
                    lost: sub.lost,
                });
                if told.is_err() {
                    sub.lost += 1;
                    lagged(client, topic, sub.lost, violations);
                    continue;
                }
                sub.lost = 0;
            }
            let push = Push::Message {
                topic: topic.to_owned(),
                value: value.to_vec(),
            };
            // Closed: the client is gone, and its `forget` is on the way.
            if let Err(mpsc::error::TrySendError::Full(_)) = sub.queue.try_send(push) {
                sub.lost += 1;
                lagged(client, topic, sub.lost, violations);
            }
        }
        subscribers.len()
    }
}

/// Counts one value lost for `client`, as a worker's violation (a worker that does not keep
/// up with its subscriptions) or, for the master's own code, in the log.
fn lagged(client: &Client, topic: &str, lost: u64, violations: &Violations) {
    match client {
        Client::Worker(id) => violations.record(
            Violation::StoreLagged,
            id,
            format_args!(
                "did not keep up with the store's topic {topic:?}: a value was dropped for it"
            ),
        ),
        Client::Master if lost.is_power_of_two() => {
            notice!(
                warn,
                "the master's code did not keep up with the store's topic {topic:?}: {lost} values dropped for it"
            )
        }
        Client::Master => {}
    }
}
