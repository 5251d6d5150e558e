//! How one worker process reports to the supervisor. The supervisor makes a [`Reporter`] for
//! each process it launches; whatever watches the process (the real `watch` task, or a test's
//! fake) reports through it, so that the rules below hold for both:
//!
//! - heartbeats never enter the supervisor's queue: they update the process's [`Beat`], which
//!   the watchdog reads, so a worker flooding its channel cannot delay another's heartbeat and
//!   get a healthy worker killed as hung;
//! - acknowledgements of handed connections are settled at once, off the loop;
//! - everything else a worker sends waits for one of its own [`CREDITS`] and for room in its
//!   own [`BYTE_CREDITS`]: a worker can have at most that many messages, of at most that many
//!   bytes, in the supervisor's queue, and one that sends faster than the supervisor reads is
//!   slowed down alone (its channel stops being read) instead of growing the master's memory
//!   or delaying the others;
//! - a metrics answer over [`MAX_METRICS_TEXT`] is dropped here, before it is queued;
//! - operations on the master's store go straight to the store's task, never through the
//!   supervisor's queue, each holding one of the worker's [`STORE_CREDITS`] until its answer
//!   is written back, and the answer goes only to this worker (its link is the reporter's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use super::process::Internal;
use crate::model::{ExitKind, WorkerId};
use crate::net::dispatch::InFlightTable;
use crate::protocol::{SlowRequest, StoreOp, ToMaster, ToWorker};
use crate::store::{Asked, Client, Reply, StoreHandle, WorkerLink};
use crate::violations::Violation;

/// Messages of one worker that may wait in the supervisor's queue at once.
pub(crate) const CREDITS: usize = 256;

/// Bytes of payload of one worker that may wait in the supervisor's queue at once, in KiB:
/// one message of the channel's largest frame (16 MiB) fits, 256 of them do not.
pub(crate) const BYTE_CREDITS: usize = 16 * 1024 + 64;

/// Heartbeats a second above which a worker is reported as flooding. The worker runtime
/// beats once per `heartbeat_interval` (1 s by default, at least every few ms); a hundred
/// a second is a bug or an attack, though it costs the master little: heartbeats never
/// enter the supervisor's queue.
pub(crate) const MAX_HEARTBEATS_PER_SECOND: u64 = 100;

/// The largest metrics text the master takes from one worker. A registry this large is a
/// bug (a label with unbounded values); merged into every scrape it would cost the master
/// that much memory per scrape.
pub(crate) const MAX_METRICS_TEXT: usize = 4 << 20;

/// Operations of one worker on the master's store whose answers are not written back yet.
/// A worker that asks without reading its answers is slowed down alone, as by [`CREDITS`].
pub(crate) const STORE_CREDITS: usize = 1024;

/// The KiB of [`BYTE_CREDITS`] a message takes: its payload, rounded up, at least 1.
fn weight(msg: &ToMaster) -> u32 {
    let bytes = match msg {
        ToMaster::User(payload)
        | ToMaster::Request { payload, .. }
        | ToMaster::Response { payload, .. } => payload.len(),
        ToMaster::Metrics { text, .. } => text.len(),
        _ => 0,
    };
    u32::try_from(bytes.div_ceil(1024).clamp(1, BYTE_CREDITS)).unwrap_or(1)
}

/// A process's last heartbeat, written by its reporter and read by the watchdog.
#[derive(Debug)]
pub(crate) struct Beat {
    /// The supervisor's clock origin.
    epoch: Instant,
    /// Milliseconds from `epoch` to the last heartbeat (or to the channel coming up); 0: none.
    last_ms: AtomicU64,
    /// How late the worker's runtime ran that heartbeat.
    lag_us: AtomicU64,
    /// Open connections the worker reported with it.
    connections: AtomicU64,
    /// Requests the worker reported serving (`ToMaster::Served`), for `max_requests`.
    requests: AtomicU64,
    /// Its last report of requests under way for over a second (`ToMaster::InFlight`).
    slow: std::sync::Mutex<Vec<SlowRequest>>,
    /// The second (from `epoch`) whose heartbeats `in_second` counts.
    second: AtomicU64,
    in_second: AtomicU64,
}

impl Beat {
    pub(crate) fn new(epoch: Instant) -> Self {
        Beat {
            epoch,
            last_ms: AtomicU64::new(0),
            lag_us: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            slow: std::sync::Mutex::new(Vec::new()),
            second: AtomicU64::new(0),
            in_second: AtomicU64::new(0),
        }
    }

