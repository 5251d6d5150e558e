//! The status server's connection slots: who holds one, and which connection to close when a
//! new one finds them all taken.
//!
//! An orchestrator restarts a cluster whose `/healthz` stops answering, so nothing a client
//! does by merely holding connections open (a forgotten keep-alive pool, a slow-loris, a
//! scanner) may keep a probe out. A plain cap does not do that: with 64 idle keep-alive
//! connections, the 65th waits in the listen queue until one of them times out, and the probe
//! fails meanwhile. So the cap here never makes a new connection wait for an idle one: the
//! idle one is closed for it. For a new connection from peer P:
//!
//! 1. P already holds [`Limits::per_peer`] general slots: P's longest-idle one is closed, so a
//!    client that opens too many connections only ever pushes out its own;
//! 2. all [`Limits::general`] slots are taken: the longest-idle connection of the peer
//!    holding the most slots is closed, so one busy client costs others last;
//! 3. no general connection can be closed because each is answering a request (each bounded
//!    in time by the server): the new connection takes one of the [`Limits::probe`] reserved
//!    slots, which answer `/healthz` and `/readyz` only, once, then close. A burst of slow
//!    scrapes therefore cannot keep a probe out either;
//! 4. those are all answering too: the accept loop waits until a slot frees (at most one
//!    request's bound).
//!
//! A connection is idle whenever it is not inside a request's handler: waiting for its next
//! request, reading a head slowly, or writing a response its client does not read. Closing one
//! of those loses nothing that was promised; an HTTP client retries a request on a
//! keep-alive connection that the server closed.
//!
//! A closed connection's descriptor is released by its own task, a moment later; until then it
//! counts against [`Limits::closing`] rather than a pool, so that the new connection need not
//! wait for it, while the descriptors held stay bounded by the sum of the limits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How many connections the status server holds; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Slots for any request. Monitoring needs few connections; the cap keeps a misbehaving
    /// client from using up the master's file descriptors, which it needs for workers.
    pub(super) general: usize,
    /// General slots one client IP may hold; past that its own oldest idle one is closed.
    pub(super) per_peer: usize,
    /// Slots reserved for probes, used only when no general slot can be freed.
    pub(super) probe: usize,
    /// Connections told to close whose task has not released them yet.
    pub(super) closing: usize,
}

impl Limits {
    /// 64 general slots, 16 per client IP, 4 for probes, 8 closing: at most 76 descriptors.
    /// Sixteen per client leaves room for a dashboard's and a scraper's pools from one host
    /// (every local client shares 127.0.0.1), while four clients are needed to fill the
    /// general pool; four probe slots cover kubelet's liveness, readiness and startup probes
    /// arriving together.
    pub(super) const DEFAULT: Limits = Limits {
        general: 64,
        per_peer: 16,
        probe: 4,
        closing: 8,
    };
}

/// Which pool a connection's slot is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pool {
    /// Any route, keep-alive.
    General,
    /// A reserved slot: `/healthz` and `/readyz` only, one request.
    Probe,
}

/// The slots of one server.
pub(super) struct Slots {
    limits: Limits,
    table: Mutex<Table>,
    /// Woken when a slot is released; only the accept loop waits on it, so `notify_one`'s
    /// stored permit means a release between a failed admission and the wait is not missed.
    freed: Notify,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    entries: HashMap<u64, Entry>,
}

struct Entry {
    peer: IpAddr,
    pool: Pool,
    /// Inside a request's handler: not to be closed.
    busy: bool,
    /// Since when the connection has not been inside a handler; the longest idle goes first.
    idle_since: Instant,
    /// Told to close; counts against `closing`, no longer against its pool.
    closing: bool,
    close: CancellationToken,
}

