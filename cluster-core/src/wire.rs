//! The master-worker protocol, for tests that play a misbehaving worker (the `testing`
//! feature). Not a stable API: the messages change with the crate, and a program that speaks
//! them by hand gets none of the worker runtime's guarantees. What it is for: a fixture that
//! takes a real worker's place in a real cluster and sends what a buggy or hostile worker
//! could (spoofed answers, floods, descriptors without frames), to show that the master
//! survives it.

use cluster_ipc::{Channel, Config};

use crate::model::WorkerId;
pub use crate::protocol::{ListenAddr, ListenerInfo, ToMaster, ToWorker};
use crate::{Error, ErrorKind, Result};

/// A worker's channel to its master, taken from the environment the master gave it.
pub struct RawWorker {
    id: WorkerId,
    boot: crate::worker::Boot,
}

impl RawWorker {
    /// Takes this worker's identity and channel, and removes the master's `CLUSTER_*`
    /// variables, as the worker runtime does. `None` in the master. Call it while the
    /// process has one thread (before any runtime starts): it edits the environment.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Bootstrap`] if the worker variables are set but unusable.
    pub fn take() -> Result<Option<RawWorker>> {
        match crate::identity::role()? {
            crate::Role::Master => Ok(None),
            crate::Role::Worker(id) => Ok(Some(RawWorker {
                id,
                boot: crate::worker::Boot::take()?,
            })),
        }
    }

    /// This worker's identity.
    #[must_use]
    pub fn id(&self) -> &WorkerId {
        &self.id
    }

    /// Completes the channel's handshake with the master; from then on the caller speaks for
    /// the worker.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Bootstrap`] if the handshake fails.
    pub async fn connect(self) -> Result<Channel<ToMaster, ToWorker>> {
        Channel::from_std(self.boot.into_stream(), Config::default())
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Bootstrap, "the handshake with the master failed")
                    .with_source(e)
            })
    }

    /// As [`RawWorker::connect`], with a second handle on the channel's socket, for writing
    /// what the channel itself never would: bytes outside its framing, descriptors that no
    /// frame announces. The socket is non-blocking (a write may fail with `WouldBlock`), and
    /// what is written through it lands between two of the channel's frames only if the
    /// channel was flushed and sends nothing meanwhile.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Bootstrap`] if the socket cannot be duplicated or the handshake fails.
    pub async fn connect_with_raw(
        self,
    ) -> Result<(Channel<ToMaster, ToWorker>, std::os::unix::net::UnixStream)> {
        let stream = self.boot.into_stream();
        let raw = stream.try_clone().map_err(|e| {
            Error::new(
                ErrorKind::Bootstrap,
                "cannot duplicate the channel's socket",
            )
            .with_source(e)
        })?;
        let channel = Channel::from_std(stream, Config::default())
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Bootstrap, "the handshake with the master failed")
                    .with_source(e)
            })?;
        Ok((channel, raw))
    }
}
