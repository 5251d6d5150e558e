//! Spreading a shared accept queue by load (`Balance::Shared`).
//!
//! Workers that accept from one kernel queue take connections in whatever order the
//! scheduler wakes them: when a burst arrives (64 clients connecting at once), the first worker
//! awake can take nearly all of it, and with keep-alive it keeps them. So each worker counts
//! its open connections in a table the master shares with them all (a memfd both map), and a
//! worker with more than its share lets the queue be for a moment before it accepts, so that
//! a less busy worker takes the connection. The hold is short and bounded: a peer that is
//! stuck only slows this worker's accepts, it never stops them.
//!
//! An entry is `tag << 24 | LIVE | count`. The master marks an entry live with a fresh tag for
//! each worker that listens, and clears it when the worker stops; the worker only ever
//! changes its own entry while the tag is still its own, so a stopping worker's late closes
//! cannot touch the entry of the worker that reuses its index.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::model::WorkerId;
use crate::sys::SharedCounters;

/// Entries per table: at most this many workers share one listener's load at a time.
pub(crate) const ENTRIES: usize = 64;
const LIVE: u32 = 1 << 23;
const COUNT: u32 = LIVE - 1;
const TAG_SHIFT: u32 = 24;
/// A worker holds off while it has more connections than the least busy live worker by
/// more than this, or than a quarter of that worker's count if more: short connections come
/// and go by the dozen, and chasing every small difference would cost more than it evens.
const SLACK: u32 = 2;
/// How long one hold lasts, and how many holds before a worker accepts anyway.
pub(crate) const HOLD: Duration = Duration::from_millis(1);
pub(crate) const MAX_HOLDS: u32 = 3;

/// The master's side: the table of one listener, and which worker has which entry.
pub(crate) struct LoadTable {
    counters: SharedCounters,
    by_worker: HashMap<WorkerId, u32>,
    free: Vec<u32>,
    next_tag: u32,
}

impl LoadTable {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(LoadTable {
            counters: SharedCounters::create(ENTRIES)?,
            by_worker: HashMap::new(),
            // Popped from the end: index 0 first.
            free: (0..ENTRIES as u32).rev().collect(),
            next_tag: 0,
        })
    }

    /// Gives worker `id` a live entry: its index and tag, and a descriptor of the table to
    /// send it. `None` when every entry is taken (the worker then accepts without holding).
    pub(crate) fn join(&mut self, id: &WorkerId) -> Option<(u32, u8, OwnedFd)> {
        let fd = self.counters.fd().try_clone_to_owned().ok()?;
        if let Some(&index) = self.by_worker.get(id) {
            let entry = self.counters.counters()[index as usize].load(Ordering::Relaxed);
            return Some((index, (entry >> TAG_SHIFT) as u8, fd));
        }
        let index = self.free.pop()?;
        let tag = (self.next_tag & 0xff) as u8;
        self.next_tag = self.next_tag.wrapping_add(1);
        self.counters.counters()[index as usize]
            .store((u32::from(tag) << TAG_SHIFT) | LIVE, Ordering::Relaxed);
        self.by_worker.insert(id.clone(), index);
        Some((index, tag, fd))
    }

    /// Worker `id` stopped accepting (it is stopping or gone): its entry stops counting.
    pub(crate) fn leave(&mut self, id: &WorkerId) {
        if let Some(index) = self.by_worker.remove(id) {
            self.counters.counters()[index as usize].store(0, Ordering::Relaxed);
            self.free.insert(0, index);
        }
    }
}

/// A worker's side: the shared table and its own entry in it.
pub(crate) struct LoadShare {
    counters: SharedCounters,
    index: usize,
    tag: u8,
}

impl std::fmt::Debug for LoadShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadShare")
            .field("index", &self.index)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

