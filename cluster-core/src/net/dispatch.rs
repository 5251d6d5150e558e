//! The master's side of one master-accept listener (`RoundRobin`, `LeastConnections`,
//! `Sticky`, `StickyKey`): the accept loop, the choice of a worker, the hand-out of descriptors in
//! parcels, and [`InFlightTable`], the connections handed out and not yet acknowledged.
//!
//! Apart from `MasterListeners`, which binds addresses and decides which listeners get a
//! `Dispatch`, because this is the hot path: the code that runs for every connection, with
//! its own batching and timing rules.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::sticky_key::KeyRules;
use crate::model::WorkerId;
use crate::protocol::{Balance, ToWorker};
use crate::violations::{Violation, Violations};

/// Connections whose first bytes `StickyKey` reads at once; past this many, new connections
/// go out at once without a key (by load), so that silent clients cannot hold the master's
/// descriptors without bound.
const MAX_PEEKING: usize = 1024;
/// Connections waiting for a ready worker beyond this many stay in the kernel's queue.
const MAX_WAITING: usize = 1024;
/// Connections handed out and not acknowledged, across all listeners, beyond which the
/// accept loops leave new ones in the kernel's queue. The master keeps a descriptor for each
/// until its worker acknowledges it.
pub(crate) const MAX_IN_FLIGHT: usize = 4096;
/// Connections taken from the kernel's queue per wake-up of the accept loop.
const ACCEPT_BATCH: usize = 64;
/// Connections per message to a worker: well under the descriptors a channel takes per frame.
const MAX_PARCEL: usize = 32;
/// How long a hand-out waits for room in a worker's channel. A worker that reads its
/// channel makes room in microseconds; the accept loop must not wait longer than this for
/// one that does not, since every other worker of the listener waits with it. The send is
/// cancel safe: the parcel is queued whole or not at all, and comes back for another worker.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A worker that receives connections of one listener.
pub(super) struct Member {
    pub(super) id: WorkerId,
    pub(super) sender: cluster_ipc::Sender<ToWorker>,
    /// Connections handed out and not yet reported closed.
    pub(super) open: usize,
    /// Connections handed to it, oldest first, with when. Those acknowledged since leave
    /// the front when it is next considered, so the check costs nothing per acknowledgement.
    handed: VecDeque<(u64, Instant)>,
}

impl Member {
    pub(super) fn new(id: WorkerId, sender: cluster_ipc::Sender<ToWorker>) -> Self {
        Member {
            id,
            sender,
            open: 0,
            handed: VecDeque::new(),
        }
    }

    /// Whether it has left a connection unacknowledged since before `cutoff`: its channel
    /// reader is stuck (a stalled runtime, a SIGSTOP, a long synchronous call), and a new
    /// connection would wait with it.
    fn stalled(&mut self, in_flight: &InFlightTable, cutoff: Instant) -> bool {
        while let Some(&(conn, at)) = self.handed.front() {
            // Oldest first: if this one is recent, so are the rest, acknowledged or not. The
            // table's lock is taken only for connections old enough to matter, so a worker
            // that keeps up costs the hand-out no lock per connection.
            if at >= cutoff {
                return false;
            }
            if in_flight.contains(conn) {
                return true;
            }
            self.handed.pop_front();
        }
        false
    }
}

/// A connection handed to a worker that has not acknowledged it yet.
pub(super) struct InFlight {
    pub(super) fd: OwnedFd,
    pub(super) peer: SocketAddr,
    /// `StickyKey`'s key, so that a connection taken back goes where its key says.
    pub(super) key: Option<u64>,
    to: WorkerId,
    pub(super) listener: u32,
    at: Instant,
}

/// Every connection the master handed out and the worker has not acknowledged, across all
/// listeners. Shared with the tasks that read each worker's channel, which forget a
/// connection as soon as its acknowledgement arrives, without a trip through the supervisor.
pub(crate) struct InFlightTable {
    next_conn: std::sync::atomic::AtomicU64,
    map: Mutex<HashMap<u64, InFlight>>,
    pub(crate) violations: Arc<Violations>,
    /// Woken when acknowledgements bring the table under `max`.
    room: Notify,
    /// [`MAX_IN_FLIGHT`], but for tests.
    max: usize,
}

impl InFlightTable {
    pub(crate) fn new(violations: Arc<Violations>) -> Self {
        InFlightTable {
            next_conn: std::sync::atomic::AtomicU64::new(0),
            map: Mutex::new(HashMap::new()),
            violations,
            room: Notify::new(),
            max: MAX_IN_FLIGHT,
        }
    }

