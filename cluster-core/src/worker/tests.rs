//! Unit tests of the worker's shared state, against a channel whose master end the test holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use cluster_ipc::{Channel, Config};
use tokio::sync::mpsc;

use super::shared::WorkerShared;
use crate::protocol::{ToMaster, ToWorker};

/// Bound on waits that should be quick.
const STEP: Duration = Duration::from_secs(5);

/// A worker's shared state on a channel whose master end the test holds.
async fn shared_with_master(
    config: Config,
) -> (Arc<WorkerShared>, cluster_ipc::Receiver<ToMaster>) {
    let (worker, master) = Channel::<ToMaster, ToWorker>::pair(config).await.unwrap();
    let (sender, _) = worker.split();
    let (_, from_worker) = master.split();
    let (closes, _) = mpsc::unbounded_channel();
    let shared = WorkerShared::new(sender, closes, false, crate::protocol::LEVEL);
    shared.first_poll_done.store(true, Ordering::SeqCst);
    let shared = Arc::new(shared);
    (shared, from_worker)
}

/// A `ready` dropped while the channel is full sent nothing, so it must not count as sent:
/// the next call reports the worker ready.
#[tokio::test]
async fn a_ready_report_dropped_before_it_was_queued_is_sent_by_the_next_call() {
    let (shared, mut from_worker) =
        shared_with_master(Config::default().with_write_buffer(64 << 10)).await;
    // Fill the socket and then the channel's buffer: the master end reads nothing yet.
    let mut queued = 0;
    loop {
        let big = ToMaster::User(vec![0; 32 << 10]);
        let send = shared.sender.send(&big);
        match tokio::time::timeout(Duration::from_millis(100), send).await {
            Ok(result) => result.unwrap(),
            Err(_) => break,
        }
        queued += 1;
        assert!(queued < 10_000, "the channel never filled up");
    }
    let gave_up = tokio::time::timeout(Duration::from_millis(50), shared.send_ready()).await;
    assert!(gave_up.is_err(), "the report waited for room");
    assert!(!shared.ready_sent.load(Ordering::SeqCst));

    // The master reads what was queued; the next call reports ready.
    let reader = tokio::spawn(async move {
        loop {
            match tokio::time::timeout(STEP, from_worker.recv()).await {
                Ok(Ok(Some(ToMaster::Ready))) => return true,
                Ok(Ok(Some(_))) => {}
                _ => return false,
            }
        }
    });
    tokio::time::timeout(STEP, shared.send_ready())
        .await
        .unwrap()
        .unwrap();
    assert!(shared.ready_sent.load(Ordering::SeqCst));
    assert!(reader.await.unwrap(), "the master got the ready report");
}

/// An app that never calls `recv` fills its queue; the reader drops what does not fit,
/// says so, and goes on reading the master's control messages.
#[tokio::test]
async fn a_full_app_queue_never_blocks_the_control_messages_behind_it() {
    use super::reader::{APP_QUEUE, read_master};
    use crate::messaging::{Pending, encode};

    let (shared, mut from_worker) = shared_with_master(Config::default()).await;
    let (master, worker) = Channel::<ToWorker, ToMaster>::pair(Config::default())
        .await
        .unwrap();
    let (to_worker, _) = master.split();
    let (_, rx) = worker.split();
    let (queue, _app_never_reads) = mpsc::channel::<super::Incoming<u32, u32>>(APP_QUEUE);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let reader = tokio::spawn(read_master(
        rx,
        shared.sender.clone(),
        queue,
        shutdown.clone(),
        Arc::new(Pending::default()),
        shared.clone(),
    ));

    let sent = APP_QUEUE + 500;
    for n in 0..sent {
        let n = u32::try_from(n).unwrap();
        to_worker
            .send(&ToWorker::User(encode(&n).unwrap()))
            .await
            .unwrap();
    }
    to_worker
        .send(&ToWorker::MetricsRequest { id: 7 })
        .await
        .unwrap();
    to_worker.send(&ToWorker::Shutdown).await.unwrap();

    let mut dropped = 0;
    let mut metrics = false;
    while !metrics {
        match tokio::time::timeout(STEP, from_worker.recv()).await {
            Ok(Ok(Some(ToMaster::Dropped { dropped: n }))) => dropped = n,
            Ok(Ok(Some(ToMaster::Metrics { id: 7, .. }))) => metrics = true,
            Ok(Ok(Some(_))) => {}
            other => panic!("the reader stalled behind the app's queue: {other:?}"),
        }
    }
    // The last report before the metrics answer is a power of two of the 500 dropped.
    assert_eq!(dropped, 256);
    tokio::time::timeout(STEP, shutdown.cancelled())
        .await
        .expect("the shutdown behind the app's messages was read");
    reader.abort();
}

/// The next `n` messages from a worker's heartbeat task, with a level-`level` master.
async fn beats(level: u32, n: usize) -> Vec<ToMaster> {
    let (worker, mut master) = Channel::<ToMaster, ToWorker>::pair(Config::default())
        .await
        .unwrap();
    let (sender, _receiver) = worker.split();
    let task = tokio::spawn(super::heartbeat::heartbeat(
        sender,
        Duration::from_millis(10),
        Arc::new(AtomicUsize::new(0)),
        level,
        Arc::new(AtomicU64::new(0)),
    ));
    let mut seen = Vec::new();
    for _ in 0..n {
        let msg = tokio::time::timeout(Duration::from_secs(5), master.recv())
            .await
            .expect("a beat within 5 s")
            .unwrap()
            .unwrap();
        seen.push(msg);
    }
    task.abort();
    seen
}

#[tokio::test]
async fn request_counts_go_only_to_a_master_that_can_decode_them() {
    super::count_request();
    super::count_request();
    // A level-1 master (older than `Served`) would take it for a broken frame.
    let old = beats(1, 4).await;
    assert!(
        old.iter().all(|m| matches!(m, ToMaster::Heartbeat { .. })),
        "{old:?}"
    );
    // A level-2 master hears the count once, after a beat, and again only when it changes.
    let new = beats(2, 4).await;
    let served: Vec<_> = new
        .iter()
        .filter_map(|m| match m {
            ToMaster::Served { requests } => Some(*requests),
            _ => None,
        })
        .collect();
    assert_eq!(served.len(), 1, "{new:?}");
    assert!(served[0] >= 2, "{new:?}");
    assert!(matches!(new[0], ToMaster::Heartbeat { .. }), "{new:?}");
}