impl Slots {
    pub(super) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Slots {
            limits,
            table: Mutex::new(Table::default()),
            freed: Notify::new(),
        })
    }

    /// The table; a panic elsewhere while it was held leaves it consistent (each change is
    /// one assignment or one map operation), so a poisoned lock is used as it is.
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection from `peer`, closing an idle connection to make room if
    /// needed (the rules of the module documentation); `None` when every slot is answering a
    /// request, after which [`Slots::freed`] tells when to try again.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let limits = self.limits;
        let mut table = self.table();
        // A closed connection still holds its descriptor until its task lets go; past
        // `closing` of those, nothing more is closed to make room, so the total stays bounded.
        let room = table.entries.values().filter(|e| e.closing).count() < limits.closing;
        let general: Vec<(u64, &Entry)> = table
            .entries
            .iter()
            .filter(|(_, e)| e.holds(Pool::General))
            .map(|(id, e)| (*id, e))
            .collect();
        let own = general.iter().filter(|(_, e)| e.peer == peer).count();
        let pool = if own < limits.per_peer && general.len() < limits.general {
            Some(Pool::General)
        } else {
            let victim = if own >= limits.per_peer {
                // Rule 1: a client over its limit pushes out only its own connections.
                longest_idle(general.iter().filter(|(_, e)| e.peer == peer).copied())
            } else {
                // Rule 2: the client holding the most slots loses its longest-idle one.
                let mut held: HashMap<IpAddr, usize> = HashMap::new();
                for (_, e) in &general {
                    *held.entry(e.peer).or_default() += 1;
                }
                general
                    .iter()
                    .filter(|(_, e)| !e.busy)
                    .min_by_key(|(_, e)| {
                        let count = held.get(&e.peer).copied().unwrap_or(0);
                        (std::cmp::Reverse(count), e.idle_since)
                    })
                    .map(|(id, _)| *id)
            };
            victim
                .filter(|_| room)
                .and_then(|victim| table.close(victim).then_some(Pool::General))
        };
        let pool = match pool {
            Some(pool) => pool,
            None => {
                // Rule 3: a reserved slot, free or held by an idle connection.
                let probes: Vec<(u64, &Entry)> = table
                    .entries
                    .iter()
                    .filter(|(_, e)| e.holds(Pool::Probe))
                    .map(|(id, e)| (*id, e))
                    .collect();
                let free = probes.len() < limits.probe;
                let victim = longest_idle(probes.into_iter()).filter(|_| room);
                if free || victim.is_some_and(|victim| table.close(victim)) {
                    Pool::Probe
                } else {
                    // Rule 4: every slot is answering a request.
                    return None;
                }
            }
        };
        table.next_id += 1;
        let id = table.next_id;
        let close = CancellationToken::new();
        table.entries.insert(
            id,
            Entry {
                peer,
                pool,
                busy: false,
                idle_since: Instant::now(),
                closing: false,
                close: close.clone(),
            },
        );
        Some(Slot {
            slots: Arc::clone(self),
            id,
            pool,
            close,
        })
    }

    /// Resolves once a slot has been released since the last [`Slots::admit`] that failed
    /// (or a moment after, spuriously: admit again to know).
    pub(super) async fn freed(&self) {
        self.freed.notified().await;
    }

    fn set_busy(&self, id: u64, busy: bool) {
        if let Some(entry) = self.table().entries.get_mut(&id) {
            entry.busy = busy;
            if !busy {
                entry.idle_since = Instant::now();
            }
        }
    }

    fn is_busy(&self, id: u64) -> bool {
        self.table().entries.get(&id).is_some_and(|e| e.busy)
    }

    /// How many connections hold a slot of `pool` (closing ones excluded), for the tests.
    #[cfg(test)]
    pub(super) fn held(&self, pool: Pool) -> usize {
        self.table()
            .entries
            .values()
            .filter(|e| e.holds(pool))
            .count()
    }
}

/// The id of the entry idle the longest among `entries`, if any is idle at all.
fn longest_idle<'a>(entries: impl Iterator<Item = (u64, &'a Entry)>) -> Option<u64> {
    entries
        .filter(|(_, e)| !e.busy)
        .min_by_key(|(_, e)| e.idle_since)
        .map(|(id, _)| id)
}

impl Entry {
    /// Whether the connection counts against `pool` (a closing one no longer does).
    fn holds(&self, pool: Pool) -> bool {
        !self.closing && self.pool == pool
    }
}

impl Table {
    /// Tells the connection `id` to close; false if it is gone.
    fn close(&mut self, id: u64) -> bool {
        match self.entries.get_mut(&id) {
            Some(entry) => {
                entry.closing = true;
                entry.close.cancel();
                true
            }
            None => false,
        }
    }
}

/// A connection's slot, released when dropped (when the connection's task ends).
pub(super) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    pool: Pool,
    close: CancellationToken,
}

impl Slot {
    pub(super) fn pool(&self) -> Pool {
        self.pool
    }

    /// Resolves when the connection must close to make room for another.
    pub(super) async fn closed(&self) {
        self.close.cancelled().await;
    }

    /// Whether the connection was told to close.
    #[cfg(test)]
    pub(super) fn is_closing(&self) -> bool {
        self.close.is_cancelled()
    }

    /// Whether the connection is inside a request's handler.
    pub(super) fn is_busy(&self) -> bool {
        self.slots.is_busy(self.id)
    }

    /// What the connection's service marks its requests with.
    pub(super) fn marker(&self) -> BusyMarker {
        BusyMarker {
            slots: Arc::clone(&self.slots),
            id: self.id,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.table().entries.remove(&self.id);
        self.slots.freed.notify_one();
    }
}

/// Marks a connection busy for the life of a [`Busy`].
#[derive(Clone)]
pub(super) struct BusyMarker {
    slots: Arc<Slots>,
    id: u64,
}

impl BusyMarker {
    /// Busy until the returned guard is dropped: when the handler returns, or is dropped with
    /// its connection.
    pub(super) fn busy(&self) -> Busy {
        self.slots.set_busy(self.id, true);
        Busy(self.clone())
    }
}

pub(super) struct Busy(BusyMarker);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.slots.set_busy(self.0.id, false);
    }
}
