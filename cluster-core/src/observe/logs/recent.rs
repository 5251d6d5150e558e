//! The master's memory of its workers' output, for `clusterctl logs`: each slot's last lines
//! (a [`Ring`] per slot), and the followers that want new lines as they are printed.
//!
//! # Who owns what
//!
//! [`RecentLogs`] is made once by the master and shared (an `Arc`) by the forwarders, which
//! write into it through a [`Recorder`] each, and by the control socket, which reads it. A
//! ring belongs to the slot (group and slot number), not to a process: a replacement's lines
//! follow its predecessor's, each with the prefix (and so the pid) of the process that wrote
//! it, and a slot removed by a scale-down keeps its ring for a later `clusterctl logs`.
//!
//! # Cost on the forwarding path
//!
//! A forwarder records a whole batch of lines (up to 64 KiB) under one lock: it copies each
//! line into its slot's ring, and into the queue of each follower that wants it. Nothing in it
//! waits: a follower's queue is bounded and drops what does not fit (see follow.rs), so a
//! stalled client never holds up the workers' output.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::Stream;
use super::follow::{Delivery, Queue};
use super::ring::{Line, Ring};
use crate::model::{SlotKey, WorkerId};

/// Each slot keeps at most this many bytes of text per line it may keep (1 KiB), so that
/// `log_lines` lines of up to 64 KiB each cannot hold 64 times what the option suggests.
const BYTES_PER_LINE: usize = 1024;

/// Which slots a reader wants: all, one group's, or one slot's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    pub(crate) group: Option<String>,
    pub(crate) slot: Option<usize>,
}

impl Filter {
    fn matches(&self, key: &SlotKey) -> bool {
        self.group.as_deref().is_none_or(|g| *key.group == *g)
            && self.slot.is_none_or(|s| s == key.slot)
    }
}

/// The last lines of every slot, and the followers.
pub(crate) struct RecentLogs {
    max_lines: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
    /// Woken whenever a worker's stream ends (see [`RecentLogs::wait_closed`]).
    closed: Notify,
}

struct Inner {
    slots: BTreeMap<SlotKey, SlotLog>,
    /// The next line's `seq`.
    next_seq: u64,
    followers: Vec<FollowerState>,
    next_follower: u64,
}

struct SlotLog {
    ring: Ring,
    /// The streams still open, by the generation of the worker that writes them.
    open: BTreeMap<u64, u8>,
}

struct FollowerState {
    id: u64,
    filter: Filter,
    queue: Queue,
    wake: Arc<Notify>,
}

