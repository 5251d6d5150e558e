//! [`RequestRecord`]: the method and path of the request an HTTP/1.1 connection is serving,
//! written by the connection's task at each request, read by the worker's slow-request
//! reports (another thread) and by the request timeout's log line. Apart from `ConnState`
//! because it is a small lock-free protocol (a sequence lock) checked here on its own.
//!
//! Kept under a `Mutex` as the request's own `Method` and `Uri`, it cost every keep-alive
//! request a lock, a clone of the URI (an atomic count on the read buffer it points into) and
//! the drop of the previous one: about 220 of its 9,500 instructions. Here a request whose
//! method fits in a word and path in [`INLINE`] bytes costs a few plain stores; a longer one takes the
//! lock and a copy, as before.

use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Mutex, PoisonError};

/// Words of path kept without a lock: 128 bytes, more than most paths.
const WORDS: usize = 16;
const INLINE: usize = WORDS * 8;

/// `lens` of a record kept in `long`.
const LONG: u64 = u64::MAX;

/// How many times a reader retries a record being rewritten under it before it gives up (the
/// writer is then serving requests, none of them slow).
const TRIES: usize = 64;

/// The method and path of one connection's latest request. One writer (the connection's
/// task), any number of readers.
pub(super) struct RequestRecord {
    /// Even: the record is whole (0: nothing written yet); odd: a write is under way.
    seq: AtomicU64,
    /// The method's length in the high 32 bits, the path's in the low ones; [`LONG`] when the
    /// record is in `long`.
    lens: AtomicU64,
    /// The method's bytes, when they fit in a word (every standard method does).
    method: AtomicU64,
    /// The path's bytes.
    text: [AtomicU64; WORDS],
    /// A record longer than [`INLINE`] bytes.
    long: Mutex<Option<(String, String)>>,
}

impl RequestRecord {
    pub(super) fn new() -> Self {
        RequestRecord {
            seq: AtomicU64::new(0),
            lens: AtomicU64::new(0),
            method: AtomicU64::new(0),
            text: std::array::from_fn(|_| AtomicU64::new(0)),
            long: Mutex::new(None),
        }
    }

    /// Records a request. Called only by the connection's task.
    #[inline]
    pub(super) fn set(&self, method: &str, path: &str) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // The stores below are not seen before the odd sequence number.
        fence(Ordering::Release);
        let (m, p) = (method.len(), path.len());
        if m <= 8 && p <= INLINE {
            // A word at a time, the short tails a byte at a time: for the usual `GET /` a
            // few instructions, where a copy through a buffer cost a hundred.
            self.method
                .store(pack(method.as_bytes()), Ordering::Relaxed);
            if p <= 8 {
                // The usual path, `/` or a short one: no loop.
                self.text[0].store(pack(path.as_bytes()), Ordering::Relaxed);
            } else {
                for (slot, word) in self.text.iter().zip(path.as_bytes().chunks(8)) {
                    slot.store(pack(word), Ordering::Relaxed);
                }
            }
            // Both lengths are at most INLINE.
            self.lens
                .store(((m as u64) << 32) | p as u64, Ordering::Relaxed);
        } else {
            let mut long = self.long.lock().unwrap_or_else(PoisonError::into_inner);
            *long = Some((method.to_owned(), path.to_owned()));
            self.lens.store(LONG, Ordering::Relaxed);
        }
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// The latest request's method and path; `None` before the first, or if it kept being
    /// rewritten while read.
    pub(super) fn get(&self) -> Option<(String, String)> {
        for _ in 0..TRIES {
            let seq = self.seq.load(Ordering::Acquire);
            if seq == 0 {
                return None;
            }
            if seq % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let lens = self.lens.load(Ordering::Relaxed);
            let read = if lens == LONG {
                self.long
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            } else {
                let method = self.method.load(Ordering::Relaxed).to_le_bytes();
                let path: Vec<u8> = self
                    .text
                    .iter()
                    .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
                    .collect();
                let m = usize::try_from(lens >> 32).unwrap_or(usize::MAX);
                let p = usize::try_from(lens & u64::from(u32::MAX)).unwrap_or(usize::MAX);
                match (method.get(..m), path.get(..p)) {
                    (Some(method), Some(path)) => Some((
                        String::from_utf8_lossy(method).into_owned(),
                        String::from_utf8_lossy(path).into_owned(),
                    )),
                    // Torn: the sequence check below rejects it.
                    _ => None,
                }
            };
            // The loads above are done before the sequence is read again.
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == seq {
                return read;
            }
        }
        None
    }
}

/// Up to 8 bytes as a word, the first in its lowest byte.
fn pack(bytes: &[u8]) -> u64 {
    if let Ok(word) = <[u8; 8]>::try_from(bytes) {
        return u64::from_le_bytes(word);
    }
    bytes
        .iter()
        .rev()
        .fold(0, |word, &byte| (word << 8) | u64::from(byte))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;

    #[test]
    fn nothing_before_the_first_request() {
        assert_eq!(RequestRecord::new().get(), None);
    }

    #[test]
    fn the_latest_request_is_read_back_short_or_long() {
        let record = RequestRecord::new();
        record.set("GET", "/");
        assert_eq!(record.get(), Some(("GET".into(), "/".into())));
        let long = format!("/{}", "x".repeat(300));
        record.set("POST", &long);
        assert_eq!(record.get(), Some(("POST".into(), long)));
        // Exactly INLINE bytes stay inline; a shorter one after a long one replaces it.
        let fits = format!("/{}", "y".repeat(INLINE - 1));
        record.set("EXTENSION", "/e");
        assert_eq!(record.get(), Some(("EXTENSION".into(), "/e".into())));
        record.set("PUT", &fits);
        assert_eq!(record.get(), Some(("PUT".into(), fits)));
        record.set("DELETE", "/a?b");
        assert_eq!(record.get(), Some(("DELETE".into(), "/a?b".into())));
        record.set("GET", "/1234567");
        assert_eq!(record.get(), Some(("GET".into(), "/1234567".into())));
        record.set("GET", "/12345678");
        assert_eq!(record.get(), Some(("GET".into(), "/12345678".into())));
    }

    #[test]
    fn a_reader_never_sees_a_torn_record() {
        // Two records of different lengths and bytes, rewritten in turn: any mix of the two
        // would read as neither.
        let record = Arc::new(RequestRecord::new());
        let a = ("GET".to_owned(), format!("/{}", "a".repeat(100)));
        let b = ("OPTIONS".to_owned(), "/bb".to_owned());
        record.set(&a.0, &a.1);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (record, stop, a, b) = (record.clone(), stop.clone(), a.clone(), b.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    record.set(&b.0, &b.1);
                    record.set(&a.0, &a.1);
                }
            })
        };
        let mut seen = 0;
        for _ in 0..20_000 {
            if let Some(read) = record.get() {
                assert!(read == a || read == b, "torn record: {read:?}");
                seen += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(seen > 0, "every read gave up");
    }
}
