//! The store's keys and values: the state machine the store's task owns, with no I/O and
//! time passed in, so that every rule (bounds, compare-and-swap, expiry) is a plain function
//! call the tests drive on a paused clock.
//!
//! Expiry needs no timer per key: deadlines wait in one min-heap, the task sleeps until the
//! earliest, and an expired key is also dropped when it is next touched. A key whose deadline
//! changed leaves its old heap entry behind; such stale entries are skipped when they come up
//! and the heap is rebuilt when they outnumber the live ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::{StoreFailure, StoreOp, StoreReply};

/// The store's bounds on keys and values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_keys: u64,
    pub(crate) max_bytes: u64,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) value: Vec<u8>,
    pub(crate) expires: Option<Instant>,
}

/// What one key and its value weigh against `store_max_bytes`.
fn weight(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

/// Keys, values and deadlines, within [`Limits`].
#[derive(Debug)]
pub(crate) struct StoreState {
    map: HashMap<String, Entry>,
    bytes: u64,
    deadlines: BinaryHeap<Reverse<(Instant, String)>>,
    limits: Limits,
}

impl StoreState {
    pub(crate) fn new(limits: Limits) -> Self {
        StoreState {
            map: HashMap::new(),
            bytes: 0,
            deadlines: BinaryHeap::new(),
            limits,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Applies a key-value operation at `now`. Subscriptions are not the state's: they get
    /// `Done(false)`, and the store's task never sends them here.
    pub(crate) fn apply(&mut self, op: StoreOp, now: Instant) -> StoreReply {
        match op {
            StoreOp::Get { key } => {
                StoreReply::Value(self.live(&key, now).map(|e| e.value.clone()))
            }
            StoreOp::Set { key, value, ttl_ms } => {
                let expires = deadline(now, ttl_ms);
                match self.put(key, value, expires, now) {
                    Ok(()) => StoreReply::Done(true),
                    Err(failure) => StoreReply::Failed(failure),
                }
            }
            StoreOp::Incr { key, by } => self.incr(key, by, now),
            StoreOp::Del { key } => StoreReply::Done(self.remove(&key, now).is_some()),
            StoreOp::Cas { key, expected, new } => {
                let current = self.live(&key, now).map(|e| &e.value);
                if current != expected.as_ref() {
                    return StoreReply::Cas(Some(current.cloned()));
                }
                match self.put(key, new, None, now) {
                    Ok(()) => StoreReply::Cas(None),
                    Err(failure) => StoreReply::Failed(failure),
                }
            }
            StoreOp::Expire { key, ttl_ms } => {
                let expires = deadline(now, ttl_ms);
                let Some(entry) = self.live_mut(&key, now) else {
                    return StoreReply::Done(false);
                };
                entry.expires = expires;
                if let Some(at) = expires {
                    self.push_deadline(at, key);
                }
                StoreReply::Done(true)
            }
            StoreOp::Subscribe { .. } | StoreOp::Unsubscribe { .. } | StoreOp::Publish { .. } => {
                StoreReply::Done(false)
            }
        }
    }

    fn incr(&mut self, key: String, by: i64, now: Instant) -> StoreReply {
        let (current, expires) = match self.live(&key, now) {
            Some(entry) => {
                let parsed = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok());
                match parsed {
                    Some(n) => (n, entry.expires),
                    None => return StoreReply::Failed(StoreFailure::NotAnInteger),
                }
            }
            None => (0, None),
        };
        let Some(next) = current.checked_add(by) else {
            return StoreReply::Failed(StoreFailure::Overflow);
        };
        // A counter keeps its deadline, as Redis's INCR does.
        match self.put(key, next.to_string().into_bytes(), expires, now) {
            Ok(()) => StoreReply::Int(next),
            Err(failure) => StoreReply::Failed(failure),
        }
    }

    /// Stores `value` at `key` if the bounds allow it.
    fn put(
        &mut self,
        key: String,
        value: Vec<u8>,
        expires: Option<Instant>,
        now: Instant,
    ) -> Result<(), StoreFailure> {
        if self.room_for(&key, &value, now).is_err() {
            // Keys that expired but were not swept yet must not make the store look full.
            self.sweep(now);
            self.room_for(&key, &value, now)?;
        }
        self.insert(key, value, expires);
        Ok(())
    }

    fn insert(&mut self, key: String, value: Vec<u8>, expires: Option<Instant>) {
        self.bytes += weight(&key, &value);
        if let Some(old) = self.map.insert(key.clone(), Entry { value, expires }) {
            self.bytes -= weight(&key, &old.value);
        }
        // After the insert: a rebuild of the heap reads the map.
        if let Some(at) = expires {
            self.push_deadline(at, key);
        }
    }

    fn room_for(&mut self, key: &str, value: &[u8], now: Instant) -> Result<(), StoreFailure> {
        let old = self.live(key, now).map(|e| weight(key, &e.value));
        if old.is_none() && self.map.len() as u64 >= self.limits.max_keys {
            return Err(StoreFailure::TooManyKeys(self.limits.max_keys));
        }
        let bytes = self.bytes - old.unwrap_or(0) + weight(key, value);
        if bytes > self.limits.max_bytes {
            return Err(StoreFailure::TooManyBytes(self.limits.max_bytes));
        }
        Ok(())
    }

    fn remove(&mut self, key: &str, now: Instant) -> Option<Entry> {
        self.live(key, now)?;
        let entry = self.map.remove(key)?;
        self.bytes -= weight(key, &entry.value);
        Some(entry)
    }

    /// The entry at `key` unless it has expired (then it is dropped).
    fn live(&mut self, key: &str, now: Instant) -> Option<&Entry> {
        self.live_mut(key, now).map(|e| &*e)
    }

    fn live_mut(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        let expired = self.map.get(key)?.expires.is_some_and(|at| at <= now);
        if expired {
            if let Some(entry) = self.map.remove(key) {
                self.bytes -= weight(key, &entry.value);
            }
            return None;
        }
        self.map.get_mut(key)
    }

    fn push_deadline(&mut self, at: Instant, key: String) {
        self.deadlines.push(Reverse((at, key)));
        if self.deadlines.len() > 2 * self.map.len() + 64 {
            self.deadlines = self
                .map
                .iter()
                .filter_map(|(k, e)| e.expires.map(|at| Reverse((at, k.clone()))))
                .collect();
        }
    }

    /// When the earliest deadline is (possibly a stale one: sweeping then finds nothing).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Drops every key whose deadline is `now` or earlier; returns how many.
    pub(crate) fn sweep(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.deadlines.pop() else {
                break;
            };
            // Stale when the key is gone or its deadline moved since.
            if self.map.get(&key).is_some_and(|e| e.expires == Some(at)) {
                if let Some(entry) = self.map.remove(&key) {
                    self.bytes -= weight(&key, &entry.value);
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// Every live entry, for a snapshot.
    pub(crate) fn entries(&self, now: Instant) -> impl Iterator<Item = (&String, &Entry)> {
        self.map
            .iter()
            .filter(move |(_, e)| e.expires.is_none_or(|at| at > now))
    }

    /// Puts an entry loaded from a snapshot, outside the bounds (a store saved under larger
    /// bounds refuses new keys until it is back under them, and loses nothing).
    pub(crate) fn load(&mut self, key: String, value: Vec<u8>, expires: Option<Instant>) {
        self.insert(key, value, expires);
    }
}

/// `now` plus `ttl_ms`; a deadline past what `Instant` holds is never.
fn deadline(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.and_then(|ms| now.checked_add(Duration::from_millis(ms)))
}
