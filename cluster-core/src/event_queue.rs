//! The queue of events from the supervisor to the master's function. Two kinds share it, in
//! one order: lifecycle events (spawned, ready, exit, reload...), which a master acts on and
//! must never lose to a chatty worker, and app messages from workers, which a worker
//! controls. App messages have a bound of their own, in count and bytes; while it is full new
//! ones are dropped (and counted), and lifecycle events still get in. Generic over the event
//! type so that it imports nothing of the crate and is tested alone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// App messages the queue holds at most.
pub(crate) const MAX_APP_EVENTS: usize = 4096;
/// Bytes of app messages the queue holds at most: four of the channel's largest frames.
pub(crate) const MAX_APP_BYTES: usize = 64 << 20;
/// Lifecycle events the queue holds at most. A master function that never reads its events
/// must not make a cluster that runs for months grow without bound; past this the oldest
/// lifecycle event goes.
pub(crate) const MAX_LIFECYCLE_EVENTS: usize = 4096;

/// Why an event was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The app messages' bound is reached.
    Full,
    /// Nobody reads the queue any more.
    Closed,
}

struct Entry<T> {
    item: T,
    /// Bytes of an app message; `None` for a lifecycle event.
    app: Option<usize>,
}

struct Inner<T> {
    entries: VecDeque<Entry<T>>,
    app_count: usize,
    app_bytes: usize,
    lifecycle_count: usize,
    senders_gone: bool,
    receiver_gone: bool,
}

struct Shared<T> {
    inner: Mutex<Inner<T>>,
    notify: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The supervisor's end.
pub(crate) struct EventSender<T> {
    shared: Arc<Shared<T>>,
}

/// The master function's end.
pub(crate) struct EventReceiver<T> {
    shared: Arc<Shared<T>>,
}

pub(crate) fn event_queue<T>() -> (EventSender<T>, EventReceiver<T>) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            entries: VecDeque::new(),
            app_count: 0,
            app_bytes: 0,
            lifecycle_count: 0,
            senders_gone: false,
            receiver_gone: false,
        }),
        notify: Notify::new(),
    });
    (
        EventSender {
            shared: shared.clone(),
        },
        EventReceiver { shared },
    )
}

impl<T> EventSender<T> {
    /// Queues a lifecycle event; returns `false` once nobody reads the queue. A full queue
    /// of lifecycle events loses its oldest one, never this one, and never to app messages.
    pub(crate) fn lifecycle(&self, item: T) -> Result<(), Refused> {
        let mut inner = self.shared.lock();
        if inner.receiver_gone {
            return Err(Refused::Closed);
        }
        if inner.lifecycle_count >= MAX_LIFECYCLE_EVENTS {
            if let Some(oldest) = inner.entries.iter().position(|e| e.app.is_none()) {
                inner.entries.remove(oldest);
                inner.lifecycle_count -= 1;
                tracing::warn!(
                    "the master's function has not read {MAX_LIFECYCLE_EVENTS} lifecycle events: the oldest was dropped"
                );
            }
        }
        inner.entries.push_back(Entry { item, app: None });
        inner.lifecycle_count += 1;
        drop(inner);
        self.shared.notify.notify_one();
        Ok(())
    }

    /// Queues an app message of `bytes` bytes, unless the app messages' bound is reached.
    pub(crate) fn app(&self, item: T, bytes: usize) -> Result<(), Refused> {
        let mut inner = self.shared.lock();
        if inner.receiver_gone {
            return Err(Refused::Closed);
        }
        if inner.app_count >= MAX_APP_EVENTS || inner.app_bytes + bytes > MAX_APP_BYTES {
            return Err(Refused::Full);
        }
        inner.entries.push_back(Entry {
            item,
            app: Some(bytes),
        });
        inner.app_count += 1;
        inner.app_bytes += bytes;
        drop(inner);
        self.shared.notify.notify_one();
        Ok(())
    }
}

impl<T> Drop for EventSender<T> {
    fn drop(&mut self) {
        self.shared.lock().senders_gone = true;
        self.shared.notify.notify_one();
    }
}

impl<T> EventReceiver<T> {
    /// The next event, in the order they were queued; `None` once the sender is gone and
    /// every event before has been taken. Cancel safe: an event leaves the queue only in a
    /// call that returns it.
    pub(crate) async fn recv(&self) -> Option<T> {
        loop {
            let notified = self.shared.notify.notified();
            if let Some(item) = self.try_recv() {
                return Some(item);
            }
            if self.shared.lock().senders_gone {
                // An event may have come between the two locks.
                return self.try_recv();
            }
            notified.await;
        }
    }

    /// The next event if one is queued.
    pub(crate) fn try_recv(&self) -> Option<T> {
        let mut inner = self.shared.lock();
        let entry = inner.entries.pop_front()?;
        match entry.app {
            Some(bytes) => {
                inner.app_count -= 1;
                inner.app_bytes -= bytes;
            }
            None => inner.lifecycle_count -= 1,
        }
        Some(entry.item)
    }
}

impl<T> Drop for EventReceiver<T> {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.receiver_gone = true;
        inner.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_flood_of_app_messages_never_keeps_a_lifecycle_event_out() {
        let (tx, rx) = event_queue::<u32>();
        let mut refused = 0;
        for n in 0..(MAX_APP_EVENTS as u32 + 100) {
            if tx.app(n, 10) == Err(Refused::Full) {
                refused += 1;
            }
        }
        assert_eq!(refused, 100);
        tx.lifecycle(u32::MAX).unwrap();
        // In order: every app message queued, then the lifecycle event.
        for n in 0..MAX_APP_EVENTS as u32 {
            assert_eq!(rx.recv().await, Some(n));
        }
        assert_eq!(rx.recv().await, Some(u32::MAX));
        // Reading made room again.
        tx.app(1, 10).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn app_messages_are_bounded_in_bytes_too() {
        let (tx, _rx) = event_queue::<u32>();
        tx.app(0, MAX_APP_BYTES - 10).unwrap();
        assert_eq!(tx.app(1, 11), Err(Refused::Full));
        tx.app(2, 10).unwrap();
        tx.lifecycle(3).unwrap();
    }

    #[tokio::test]
    async fn lifecycle_events_past_their_bound_lose_the_oldest() {
        let (tx, rx) = event_queue::<usize>();
        for n in 0..MAX_LIFECYCLE_EVENTS + 2 {
            tx.lifecycle(n).unwrap();
        }
        assert_eq!(rx.recv().await, Some(2));
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_for_an_event_and_a_gone_reader_refuses() {
        let (tx, rx) = event_queue::<u32>();
        let reader = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.lifecycle(5).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Some(5));
        assert_eq!(tx.lifecycle(6), Err(Refused::Closed));
        assert_eq!(tx.app(7, 1), Err(Refused::Closed));
    }
}
