//! Shared server ports: the master binds each address once and keeps the socket for the
//! cluster's whole life, so a worker that dies or is replaced never closes the port.
//!
//! With [`Balance::Shared`] the master passes the listening socket itself and every worker
//! accepts from its one kernel queue. With the master-accept policies (`RoundRobin`,
//! `LeastConnections`, `Sticky`) the master accepts and hands each connection's descriptor
//! to a worker; it keeps its own copy until the worker acknowledges it, so a connection
//! handed to a worker that dies first goes to another worker instead of hanging unanswered.
//! With `ReusePort` each worker binds its own socket and the master is not involved.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::model::WorkerId;
use crate::net::load::LoadShare;
use crate::protocol::{Balance, ListenAddr, ListenerInfo, ToMaster, ToWorker};

/// Connections waiting for a ready worker beyond this many stay in the kernel's queue.
const MAX_WAITING: usize = 1024;
/// Connections taken from the kernel's queue per wake-up of the accept loop.
const ACCEPT_BATCH: usize = 64;
/// Connections per message to a worker: well under the descriptors a channel takes per frame.
const MAX_PARCEL: usize = 32;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Binds a TCP listening socket the way servers expect: SO_REUSEADDR (a restarted master can
/// rebind at once), a deep backlog, non-blocking, CLOEXEC.
pub(crate) fn bind_tcp(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

// ---------------------------------------------------------------------------------------
// Master side
// ---------------------------------------------------------------------------------------

/// A worker that receives connections of one listener.
struct Member {
    id: WorkerId,
    sender: cluster_ipc::Sender<ToWorker>,
    /// Connections handed out and not yet reported closed.
    open: usize,
}

/// A connection handed to a worker that has not acknowledged it yet.
struct InFlight {
    fd: OwnedFd,
    peer: SocketAddr,
    to: WorkerId,
    listener: u32,
}

/// Every connection the master handed out and the worker has not acknowledged, across all
/// listeners. Shared with the tasks that read each worker's channel, which forget a
/// connection as soon as its acknowledgement arrives, without a trip through the supervisor.
#[derive(Default)]
pub(crate) struct InFlightTable {
    next_conn: std::sync::atomic::AtomicU64,
    map: Mutex<HashMap<u64, InFlight>>,
}

impl InFlightTable {
    /// The worker took connection `conn`: close the master's copy.
    pub(crate) fn ack(&self, conn: u64) {
        let taken = lock(&self.map).remove(&conn);
        drop(taken);
    }

    fn insert(&self, flight: InFlight) -> u64 {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        lock(&self.map).insert(conn, flight);
        conn
    }

    fn take(&self, conn: u64) -> Option<InFlight> {
        lock(&self.map).remove(&conn)
    }

    /// Takes back every connection handed to `id` and not acknowledged.
    fn orphans_of(&self, id: &WorkerId) -> Vec<InFlight> {
        let mut map = lock(&self.map);
        let lost: Vec<u64> = map
            .iter()
            .filter(|(_, f)| f.to == *id)
            .map(|(c, _)| *c)
            .collect();
        lost.into_iter().filter_map(|c| map.remove(&c)).collect()
    }
}

/// Connections on their way to one worker, with the descriptors the worker gets.
struct Parcel {
    to: WorkerId,
    sender: cluster_ipc::Sender<ToWorker>,
    /// Connection id and client address, in the order of `fds`.
    conns: Vec<(u64, Option<SocketAddr>)>,
    fds: Vec<OwnedFd>,
}

impl Parcel {
    /// Sends the parcel: a lone connection as `Connection`, which every worker understands
    /// (an older master's workers included), several as one `Connections`.
    async fn send(&mut self, listener: u32) -> Result<(), cluster_ipc::Error> {
        let fds = std::mem::take(&mut self.fds);
        let msg = match self.conns.as_slice() {
            [(conn, peer)] => ToWorker::Connection {
                listener,
                conn: *conn,
                peer: *peer,
            },
            conns => ToWorker::Connections {
                listener,
                conns: conns.to_vec(),
            },
        };
        self.sender.send_with_fds(&msg, fds).await
    }
}

#[derive(Default)]
struct DispatchState {
    members: Vec<Member>,
    next: usize,
    /// Accepted while no worker was ready.
    waiting: VecDeque<(OwnedFd, SocketAddr)>,
}

/// The master's accept loop and worker set for one master-accept listener.
struct Dispatch {
    listener: u32,
    balance: Balance,
    state: Mutex<DispatchState>,
    in_flight: Arc<InFlightTable>,
    /// Wakes the accept loop when a worker joins and the waiting queue can drain.
    joined: Notify,
    /// See `Options::accept_coalescing`.
    coalescing: Duration,
}

impl Dispatch {
    /// Picks the worker for a connection from `peer`.
    fn pick(&self, st: &mut DispatchState, peer: &SocketAddr) -> Option<usize> {
        if st.members.is_empty() {
            return None;
        }
        Some(match self.balance {
            Balance::LeastConnections => {
                // Ties go round-robin, so idle workers share new connections evenly.
                let n = st.members.len();
                let start = st.next % n;
                let best = (0..n)
                    .map(|k| (start + k) % n)
                    .min_by_key(|&i| st.members[i].open)
                    .unwrap_or(start);
                st.next = best + 1;
                best
            }
            Balance::Sticky => {
                // Rendezvous hashing on (client IP, slot): an IP keeps its worker slot while
                // that slot is in the set; removing a slot moves only that slot's IPs.
                let ip = peer.ip();
                (0..st.members.len())
                    .max_by_key(|&i| {
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        ip.hash(&mut h);
                        st.members[i].id.key().hash(&mut h);
                        h.finish()
                    })
                    .unwrap_or(0)
            }
            _ => {
                let i = st.next % st.members.len();
                st.next = i + 1;
                i
            }
        })
    }

    /// Hands connections to workers, retrying on another worker when a send fails; a
    /// connection with no worker to go to waits for one. The connections picked for the same
    /// worker leave in one message with their descriptors, so a burst of accepts costs each
    /// worker one `sendmsg` and one wake-up, not one per connection.
    async fn hand_out(self: &Arc<Self>, batch: Vec<(OwnedFd, SocketAddr)>) {
        let mut pending = batch;
        while !pending.is_empty() {
            let mut parcels = self.pack(std::mem::take(&mut pending));
            for parcel in &mut parcels {
                if parcel.send(self.listener).await.is_ok() {
                    crate::protocol::SENT.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // The worker is gone: take its connections back for another worker.
                lock(&self.state).members.retain(|m| m.id != parcel.to);
                for conn in parcel.conns.drain(..) {
                    if let Some(back) = self.in_flight.take(conn.0) {
                        pending.push((back.fd, back.peer));
                    }
                }
            }
        }
    }

    /// Picks a worker for each connection and records it as in flight: one parcel per worker,
    /// of at most [`MAX_PARCEL`] connections. Connections with no worker to go to wait.
    fn pack(&self, batch: Vec<(OwnedFd, SocketAddr)>) -> Vec<Parcel> {
        let mut parcels: Vec<Parcel> = Vec::new();
        let mut st = lock(&self.state);
        for (fd, peer) in batch {
            let Some(i) = self.pick(&mut st, &peer) else {
                st.waiting.push_back((fd, peer));
                continue;
            };
            // The master keeps the accepted descriptor until the worker acknowledges it; the
            // worker gets a duplicate.
            let copy = match fd.try_clone() {
                Ok(copy) => copy,
                Err(e) => {
                    tracing::warn!("cannot duplicate an accepted connection: {e}");
                    continue;
                }
            };
            let member = &mut st.members[i];
            member.open += 1;
            let conn = self.in_flight.insert(InFlight {
                fd,
                peer,
                to: member.id.clone(),
                listener: self.listener,
            });
            let open = parcels
                .iter()
                .position(|p| p.to == member.id && p.conns.len() < MAX_PARCEL);
            let parcel = match open {
                Some(k) => &mut parcels[k],
                None => {
                    parcels.push(Parcel {
                        to: member.id.clone(),
                        sender: member.sender.clone(),
                        conns: Vec::new(),
                        fds: Vec::new(),
                    });
                    let last = parcels.len() - 1;
                    &mut parcels[last]
                }
            };
            parcel.conns.push((conn, Some(peer)));
            parcel.fds.push(copy);
        }
        parcels
    }

    /// Accepts with a raw non-blocking `accept(2)` on the listening socket: the master only
    /// forwards these sockets, so registering each with tokio's reactor (and deregistering it
    /// again) would be two wasted syscalls per connection. Every connection already queued is
    /// taken in one wake-up.
    ///
    /// Under load, rounds are at least `coalescing` apart: waking for every connection as it
    /// arrives cost the master, and each worker it handed to, a context switch per
    /// connection, which on a 2-core machine was most of what the master-accept policies
    /// paid over workers accepting themselves. A connection after a quiet spell goes out at
    /// once; a full round goes on at once too, since the queue is known not to be empty.
    async fn accept_loop(self: Arc<Self>, listener: std::net::TcpListener) {
        let listener = match crate::sys::watch_listener(listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!("cannot watch listener {}: {e}", self.listener);
                return;
            }
        };
        let mut batch = Vec::new();
        let mut last_round: Option<Instant> = None;
        loop {
            // Leave connections in the kernel's queue while too many wait for a worker.
            loop {
                let joined = self.joined.notified();
                if lock(&self.state).waiting.len() < MAX_WAITING {
                    break;
                }
                joined.await;
            }
            let mut ready = match listener.readable().await {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::warn!("listener {} failed: {e}", self.listener);
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            if let Some(due) = last_round.map(|at| at + self.coalescing) {
                if Instant::now() < due {
                    tokio::time::sleep_until(due).await;
                }
            }
            let mut failed = false;
            while batch.len() < ACCEPT_BATCH {
                match socket2::SockRef::from(listener.get_ref()).accept() {
                    Ok((socket, addr)) => {
                        if let Some(peer) = addr.as_socket() {
                            batch.push((OwnedFd::from(socket), peer));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        ready.clear_ready();
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        failed = true;
                        break;
                    }
                }
            }
            drop(ready);
            last_round = match batch.len() {
                0 => last_round,
                ACCEPT_BATCH => None,
                _ => Some(Instant::now()),
            };
            if !batch.is_empty() {
                self.hand_out(std::mem::take(&mut batch)).await;
            }
            if failed {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

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

// ---------------------------------------------------------------------------------------
// Worker side
// ---------------------------------------------------------------------------------------

/// A connection handed over by the master, with the descriptor and the peer address.
pub(crate) struct Handed {
    pub(crate) stream: TcpStream,
    pub(crate) peer: SocketAddr,
}

/// Where a worker's listener gets its connections.
enum Source {
    /// A socket of its own (`Shared`: the master's, passed over; `ReusePort`: bound here).
    Socket(tokio::net::TcpListener),
    /// Handed over one by one by the master.
    Handed {
        queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<Handed>>,
        closes: mpsc::UnboundedSender<u32>,
    },
}

/// A listening address shared with the rest of the cluster. Serve it as you would a tokio
/// `TcpListener`: `accept()` in a loop.
pub struct Listener {
    id: u32,
    local: Option<SocketAddr>,
    balance: Balance,
    source: Source,
    /// The worker's count of open connections, reported with its heartbeats.
    live: Arc<AtomicUsize>,
    /// With `Shared`: this worker's entry in the master's load table, once it has come.
    load: Option<Arc<OnceLock<LoadShare>>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .field("balance", &self.balance)
            .finish_non_exhaustive()
    }
}

impl Listener {
    pub(crate) fn socket(
        id: u32,
        local: Option<SocketAddr>,
        balance: Balance,
        socket: tokio::net::TcpListener,
        live: Arc<AtomicUsize>,
        load: Option<Arc<OnceLock<LoadShare>>>,
    ) -> Self {
        Listener {
            id,
            local,
            balance,
            source: Source::Socket(socket),
            live,
            load,
        }
    }

    pub(crate) fn handed(
        id: u32,
        local: Option<SocketAddr>,
        balance: Balance,
        queue: mpsc::UnboundedReceiver<Handed>,
        closes: mpsc::UnboundedSender<u32>,
        live: Arc<AtomicUsize>,
    ) -> Self {
        Listener {
            id,
            local,
            balance,
            source: Source::Handed {
                queue: tokio::sync::Mutex::new(queue),
                closes,
            },
            live,
            load: None,
        }
    }

    /// The address the cluster listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.source {
            Source::Socket(socket) => socket.local_addr(),
            Source::Handed { .. } => self
                .local
                .ok_or_else(|| io::Error::other("no local address")),
        }
    }

    /// The load-balancing policy in force.
    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// This worker's entry in the load table, once the master has sent it (`Shared`).
    fn load_share(&self) -> Option<&LoadShare> {
        self.load.as_deref().and_then(OnceLock::get)
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<(Connection, SocketAddr)> {
        match &self.source {
            Source::Socket(socket) => {
                // Above its share, a worker lets the others take what arrives meanwhile.
                for _ in 0..crate::net::load::MAX_HOLDS {
                    if !self.load_share().is_some_and(LoadShare::over_share) {
                        break;
                    }
                    tokio::time::sleep(crate::net::load::HOLD).await;
                }
                let (stream, peer) = socket.accept().await?;
                Ok((self.connection(stream, None), peer))
            }
            Source::Handed { queue, closes } => match queue.lock().await.recv().await {
                Some(handed) => Ok(self.wrap(handed, closes)),
                None => Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the master is gone",
                )),
            },
        }
    }

    /// Takes a connection that is already waiting, without waiting: a draining server serves
    /// what is queued instead of resetting it.
    pub fn try_accept(&self) -> Option<io::Result<(Connection, SocketAddr)>> {
        match &self.source {
            Source::Socket(socket) => {
                // Straight to the kernel with a non-blocking accept: tokio's cached readiness
                // can lag behind connections that are already queued.
                let accepted = socket2::SockRef::from(socket)
                    .accept()
                    .and_then(|(sock, peer)| {
                        let stream = std::net::TcpStream::from(sock);
                        stream.set_nonblocking(true)?;
                        let peer = peer
                            .as_socket()
                            .ok_or_else(|| io::Error::other("not an IP peer"))?;
                        Ok((TcpStream::from_std(stream)?, peer))
                    });
                match accepted {
                    Ok((stream, peer)) => Some(Ok((self.connection(stream, None), peer))),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                    Err(e) => Some(Err(e)),
                }
            }
            Source::Handed { queue, closes } => {
                let mut queue = queue.try_lock().ok()?;
                queue
                    .try_recv()
                    .ok()
                    .map(|handed| Ok(self.wrap(handed, closes)))
            }
        }
    }

    fn wrap(
        &self,
        handed: Handed,
        closes: &mpsc::UnboundedSender<u32>,
    ) -> (Connection, SocketAddr) {
        let close = (self.balance == Balance::LeastConnections).then(|| (self.id, closes.clone()));
        (self.connection(handed.stream, close), handed.peer)
    }

    fn connection(
        &self,
        stream: TcpStream,
        close: Option<(u32, mpsc::UnboundedSender<u32>)>,
    ) -> Connection {
        self.live.fetch_add(1, Ordering::Relaxed);
        // Counted only if the table had come when it opened, so that its close matches.
        let load = self.load.clone().filter(|l| l.get().is_some());
        if let Some(share) = load.as_deref().and_then(OnceLock::get) {
            share.opened();
        }
        Connection {
            stream,
            close,
            live: self.live.clone(),
            load,
        }
    }
}

/// An accepted connection: a `TcpStream` that, for `LeastConnections`, tells the master when
/// it closes.
pub struct Connection {
    stream: TcpStream,
    close: Option<(u32, mpsc::UnboundedSender<u32>)>,
    live: Arc<AtomicUsize>,
    /// Counted in the load table (`Shared`).
    load: Option<Arc<OnceLock<LoadShare>>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("stream", &self.stream)
            .finish()
    }
}

impl Connection {
    /// The underlying stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
        if let Some(share) = self.load.as_deref().and_then(OnceLock::get) {
            share.closed();
        }
        if let Some((listener, closes)) = self.close.take() {
            let _ = closes.send(listener);
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The worker's table of listeners the master hands connections for, and of the load tables
/// of its `Shared` listeners.
#[derive(Default)]
pub(crate) struct WorkerListeners {
    queues: Mutex<HashMap<u32, mpsc::UnboundedSender<Handed>>>,
    loads: Mutex<HashMap<u32, Arc<OnceLock<LoadShare>>>>,
}

impl WorkerListeners {
    /// Where `listener`'s load entry goes once the master sends it.
    pub(crate) fn load_slot(&self, listener: u32) -> Arc<OnceLock<LoadShare>> {
        lock(&self.loads).entry(listener).or_default().clone()
    }

    pub(crate) fn register(&self, listener: u32) -> mpsc::UnboundedReceiver<Handed> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.queues).insert(listener, tx);
        rx
    }

    /// Queues a handed connection for its listener; false if nobody listens for it.
    pub(crate) fn deliver(&self, listener: u32, handed: Handed) -> bool {
        lock(&self.queues)
            .get(&listener)
            .is_some_and(|q| q.send(handed).is_ok())
    }
}

/// Reports closes for `LeastConnections` to the master.
pub(crate) async fn report_closes(
    mut closes: mpsc::UnboundedReceiver<u32>,
    sender: cluster_ipc::Sender<ToMaster>,
) {
    while let Some(listener) = closes.recv().await {
        if sender.send(&ToMaster::Closed { listener }).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_ipc::{Channel, Config};

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