    /// Records a sign of life now.
    pub(crate) fn touch(&self) {
        let ms = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_millis();
        // +1 keeps "now, at the epoch" apart from "never".
        let ms = u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the last sign of life was, if any.
    pub(crate) fn last(&self) -> Option<Instant> {
        match self.last_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.epoch + Duration::from_millis(ms - 1)),
        }
    }

    pub(crate) fn lag(&self) -> Option<Duration> {
        self.last()
            .map(|_| Duration::from_micros(self.lag_us.load(Ordering::Relaxed)))
    }

    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The worker's last report of its slow requests.
    pub(crate) fn slow_requests(&self) -> Vec<SlowRequest> {
        self.slow.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Requests the worker said it has served.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Counts a heartbeat; true for the one that first goes past
    /// [`MAX_HEARTBEATS_PER_SECOND`] in a second. Only the worker's reading task calls it,
    /// so the two counters need no common lock.
    fn count(&self) -> bool {
        let second = Instant::now()
            .saturating_duration_since(self.epoch)
            .as_secs();
        if self.second.swap(second, Ordering::Relaxed) != second {
            self.in_second.store(0, Ordering::Relaxed);
        }
        self.in_second.fetch_add(1, Ordering::Relaxed) + 1 == MAX_HEARTBEATS_PER_SECOND + 1
    }
}

