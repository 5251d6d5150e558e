//! The master's table of listening sockets: binds each address on the first worker's
//! `Listen` and keeps it for the cluster's life, answers every later `Listen` for the same
//! address, and puts workers in and out of each listener's rotation (`Dispatch`) and load
//! table.
//!
//! Apart from the accept loop in `dispatch` because this is the supervisor's view, called
//! from its loop as workers come and go, while `dispatch` runs on its own task per listener.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::handover::Handed;
use crate::model::WorkerId;
use crate::net::bind::{UnixSocketFile, bind_tcp, bind_unix};
use crate::net::dispatch::{Accepted, Dispatch, InFlightTable, Member, lock};
use crate::net::inherited::{Adopted, Found, Inherited};
use crate::net::sticky_key::KeyRules;
use crate::protocol::{Balance, ListenAddr, ListenerInfo, ToWorker};
use crate::violations::{Violation, Violations};

struct Bound {
    info: ListenerInfo,
    socket: Option<std::net::TcpListener>,
    unix: Option<UnixSocketFile>,
    dispatch: Option<Arc<Dispatch>>,
    /// With `Shared` over TCP: each worker's open connections, shared with the workers.
    load: Option<crate::net::load::LoadTable>,
}

/// The name of a socket a master bound itself, handed over in an upgrade (a socket it was
/// started with keeps its `LISTEN_FDNAMES` name).
const UPGRADE_NAME: &str = "upgrade";

/// Distinct addresses the master binds over its life. A listening socket is kept for the
/// cluster's life (so that restarts and reloads never close it), which is why a worker asking
/// for ever new addresses must meet a bound; no real service listens on this many.
pub(crate) const MAX_LISTENERS: usize = 64;

/// Addresses one worker process may have the master bind. With [`MAX_LISTENERS`] alone, one
/// worker asking for ever new addresses would use them all up, and its siblings' first
/// `listen` on the service's address would be refused.
pub(crate) const MAX_BINDS_PER_WORKER: usize = 16;

/// Every address the master has bound, by the address workers asked for.
pub(crate) struct MasterListeners {
    by_addr: HashMap<ListenAddr, u32>,
    bound: Vec<Bound>,
    in_flight: Arc<InFlightTable>,
    /// See `Options::accept_coalescing`.
    coalescing: Duration,
    /// See `Options::ack_timeout`.
    ack_timeout: Duration,
    /// Where `StickyKey` listeners find a connection's key (the `sticky_*` options).
    keys: Arc<KeyRules>,
    /// Addresses each live worker had the master bind.
    binds: HashMap<WorkerId, usize>,
    /// The sockets the master was started with (socket activation), taken instead of binding.
    inherited: Inherited,
}

impl MasterListeners {
    pub(crate) fn new(
        coalescing: Duration,
        ack_timeout: Duration,
        keys: KeyRules,
        violations: Arc<Violations>,
    ) -> Self {
        MasterListeners {
            by_addr: HashMap::new(),
            bound: Vec::new(),
            in_flight: Arc::new(InFlightTable::new(violations)),
            coalescing,
            ack_timeout,
            keys: Arc::new(keys),
            binds: HashMap::new(),
            inherited: Inherited::default(),
        }
    }

    /// Listens on `inherited` wherever a worker asks for an address one of them is bound to.
    pub(crate) fn set_inherited(&mut self, inherited: Inherited) {
        self.inherited = inherited;
    }

    /// Logs the inherited sockets no worker has asked for: a socket unit that names a port
    /// the app never listens on holds that port open for nothing.
    pub(crate) fn report_unclaimed(&self) {
        let unclaimed = self.inherited.unclaimed();
        if !unclaimed.is_empty() {
            crate::violations::notice!(
                warn,
                "the cluster is ready but no worker listens on {} of the sockets it was started with: {}; connections to them wait unanswered",
                unclaimed.len(),
                unclaimed.join(", ")
            );
        }
    }

    /// Binds `addr` (or reuses it) for worker `id`, which asked for it; returns what to answer and the descriptor
    /// to pass along (the listening socket, for `Shared`).
    pub(crate) fn listen(
        &mut self,
        id: &WorkerId,
        addr: ListenAddr,
        balance: Balance,
    ) -> Result<(ListenerInfo, Option<OwnedFd>), String> {
        let index = match self.by_addr.get(&addr) {
            Some(&index) => index,
            None => self.new_listener(id, &addr, balance)?,
        };
        let bound = &self.bound[index as usize];
        if matches!(addr, ListenAddr::Named(_)) && bound.unix.is_some() {
            return Err(format!(
                "{addr:?} is a Unix socket: listen on it with `listen_unix` and its path"
            ));
        }
        if bound.info.balance != balance {
            return Err(format!(
                "{addr:?} is already listened on with {:?}; every worker must ask for the same policy",
                bound.info.balance
            ));
        }
        let fd = match (&bound.socket, &bound.unix, balance) {
            // An inherited socket under `ReusePort`: workers accept from it as under `Shared`
            // (their own SO_REUSEPORT sockets could not join a socket the master did not
            // create with that option).
            (Some(socket), _, Balance::Shared | Balance::ReusePort) => {
                Some(socket.try_clone().map_err(|e| e.to_string())?.into())
            }
            (_, Some(socket), _) => Some(
                socket
                    .listener
                    .try_clone()
                    .map_err(|e| e.to_string())?
                    .into(),
            ),
            _ => None,
        };
        Ok((bound.info.clone(), fd))
    }

