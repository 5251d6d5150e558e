//! One outbox per worker: the supervisor's loop queues a message and moves on; a task of the
//! worker's own writes it to the channel. A worker that stops reading its channel fills its
//! own outbox and nobody else's, and never stalls the loop.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::process::Internal;
use crate::Result;
use crate::model::WorkerId;
use crate::protocol::{self, ToWorker};

/// Messages a worker's outbox holds before it counts as full. A worker that reads its channel
/// empties it in microseconds; one that lets 1,024 messages pile up is not reading.
pub(crate) const OUTBOX_CAPACITY: usize = 1024;

/// One message to write.
pub(crate) struct Outgoing {
    pub(crate) msg: ToWorker,
    /// Descriptors passed along with it.
    pub(crate) fds: Vec<OwnedFd>,
    /// Told how the write went.
    pub(crate) done: Option<oneshot::Sender<Result<()>>>,
    /// Reported to the supervisor once the message is written.
    pub(crate) then: Option<Internal>,
}

impl Outgoing {
    pub(crate) fn new(msg: ToWorker) -> Self {
        Outgoing {
            msg,
            fds: Vec::new(),
            done: None,
            then: None,
        }
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The worker has not read its channel for [`OUTBOX_CAPACITY`] messages.
    Full,
    /// The worker's channel is gone.
    Closed,
}

/// The queue of one worker's outgoing messages. Dropping every clone lets the task write
/// what is queued and end.
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Outgoing>,
}

impl Outbox {
    /// Starts the writer task of worker `id` in `tasks`; `notify` receives the `then` of
    /// each written message.
    pub(crate) fn start(
        id: &WorkerId,
        sender: cluster_ipc::Sender<ToWorker>,
        notify: mpsc::UnboundedSender<Internal>,
        tasks: &mut JoinSet<()>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Outgoing>(OUTBOX_CAPACITY);
        let id = id.clone();
        tasks.spawn(async move {
            while let Some(out) = rx.recv().await {
                protocol::SENT.fetch_add(1, Ordering::Relaxed);
                let result = sender.send_with_fds(&out.msg, out.fds).await;
                if let Err(e) = &result {
                    tracing::debug!("worker {id}: message not delivered: {e}");
                }
                let written = result.is_ok();
                if let Some(done) = out.done {
                    let _ = done.send(result.map_err(Into::into));
                }
                if let (Some(then), true) = (out.then, written) {
                    let _ = notify.send(then);
                }
            }
        });
        Outbox { tx }
    }

    /// Queues `out` without waiting; a refused message comes back (boxed: a refusal is
    /// rare, and the common `Ok` stays small).
    pub(crate) fn push(&self, out: Outgoing) -> Result<(), Box<(Refused, Outgoing)>> {
        self.tx.try_send(out).map_err(|e| {
            Box::new(match e {
                mpsc::error::TrySendError::Full(out) => (Refused::Full, out),
                mpsc::error::TrySendError::Closed(out) => (Refused::Closed, out),
            })
        })
    }

    /// Whether it holds [`OUTBOX_CAPACITY`] messages: the worker is not reading its channel.
    pub(crate) fn is_full(&self) -> bool {
        self.tx.capacity() == 0
    }

    /// Queues `msg` without waiting.
    pub(crate) fn send(&self, msg: ToWorker) -> Result<(), Refused> {
        self.push(Outgoing::new(msg)).map_err(|refused| refused.0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cluster_ipc::{Channel, Config};

    use super::*;
    use crate::protocol::ToMaster;

    fn id() -> WorkerId {
        WorkerId {
            group: "worker".into(),
            slot: 0,
            generation: 1,
        }
    }

    #[tokio::test]
    async fn a_worker_that_does_not_read_fills_its_outbox_and_the_caller_never_waits() {
        // A small frame buffer, so that the kernel's socket buffer fills quickly.
        let (ours, _theirs) = Channel::<ToWorker, ToMaster>::pair(Config::default())
            .await
            .unwrap();
        let (notify, _rx) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        let outbox = Outbox::start(&id(), ours.sender(), notify, &mut tasks);
        let big = ToWorker::User(vec![7; 64 * 1024]);
        let started = tokio::time::Instant::now();
        let mut refused = None;
        for _ in 0..OUTBOX_CAPACITY * 4 {
            if let Err(e) = outbox.send(big.clone()) {
                refused = Some(e);
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(refused, Some(Refused::Full));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn messages_arrive_in_order_and_then_is_reported_after_the_write() {
        let (ours, mut theirs) = Channel::<ToWorker, ToMaster>::pair(Config::default())
            .await
            .unwrap();
        let (notify, mut notified) = mpsc::unbounded_channel();
        let mut tasks = JoinSet::new();
        let outbox = Outbox::start(&id(), ours.sender(), notify, &mut tasks);
        for i in 0..10u8 {
            outbox.send(ToWorker::User(vec![i])).unwrap();
        }
        let mut last = Outgoing::new(ToWorker::Shutdown);
        last.then = Some(Internal::Listening {
            id: id(),
            listener: 3,
        });
        assert!(outbox.push(last).is_ok());
        for i in 0..10u8 {
            assert!(matches!(theirs.recv().await.unwrap(), Some(ToWorker::User(v)) if v == [i]));
        }
        assert!(matches!(
            theirs.recv().await.unwrap(),
            Some(ToWorker::Shutdown)
        ));
        assert!(matches!(
            notified.recv().await,
            Some(Internal::Listening { listener: 3, .. })
        ));
        drop(outbox);
        // The task ends once every handle is gone and the queue is written.
        tokio::time::timeout(Duration::from_secs(5), tasks.join_next())
            .await
            .unwrap();
    }
}