    #[cfg(test)]
    pub(crate) fn with_max(violations: Arc<Violations>, max: usize) -> Self {
        InFlightTable {
            max,
            ..InFlightTable::new(violations)
        }
    }

    /// Worker `by` took connection `conn`: close the master's copy. Only the worker the
    /// connection was handed to can acknowledge it; another's acknowledgement would make the
    /// master forget a connection that its worker may never get.
    pub(crate) fn ack(&self, conn: u64, by: &WorkerId) {
        let mut map = lock(&self.map);
        match map.get(&conn) {
            Some(flight) if flight.to == *by => {
                let taken = map.remove(&conn);
                let room = map.len() + 1 == self.max;
                drop(map);
                drop(taken);
                if room {
                    self.room.notify_waiters();
                }
            }
            Some(_) => {
                drop(map);
                self.violations.record(
                    Violation::StrayAnswer,
                    by,
                    format_args!("acknowledged connection {conn}, which was handed to another worker: ignored"),
                );
            }
            // Acknowledged twice, or taken back from a worker that exited: nothing to do.
            None => {}
        }
    }

    fn insert(&self, flight: InFlight) -> u64 {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        lock(&self.map).insert(conn, flight);
        conn
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }

    fn contains(&self, conn: u64) -> bool {
        lock(&self.map).contains_key(&conn)
    }

    fn take(&self, conn: u64) -> Option<InFlight> {
        lock(&self.map).remove(&conn)
    }

    /// When `id` was handed the oldest connection it has not acknowledged.
    pub(crate) fn oldest_of(&self, id: &WorkerId) -> Option<Instant> {
        lock(&self.map)
            .values()
            .filter(|f| f.to == *id)
            .map(|f| f.at)
            .min()
    }

