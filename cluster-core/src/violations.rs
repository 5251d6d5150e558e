//! What workers did that the master does not allow: each bound a worker can hit, counted for
//! `/status` and `/metrics` and told to the operator. Apart from the places that enforce the
//! bounds (the supervisor, the listeners, the reporters) so that they count and speak alike.
//! Imports nothing of the crate but the model, so every part can use it.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::WorkerId;

/// Lifecycle notices go through `tracing`; without a subscriber they would vanish, and an
/// operator must still see why workers were killed, restarted or held back.
macro_rules! notice {
    ($level:ident, $($arg:tt)*) => {{
        if tracing::dispatcher::has_been_set() {
            tracing::$level!($($arg)*);
        } else {
            eprintln!("cluster: {}", format_args!($($arg)*));
        }
    }};
}
pub(crate) use notice;

/// A bound a worker went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// It did not read its channel: its outbox filled, or a connection it was handed stayed
    /// unacknowledged past `heartbeat_timeout`. Replaced the graceful way.
    UnreadChannel,
    /// A connection it was handed stayed unacknowledged past `ack_timeout`: new connections
    /// went to other workers (counted per connection steered away).
    AckTimeout,
    /// Its app did not read its messages: the worker's queue was full and messages from the
    /// master were dropped.
    AppQueue,
    /// It asked for more listening addresses than the master keeps.
    Listeners,
    /// Its metrics answer was larger than the master takes.
    MetricsSize,
    /// It answered a request, scrape or connection that was not its own.
    StrayAnswer,
    /// It sent messages faster than the supervisor reads them and was slowed down.
    Flood,
    /// Its channel broke the protocol (a garbled or oversized frame, descriptors no frame
    /// claims): the channel cannot be read past it, so the worker is killed and restarted
    /// like a crash.
    BadFrame,
    /// It subscribed to a topic of the master's store and did not read what was published
    /// fast enough: values were dropped for it (counted per value lost) and it was told how
    /// many, rather than the master waiting for it.
    StoreLagged,
}

impl Violation {
    /// Every kind, in the order of [`Violations::snapshot`].
    pub(crate) const ALL: [Violation; 9] = [
        Violation::UnreadChannel,
        Violation::AckTimeout,
        Violation::AppQueue,
        Violation::Listeners,
        Violation::MetricsSize,
        Violation::StrayAnswer,
        Violation::Flood,
        Violation::BadFrame,
        Violation::StoreLagged,
    ];

    /// The name in `/status`, the `kind` label of `cluster_worker_violations_total` and logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Violation::UnreadChannel => "unread_channel",
            Violation::AckTimeout => "ack_timeout",
            Violation::AppQueue => "app_queue",
            Violation::Listeners => "listeners",
            Violation::MetricsSize => "metrics_size",
            Violation::StrayAnswer => "stray_answer",
            Violation::Flood => "flood",
            Violation::BadFrame => "bad_frame",
            Violation::StoreLagged => "store_lagged",
        }
    }

    fn index(self) -> usize {
        Violation::ALL
            .iter()
            .position(|v| *v == self)
            .unwrap_or_default()
    }
}

/// Counts of each [`Violation`] over the master's life, shared by everything that enforces a
/// bound.
#[derive(Debug, Default)]
pub(crate) struct Violations {
    counts: [AtomicU64; Violation::ALL.len()],
}

impl Violations {
    /// Counts one `kind` by worker `id` and tells the operator what happened. A worker that
    /// repeats itself is logged at its 1st, 2nd, 4th, 8th... time of each kind, so that a
    /// flood of stray answers cannot flood the log too; the count stays exact.
    pub(crate) fn record(&self, kind: Violation, id: &WorkerId, what: impl fmt::Display) {
        let count = self.counts[kind.index()].fetch_add(1, Ordering::Relaxed) + 1;
        if count.is_power_of_two() {
            notice!(warn, "worker {id} {what} [{}, {count} so far]", kind.name());
        }
    }

    /// Each kind's name and count.
    pub(crate) fn snapshot(&self) -> Vec<(&'static str, u64)> {
        Violation::ALL
            .iter()
            .map(|v| (v.name(), self.counts[v.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_and_named() {
        let v = Violations::default();
        let id = WorkerId {
            group: "w".into(),
            slot: 0,
            generation: 1,
        };
        for _ in 0..5 {
            v.record(
                Violation::StrayAnswer,
                &id,
                "answered another worker's request",
            );
        }
        for _ in 0..3 {
            v.record(Violation::AckTimeout, &id, "stalled");
        }
        let snap = v.snapshot();
        assert_eq!(snap.len(), Violation::ALL.len());
        assert!(snap.contains(&("stray_answer", 5)));
        assert!(snap.contains(&("ack_timeout", 3)));
        assert!(snap.contains(&("flood", 0)));
    }
}