impl RecentLogs {
    /// Keeps the last `lines` lines of each slot (and at most [`BYTES_PER_LINE`] times as many
    /// bytes); `None` for 0, which turns the memory off.
    pub(crate) fn new(lines: usize) -> Option<Arc<RecentLogs>> {
        (lines > 0).then(|| {
            Arc::new(RecentLogs {
                max_lines: lines,
                max_bytes: lines.saturating_mul(BYTES_PER_LINE),
                inner: Mutex::new(Inner {
                    slots: BTreeMap::new(),
                    next_seq: 0,
                    followers: Vec::new(),
                    next_follower: 0,
                }),
                closed: Notify::new(),
            })
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; if something did, the rings are still whole
        // (a line is pushed in one step), so the poison is ignored.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The handle through which the forwarder of worker `id`'s `stream` records its lines.
    pub(crate) fn recorder(self: &Arc<Self>, id: &WorkerId, stream: Stream) -> Recorder {
        let key = id.key();
        let mut inner = self.lock();
        let (max_lines, max_bytes) = (self.max_lines, self.max_bytes);
        let slot = inner.slots.entry(key.clone()).or_insert_with(|| SlotLog {
            ring: Ring::new(max_lines, max_bytes),
            open: BTreeMap::new(),
        });
        *slot.open.entry(id.generation).or_default() += 1;
        Recorder {
            logs: self.clone(),
            key,
            generation: id.generation,
            stream,
        }
    }

    /// The last `n` lines of each slot `filter` wants, all in the order they were printed.
    pub(crate) fn tail(&self, filter: &Filter, n: usize) -> Vec<Line> {
        tail(&self.lock(), filter, n)
    }

    /// The last `n` lines of worker `id` alone.
    pub(crate) fn tail_of(&self, id: &WorkerId, n: usize) -> Vec<Line> {
        self.lock()
            .slots
            .get(&id.key())
            .map(|slot| slot.ring.last(n, Some(id.generation)))
            .unwrap_or_default()
    }

    /// Whether any slot `filter` wants has printed since the master started.
    pub(crate) fn knows(&self, filter: &Filter) -> bool {
        self.lock().slots.keys().any(|key| filter.matches(key))
    }

    /// The last `n` lines of each slot `filter` wants (as [`RecentLogs::tail`]), and from then
    /// on every new line of those slots, with nothing missed or repeated in between.
    pub(crate) fn follow(self: &Arc<Self>, filter: Filter, n: usize) -> (Vec<Line>, Follower) {
        let mut inner = self.lock();
        let backlog = tail(&inner, &filter, n);
        let id = inner.next_follower;
        inner.next_follower += 1;
        let wake = Arc::new(Notify::new());
        inner.followers.push(FollowerState {
            id,
            filter,
            queue: Queue::default(),
            wake: wake.clone(),
        });
        let follower = Follower {
            logs: self.clone(),
            id,
            wake,
        };
        (backlog, follower)
    }

    /// Waits, at most `within`, until every stream of worker `id` has ended, so that its last
    /// lines are in its ring (a worker's exit can be seen before its pipes are read to the
    /// end).
    pub(crate) async fn wait_closed(&self, id: &WorkerId, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            let open = self
                .lock()
                .slots
                .get(&id.key())
                .is_some_and(|slot| slot.open.contains_key(&id.generation));
            if !open || tokio::time::timeout_at(deadline, closed).await.is_err() {
                return;
            }
        }
    }
}

fn tail(inner: &Inner, filter: &Filter, n: usize) -> Vec<Line> {
    let mut lines: Vec<Line> = inner
        .slots
        .iter()
        .filter(|(key, _)| filter.matches(key))
        .flat_map(|(_, slot)| slot.ring.last(n, None))
        .collect();
    lines.sort_unstable_by_key(|line| line.seq);
    lines
}

/// A forwarder's way into [`RecentLogs`]: one worker's stdout or stderr. Dropped when the
/// stream has ended.
pub(crate) struct Recorder {
    logs: Arc<RecentLogs>,
    key: SlotKey,
    generation: u64,
    stream: Stream,
}

impl Recorder {
    /// Keeps the lines of `batch` (whole output lines, each ending in `\n`, as the forwarder
    /// writes them) in the slot's ring and queues them for the followers that want them.
    pub(crate) fn record(&self, batch: &[u8]) {
        let mut guard = self.logs.lock();
        let inner = &mut *guard;
        let Some(slot) = inner.slots.get_mut(&self.key) else {
            return;
        };
        let mut followers: Vec<&mut FollowerState> = inner
            .followers
            .iter_mut()
            .filter(|f| f.filter.matches(&self.key))
            .collect();
        for line in batch.split_inclusive(|&b| b == b'\n') {
            let text = line.strip_suffix(b"\n").unwrap_or(line);
            let seq = inner.next_seq;
            inner.next_seq += 1;
            slot.ring.push(seq, self.generation, self.stream, text);
            for follower in &mut followers {
                follower.queue.push(Line {
                    seq,
                    generation: self.generation,
                    stream: self.stream,
                    text: text.to_vec(),
                });
            }
        }
        for follower in followers {
            follower.wake.notify_one();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let mut inner = self.logs.lock();
        if let Some(slot) = inner.slots.get_mut(&self.key) {
            if let Some(open) = slot.open.get_mut(&self.generation) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    slot.open.remove(&self.generation);
                }
            }
        }
        drop(inner);
        self.logs.closed.notify_waiters();
    }
}

/// A reader of new lines (see [`RecentLogs::follow`]); it stops receiving when dropped.
pub(crate) struct Follower {
    logs: Arc<RecentLogs>,
    id: u64,
    wake: Arc<Notify>,
}

impl Follower {
    /// The lines printed since the last call, and how many were dropped after them because
    /// this follower fell behind; waits while there are none. Cancel-safe: nothing is taken
    /// before the wait is over.
    pub(crate) async fn next(&mut self) -> Delivery {
        loop {
            let taken = {
                let mut inner = self.logs.lock();
                inner
                    .followers
                    .iter_mut()
                    .find(|f| f.id == self.id)
                    .and_then(|f| f.queue.take())
            };
            if let Some(delivery) = taken {
                return delivery;
            }
            // `notify_one` keeps a wake-up given while nobody waited, so none is lost between
            // the check above and this wait.
            self.wake.notified().await;
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.logs.lock().followers.retain(|f| f.id != self.id);
    }
}