    /// Takes back every connection handed to `id` and not acknowledged.
    pub(super) fn orphans_of(&self, id: &WorkerId) -> Vec<InFlight> {
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

/// An accepted connection on its way to a worker: its descriptor, its client, and
/// `StickyKey`'s key for it, if any.
pub(super) type Accepted = (OwnedFd, SocketAddr, Option<u64>);

#[derive(Default)]
pub(super) struct DispatchState {
    pub(super) members: Vec<Member>,
    next: usize,
    /// Accepted while no worker was ready.
    pub(super) waiting: VecDeque<Accepted>,
}

/// The master's accept loop and worker set for one master-accept listener.
pub(super) struct Dispatch {
    pub(super) listener: u32,
    pub(super) balance: Balance,
    pub(super) state: Mutex<DispatchState>,
    pub(super) in_flight: Arc<InFlightTable>,
    /// Wakes the accept loop when a worker joins and the waiting queue can drain.
    pub(super) joined: Notify,
    /// See `Options::accept_coalescing`.
    pub(super) coalescing: Duration,
    /// See `Options::ack_timeout`.
    pub(super) ack_timeout: Duration,
    /// Where `StickyKey` finds a connection's key.
    pub(super) keys: Arc<KeyRules>,
    /// Bounds the connections being peeked at, [`MAX_PEEKING`].
    pub(super) peeking: Arc<Semaphore>,
    /// Ends the accept loop (an upgrade handed the socket to a new master, which accepts
    /// from now on). Only the loop ends: connections it accepted still go out, and the
    /// socket's queue is left to the new master.
    pub(super) stop: tokio_util::sync::CancellationToken,
    /// The accept loop has ended: every connection it accepted is in the in-flight table (or
    /// was handed out).
    pub(super) stopped: std::sync::atomic::AtomicBool,
}

/// How the policy ranks the workers for one connection.
#[derive(Clone, Copy)]
enum Rank {
    /// The next in turn.
    Turn,
    /// The fewest open connections, ties in turn.
    Fewest,
    /// Rendezvous hashing on this key's hash and each worker's slot.
    Hash(u64),
}

impl Dispatch {
    pub(super) fn new(
        listener: u32,
        balance: Balance,
        in_flight: Arc<InFlightTable>,
        (coalescing, ack_timeout): (Duration, Duration),
        keys: Arc<KeyRules>,
    ) -> Self {
        Dispatch {
            listener,
            balance,
            state: Mutex::new(DispatchState::default()),
            in_flight,
            joined: Notify::new(),
            coalescing,
            ack_timeout,
            keys,
            peeking: Arc::new(Semaphore::new(MAX_PEEKING)),
            stop: tokio_util::sync::CancellationToken::new(),
            stopped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn rank(&self, peer: &SocketAddr, key: Option<u64>) -> Rank {
        match self.balance {
            Balance::LeastConnections => Rank::Fewest,
            Balance::Sticky => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                peer.ip().hash(&mut h);
                Rank::Hash(h.finish())
            }
            Balance::StickyKey => key.map_or(Rank::Fewest, Rank::Hash),
            _ => Rank::Turn,
        }
    }

    /// Picks the worker for a connection from `peer` (with `StickyKey`'s `key`): the
    /// policy's choice, unless that worker has left a connection unacknowledged past
    /// `ack_timeout`; then the next the policy would take (for `Sticky` and `StickyKey`, the
    /// next on the key's rendezvous list). When every worker is stalled the policy's own
    /// choice stands: holding the connection back would not serve it sooner.
    fn pick(
        &self,
        st: &mut DispatchState,
        peer: &SocketAddr,
        key: Option<u64>,
        now: Instant,
    ) -> Option<usize> {
        let n = st.members.len();
        if n == 0 {
            return None;
        }
        let start = st.next % n;
        let rank = self.rank(peer, key);
        let score = |m: &Member, key: u64| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut h);
            m.id.key().hash(&mut h);
            h.finish()
        };
        // The policy's preference order, best first: built only when its first choice is
        // stalled, so the common case costs what it did before the check.
        let order = |st: &DispatchState| -> Vec<usize> {
            let mut order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
            match rank {
                // Ties go round-robin, so idle workers share new connections evenly.
                Rank::Fewest => order.sort_by_key(|&i| st.members[i].open),
                // Rendezvous hashing on (key, slot): a key keeps its worker slot while that
                // slot is in the set; removing a slot moves only that slot's keys.
                Rank::Hash(key) => {
                    order.sort_by_key(|&i| std::cmp::Reverse(score(&st.members[i], key)))
                }
                Rank::Turn => {}
            }
            order
        };
        let first = match rank {
            Rank::Fewest => (0..n)
                .map(|k| (start + k) % n)
                .min_by_key(|&i| st.members[i].open)
                .unwrap_or(start),
            Rank::Hash(key) => (0..n)
                .max_by_key(|&i| score(&st.members[i], key))
                .unwrap_or(0),
            Rank::Turn => start,
        };
        let cutoff = now
            .checked_sub(self.ack_timeout)
            .filter(|_| !self.ack_timeout.is_zero());
        let chosen = match cutoff {
            // `stalled` first: it also drops the acknowledged from the front of `handed`, which
            // must happen with a single worker too, or `handed` would only grow.
            Some(cutoff) if st.members[first].stalled(&self.in_flight, cutoff) && n > 1 => {
                let order = order(st);
                let other = order
                    .into_iter()
                    .find(|&i| i != first && !st.members[i].stalled(&self.in_flight, cutoff));
                match other {
                    Some(other) => {
                        self.in_flight.violations.record(
                            Violation::AckTimeout,
                            &st.members[first].id,
                            format_args!(
                                "has left a connection unacknowledged for over {} ms: new connections go to other workers until it acknowledges",
                                self.ack_timeout.as_millis()
                            ),
                        );
                        other
                    }
                    None => first,
                }
            }
            _ => first,
        };
        if !matches!(rank, Rank::Hash(_)) {
            st.next = chosen + 1;
        }
        Some(chosen)
    }

    /// Hands connections to workers, retrying on another worker when a send fails; a
    /// connection with no worker to go to waits for one. The connections picked for the same
    /// worker leave in one message with their descriptors, so a burst of accepts costs each
    /// worker one `sendmsg` and one wake-up, not one per connection.
    pub(super) async fn hand_out(self: &Arc<Self>, batch: Vec<Accepted>) {
        let mut pending = batch;
        while !pending.is_empty() {
            let mut parcels = self.pack(std::mem::take(&mut pending));
            for parcel in &mut parcels {
                match tokio::time::timeout(SEND_TIMEOUT, parcel.send(self.listener)).await {
                    Ok(Ok(())) => {
                        crate::protocol::SENT.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // The worker is gone: its connections go to another worker.
                    Ok(Err(_)) => {}
                    Err(_) => self.in_flight.violations.record(
                        Violation::UnreadChannel,
                        &parcel.to,
                        format_args!(
                            "has not read its channel for {} ms (its write buffer is full): it gets no more connections of listener {}",
                            SEND_TIMEOUT.as_millis(),
                            self.listener
                        ),
                    ),
                }
                lock(&self.state).members.retain(|m| m.id != parcel.to);
                for conn in parcel.conns.drain(..) {
                    if let Some(back) = self.in_flight.take(conn.0) {
                        pending.push((back.fd, back.peer, back.key));
                    }
                }
            }
        }
    }

    /// Picks a worker for each connection and records it as in flight: one parcel per worker,
    /// of at most [`MAX_PARCEL`] connections. Connections with no worker to go to wait.
    fn pack(&self, batch: Vec<Accepted>) -> Vec<Parcel> {
        let mut parcels: Vec<Parcel> = Vec::new();
        let mut st = lock(&self.state);
        let now = Instant::now();
        for (fd, peer, key) in batch {
            let Some(i) = self.pick(&mut st, &peer, key, now) else {
                st.waiting.push_back((fd, peer, key));
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
                key,
                to: member.id.clone(),
                listener: self.listener,
                at: now,
            });
            // Kept only for the stall check, and pruned only by it.
            if !self.ack_timeout.is_zero() {
                member.handed.push_back((conn, now));
            }
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

    /// With `StickyKey`, starts reading each connection's first bytes for its key in a task
    /// of its own, which hands it out when done, so that the accept loop never waits for a
    /// client; returns the connections to hand out now: all of them with another policy, and
    /// those beyond [`MAX_PEEKING`] with this one (without a key: by load).
    fn keyed(self: &Arc<Self>, batch: Vec<(OwnedFd, SocketAddr)>) -> Vec<Accepted> {
        if self.balance != Balance::StickyKey {
            return batch
                .into_iter()
                .map(|(fd, peer)| (fd, peer, None))
                .collect();
        }
        let mut now = Vec::new();
        for (fd, peer) in batch {
            match self.peeking.clone().try_acquire_owned() {
                Ok(permit) => {
                    let dispatch = self.clone();
                    tokio::spawn(async move {
                        let (fd, key) = super::peek::peek_key(fd, &dispatch.keys).await;
                        drop(permit);
                        dispatch.hand_out(vec![(fd, peer, key)]).await;
                    });
                }
                Err(_) => now.push((fd, peer, None)),
            }
        }
        now
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
    pub(super) async fn accept_loop(self: Arc<Self>, listener: std::net::TcpListener) {
        /// Says the loop ended however it returns.
        struct Stopped<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stopped<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Release);
            }
        }
        let _stopped = Stopped(&self.stopped);
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
            if self.stop.is_cancelled() {
                return;
            }
            // Leave connections in the kernel's queue while too many wait for a worker.
            loop {
                let joined = self.joined.notified();
                if lock(&self.state).waiting.len() < MAX_WAITING {
                    break;
                }
                joined.await;
            }
            // And while workers have not acknowledged too many: every worker is stalled
            // (otherwise `pick` would skip the stalled ones), and each connection accepted
            // now would cost the master a descriptor until they wake.
            while self.in_flight.len() >= self.in_flight.max {
                let room = self.in_flight.room.notified();
                if self.in_flight.len() < self.in_flight.max {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), room).await;
            }
            let readable = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                readable = listener.readable() => readable,
            };
            let mut ready = match readable {
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
            let room = self.in_flight.max.saturating_sub(self.in_flight.len());
            while batch.len() < ACCEPT_BATCH.min(room) {
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
                let now = self.keyed(std::mem::take(&mut batch));
                if !now.is_empty() {
                    self.hand_out(now).await;
                }
            }
            if failed {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ToMaster;

    #[tokio::test(start_paused = true)]
    async fn handed_keeps_only_the_connections_the_stall_check_still_needs() {
        let (master, _worker) =
            cluster_ipc::Channel::<ToWorker, ToMaster>::pair(cluster_ipc::Config::default())
                .await
                .unwrap();
        let (sender, _) = master.split();
        let id = WorkerId {
            group: "worker".into(),
            slot: 0,
            generation: 1,
        };
        let table = InFlightTable::new(Arc::default());
        let mut member = Member::new(id.clone(), sender);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..100 {
            let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
            let at = Instant::now();
            let conn = table.insert(InFlight {
                fd,
                peer,
                key: None,
                to: id.clone(),
                listener: 0,
                at,
            });
            member.handed.push_back((conn, at));
            table.ack(conn, &id);
        }
        // Recent ones stay (no lock is taken for them); once past the bound, the
        // acknowledged ones go at the next check.
        assert!(!member.stalled(&table, Instant::now() - Duration::from_millis(100)));
        assert_eq!(member.handed.len(), 100);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(!member.stalled(&table, Instant::now() - Duration::from_millis(100)));
        assert!(member.handed.is_empty());
    }
}
