//! The master's table of listening sockets: binds each address on the first worker's
//! `Listen` and keeps it for the cluster's life, answers every later `Listen` for the same
//! address, and puts workers in and out of each listener's rotation (`Dispatch`) and load
//! table.
//!
//! Apart from the accept loop in `dispatch` because this is the supervisor's view, called
//! from its loop as workers come and go, while `dispatch` runs on its own task per listener.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::model::WorkerId;
use crate::net::bind::bind_tcp;
use crate::net::dispatch::{Dispatch, DispatchState, InFlightTable, Member, lock};
use crate::protocol::{Balance, ListenAddr, ListenerInfo, ToWorker};

struct Bound {
    info: ListenerInfo,
    socket: Option<std::net::TcpListener>,
    unix: Option<std::os::unix::net::UnixListener>,
    dispatch: Option<Arc<Dispatch>>,
    /// With `Shared` over TCP: each worker's open connections, shared with the workers.
    load: Option<crate::net::load::LoadTable>,
}

/// Every address the master has bound, by the address workers asked for.
#[derive(Default)]
pub(crate) struct MasterListeners {
    by_addr: HashMap<ListenAddr, u32>,
    bound: Vec<Bound>,
    in_flight: Arc<InFlightTable>,
    /// See `Options::accept_coalescing`.
    coalescing: Duration,
}

impl MasterListeners {
    pub(crate) fn new(coalescing: Duration) -> Self {
        MasterListeners {
            coalescing,
            ..MasterListeners::default()
        }
    }

    /// Binds `addr` (or reuses it) for worker `id`; returns what to answer and the descriptor
    /// to pass along (the listening socket, for `Shared`).
    pub(crate) fn listen(
        &mut self,
        addr: ListenAddr,
        balance: Balance,
    ) -> Result<(ListenerInfo, Option<OwnedFd>), String> {
        let index = match self.by_addr.get(&addr) {
            Some(&index) => index,
            None => {
                let index = u32::try_from(self.bound.len())
                    .map_err(|_| "too many listeners".to_string())?;
                let bound = bind(
                    index,
                    &addr,
                    balance,
                    self.in_flight.clone(),
                    self.coalescing,
                )?;
                self.bound.push(bound);
                self.by_addr.insert(addr.clone(), index);
                index
            }
        };
        let bound = &self.bound[index as usize];
        if bound.info.balance != balance {
            return Err(format!(
                "{addr:?} is already listened on with {:?}; every worker must ask for the same policy",
                bound.info.balance
            ));
        }
        let fd = match (&bound.socket, &bound.unix, balance) {
            (Some(socket), _, Balance::Shared) => {
                Some(socket.try_clone().map_err(|e| e.to_string())?.into())
            }
            (_, Some(socket), _) => Some(socket.try_clone().map_err(|e| e.to_string())?.into()),
            _ => None,
        };
        Ok((bound.info.clone(), fd))
    }

    /// Puts worker `id` in the rotation of master-accepted `listener`. Called only once the
    /// worker's answer to its listen is queued: a connection handed before it would reach a
    /// worker that has no queue for that listener yet.
    pub(crate) fn join(
        &mut self,
        listener: u32,
        id: &WorkerId,
        sender: &cluster_ipc::Sender<ToWorker>,
    ) {
        let Some(dispatch) = self
            .bound
            .get(listener as usize)
            .and_then(|b| b.dispatch.clone())
        else {
            return;
        };
        let mut st = lock(&dispatch.state);
        if !st.members.iter().any(|m| m.id == *id) {
            st.members.push(Member {
                id: id.clone(),
                sender: sender.clone(),
                open: 0,
            });
        }
        let waiting: Vec<_> = st.waiting.drain(..).collect();
        drop(st);
        dispatch.joined.notify_waiters();
        if !waiting.is_empty() {
            tokio::spawn(async move { dispatch.hand_out(waiting).await });
        }
    }

