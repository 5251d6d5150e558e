//! The task that reads the master's channel: control messages, the app's messages into its
//! queue, handed connections into their listeners' queues. A task of its own, apart from the
//! context, because it must keep reading whatever the app does, and the worker ends with it.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, PoisonError};

use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::context::Incoming;
use super::shared::WorkerShared;
use crate::messaging::{self, Pending};
use crate::net::listener::Handed;
use crate::protocol::{Balance, ToMaster, ToWorker};
use crate::request::{ReplyTo, Request};
use crate::store::StoreEvent;

/// Messages and requests from the master that wait for the app's `recv` at most.
pub(super) const APP_QUEUE: usize = 1024;

/// Reads the master's messages until the channel ends; the worker exits when it does, since
/// the master is gone.
pub(super) async fn read_master<D: DeserializeOwned + Send + 'static, U: Send + 'static>(
    mut rx: cluster_ipc::Receiver<ToWorker>,
    reply: cluster_ipc::Sender<ToMaster>,
    incoming: mpsc::Sender<Incoming<D, U>>,
    shutdown: CancellationToken,
    pending: Arc<Pending>,
    shared: Arc<WorkerShared>,
) {
    let mut incoming = AppQueue {
        tx: Some(incoming),
        dropped: 0,
    };
    loop {
        let (msg, mut fds) = match rx.recv_with_fds().await {
            Ok(Some(msg)) => msg,
            Ok(None) | Err(_) => master_gone(),
        };
        match msg {
            ToWorker::Shutdown => {
                shutdown.cancel();
                // Close the queue so `recv` returns None once drained.
                incoming.tx = None;
            }
            ToWorker::User(payload) => match messaging::decode::<D>(&payload) {
                Ok(msg) => incoming.deliver(Incoming::Message(msg), &reply).await,
                Err(e) => tracing::warn!("dropped a message from the master: {e:#}"),
            },
            ToWorker::Request { id, payload } => match messaging::decode::<D>(&payload) {
                Ok(msg) => {
                    let request = Request::new(msg, id, ReplyTo::Master(reply.clone()));
                    incoming.deliver(Incoming::Request(request), &reply).await
                }
                Err(e) => tracing::warn!("dropped a request from the master: {e:#}"),
            },
            ToWorker::Response { id, payload } => pending.complete(id, payload),
            ToWorker::MetricsRequest { id } => {
                let metrics = shared
                    .metrics
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let text = metrics.map_or_else(|| "# EOF\n".to_string(), |m| m.encode());
                let _ = reply.send(&ToMaster::Metrics { id, text }).await;
            }
            ToWorker::Listening { id, result } => {
                let waiter = shared
                    .listen_waiters
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                if let Some(waiter) = waiter {
                    // Connections for this listener may be the very next messages: its queue
                    // must exist before they are read, not when the listening task next runs.
                    let queue = match &result {
                        Ok(info)
                            if !matches!(info.balance, Balance::Shared | Balance::ReusePort) =>
                        {
                            Some(shared.listeners.register(info.listener))
                        }
                        _ => None,
                    };
                    let _ = waiter.send((result, fds, queue));
                }
            }
            ToWorker::Connection {
                listener,
                conn,
                peer,
            } => {
                // Acknowledge first: from here on the connection is this worker's, and the
                // master stops keeping a copy to hand elsewhere.
                let _ = reply.send(&ToMaster::Accepted { conn }).await;
                let Some(fd) = fds.pop() else { continue };
                take_connection(&shared, listener, fd, peer);
            }
            ToWorker::LoadShare {
                listener,
                index,
                tag,
            } => {
                let Some(fd) = fds.pop() else { continue };
                match crate::net::load::LoadShare::open(fd, index, tag) {
                    Ok(share) => {
                        let _ = shared.listeners.load_slot(listener).set(share);
                    }
                    Err(e) => tracing::warn!("cannot map the load table of {listener}: {e}"),
                }
            }
            ToWorker::Connections { listener, conns } => {
                for (conn, _) in &conns {
                    let _ = reply.send(&ToMaster::Accepted { conn: *conn }).await;
                }
                if fds.len() != conns.len() {
                    tracing::warn!(
                        "{} connections came with {} descriptors: dropped them",
                        conns.len(),
                        fds.len()
                    );
                    continue;
                }
                for ((_, peer), fd) in conns.into_iter().zip(fds) {
                    take_connection(&shared, listener, fd, peer);
                }
            }
            ToWorker::StoreAnswer { id, reply } => shared.store_pending.complete(id, reply),
            ToWorker::StoreMessage { topic, value } => shared
                .store
                .topics()
                .deliver(&topic, StoreEvent::Message(value)),
            ToWorker::StoreLagged { topic, lost } => shared
                .store
                .topics()
                .deliver(&topic, StoreEvent::Lagged(lost)),
        }
    }
}

/// Ends the process at once: the master died (its parent-death signal normally gets here
/// first).
#[allow(
    clippy::exit,
    reason = "an orphaned worker must not serve on: its connections and shutdown belong to a \
              master that is gone, and the worker function may never return"
)]
fn master_gone() -> ! {
    eprintln!(
        "cluster worker {}: the master is gone, exiting",
        std::process::id()
    );
    std::process::exit(crate::error::EXIT_MASTER_GONE);
}

/// Queues a connection the master handed over for the listener it belongs to.
fn take_connection(shared: &WorkerShared, listener: u32, fd: OwnedFd, peer: Option<SocketAddr>) {
    if let Some(handed) = handed(fd, peer) {
        if !shared.listeners.deliver(listener, handed) {
            tracing::warn!("dropped a connection for unknown listener {listener}");
        }
    }
}

fn handed(fd: OwnedFd, peer: Option<SocketAddr>) -> Option<Handed> {
    let stream = std::net::TcpStream::from(fd);
    let peer = peer.or_else(|| stream.peer_addr().ok())?;
    stream.set_nonblocking(true).ok()?;
    let stream = tokio::net::TcpStream::from_std(stream).ok()?;
    Some(Handed { stream, peer })
}

/// The app's queue of messages and requests from the master. Full means the app is not
/// calling `recv`: a message that finds it full is dropped and reported, never waited for,
/// since this task must go on reading shutdowns, connections and acknowledgements.
struct AppQueue<D, U> {
    tx: Option<mpsc::Sender<Incoming<D, U>>>,
    dropped: u64,
}

impl<D, U> AppQueue<D, U> {
    async fn deliver(&mut self, item: Incoming<D, U>, reply: &cluster_ipc::Sender<ToMaster>) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(item) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped += 1;
                // Told at the 1st, 2nd, 4th... drop: a master sending in a loop gets a
                // handful of reports, with the exact count in the last.
                if self.dropped.is_power_of_two() {
                    tracing::warn!(
                        "the app has not read its messages ({APP_QUEUE} are queued): {} dropped so far",
                        self.dropped
                    );
                    let _ = reply
                        .send(&ToMaster::Dropped {
                            dropped: self.dropped,
                        })
                        .await;
                }
            }
        }
    }
}
