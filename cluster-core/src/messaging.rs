//! Encoding of app payloads and the table of requests waiting for their answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cluster_ipc::{Codec, DefaultCodec};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

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
#[derive(Default)]
pub(crate) struct Pending {
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Vec<u8>>>>,
}

impl Pending {
    /// Registers a new request; the guard forgets it again if the caller gives up.
    pub(crate) fn register(self: &Arc<Self>) -> (PendingGuard, oneshot::Receiver<Vec<u8>>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, tx);
        (
            PendingGuard {
                pending: self.clone(),
                id,
            },
            rx,
        )
    }

    /// Delivers a response; responses nobody waits for any more (timed out) are dropped.
    pub(crate) fn complete(&self, id: u64, payload: Vec<u8>) {
        let waiter = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(waiter) = waiter {
            let _ = waiter.send(payload);
        }
    }
}

pub(crate) struct PendingGuard {
    pending: Arc<Pending>,
    pub(crate) id: u64,
}

impl Drop for PendingGuard {
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
