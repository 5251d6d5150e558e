//! A worker's link to the store (the master's side): one bounded queue of what it published
//! to the worker, one queue of answers (bounded by the worker's store credits), and a task of
//! the worker's own that writes both to its channel. The store's task only queues; a worker
//! that stops reading its channel stalls its own link and nobody else.

use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::server::{Answer, StoreHandle};
use super::subscribers::Push;
use crate::protocol::{self, ToWorker};

/// What the store's task needs to reach one worker.
pub(crate) struct WorkerLink {
    pub(crate) answers: mpsc::UnboundedSender<Answer>,
    pub(crate) pushes: mpsc::Sender<Push>,
}

impl WorkerLink {
    /// Starts the writer of one worker's store traffic to `sender`. It ends when the worker's
    /// channel closes or nothing can be queued for it any more.
    pub(crate) fn start(store: &StoreHandle, sender: cluster_ipc::Sender<ToWorker>) -> Self {
        let (answers, mut answers_rx) = mpsc::unbounded_channel::<Answer>();
        let (pushes, mut pushes_rx) = store.push_queue();
        tokio::spawn(async move {
            loop {
                // Answers first: a worker waits on each, while publications can lag.
                let (msg, credit) = tokio::select! {
                    biased;
                    Some(answer) = answers_rx.recv() => (
                        ToWorker::StoreAnswer { id: answer.id, reply: answer.reply },
                        Some(answer.credit),
                    ),
                    Some(push) = pushes_rx.recv() => (to_worker(push), None),
                    else => return,
                };
                protocol::SENT.fetch_add(1, Ordering::Relaxed);
                if sender.send(&msg).await.is_err() {
                    return;
                }
                // The worker's credit comes back once its answer is written, not queued.
                drop(credit);
            }
        });
        WorkerLink { answers, pushes }
    }
}

pub(crate) fn to_worker(push: Push) -> ToWorker {
    match push {
        Push::Message { topic, value } => ToWorker::StoreMessage { topic, value },
        Push::Lagged { topic, lost } => ToWorker::StoreLagged { topic, lost },
    }
}