    /// The message and descriptor that give worker `id` its entry in `listener`'s load
    /// table, for a `Shared` listener that has one.
    pub(crate) fn load_share(
        &mut self,
        listener: u32,
        id: &WorkerId,
    ) -> Option<(ToWorker, OwnedFd)> {
        let table = self.bound.get_mut(listener as usize)?.load.as_mut()?;
        let (index, tag, fd) = table.join(id)?;
        Some((
            ToWorker::LoadShare {
                listener,
                index,
                tag,
            },
            fd,
        ))
    }

    /// Stops handing connections to `id` (it is stopping or gone); connections it had not
    /// acknowledged go to other workers.
    pub(crate) fn remove(&mut self, id: &WorkerId) {
        for bound in &mut self.bound {
            if let Some(dispatch) = &bound.dispatch {
                lock(&dispatch.state).members.retain(|m| m.id != *id);
            }
            if let Some(load) = &mut bound.load {
                load.leave(id);
            }
        }
        let orphans = self.in_flight.orphans_of(id);
        if orphans.is_empty() {
            return;
        }
        tracing::debug!(
            "{} unacknowledged connections of worker {id} go to other workers",
            orphans.len()
        );
        let mut by_listener: HashMap<u32, Vec<(OwnedFd, SocketAddr)>> = HashMap::new();
        for orphan in orphans {
            by_listener
                .entry(orphan.listener)
                .or_default()
                .push((orphan.fd, orphan.peer));
        }
        for (listener, batch) in by_listener {
            let dispatch = self
                .bound
                .get(listener as usize)
                .and_then(|b| b.dispatch.clone());
            if let Some(dispatch) = dispatch {
                tokio::spawn(async move { dispatch.hand_out(batch).await });
            }
        }
    }

    /// The table of unacknowledged connections, for the tasks that read workers' channels.
    pub(crate) fn in_flight(&self) -> Arc<InFlightTable> {
        self.in_flight.clone()
    }

    /// Worker `id` closed a connection of `listener`.
    pub(crate) fn closed(&mut self, id: &WorkerId, listener: u32) {
        if let Some(dispatch) = self
            .bound
            .get(listener as usize)
            .and_then(|b| b.dispatch.as_ref())
        {
            let mut st = lock(&dispatch.state);
            if let Some(m) = st.members.iter_mut().find(|m| m.id == *id) {
                m.open = m.open.saturating_sub(1);
            }
        }
    }

    /// Open connections each worker has, by listener, for status.
    pub(crate) fn open_connections(&self, id: &WorkerId) -> usize {
        self.bound
            .iter()
            .filter_map(|b| b.dispatch.as_ref())
            .map(|d| {
                lock(&d.state)
                    .members
                    .iter()
                    .filter(|m| m.id == *id)
                    .map(|m| m.open)
                    .sum::<usize>()
            })
            .sum()
    }
}

