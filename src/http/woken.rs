//! [`Woken`]: a future that its task polls again only once it asked to be woken. Apart from
//! the connection's task because it is a general mechanism with a subtle contract, checked
//! here on its own.
//!
//! A connection's task selects over hyper's connection, the drain's start and its timers;
//! `select!` polls every branch at every wake-up, and the task wakes once per request. The
//! drain's future locks the cancellation token and its `Notify` at each poll, and the timer
//! registers its waker again: `perf` put about 0.5 us of a keep-alive request's 11 us there.
//! Wrapped, each of them costs a flag's load per request, and is polled only when its own
//! event has fired (or the task's waker changed, which a spawned task's never does).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// The waker the inner future registers: it notes the wake-up, then wakes the task.
struct Signal {
    woken: AtomicBool,
    /// The task's waker, as of the latest poll that had to store it.
    task: Mutex<Option<Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Before waking the task, so that the poll this wake-up causes sees the flag.
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

/// `inner`, polled only at its first poll, after it woke its waker, or when the task's waker
/// is not the one it was last polled with; `Pending` otherwise, at the cost of a load.
pub(super) struct Woken<'a, F> {
    // Pinned by the caller (`pin!`), so that `Woken` is `Unpin` (`&mut Woken` is then a
    // future for `select!`) with neither a box nor unsafe pin projection.
    inner: Pin<&'a mut F>,
    signal: Arc<Signal>,
    waker: Waker,
    /// The task's waker stored in `signal`; `None` before the first poll.
    task: Option<Waker>,
}

impl<'a, F: Future> Woken<'a, F> {
    pub(super) fn new(inner: Pin<&'a mut F>) -> Self {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        Woken {
            inner,
            waker: Waker::from(Arc::clone(&signal)),
            signal,
            task: None,
        }
    }
}

impl<F: Future> Future for Woken<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            if !this.signal.woken.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        } else {
            let mut task = this
                .signal
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *task = Some(cx.waker().clone());
            this.task = Some(cx.waker().clone());
        }
        // Cleared before the poll: a wake-up during or after it is seen at the next one.
        this.signal.woken.store(false, Ordering::Relaxed);
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A future that counts its polls and keeps the latest waker, until told to finish.
    #[derive(Default)]
    struct Probe {
        polls: AtomicUsize,
        waker: Mutex<Option<Waker>>,
        done: AtomicBool,
    }

    fn probe(state: Arc<Probe>) -> impl Future<Output = ()> {
        std::future::poll_fn(move |cx| {
            state.polls.fetch_add(1, Ordering::Relaxed);
            *state.waker.lock().unwrap() = Some(cx.waker().clone());
            if state.done.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }

    /// A task waker that counts its wake-ups.
    #[derive(Default)]
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll<F: Future>(f: &mut Woken<'_, F>, task: &Arc<Task>) -> Poll<F::Output> {
        let waker = Waker::from(Arc::clone(task));
        Pin::new(f).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn the_inner_future_is_polled_only_once_it_woke() {
        let state = Arc::new(Probe::default());
        let inner = std::pin::pin!(probe(state.clone()));
        let mut woken = Woken::new(inner);
        let task = Arc::new(Task::default());
        for _ in 0..5 {
            assert!(poll(&mut woken, &task).is_pending());
        }
        assert_eq!(
            state.polls.load(Ordering::Relaxed),
            1,
            "polled at the first poll only"
        );
        // Its event fires: the task is woken, and the next poll reaches the inner future.
        state.done.store(true, Ordering::Relaxed);
        let inner = state.waker.lock().unwrap().clone().unwrap();
        inner.wake();
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "the task was woken");
        assert!(poll(&mut woken, &task).is_ready());
        assert_eq!(state.polls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_wake_up_is_consumed_by_the_poll_it_causes() {
        let state = Arc::new(Probe::default());
        let inner = std::pin::pin!(probe(state.clone()));
        let mut woken = Woken::new(inner);
        let task = Arc::new(Task::default());
        assert!(poll(&mut woken, &task).is_pending());
        let inner = state.waker.lock().unwrap().clone().unwrap();
        inner.wake_by_ref();
        assert!(poll(&mut woken, &task).is_pending());
        assert!(poll(&mut woken, &task).is_pending());
        assert_eq!(
            state.polls.load(Ordering::Relaxed),
            2,
            "one poll per wake-up"
        );
    }

    #[test]
    fn another_task_waker_polls_the_inner_future_again() {
        let state = Arc::new(Probe::default());
        let inner = std::pin::pin!(probe(state.clone()));
        let mut woken = Woken::new(inner);
        let first = Arc::new(Task::default());
        let second = Arc::new(Task::default());
        assert!(poll(&mut woken, &first).is_pending());
        assert!(poll(&mut woken, &second).is_pending());
        assert_eq!(state.polls.load(Ordering::Relaxed), 2);
        // The inner future's wake-up now reaches the task that polled last.
        state.waker.lock().unwrap().clone().unwrap().wake();
        assert_eq!(first.0.load(Ordering::Relaxed), 0);
        assert_eq!(second.0.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_timer_and_a_cancellation_fire_through_it() {
        use std::time::Duration;
        let token = tokio_util::sync::CancellationToken::new();
        let cancelled = std::pin::pin!(token.cancelled());
        let mut cancelled = Woken::new(cancelled);
        let sleep = std::pin::pin!(tokio::time::sleep(Duration::from_millis(20)));
        let mut sleep = Woken::new(sleep);
        // Both are polled at every turn; only the timer's wake-up may end the select.
        let within = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::select! {
                () = &mut cancelled => panic!("not cancelled yet"),
                () = &mut sleep => {}
            }
        });
        within
            .await
            .expect("the timer woke the task through its own waker");
        let cancel = token.clone();
        tokio::spawn(async move { cancel.cancel() });
        tokio::time::timeout(Duration::from_secs(10), cancelled)
            .await
            .expect("the cancellation woke the task through its own waker");
    }
}
