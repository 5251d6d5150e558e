//! Encoding of app payloads and the table of requests waiting for their answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cluster_ipc::{Codec, DefaultCodec};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::model::WorkerId;
use crate::{Error, Result};

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    DefaultCodec::default().encode(value, &mut out)?;
    Ok(out)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    Ok(DefaultCodec::default().decode(bytes)?)
}

/// Requests waiting for their response, by correlation id.
///
/// In a worker the only peer is the master, and [`Pending::complete`] takes any answer. In
/// the master every peer is a worker, and an answer counts only from the worker the request
/// was written to ([`Pending::expect_from`], [`Pending::complete_from`]): a late answer of a
/// replaced worker, or one worker answering for another, completes nothing.
///
/// The answer is app bytes by default; the store's answers wait in one of their own
/// (`Pending<StoreReply>`).
pub(crate) struct Pending<T = Vec<u8>> {
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, Waiter<T>>>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            next_id: AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

struct Waiter<T> {
    /// The worker whose answer counts; `None` until the request is written to one.
    from: Option<WorkerId>,
    tx: oneshot::Sender<T>,
}

impl<T> Pending<T> {
    /// Registers a new request; the guard forgets it again if the caller gives up.
    pub(crate) fn register(self: &Arc<Self>) -> (PendingGuard<T>, oneshot::Receiver<T>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Waiter { from: None, tx });
        (
            PendingGuard {
                pending: self.clone(),
                id,
            },
            rx,
        )
    }

    /// Delivers a response; responses nobody waits for any more (timed out) are dropped.
    pub(crate) fn complete(&self, id: u64, payload: T) {
        let waiter = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.tx.send(payload);
        }
    }

    /// Request `id` was written to worker `from`: only its answer counts.
    pub(crate) fn expect_from(&self, id: u64, from: &WorkerId) {
        if let Some(waiter) = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&id)
        {
            waiter.from = Some(from.clone());
        }
    }

    /// Delivers worker `from`'s answer to request `id`, if `id` was asked of `from`; returns
    /// whether it did. A refused answer leaves the request waiting for the right worker.
    /// Whether request `id` waits for an answer from a worker other than `from`: an answer
    /// `from` sends to it is another's, not a late one of its own.
    pub(crate) fn awaits_other(&self, id: u64, from: &WorkerId) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .is_some_and(|w| w.from.as_ref().is_some_and(|f| f != from))
    }

    pub(crate) fn complete_from(&self, id: u64, from: &WorkerId, payload: T) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting
            .get(&id)
            .is_none_or(|w| w.from.as_ref() != Some(from))
        {
            return false;
        }
        let waiter = waiting.remove(&id);
        drop(waiting);
        if let Some(waiter) = waiter {
            let _ = waiter.tx.send(payload);
        }
        true
    }
}

pub(crate) struct PendingGuard<T = Vec<u8>> {
    pending: Arc<Pending<T>>,
    pub(crate) id: u64,
}

impl<T> Drop for PendingGuard<T> {
    fn drop(&mut self) {
        self.pending
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// Waits for the response of a registered request, up to `timeout`.
pub(crate) async fn await_response<A: DeserializeOwned>(
    guard: PendingGuard,
    rx: oneshot::Receiver<Vec<u8>>,
    timeout: Duration,
    peer: &'static str,
) -> Result<A> {
    let payload = match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(payload)) => payload,
        Ok(Err(_)) => return Err(Error::disconnected(peer)),
        Err(_) => return Err(Error::timeout(peer, timeout)),
    };
    drop(guard);
    decode(&payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(slot: usize, generation: u64) -> WorkerId {
        WorkerId {
            group: "worker".into(),
            slot,
            generation,
        }
    }

    #[tokio::test]
    async fn an_answer_counts_only_from_the_worker_asked() {
        let pending = Arc::new(Pending::default());
        let (guard, mut rx) = pending.register();
        // Not yet written to anyone: no worker can answer it.
        assert!(!pending.complete_from(guard.id, &worker(0, 1), vec![1]));
        pending.expect_from(guard.id, &worker(0, 2));
        // The replaced worker of the same slot, and another slot's worker: refused.
        assert!(!pending.complete_from(guard.id, &worker(0, 1), vec![2]));
        assert!(!pending.complete_from(guard.id, &worker(1, 2), vec![3]));
        assert!(pending.awaits_other(guard.id, &worker(1, 2)));
        assert!(!pending.awaits_other(guard.id, &worker(0, 2)));
        assert!(rx.try_recv().is_err());
        assert!(pending.complete_from(guard.id, &worker(0, 2), vec![4]));
        assert_eq!(rx.await.unwrap(), vec![4]);
        // Completed once: a repeat is refused.
        assert!(!pending.complete_from(guard.id, &worker(0, 2), vec![5]));
    }
}
