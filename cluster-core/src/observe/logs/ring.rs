//! One slot's last output lines, for `clusterctl logs`: a ring bounded in lines and in bytes.
//!
//! The bytes of every line live in one `VecDeque<u8>` and each line is a small record of its
//! length beside it, so keeping a line costs a copy into memory the ring already has (it grows
//! to its bound once and stays there), not an allocation per line.

use std::collections::VecDeque;

use super::Stream;

/// A line as the ring gives it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    /// Its place among every line the master kept, all slots together: lines of several
    /// slots are put back in the order they were printed by it.
    pub(crate) seq: u64,
    /// The worker process that wrote it (its generation in the slot).
    pub(crate) generation: u64,
    pub(crate) stream: Stream,
    /// The line as the master printed it, prefix included (`[web/0 pid 12] hello`), without
    /// its `\n`.
    pub(crate) text: Vec<u8>,
}

/// What the ring records about each line; its bytes are in `Ring::bytes`.
struct Record {
    seq: u64,
    generation: u64,
    stream: Stream,
    len: usize,
}

/// The last lines of one slot, oldest first: at most `max_lines` of them and, apart from the
/// newest line, which is always kept, at most `max_bytes` of their text.
pub(crate) struct Ring {
    max_lines: usize,
    max_bytes: usize,
    records: VecDeque<Record>,
    bytes: VecDeque<u8>,
}

impl Ring {
    pub(crate) fn new(max_lines: usize, max_bytes: usize) -> Ring {
        Ring {
            max_lines,
            max_bytes,
            records: VecDeque::new(),
            bytes: VecDeque::new(),
        }
    }

    /// Keeps `text` (one line without its `\n`) as the newest line, dropping the oldest ones
    /// past either bound.
    pub(crate) fn push(&mut self, seq: u64, generation: u64, stream: Stream, text: &[u8]) {
        if self.max_lines == 0 {
            return;
        }
        self.bytes.extend(text);
        self.records.push_back(Record {
            seq,
            generation,
            stream,
            len: text.len(),
        });
        while self.records.len() > self.max_lines
            || (self.bytes.len() > self.max_bytes && self.records.len() > 1)
        {
            let Some(oldest) = self.records.pop_front() else {
                break;
            };
            self.bytes.drain(..oldest.len);
        }
    }

    /// How many lines it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// How many bytes of text it holds.
    #[cfg(test)]
    pub(crate) fn text_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The last `n` lines (fewer if it holds fewer), oldest first; only those of worker
    /// `generation` when given.
    pub(crate) fn last(&self, n: usize, generation: Option<u64>) -> Vec<Line> {
        let mut out = Vec::with_capacity(n.min(self.records.len()));
        let mut end = self.bytes.len();
        for record in self.records.iter().rev() {
            if out.len() == n {
                break;
            }
            let start = end - record.len;
            if generation.is_none_or(|g| g == record.generation) {
                out.push(Line {
                    seq: record.seq,
                    generation: record.generation,
                    stream: record.stream,
                    text: copy_range(&self.bytes, start, end),
                });
            }
            end = start;
        }
        out.reverse();
        out
    }
}

/// Bytes `start..end` of `bytes`, copied out of its (at most two) contiguous parts.
fn copy_range(bytes: &VecDeque<u8>, start: usize, end: usize) -> Vec<u8> {
    let (front, back) = bytes.as_slices();
    let mut out = Vec::with_capacity(end - start);
    if start < front.len() {
        out.extend_from_slice(&front[start..end.min(front.len())]);
    }
    if end > front.len() {
        out.extend_from_slice(&back[start.saturating_sub(front.len())..end - front.len()]);
    }
    out
}
