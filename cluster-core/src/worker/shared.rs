//! The state a worker's context shares with the reader of the master's channel and with its
//! listeners. Below both, so that the context and the reader need not import each other.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::Result;
use crate::messaging::Pending;
use crate::net::listener::{Handed, WorkerListeners};
use crate::protocol::StoreReply;
use crate::protocol::{ListenerInfo, ToMaster};
use crate::store::{Store, Transport};

/// The master's answer to a listen, with the queue of a master-accept listener, registered
/// by the reader of the master's messages before it reads the next one.
pub(super) type ListenReply = (
    Result<ListenerInfo, String>,
    Vec<OwnedFd>,
    Option<mpsc::UnboundedReceiver<Handed>>,
);

/// Worker state shared by the context, the reader of the master's messages and listeners.
pub(super) struct WorkerShared {
    pub(super) sender: cluster_ipc::Sender<ToMaster>,
    pub(super) listeners: WorkerListeners,
    pub(super) listen_waiters: std::sync::Mutex<HashMap<u64, oneshot::Sender<ListenReply>>>,
    pub(super) next_listen: AtomicU64,
    /// `listen` calls under way: readiness waits for them.
    pub(super) listens_in_flight: AtomicUsize,
    /// The worker function has been polled once: listens it started are known.
    pub(super) first_poll_done: AtomicBool,
    pub(super) ready_sent: AtomicBool,
    pub(super) closes: mpsc::UnboundedSender<u32>,
    /// Open connections of all this worker's listeners.
    pub(super) live: Arc<AtomicUsize>,
    /// The worker's metrics registry, created on first use, encoded for the master's scrape.
    pub(super) metrics: std::sync::Mutex<Option<crate::observe::metrics::WorkerMetrics>>,
    /// The master's protocol level (`protocol::LEVEL`): what it can decode.
    pub(super) level: u32,
    /// The master's store as this worker reaches it, and its operations waiting for their
    /// answer (completed by the reader).
    pub(super) store: Store,
    pub(super) store_pending: Arc<Pending<StoreReply>>,
}

impl WorkerShared {
    /// The state of a worker whose channel's sending half is `sender`; `ready_sent` true
    /// when readiness is not reported automatically. Starts the store's subscription task,
    /// so it runs inside the runtime.
    pub(super) fn new(
        sender: cluster_ipc::Sender<ToMaster>,
        closes: mpsc::UnboundedSender<u32>,
        ready_sent: bool,
        level: u32,
    ) -> Self {
        let store_pending = Arc::new(Pending::default());
        let store = Store::new(Transport::Worker {
            sender: sender.clone(),
            pending: store_pending.clone(),
            level,
        });
        WorkerShared {
            sender,
            listeners: WorkerListeners::default(),
            listen_waiters: std::sync::Mutex::new(HashMap::new()),
            next_listen: AtomicU64::new(0),
            listens_in_flight: AtomicUsize::new(0),
            first_poll_done: AtomicBool::new(false),
            ready_sent: AtomicBool::new(ready_sent),
            closes,
            live: Arc::default(),
            metrics: std::sync::Mutex::new(None),
            store,
            store_pending,
            level,
        }
    }

    pub(super) async fn send_ready(&self) -> Result<()> {
        if self.ready_sent.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // The send waits while the channel's buffer is full; a caller that gives up then has
        // sent nothing, and the flag must let the next call send the report.
        let mut unsent = Unsent(Some(&self.ready_sent));
        let sent = self.sender.send(&ToMaster::Ready).await;
        unsent.0 = None;
        Ok(sent?)
    }

    /// Ready once the first poll is done and no listen is under way.
    pub(super) async fn maybe_ready(&self) -> Result<()> {
        if self.first_poll_done.load(Ordering::SeqCst)
            && self.listens_in_flight.load(Ordering::SeqCst) == 0
        {
            self.send_ready().await?;
        }
        Ok(())
    }
}

/// Clears a "sent" flag when dropped still holding it: the send it guarded never happened.
struct Unsent<'a>(Option<&'a AtomicBool>);

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(flag) = self.0 {
            flag.store(false, Ordering::SeqCst);
        }
    }
}
