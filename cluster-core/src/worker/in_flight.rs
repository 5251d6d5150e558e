//! The requests a worker has under way, for the operator: the slow ones go to the master with
//! the heartbeats (shown in `/status` and in the watchdog's kill report), and when the worker's
//! runtime stops turning, a thread of its own writes them to stderr, which the master
//! forwards, since nothing on the runtime can send anything any more.
//!
//! A server registers each connection once ([`register`]); per request it only records what
//! the request is on its own connection state. Ages are measured here, by the scans: a request
//! is as old as the first scan that saw it under way (at most one scan late), so serving pays
//! no clock read per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use slab::Slab;

use crate::protocol::SlowRequest;

/// How many of the oldest requests a report carries.
pub(crate) const REPORTED: usize = 5;

/// A request under way is reported once it has run this long.
pub(crate) const SLOW: Duration = Duration::from_secs(1);

/// What one connection (or any unit of work a server tracks) has under way.
pub trait InFlightSource: Send + Sync {
    /// The request under way, if any: a number that changes with each new request on this
    /// source (a count of requests begun), its method (or kind) and its path (or name). A
    /// source with several requests at once (an HTTP/2 connection's streams) gives its
    /// oldest here, and all of them by [`each_current`](Self::each_current).
    fn current(&self) -> Option<(u64, String, String)>;

    /// Every request under way, as [`current`](Self::current) gives one, each with a number
    /// of its own that no later request on this source reuses. By default, `current`'s.
    fn each_current(&self, report: &mut dyn FnMut(u64, String, String)) {
        if let Some((number, method, path)) = self.current() {
            report(number, method, path);
        }
    }
}

/// Keeps a source registered; dropping it removes the source.
#[derive(Debug)]
#[must_use = "the source is unregistered when this is dropped"]
pub struct InFlightRegistration {
    /// The source's slot, its own until this is dropped.
    slot: usize,
}

impl Drop for InFlightRegistration {
    fn drop(&mut self) {
        if let Ok(mut registry) = REGISTRY.lock() {
            // The source may go with its last weak count, under the lock: nothing it drops
            // takes the registry.
            registry.slots.try_remove(self.slot);
        }
    }
}

/// One registered source.
struct Entry {
    source: Weak<dyn InFlightSource>,
    /// The request numbers seen under way at the latest scan and when each was first seen.
    seen: Vec<(u64, Instant)>,
}

/// The registered sources, in slots that registrations own: `cluster::http` registers every
/// connection, so a registration and its drop are a lock and a slot, where two SipHash maps
/// cost about 750 instructions (when every HTTP/2 stream registered, a tenth of its cost).
#[derive(Default)]
struct Registry {
    slots: Slab<Entry>,
}

static REGISTRY: std::sync::LazyLock<Mutex<Registry>> = std::sync::LazyLock::new(Mutex::default);

/// Registers `source` for the reports of this worker's slow requests, until the returned
/// registration is dropped (`cluster::http` does this once for each connection: an HTTP/2
/// one is a source of all its streams). An uncontended lock and a slot per call.
pub fn register(source: Weak<dyn InFlightSource>) -> InFlightRegistration {
    let slot = match REGISTRY.lock() {
        Ok(mut registry) => registry.slots.insert(Entry {
            source,
            seen: Vec::new(),
        }),
        // Poisoned only by a panic under the lock, which nothing here can cause: the source
        // goes unreported, and its drop finds no slot of this number to release.
        Err(_) => usize::MAX,
    };
    InFlightRegistration { slot }
}

/// The requests under way for at least `min_age`, oldest first, at most `n`; also ages every
/// request seen (call it at a steady pace: ages count from the first call that saw each).
pub(crate) fn slowest(now: Instant, min_age: Duration, n: usize) -> Vec<SlowRequest> {
    let Ok(mut registry) = REGISTRY.lock() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    // The numbers under way in this scan, swapped with each entry's in turn, so that scans
    // allocate only while the sources' counts grow.
    let mut seen = Vec::new();
    for (_, entry) in registry.slots.iter_mut() {
        seen.clear();
        // A source dropped before its registration keeps its slot until the registration
        // goes: only that frees it, so that no slot is ever freed twice.
        if let Some(source) = entry.source.upgrade() {
            source.each_current(&mut |number, method, path| {
                let since = entry
                    .seen
                    .iter()
                    .find(|&&(seen_number, _)| seen_number == number)
                    .map_or(now, |&(_, since)| since);
                seen.push((number, since));
                let age = now.saturating_duration_since(since);
                if age >= min_age {
                    found.push(SlowRequest {
                        method,
                        path,
                        age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                    });
                }
            });
        }
        std::mem::swap(&mut entry.seen, &mut seen);
    }
    drop(registry);
    found.sort_by_key(|r| std::cmp::Reverse(r.age_ms));
    found.truncate(n);
    found
}

