//! The client's side of the control socket, for `clusterctl` (and for a master that finds a
//! live socket at its path and asks who holds it).

use std::path::{Path, PathBuf};

use cluster_ipc::{Channel, Receiver, Sender};
use tokio::net::UnixStream;

use super::config;
use super::path::{default_dir, socket_in};
use super::protocol::{CONTROL_VERSION, Request, Response};

/// Why talking to a master failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The channel failed (a garbled frame, a version or codec mismatch, an I/O error).
    #[error("control channel: {0}")]
    Channel(#[from] cluster_ipc::Error),
    /// The master refused.
    #[error("{0}")]
    Refused(String),
    /// The master closed the connection.
    #[error("the master closed the connection")]
    Closed,
    /// The master answered something this client did not ask for.
    #[error("unexpected answer from the master: {0:?}")]
    Unexpected(Box<Response>),
}

/// A connection to a master's control socket, past its hello.
pub struct Client {
    tx: Sender<Request>,
    rx: Receiver<Response>,
    pid: u32,
    name: String,
    version: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("pid", &self.pid)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the socket at `path` and says hello.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] when nothing listens there; [`ClientError::Refused`] when the
    /// master refuses this user; a channel error when the peer does not speak the protocol.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.to_owned(),
                source,
            })?;
        Client::on_stream(stream).await
    }

    /// The hello on a connected stream.
    pub(crate) async fn on_stream(stream: UnixStream) -> Result<Client, ClientError> {
        let channel = Channel::<Request, Response>::handshake(stream, config()).await?;
        let (tx, mut rx) = channel.split();
        tx.send(&Request::Hello {
            version: CONTROL_VERSION,
        })
        .await?;
        match rx.recv().await? {
            Some(Response::Hello { version, pid, name }) => Ok(Client {
                tx,
                rx,
                pid,
                name,
                version,
            }),
            Some(Response::Refused(why)) => Err(ClientError::Refused(why)),
            Some(other) => Err(ClientError::Unexpected(Box::new(other))),
            None => Err(ClientError::Closed),
        }
    }

    /// The master's pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The cluster's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The master's protocol version.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Sends `request` and reads the first answer; a [`Response::Refused`] is an error.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.tx.send(request).await?;
        match self.next().await? {
            Some(Response::Refused(why)) => Err(ClientError::Refused(why)),
            Some(response) => Ok(response),
            None => Err(ClientError::Closed),
        }
    }

    /// Sends `request` without reading any answer (read them with [`Client::next`]).
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        self.tx.send(request).await?;
        Ok(())
    }

    /// The next answer (a reload's progress, log lines), or `None` once the master has closed the
    /// connection (after `stop`, when it has exited).
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn next(&mut self) -> Result<Option<Response>, ClientError> {
        Ok(self.rx.recv().await?)
    }
}

/// The socket to talk to: `path` if given, else the one of the cluster named `name` in the
/// default directory, else the only live socket there.
///
/// # Errors
///
/// Says where it looked when there is no socket, or which clusters there are when there are
/// several.
pub fn find(name: Option<&str>, path: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = path {
        return Ok(path.to_owned());
    }
    let dir = default_dir();
    if let Some(name) = name {
        return Ok(socket_in(&dir, name));
    }
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| format!("no cluster found: cannot read {}: {e}", dir.display()))?;
    let mut live: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        // A stale socket of a killed master refuses connections.
        .filter(|p| std::os::unix::net::UnixStream::connect(p).is_ok())
        .collect();
    live.sort();
    match live.len() {
        1 => Ok(live.remove(0)),
        0 => Err(format!(
            "no cluster is running (no live socket in {}); name one with -n NAME or -s PATH",
            dir.display()
        )),
        _ => {
            let names: Vec<String> = live
                .iter()
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect();
            Err(format!(
                "several clusters are running ({}); choose one with -n NAME",
                names.join(", ")
            ))
        }
    }
}