fn bind(
    index: u32,
    addr: &ListenAddr,
    balance: Balance,
    in_flight: Arc<InFlightTable>,
    coalescing: Duration,
) -> Result<Bound, String> {
    let describe = |e: io::Error| match e.kind() {
        io::ErrorKind::AddrInUse => format!("cannot listen on {addr:?}: address in use ({e})"),
        io::ErrorKind::PermissionDenied => {
            format!("cannot listen on {addr:?}: permission denied ({e})")
        }
        _ => format!("cannot listen on {addr:?}: {e}"),
    };
    match addr {
        ListenAddr::Tcp(sock) => {
            if balance == Balance::ReusePort {
                // Each worker binds its own socket; the master only hands out the address.
                return Ok(Bound {
                    info: ListenerInfo {
                        listener: index,
                        local: Some(*sock),
                        balance,
                    },
                    socket: None,
                    unix: None,
                    dispatch: None,
                    load: None,
                });
            }
            let socket = bind_tcp(*sock, false).map_err(describe)?;
            let local = socket.local_addr().map_err(describe)?;
            let info = ListenerInfo {
                listener: index,
                local: Some(local),
                balance,
            };
            if balance == Balance::Shared {
                // Without the table workers still share the queue, only less evenly.
                let load = crate::net::load::LoadTable::new()
                    .map_err(|e| tracing::warn!("no load table for {addr:?}: {e}"))
                    .ok();
                return Ok(Bound {
                    info,
                    socket: Some(socket),
                    unix: None,
                    dispatch: None,
                    load,
                });
            }
            let accepting = socket.try_clone().map_err(describe)?;
            let dispatch = Arc::new(Dispatch {
                listener: index,
                balance,
                state: Mutex::new(DispatchState::default()),
                in_flight,
                joined: Notify::new(),
                coalescing,
            });
            tokio::spawn(dispatch.clone().accept_loop(accepting));
            Ok(Bound {
                info,
                socket: Some(socket),
                unix: None,
                dispatch: Some(dispatch),
                load: None,
            })
        }
        ListenAddr::Unix(path) => {
            if balance != Balance::Shared {
                return Err(format!(
                    "Unix socket {} supports only the Shared policy, not {balance:?}",
                    path.display()
                ));
            }
            let socket = std::os::unix::net::UnixListener::bind(path).map_err(describe)?;
            socket.set_nonblocking(true).map_err(describe)?;
            Ok(Bound {
                info: ListenerInfo {
                    listener: index,
                    local: None,
                    balance,
                },
                socket: None,
                unix: Some(socket),
                dispatch: None,
                load: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_ipc::{Channel, Config};
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    use crate::protocol::ToMaster;

    /// Bound on any wait that should be quick.
    const STEP: Duration = Duration::from_secs(5);

    /// A round-robin listener with one member, whose end of the channel the test reads as
    /// the worker would.
    async fn one_member(
        coalescing: Duration,
    ) -> (MasterListeners, SocketAddr, cluster_ipc::Receiver<ToWorker>) {
        let (master, worker) = Channel::<ToWorker, ToMaster>::pair(Config::default())
            .await
            .unwrap();
        let (sender, _) = master.split();
        let (_, receiver) = worker.split();
        let mut listeners = MasterListeners::new(coalescing);
        let addr = ListenAddr::Tcp("127.0.0.1:0".parse().unwrap());
        let (info, _) = listeners.listen(addr, Balance::RoundRobin).unwrap();
        let id = WorkerId {
            group: "default".into(),
            slot: 0,
            generation: 1,
        };
        listeners.join(info.listener, &id, &sender);
        (listeners, info.local.unwrap(), receiver)
    }

    /// The connections one message hands over.
    async fn next_handed(rx: &mut cluster_ipc::Receiver<ToWorker>) -> usize {
        let (msg, fds) = tokio::time::timeout(STEP, rx.recv_with_fds())
            .await
            .expect("a message within the bound")
            .unwrap()
            .expect("the channel is open");
        let conns = match msg {
            ToWorker::Connection { .. } => 1,
            ToWorker::Connections { conns, .. } => conns.len(),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(fds.len(), conns);
        conns
    }

    #[tokio::test]
    async fn an_idle_listener_hands_out_at_once_and_a_busy_one_in_rounds() {
        let window = Duration::from_millis(100);
        let (_listeners, addr, mut rx) = one_member(window).await;
        let mut clients = Vec::new();

        let start = Instant::now();
        clients.push(TcpStream::connect(addr).await.unwrap());
        assert_eq!(next_handed(&mut rx).await, 1);
        assert!(
            start.elapsed() < window / 2,
            "a connection to an idle listener waited {:?}",
            start.elapsed()
        );

        // Within the window of that round: the next ones wait for the next round, together.
        for _ in 0..5 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        assert_eq!(next_handed(&mut rx).await, 5);
        assert!(start.elapsed() >= window, "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn without_coalescing_a_connection_never_waits_for_a_round() {
        let (_listeners, addr, mut rx) = one_member(Duration::ZERO).await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            clients.push(TcpStream::connect(addr).await.unwrap());
            assert_eq!(next_handed(&mut rx).await, 1);
            assert!(
                start.elapsed() < Duration::from_millis(50),
                "{:?}",
                start.elapsed()
            );
        }
    }
}