/// Watches the runtime from a thread of its own: when the heartbeat task has not run for
/// three intervals, the runtime is stuck (a handler blocking its thread, a deadlock), and the
/// master's watchdog is about to kill this worker. Nothing on the runtime can report then, so
/// this thread writes the requests under way to stderr, once per stall, where the master's
/// log forwarding (and the slot's log) keeps them.
pub(crate) fn watch_stalls(beat: Arc<AtomicU64>, interval: Duration) {
    mark(&beat);
    let spawned = std::thread::Builder::new()
        .name("cluster-stall-watch".into())
        .spawn(move || {
            let mut reported = false;
            loop {
                std::thread::sleep(interval);
                let now = Instant::now();
                let last = *EPOCH + Duration::from_millis(beat.load(Ordering::Relaxed));
                let stalled = now.saturating_duration_since(last) >= 3 * interval;
                // Scanned whether stalled or not, so that ages keep counting from when each
                // request was first seen, not from the stall.
                let slow = slowest(now, Duration::ZERO, REPORTED);
                if stalled && !reported {
                    reported = true;
                    let what = if slow.is_empty() {
                        "no request under way".to_owned()
                    } else {
                        format!("requests under way: {}", SlowRequest::describe_all(&slow))
                    };
                    eprintln!(
                        "cluster: this worker's runtime has not run for {} ms (a handler blocking its thread?); {what}",
                        now.saturating_duration_since(last).as_millis()
                    );
                } else if !stalled {
                    reported = false;
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("cluster: cannot start the stall watch thread: {e}");
    }
}

/// The origin of the heartbeat marks.
static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// Records that the runtime is turning now (the heartbeat task's mark, read by the stall
/// watch): milliseconds from [`EPOCH`].
pub(crate) fn mark(beat: &AtomicU64) {
    let ms = u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX);
    beat.store(ms, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(Mutex<Option<(u64, String, String)>>);

    impl InFlightSource for Fake {
        fn current(&self) -> Option<(u64, String, String)> {
            self.0.lock().unwrap().clone()
        }
    }

    fn fake(number: u64, path: &str) -> Arc<Fake> {
        Arc::new(Fake(Mutex::new(Some((number, "GET".into(), path.into())))))
    }

    #[test]
    fn ages_count_from_the_first_scan_and_restart_with_each_request() {
        let a = fake(1, "/a-slow-one");
        let b = fake(1, "/b");
        let a_dyn: Arc<dyn InFlightSource> = a.clone();
        let b_dyn: Arc<dyn InFlightSource> = b.clone();
        let _ra = register(Arc::downgrade(&a_dyn));
        let rb = register(Arc::downgrade(&b_dyn));
        let t0 = Instant::now();
        let mine = |found: Vec<SlowRequest>| -> Vec<(String, u64)> {
            found
                .into_iter()
                .filter(|r| r.path == "/a-slow-one" || r.path == "/b")
                .map(|r| (r.path, r.age_ms))
                .collect()
        };
        assert_eq!(mine(slowest(t0, SLOW, 5)), []);
        // `b` starts its next request; `a` goes on.
        *b.0.lock().unwrap() = Some((2, "GET".into(), "/b".into()));
        let found = mine(slowest(t0 + Duration::from_secs(2), SLOW, 5));
        assert_eq!(found, [("/a-slow-one".to_owned(), 2000)]);
        let found = mine(slowest(t0 + Duration::from_secs(3), Duration::ZERO, 5));
        assert_eq!(
            found,
            [("/a-slow-one".to_owned(), 3000), ("/b".to_owned(), 1000)]
        );
        // Unregistered (its connection closed): gone from the reports.
        drop(rb);
        let found = mine(slowest(t0 + Duration::from_secs(4), Duration::ZERO, 5));
        assert_eq!(found, [("/a-slow-one".to_owned(), 4000)]);
        // Nothing under way: nothing reported, and the next request counts from zero.
        *a.0.lock().unwrap() = None;
        assert_eq!(
            mine(slowest(t0 + Duration::from_secs(5), Duration::ZERO, 5)),
            []
        );
        *a.0.lock().unwrap() = Some((1, "GET".into(), "/a-slow-one".into()));
        assert_eq!(
            mine(slowest(t0 + Duration::from_secs(6), Duration::ZERO, 5)),
            [("/a-slow-one".to_owned(), 0)]
        );
    }

    /// A source with several requests at once, each aged on its own.
    struct Many(Mutex<Vec<(u64, String)>>);

    impl InFlightSource for Many {
        fn current(&self) -> Option<(u64, String, String)> {
            let streams = self.0.lock().unwrap();
            streams
                .first()
                .map(|(n, path)| (*n, "GET".to_owned(), path.clone()))
        }

        fn each_current(&self, report: &mut dyn FnMut(u64, String, String)) {
            for (n, path) in self.0.lock().unwrap().iter() {
                report(*n, "GET".to_owned(), path.clone());
            }
        }
    }

    #[test]
    fn each_request_of_a_source_with_several_is_aged_on_its_own() {
        let many = Arc::new(Many(Mutex::new(vec![
            (1, "/many-1".to_owned()),
            (2, "/many-2".to_owned()),
        ])));
        let source: Arc<dyn InFlightSource> = many.clone();
        let _r = register(Arc::downgrade(&source));
        let t0 = Instant::now();
        let mine = |found: Vec<SlowRequest>| -> Vec<(String, u64)> {
            let mut found: Vec<(String, u64)> = found
                .into_iter()
                .filter(|r| r.path.starts_with("/many-"))
                .map(|r| (r.path, r.age_ms))
                .collect();
            found.sort();
            found
        };
        assert_eq!(
            mine(slowest(t0, Duration::ZERO, 100)),
            [("/many-1".to_owned(), 0), ("/many-2".to_owned(), 0)]
        );
        // The first ends and a third begins: the second keeps its age, the third starts at 0.
        *many.0.lock().unwrap() = vec![(2, "/many-2".to_owned()), (3, "/many-3".to_owned())];
        assert_eq!(
            mine(slowest(t0 + Duration::from_secs(2), Duration::ZERO, 100)),
            [("/many-2".to_owned(), 2000), ("/many-3".to_owned(), 0)]
        );
        // Only the slow one passes the bar.
        assert_eq!(
            mine(slowest(t0 + Duration::from_secs(3), SLOW, 100)),
            [("/many-2".to_owned(), 3000), ("/many-3".to_owned(), 1000)]
        );
        assert_eq!(
            mine(slowest(
                t0 + Duration::from_millis(3500),
                Duration::from_millis(1600),
                100
            )),
            [("/many-2".to_owned(), 3500)]
        );
    }

    #[test]
    fn a_slot_freed_by_one_registration_serves_the_next_and_no_other_is_touched() {
        let paths = |found: Vec<SlowRequest>| -> Vec<String> {
            let mut paths: Vec<String> = found
                .into_iter()
                .map(|r| r.path)
                .filter(|p| p.starts_with("/slot-"))
                .collect();
            paths.sort();
            paths
        };
        let a: Arc<dyn InFlightSource> = fake(1, "/slot-a");
        let b: Arc<dyn InFlightSource> = fake(1, "/slot-b");
        let ra = register(Arc::downgrade(&a));
        let rb = register(Arc::downgrade(&b));
        drop(ra);
        let c: Arc<dyn InFlightSource> = fake(1, "/slot-c");
        let rc = register(Arc::downgrade(&c));
        // A source gone before its registration: its slot stays taken until that is dropped.
        let d: Arc<dyn InFlightSource> = fake(1, "/slot-d");
        let rd = register(Arc::downgrade(&d));
        drop(d);
        let e: Arc<dyn InFlightSource> = fake(1, "/slot-e");
        let re = register(Arc::downgrade(&e));
        assert_eq!(
            paths(slowest(Instant::now(), Duration::ZERO, 1000)),
            ["/slot-b", "/slot-c", "/slot-e"]
        );
        drop(rd);
        drop(rb);
        assert_eq!(
            paths(slowest(Instant::now(), Duration::ZERO, 1000)),
            ["/slot-c", "/slot-e"]
        );
        drop((rc, re));
        assert!(paths(slowest(Instant::now(), Duration::ZERO, 1000)).is_empty());
    }

    #[test]
    fn a_dropped_source_is_forgotten() {
        let a: Arc<dyn InFlightSource> = fake(1, "/dropped");
        let _r = register(Arc::downgrade(&a));
        drop(a);
        let found = slowest(Instant::now(), Duration::ZERO, 100);
        assert!(found.iter().all(|r| r.path != "/dropped"), "{found:?}");
    }
}
