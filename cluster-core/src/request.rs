//! A request that expects one answer, from either side of a channel.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::messaging::encode;
use crate::model::WorkerId;
use crate::protocol::{ToMaster, ToWorker};
use crate::supervisor::Command;
use crate::{Error, Result};

/// Where the answer to a [`Request`] goes.
pub(crate) enum ReplyTo {
    /// A worker answers the master over its channel.
    Master(cluster_ipc::Sender<ToMaster>),
    /// The master answers a worker through the supervisor: that very process, not whichever
    /// worker has its slot by then.
    Worker {
        to: WorkerId,
        commands: mpsc::UnboundedSender<Command>,
    },
}

/// A request that expects one answer of type `A`. Dropping it without answering makes the
/// asker time out.
pub struct Request<Q, A> {
    msg: Q,
    id: u64,
    reply: ReplyTo,
    _answer: PhantomData<fn(A)>,
}

impl<Q: fmt::Debug, A> fmt::Debug for Request<Q, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("msg", &self.msg)
            .finish()
    }
}

impl<Q, A> Request<Q, A> {
    pub(crate) fn new(msg: Q, id: u64, reply: ReplyTo) -> Self {
        Request {
            msg,
            id,
            reply,
            _answer: PhantomData,
        }
    }
}

impl<Q, A: Serialize> Request<Q, A> {
    /// The request's message.
    pub fn message(&self) -> &Q {
        &self.msg
    }

    /// Sends the answer. An answer that arrives after the asker's timeout is discarded there.
    ///
    /// # Errors
    ///
    /// - [`Codec`](crate::ErrorKind::Codec): `answer` cannot be encoded; nothing was sent.
    /// - [`Disconnected`](crate::ErrorKind::Disconnected): the asker is gone (in a worker: the
    ///   master; in the master: the asking worker's channel is closed, or the cluster has
    ///   stopped).
    /// - [`NoWorker`](crate::ErrorKind::NoWorker) (in the master): the asking worker has
    ///   exited (its successor in the slot never gets an answer meant for it), or its outbox
    ///   is full (it has not read its last 1,024 messages); nothing was sent.
    /// - [`Ipc`](crate::ErrorKind::Ipc): the answer is larger than the frame limit, or the
    ///   channel broke.
    ///
    /// # Cancel safety
    ///
    /// In a worker, cancel safe: the answer is queued whole or not at all, and once queued it
    /// is delivered unless the channel fails. In the master, once polled the answer is the
    /// supervisor's to send: dropping the future does not take it back, only the outcome is
    /// lost. Either way the request was consumed: a dropped future cannot answer again, and
    /// the asker times out if nothing was sent.
    pub async fn respond(self, answer: &A) -> Result<()> {
        let payload = encode(answer)?;
        match self.reply {
            ReplyTo::Master(sender) => Ok(sender
                .send(&ToMaster::Response {
                    id: self.id,
                    payload,
                })
                .await?),
            ReplyTo::Worker { to, commands } => {
                let (reply, done) = oneshot::channel();
                let msg = ToWorker::Response {
                    id: self.id,
                    payload,
                };
                commands
                    .send(Command::Answer { to, msg, reply })
                    .map_err(|_| Error::disconnected("supervisor"))?;
                done.await.map_err(|_| Error::disconnected("supervisor"))?
            }
        }
    }
}