impl LoadShare {
    pub(crate) fn open(fd: OwnedFd, index: u32, tag: u8) -> io::Result<Self> {
        let index = index as usize;
        if index >= ENTRIES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("load entry {index} outside the table of {ENTRIES}"),
            ));
        }
        Ok(LoadShare {
            counters: SharedCounters::open(fd, ENTRIES)?,
            index,
            tag,
        })
    }

    fn own(&self) -> &AtomicU32 {
        &self.counters.counters()[self.index]
    }

    /// Changes this worker's count by `delta` while the entry is still live and its own.
    fn add(&self, delta: i32) {
        let tag = u32::from(self.tag) << TAG_SHIFT;
        let _ = self
            .own()
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |entry| {
                if entry & !COUNT != tag | LIVE {
                    return None;
                }
                let count = entry & COUNT;
                let count = if delta >= 0 {
                    count.saturating_add(delta as u32).min(COUNT)
                } else {
                    count.saturating_sub(delta.unsigned_abs())
                };
                Some(tag | LIVE | count)
            });
    }

    /// A connection was accepted.
    pub(crate) fn opened(&self) {
        self.add(1);
    }

    /// A connection was closed.
    pub(crate) fn closed(&self) {
        self.add(-1);
    }

    /// Whether this worker serves more connections than the least busy other live worker, by
    /// more than the slack, and should leave the next connection to it.
    pub(crate) fn over_share(&self) -> bool {
        let own = self.own().load(Ordering::Relaxed);
        // Within the slack of an idle worker is never over: no need to look at the others.
        if own & LIVE == 0 || own & COUNT <= SLACK {
            return false;
        }
        // This runs before every accept: a plain loop over the table's words (a load, a test
        // and a minimum each) rather than an iterator chain, which cost about 15
        // instructions an entry, 64 entries a connection.
        let mut least = u32::MAX;
        for (i, entry) in self.counters.counters().iter().enumerate() {
            let e = entry.load(Ordering::Relaxed);
            if e & LIVE != 0 && i != self.index {
                least = least.min(e & COUNT);
            }
        }
        least != u32::MAX && own & COUNT > least + SLACK.max(least / 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(slot: usize) -> WorkerId {
        WorkerId {
            group: "web".into(),
            slot,
            generation: 1,
        }
    }

    fn share(table: &mut LoadTable, slot: usize) -> LoadShare {
        let (index, tag, fd) = table.join(&id(slot)).unwrap();
        LoadShare::open(fd, index, tag).unwrap()
    }

    #[test]
    fn a_worker_above_its_share_holds_until_the_others_catch_up() {
        let mut table = LoadTable::new().unwrap();
        let a = share(&mut table, 0);
        let b = share(&mut table, 1);
        for _ in 0..2 {
            a.opened();
        }
        assert!(!a.over_share(), "2 against 0 is within the slack");
        a.opened();
        assert!(a.over_share(), "3 against 0");
        assert!(!b.over_share());
        b.opened();
        assert!(!a.over_share(), "3 against 1");
        a.opened();
        assert!(a.over_share(), "4 against 1");
        a.closed();
        assert!(!a.over_share());
    }

    #[test]
    fn among_many_connections_the_slack_grows_to_a_quarter() {
        let mut table = LoadTable::new().unwrap();
        let a = share(&mut table, 0);
        let b = share(&mut table, 1);
        for _ in 0..20 {
            b.opened();
        }
        for _ in 0..25 {
            a.opened();
        }
        assert!(!a.over_share(), "25 against 20 is within a quarter");
        a.opened();
        assert!(a.over_share(), "26 against 20");
    }

    #[test]
    fn alone_or_with_stopped_peers_a_worker_never_holds() {
        let mut table = LoadTable::new().unwrap();
        let a = share(&mut table, 0);
        for _ in 0..50 {
            a.opened();
        }
        assert!(!a.over_share(), "no other worker");
        let b = share(&mut table, 1);
        assert!(a.over_share());
        table.leave(&id(1));
        assert!(!a.over_share(), "the other worker left");
        // A worker that left no longer changes its entry, even once another worker (another
        // tag) has it.
        let entries = table.counters.counters();
        let reused = (u32::from(b.tag.wrapping_add(1)) << TAG_SHIFT) | LIVE | 7;
        entries[b.index].store(reused, Ordering::Relaxed);
        b.opened();
        b.closed();
        b.closed();
        assert_eq!(entries[b.index].load(Ordering::Relaxed), reused);
    }

    #[test]
    fn counts_never_go_below_zero() {
        let mut table = LoadTable::new().unwrap();
        let a = share(&mut table, 0);
        a.closed();
        a.opened();
        assert_eq!(a.own().load(Ordering::Relaxed) & COUNT, 1);
    }

    #[test]
    fn a_bad_index_or_a_short_table_is_an_error() {
        let mut table = LoadTable::new().unwrap();
        let (_, tag, fd) = table.join(&id(0)).unwrap();
        assert!(LoadShare::open(fd, ENTRIES as u32, tag).is_err());
        let small = SharedCounters::create(4).unwrap();
        let fd = small.fd().try_clone_to_owned().unwrap();
        assert!(LoadShare::open(fd, 0, 0).is_err());
    }
}