/// The most slow requests kept per worker, and the longest method or path kept of each: a
/// worker's report costs the master a bounded amount however it was made.
const MAX_SLOW_REPORTED: usize = 16;
const MAX_SLOW_TEXT: usize = 256;

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn truncate_text(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// A message from a worker in the supervisor's queue, holding one of that worker's credits
/// until the supervisor has handled it.
pub(crate) struct Credited {
    pub(crate) msg: ToMaster,
    _credit: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

impl Credited {
    pub(crate) fn into_inner(self) -> ToMaster {
        self.msg
    }
}

/// One process's way to the supervisor.
pub(crate) struct Reporter {
    id: WorkerId,
    internal: mpsc::UnboundedSender<Internal>,
    beat: Arc<Beat>,
    credits: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    in_flight: Arc<InFlightTable>,
    store: Option<StoreHandle>,
    /// The worker's queues to the store, from when its channel is up.
    store_link: OnceLock<WorkerLink>,
    store_credits: Arc<Semaphore>,
}

impl Reporter {
    pub(crate) fn new(
        id: WorkerId,
        internal: mpsc::UnboundedSender<Internal>,
        beat: Arc<Beat>,
        in_flight: Arc<InFlightTable>,
    ) -> Self {
        Reporter {
            id,
            internal,
            beat,
            credits: Arc::new(Semaphore::new(CREDITS)),
            bytes: Arc::new(Semaphore::new(BYTE_CREDITS)),
            in_flight,
            store: None,
            store_link: OnceLock::new(),
            store_credits: Arc::new(Semaphore::new(STORE_CREDITS)),
        }
    }

    /// The same reporter, serving the worker's operations on the master's store.
    pub(crate) fn with_store(mut self, store: Option<StoreHandle>) -> Self {
        self.store = store;
        self
    }

    pub(crate) fn id(&self) -> &WorkerId {
        &self.id
    }

    /// The worker's channel is up.
    pub(crate) fn online(&self, sender: cluster_ipc::Sender<ToWorker>) {
        self.beat.touch();
        if let Some(store) = &self.store {
            let _ = self
                .store_link
                .set(WorkerLink::start(store, sender.clone()));
        }
        let _ = self.internal.send(Internal::Online {
            id: self.id.clone(),
            sender,
        });
    }

    /// A message from the worker. Waits while the worker has [`CREDITS`] messages queued.
    pub(crate) async fn message(&self, msg: ToMaster) {
        match msg {
            ToMaster::Heartbeat {
                lag_us,
                connections,
            } => {
                self.beat.lag_us.store(lag_us, Ordering::Relaxed);
                self.beat.connections.store(connections, Ordering::Relaxed);
                self.beat.touch();
                if self.beat.count() {
                    self.in_flight.violations.record(
                        Violation::Flood,
                        &self.id,
                        format_args!(
                            "sent over {MAX_HEARTBEATS_PER_SECOND} heartbeats in a second"
                        ),
                    );
                }
            }
            // A count that only grows: a worker cannot lower it to dodge `max_requests`.
            ToMaster::Served { requests } => {
                self.beat.requests.fetch_max(requests, Ordering::Relaxed);
            }
            // Kept beside the heartbeat: the watchdog's report needs the last one the worker
            // sent before it hung. Bounded here, whatever the worker sends.
            ToMaster::InFlight { mut requests } => {
                requests.truncate(MAX_SLOW_REPORTED);
                for r in &mut requests {
                    truncate_text(&mut r.method, MAX_SLOW_TEXT);
                    truncate_text(&mut r.path, MAX_SLOW_TEXT);
                }
                if let Ok(mut slow) = self.beat.slow.lock() {
                    *slow = requests;
                }
            }
            // The busiest message under a master-accept policy: settled here, off the loop.
            ToMaster::Accepted { conn } => self.in_flight.ack(conn, &self.id),
            ToMaster::Metrics { id, text } if text.len() > MAX_METRICS_TEXT => {
                self.in_flight.violations.record(
                    Violation::MetricsSize,
                    &self.id,
                    format_args!(
                        "sent {} MiB of metrics, over the {} MiB the master takes: left out of the scrape",
                        text.len() >> 20,
                        MAX_METRICS_TEXT >> 20
                    ),
                );
                drop(text);
                self.queue(ToMaster::Metrics {
                    id,
                    text: String::new(),
                })
                .await;
            }
            ToMaster::Store { id, op } => self.store_op(id, op).await,
            msg => self.queue(msg).await,
        }
    }

    /// Hands an operation on the store to the store's task, once the worker has a credit.
    async fn store_op(&self, id: u64, op: StoreOp) {
        let (Some(store), Some(link)) = (&self.store, self.store_link.get()) else {
            return;
        };
        let Ok(credit) = self.store_credits.clone().acquire_owned().await else {
            return;
        };
        let asked = Asked {
            from: Client::Worker(self.id.clone()),
            op,
            reply: Reply::Remote {
                id,
                answers: link.answers.clone(),
                credit,
            },
            pushes: link.pushes.clone(),
        };
        store.ask(asked).await;
    }

    /// Puts `msg` in the supervisor's queue once the worker has a credit and room for its
    /// bytes.
    async fn queue(&self, msg: ToMaster) {
        let weight = weight(&msg);
        if self.credits.available_permits() == 0 || self.bytes.available_permits() < weight as usize
        {
            self.in_flight.violations.record(
                Violation::Flood,
                &self.id,
                format_args!(
                    "has {CREDITS} messages or {} MiB waiting for the supervisor: its channel is no longer read until they are handled",
                    BYTE_CREDITS >> 10
                ),
            );
        }
        let Ok(credit) = self.credits.clone().acquire_owned().await else {
            return;
        };
        let Ok(bytes) = self.bytes.clone().acquire_many_owned(weight).await else {
            return;
        };
        let _ = self.internal.send(Internal::FromWorker {
            id: self.id.clone(),
            msg: Credited {
                msg,
                _credit: (credit, bytes),
            },
        });
    }

    /// The worker's channel broke the protocol; the caller kills the worker.
    pub(crate) fn bad_frame(&self, error: &cluster_ipc::Error) {
        self.in_flight.violations.record(
            Violation::BadFrame,
            &self.id,
            format_args!(
                "broke the channel's protocol ({}): killing it",
                crate::error::chain(error)
            ),
        );
    }

    /// The process has exited: the last report.
    pub(crate) fn exited(self, exit: ExitKind) {
        if let Some(store) = &self.store {
            store.gone(Client::Worker(self.id.clone()));
        }
        let _ = self.internal.send(Internal::Exited { id: self.id, exit });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reporter(slot: usize, internal: &mpsc::UnboundedSender<Internal>) -> Reporter {
        let id = WorkerId {
            group: "worker".into(),
            slot,
            generation: 1,
        };
        let beat = Arc::new(Beat::new(Instant::now()));
        Reporter::new(
            id,
            internal.clone(),
            beat,
            Arc::new(InFlightTable::new(Arc::default())),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_flooding_worker_is_held_to_its_credits_and_another_is_not_slowed() {
        let (internal, mut queue) = mpsc::unbounded_channel();
        let flooder = Arc::new(reporter(0, &internal));
        let calm = reporter(1, &internal);
        let flood = {
            let flooder = flooder.clone();
            tokio::spawn(async move {
                for _ in 0..10 * CREDITS {
                    flooder.message(ToMaster::User(vec![0; 16])).await;
                }
            })
        };
        // Let the flooder run until it blocks.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            queue.len(),
            CREDITS,
            "the flooder got more than its credits"
        );
        assert!(!flood.is_finished());
        // The other worker's heartbeat is seen at once, and its message is queued without
        // waiting for the flooder's to be handled.
        calm.message(ToMaster::Heartbeat {
            lag_us: 5,
            connections: 3,
        })
        .await;
        assert!(calm.beat.last().is_some());
        assert_eq!(calm.beat.connections(), 3);
        tokio::time::timeout(Duration::from_secs(1), calm.message(ToMaster::Ready))
            .await
            .expect("the calm worker waited for the flooder's credits");
        assert_eq!(queue.len(), CREDITS + 1);
        // Handling the flooder's messages gives its credits back, one by one.
        let mut handled = 0;
        while handled < 10 * CREDITS {
            match queue.recv().await {
                Some(Internal::FromWorker { id, msg }) if id.slot == 0 => {
                    drop(msg);
                    handled += 1;
                }
                Some(_) => {}
                None => break,
            }
        }
        flood.await.unwrap();
    }

    fn flood_count(r: &Reporter) -> u64 {
        r.in_flight
            .violations
            .snapshot()
            .into_iter()
            .find(|(kind, _)| *kind == "flood")
            .map_or(0, |(_, n)| n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_flood_is_reported_once_a_second_and_normal_beats_never() {
        let (internal, _queue) = mpsc::unbounded_channel();
        let r = reporter(0, &internal);
        let beat = || ToMaster::Heartbeat {
            lag_us: 0,
            connections: 0,
        };
        for _ in 0..MAX_HEARTBEATS_PER_SECOND {
            r.message(beat()).await;
        }
        assert_eq!(flood_count(&r), 0);
        for _ in 0..1000 {
            r.message(beat()).await;
        }
        assert_eq!(flood_count(&r), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..1000 {
            r.message(beat()).await;
        }
        assert_eq!(flood_count(&r), 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..10 {
            r.message(beat()).await;
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(flood_count(&r), 2);
    }
}
