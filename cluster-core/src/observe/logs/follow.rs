//! One follower's queue of new lines (`clusterctl logs -f`): bounded, and never waited on.
//!
//! Lines reach a follower from the forwarders, which must never wait for a client: a client
//! that reads slowly, or not at all, would otherwise hold up the workers' output and, through
//! their pipes, the workers. So each follower has a queue of its own, filled without waiting;
//! once it holds [`FOLLOW_BUFFER_BYTES`], the lines that do not fit are only counted, and the
//! follower is told how many it missed, where it missed them, when it catches up.

use super::ring::Line;

/// What one follower's queue may hold: line texts plus [`LINE_COST`] per line.
pub(crate) const FOLLOW_BUFFER_BYTES: usize = 1 << 20;

/// What a queued line costs beyond its text (its record and allocation), so that a flood of
/// empty lines is bounded too.
const LINE_COST: usize = 64;

/// What a follower takes from its queue at once.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// New lines, in the order they were printed.
    pub(crate) lines: Vec<Line>,
    /// How many lines were dropped after these because the queue was full.
    pub(crate) dropped: u64,
}

/// A follower's queued lines.
#[derive(Default)]
pub(crate) struct Queue {
    lines: Vec<Line>,
    bytes: usize,
    dropped: u64,
}

impl Queue {
    /// Queues `line`, or counts it as dropped when the queue is full. Once one line is
    /// dropped, every later one is too until the follower has taken the queue, so that the
    /// gap is at one place: after the lines it takes with the count.
    pub(crate) fn push(&mut self, line: Line) {
        let cost = line.text.len() + LINE_COST;
        if self.dropped > 0 || (self.bytes + cost > FOLLOW_BUFFER_BYTES && !self.lines.is_empty()) {
            self.dropped += 1;
            return;
        }
        self.bytes += cost;
        self.lines.push(line);
    }

    /// Everything queued and the count of lines dropped after it, emptying the queue; `None`
    /// when there is nothing.
    pub(crate) fn take(&mut self) -> Option<Delivery> {
        if self.lines.is_empty() && self.dropped == 0 {
            return None;
        }
        self.bytes = 0;
        Some(Delivery {
            lines: std::mem::take(&mut self.lines),
            dropped: std::mem::take(&mut self.dropped),
        })
    }
}