    /// The listener for `addr`, which no worker has asked for yet: an inherited socket's
    /// (adopted now, or already under another address or name), or a socket bound now.
    fn new_listener(
        &mut self,
        id: &WorkerId,
        addr: &ListenAddr,
        balance: Balance,
    ) -> Result<u32, String> {
        let binds = self.binds.get(id).copied().unwrap_or(0);
        let refusal = if binds >= MAX_BINDS_PER_WORKER {
            Some(format!(
                "this worker has had the master bind {MAX_BINDS_PER_WORKER} addresses, the most one worker may"
            ))
        } else if self.bound.len() >= MAX_LISTENERS {
            Some(format!(
                "the master already listens on {MAX_LISTENERS} addresses, the most it keeps"
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.in_flight.violations.record(
                Violation::Listeners,
                id,
                format_args!("asked to listen on {addr:?}, refused: {refusal}"),
            );
            return Err(format!("cannot listen on {addr:?}: {refusal}"));
        }
        let index =
            u32::try_from(self.bound.len()).map_err(|_| "too many listeners".to_string())?;
        let (at, adopted) = match self.inherited.find(addr)? {
            Found::Listener(index) => {
                self.by_addr.insert(addr.clone(), index);
                return Ok(index);
            }
            Found::Adopt(at, socket) => (Some(at), Some(socket)),
            Found::None => (None, None),
        };
        let bound = bind(
            index,
            addr,
            balance,
            adopted,
            self.in_flight.clone(),
            (self.coalescing, self.ack_timeout),
            &self.keys,
        )?;
        if let Some(at) = at {
            self.inherited.adopted_as(at, index);
        }
        self.bound.push(bound);
        self.by_addr.insert(addr.clone(), index);
        *self.binds.entry(id.clone()).or_default() += 1;
        Ok(index)
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
            st.members.push(Member::new(id.clone(), sender.clone()));
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

    /// Stops handing connections to `id` (it is stopping). The connections it was handed
    /// and has not acknowledged stay its own: it still reads its channel and serves them, and
    /// handing them to another worker too would serve one connection twice. They go
    /// elsewhere only if it exits without taking them ([`MasterListeners::gone`]).
    pub(crate) fn leave(&mut self, id: &WorkerId) {
        for bound in &mut self.bound {
            if let Some(dispatch) = &bound.dispatch {
                lock(&dispatch.state).members.retain(|m| m.id != *id);
            }
            if let Some(load) = &mut bound.load {
                load.leave(id);
            }
        }
    }

    /// Process `id` has exited: the connections it never acknowledged go to other workers
    /// (the copies passed to it died unread with its channel).
    pub(crate) fn gone(&mut self, id: &WorkerId) {
        self.leave(id);
        self.binds.remove(id);
        let orphans = self.in_flight.orphans_of(id);
        if orphans.is_empty() {
            return;
        }
        tracing::debug!(
            "{} unacknowledged connections of worker {id} go to other workers",
            orphans.len()
        );
        let mut by_listener: HashMap<u32, Vec<Accepted>> = HashMap::new();
        for orphan in orphans {
            by_listener.entry(orphan.listener).or_default().push((
                orphan.fd,
                orphan.peer,
                orphan.key,
            ));
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

    /// Every listening socket this master holds, for a new master to take over: a copy of
    /// each bound or adopted socket with the addresses workers asked for it as, and the
    /// inherited sockets no worker claimed yet, with their names.
    pub(crate) fn handover(&self) -> io::Result<Vec<(OwnedFd, Handed)>> {
        let mut handed = Vec::new();
        for (index, bound) in self.bound.iter().enumerate() {
            let fd: OwnedFd = match (&bound.socket, &bound.unix) {
                (Some(socket), _) => socket.try_clone()?.into(),
                (_, Some(unix)) => unix.listener.try_clone()?.into(),
                // `ReusePort` bound by each worker: nothing of the master's to hand.
                _ => continue,
            };
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let mut bound_as: Vec<ListenAddr> = self
                .by_addr
                .iter()
                .filter(|(_, i)| **i == index)
                .map(|(addr, _)| addr.clone())
                .collect();
            bound_as.sort_by_key(|addr| format!("{addr:?}"));
            let name = self
                .inherited
                .name_of(index)
                .unwrap_or(UPGRADE_NAME)
                .to_owned();
            handed.push((fd, Handed::Listener { bound_as, name }));
        }
        for (fd, name) in self.inherited.unclaimed_fds()? {
            handed.push((
                fd,
                Handed::Listener {
                    bound_as: Vec::new(),
                    name,
                },
            ));
        }
        Ok(handed)
    }

    /// A new master took the sockets over: the master-accept loops end (what they accepted
    /// still goes to this master's workers), and the Unix socket files are left to it.
    pub(crate) fn stop_accepting(&mut self) {
        for bound in &mut self.bound {
            if let Some(dispatch) = &bound.dispatch {
                dispatch.stop.cancel();
            }
            if let Some(unix) = &mut bound.unix {
                unix.keep_file();
            }
        }
    }

    /// After [`MasterListeners::stop_accepting`]: whether every accept loop has ended and
    /// every connection they accepted was taken by a worker (acknowledged), so that workers
    /// may drain without leaving one behind that no other worker of this master would take.
    pub(crate) fn quiet(&self) -> bool {
        let loops_ended = self
            .bound
            .iter()
            .filter_map(|b| b.dispatch.as_ref())
            .all(|d| d.stopped.load(std::sync::atomic::Ordering::Acquire));
        loops_ended && self.in_flight.len() == 0
    }

    /// Open connections worker `id` has across all listeners, for status.
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

/// Makes listener `index` for `addr`: of the inherited socket `adopted` if there is one, else
/// of a socket bound here.
fn bind(
    index: u32,
    addr: &ListenAddr,
    balance: Balance,
    adopted: Option<Adopted>,
    in_flight: Arc<InFlightTable>,
    timing: (Duration, Duration),
    keys: &Arc<KeyRules>,
) -> Result<Bound, String> {
    let describe = |e: io::Error| match e.kind() {
        io::ErrorKind::AddrInUse => format!("cannot listen on {addr:?}: address in use ({e})"),
        io::ErrorKind::PermissionDenied => {
            format!("cannot listen on {addr:?}: permission denied ({e})")
        }
        _ => format!("cannot listen on {addr:?}: {e}"),
    };
    let is_unix = matches!(
        (&adopted, addr),
        (Some(Adopted::Unix(_)), _) | (None, ListenAddr::Unix(_))
    );
    if is_unix && balance != Balance::Shared {
        return Err(format!(
            "Unix socket {addr:?} supports only the Shared policy, not {balance:?}"
        ));
    }
    let unix = match (adopted, addr) {
        (Some(Adopted::Tcp(socket)), _) => {
            return tcp_listener(index, addr, balance, socket, in_flight, timing, keys);
        }
        (Some(Adopted::Unix(listener)), _) => UnixSocketFile::inherited(listener),
        (None, ListenAddr::Unix(path)) => bind_unix(path).map_err(describe)?,
        (None, ListenAddr::Tcp(sock)) if balance == Balance::ReusePort => {
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
        (None, ListenAddr::Tcp(sock)) => {
            let socket = bind_tcp(*sock, false).map_err(describe)?;
            return tcp_listener(index, addr, balance, socket, in_flight, timing, keys);
        }
        // `Inherited::find` refuses a name it does not know before anything is bound.
        (None, ListenAddr::Named(name)) => {
            return Err(format!("no inherited socket is named {name:?}"));
        }
    };
    Ok(Bound {
        info: ListenerInfo {
            listener: index,
            local: None,
            balance,
        },
        socket: None,
        unix: Some(unix),
        dispatch: None,
        load: None,
    })
}

/// A listener of the TCP listening `socket` (bound here or inherited) under `balance`.
fn tcp_listener(
    index: u32,
    addr: &ListenAddr,
    balance: Balance,
    socket: std::net::TcpListener,
    in_flight: Arc<InFlightTable>,
    timing: (Duration, Duration),
    keys: &Arc<KeyRules>,
) -> Result<Bound, String> {
    let describe = |e: io::Error| format!("cannot listen on {addr:?}: {e}");
    let local = socket.local_addr().map_err(describe)?;
    if balance == Balance::ReusePort {
        // Only an inherited socket gets here: see `MasterListeners::listen`.
        return Ok(Bound {
            info: ListenerInfo {
                listener: index,
                local: Some(local),
                balance,
            },
            socket: Some(socket),
            unix: None,
            dispatch: None,
            load: None,
        });
    }
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
    if balance == Balance::StickyKey && !keys.has_source() {
        tracing::warn!(
            "{addr:?} listens with sticky-key but no sticky_cookie, sticky_header or sticky_proxy is set: every connection goes by load"
        );
    }
    let dispatch = Arc::new(Dispatch::new(
        index,
        balance,
        in_flight,
        timing,
        keys.clone(),
    ));
    tokio::spawn(dispatch.clone().accept_loop(accepting));
    Ok(Bound {
        info,
        socket: Some(socket),
        unix: None,
        dispatch: Some(dispatch),
        load: None,
    })
}

#[cfg(test)]
mod tests;
