//! [`Streams`]: the HTTP/2 streams one connection has under way, for the worker's
//! slow-request reports and a timed-out stream's log line. The connection is registered once
//! in the worker's registry (`cluster_core::in_flight`), as an HTTP/1.1 connection is; each
//! stream takes a slot of the connection's table while its response is under way. Apart from
//! the service wrapper because it is a small table with a contract of its own (a slot is its
//! stream's until the stream's guard is dropped), checked here.
//!
//! Registered on its own, each stream cost an `Arc` of its method and URI and two operations
//! on the worker's registry: with 16 streams on each of 64 connections, that allocation
//! overflowed malloc's per-thread cache and sent the stream's other allocations down its slow
//! path (about 1,000 of a stream's 30,000 instructions). A slot costs an uncontended lock, the
//! method's and URI's clones (reference counts) and a store.

use std::sync::{Arc, Mutex, PoisonError};

use cluster_core::in_flight::InFlightSource;
use hyper::{Method, Uri};
use slab::Slab;

/// One HTTP/2 connection's streams under way. Written by the connection's streams, read by
/// the worker's slow-request scans (another thread).
#[derive(Default)]
pub(super) struct Streams {
    table: Mutex<Slab<Entry>>,
}

struct Entry {
    /// The stream's number among the connection's requests: unique on the connection.
    number: u64,
    method: Method,
    uri: Uri,
}

impl Entry {
    fn request(&self) -> (String, String) {
        (self.method.to_string(), self.uri.path().to_owned())
    }
}

impl Streams {
    fn table(&self) -> std::sync::MutexGuard<'_, Slab<Entry>> {
        // Nothing under this lock can panic but an allocation failure, which aborts.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters stream `number` into the table until the returned slot is dropped.
    pub(super) fn begin(self: &Arc<Self>, number: u64, method: &Method, uri: &Uri) -> StreamSlot {
        let entry = Entry {
            number,
            method: method.clone(),
            uri: uri.clone(),
        };
        let slot = self.table().insert(entry);
        StreamSlot {
            streams: Arc::clone(self),
            slot,
        }
    }

    fn end(&self, slot: usize) {
        let ended = self.table().try_remove(slot);
        // The method and URI are dropped outside the lock.
        drop(ended);
    }
}

impl InFlightSource for Streams {
    fn current(&self) -> Option<(u64, String, String)> {
        let table = self.table();
        let (_, oldest) = table.iter().min_by_key(|(_, e)| e.number)?;
        let (method, path) = oldest.request();
        Some((oldest.number, method, path))
    }

    fn each_current(&self, report: &mut dyn FnMut(u64, String, String)) {
        // Copied out first: `report` runs under the registry's lock, and this table's lock
        // is better not held across anything but the copy.
        let under_way: Vec<(u64, (String, String))> = self
            .table()
            .iter()
            .map(|(_, e)| (e.number, e.request()))
            .collect();
        for (number, (method, path)) in under_way {
            report(number, method, path);
        }
    }
}

/// A stream's slot in its connection's [`Streams`], freed when dropped.
pub(super) struct StreamSlot {
    streams: Arc<Streams>,
    slot: usize,
}

impl StreamSlot {
    /// The stream's method and path, for a log line.
    pub(super) fn request(&self) -> Option<(String, String)> {
        let table = self.streams.table();
        table.get(self.slot).map(Entry::request)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.streams.end(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(streams: &Streams) -> Vec<(u64, String, String)> {
        let mut found = Vec::new();
        streams.each_current(&mut |n, m, p| found.push((n, m, p)));
        found.sort();
        found
    }

    fn uri(path: &str) -> Uri {
        path.parse().unwrap()
    }

    #[test]
    fn streams_are_listed_while_their_slots_live_and_slots_are_reused() {
        let streams = Arc::new(Streams::default());
        assert_eq!(streams.current(), None);
        let one = streams.begin(1, &Method::GET, &uri("/one?q=1"));
        let two = streams.begin(2, &Method::POST, &uri("/two"));
        assert_eq!(
            all(&streams),
            [
                (1, "GET".to_owned(), "/one".to_owned()),
                (2, "POST".to_owned(), "/two".to_owned())
            ]
        );
        assert_eq!(two.request(), Some(("POST".to_owned(), "/two".to_owned())));
        // The oldest is the connection's current request.
        assert_eq!(streams.current().map(|c| c.0), Some(1));
        let freed = one.slot;
        drop(one);
        assert_eq!(streams.current().map(|c| c.0), Some(2));
        // The freed slot serves the next stream; the other slot is untouched.
        let three = streams.begin(3, &Method::GET, &uri("/three"));
        assert_eq!(three.slot, freed);
        assert_eq!(
            all(&streams),
            [
                (2, "POST".to_owned(), "/two".to_owned()),
                (3, "GET".to_owned(), "/three".to_owned())
            ]
        );
        drop((two, three));
        assert_eq!(all(&streams), []);
        assert_eq!(streams.current(), None);
    }
}
