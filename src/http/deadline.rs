//! One connection's deadlines: the header read (idle) timeout, the write timeout and the
//! request timeout, all checked by one timer per connection instead of a timer per request
//! or per write. Apart
//! from the connection's task because the rule (what counts as progress, how late a check
//! may fire) is the subtle part and is checked here on its own.
//!
//! The timer fires once per period (the shorter of the two timeouts). Each check compares
//! what the connection's I/O wrapper and service recorded since the previous one, so serving
//! pays a plain store per write and nothing per request beyond the existing counters: no
//! clock read, no timer armed or cancelled. The price is precision: a connection is closed
//! between one timeout and one timeout plus one period after it stopped making progress,
//! never before.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::drain::ConnState;

/// Why a connection's deadline closed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expired {
    /// No request head completed for a whole header read timeout while none was under way:
    /// a slowloris client, or a keep-alive connection left idle.
    Header,
    /// A response's bytes could not be written (the socket stayed full) for a whole write
    /// timeout: a client that stopped reading.
    Write,
    /// One request was under way (its handler running, or its response body being produced)
    /// for a whole request timeout: a stuck handler.
    Request,
}

/// The deadlines of one connection and what its last check saw.
pub(super) struct Deadlines {
    header_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    /// The timer's period: the shortest of the header and write timeouts and half the
    /// request timeout, `None` when all are off.
    period: Option<Duration>,
    /// When the timer fires next.
    next: Option<Instant>,
    /// `ConnState::heads` at the last check where it had moved.
    heads: u64,
    /// The last check at which a request was started or under way.
    header_since: Instant,
    /// `ConnState::heads` when the request under way was first seen by a check.
    request_heads: u64,
    /// The last check at which no request was under way, or another one than now: the
    /// current request started after it.
    request_since: Instant,
    /// The last check at which the connection's writes were not stuck. Starts at the
    /// connection's start, which is safe because a new socket's first write always finds
    /// room: a write can only be stuck after earlier ones made progress, and those set
    /// `ConnState::wrote`.
    write_since: Instant,
}

impl Deadlines {
    pub(super) fn new(
        header_timeout: Option<Duration>,
        write_timeout: Option<Duration>,
        request_timeout: Option<Duration>,
        now: Instant,
    ) -> Self {
        // Half the request timeout, so that a stuck request is answered between one and one
        // and a half timeouts after it began.
        let period = [
            header_timeout,
            write_timeout,
            request_timeout.map(|r| r / 2),
        ]
        .into_iter()
        .flatten()
        .filter(|p| !p.is_zero())
        .min();
        Deadlines {
            header_timeout,
            write_timeout,
            request_timeout,
            period,
            next: period.map(|p| now + p),
            heads: 0,
            header_since: now,
            request_heads: 0,
            request_since: now,
            write_since: now,
        }
    }

    /// How long the request under way has run at least, as of the last check.
    pub(super) fn request_age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.request_since)
    }

    /// When the timer should fire next; `None` when no deadline is set.
    pub(super) fn next(&self) -> Option<Instant> {
        self.next
    }

    /// Checks again one period after `now`, after an expiry that did not close the
    /// connection at once (HTTP/2's idle GOAWAY, which waits for its client).
    pub(super) fn postpone(&mut self, now: Instant) {
        self.next = self.period.map(|p| now + p);
    }

    /// The timer fired at `now`: whether a deadline has passed. Re-arms the timer otherwise.
    pub(super) fn check(&mut self, conn: &ConnState, now: Instant) -> Option<Expired> {
        if let Some(timeout) = self.write_timeout {
            // Stuck means: the latest write found the socket full, and no write made progress
            // since the previous check. Progress, or no write waiting, restarts the count.
            let wrote = conn.wrote.swap(false, Ordering::Relaxed);
            if wrote || !conn.write_blocked.load(Ordering::Relaxed) {
                self.write_since = now;
            } else if now.duration_since(self.write_since) >= timeout {
                return Some(Expired::Write);
            }
        }
        if let Some(timeout) = self.request_timeout {
            // The same request (no new head since) still under way: it started after
            // `request_since`. Anything else starts the count again.
            let heads = conn.heads.load(Ordering::Relaxed);
            if conn.busy.load(Ordering::Relaxed) == 0 || heads != self.request_heads {
                self.request_heads = heads;
                self.request_since = now;
            } else if now.duration_since(self.request_since) >= timeout {
                // Counted once: the next check starts over (the request is answered or its
                // connection closed by then).
                self.request_since = now;
                self.next = self.period.map(|p| now + p);
                return Some(Expired::Request);
            }
        }
        if let Some(timeout) = self.header_timeout {
            let heads = conn.heads.load(Ordering::Relaxed);
            if heads != self.heads || conn.busy.load(Ordering::Relaxed) > 0 {
                self.heads = heads;
                self.header_since = now;
            } else if now.duration_since(self.header_since) >= timeout {
                return Some(Expired::Header);
            }
        }
        self.next = self.period.map(|p| now + p);
        None
    }
}
