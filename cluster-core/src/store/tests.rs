use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::state::{Limits, StoreState};
use super::subscribers::{Client, Push, Subscribers};
use super::*;
use crate::model::WorkerId;
use crate::protocol::{StoreFailure, StoreOp, StoreReply};
use crate::violations::Violations;

const ROOMY: Limits = Limits {
    max_keys: 1000,
    max_bytes: 1 << 20,
};

fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> StoreOp {
    StoreOp::Set {
        key: key.into(),
        value: value.to_vec(),
        ttl_ms,
    }
}

fn get(key: &str) -> StoreOp {
    StoreOp::Get { key: key.into() }
}

fn cas(key: &str, expected: Option<&[u8]>, new: &[u8]) -> StoreOp {
    StoreOp::Cas {
        key: key.into(),
        expected: expected.map(<[u8]>::to_vec),
        new: new.to_vec(),
    }
}

fn value(v: &[u8]) -> StoreReply {
    StoreReply::Value(Some(v.to_vec()))
}

#[tokio::test(start_paused = true)]
async fn cas_swaps_only_on_the_expected_value_and_answers_the_current_one() {
    let mut s = StoreState::new(ROOMY);
    let now = Instant::now();
    // Expecting absence: swaps once, then the key is there.
    assert_eq!(s.apply(cas("k", None, b"1"), now), StoreReply::Cas(None));
    assert_eq!(
        s.apply(cas("k", None, b"2"), now),
        StoreReply::Cas(Some(Some(b"1".to_vec())))
    );
    // A wrong expectation changes nothing and says what is there.
    assert_eq!(
        s.apply(cas("k", Some(b"0"), b"2"), now),
        StoreReply::Cas(Some(Some(b"1".to_vec())))
    );
    assert_eq!(s.apply(get("k"), now), value(b"1"));
    assert_eq!(
        s.apply(cas("k", Some(b"1"), b"2"), now),
        StoreReply::Cas(None)
    );
    assert_eq!(s.apply(get("k"), now), value(b"2"));
    // Expecting a value of an absent key: not swapped, and the answer says it is absent.
    assert_eq!(
        s.apply(cas("gone", Some(b"x"), b"y"), now),
        StoreReply::Cas(Some(None))
    );
    assert_eq!(s.apply(get("gone"), now), StoreReply::Value(None));
    // A swap clears the TTL the key had.
    s.apply(set("t", b"a", Some(1000)), now);
    assert_eq!(
        s.apply(cas("t", Some(b"a"), b"b"), now),
        StoreReply::Cas(None)
    );
    assert_eq!(s.apply(get("t"), now + Duration::from_secs(5)), value(b"b"));
}

#[tokio::test(start_paused = true)]
async fn keys_expire_at_their_deadline_on_access_and_by_the_sweep() {
    let mut s = StoreState::new(ROOMY);
    let start = Instant::now();
    s.apply(set("a", b"1", Some(1000)), start);
    s.apply(set("b", b"2", Some(3000)), start);
    s.apply(set("forever", b"3", None), start);
    assert_eq!(s.next_deadline(), Some(start + Duration::from_secs(1)));
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_eq!(s.apply(get("a"), Instant::now()), value(b"1"));
    tokio::time::advance(Duration::from_millis(1)).await;
    // On access: gone at its deadline, before any sweep.
    assert_eq!(s.apply(get("a"), Instant::now()), StoreReply::Value(None));
    assert_eq!(s.len(), 2);
    // A key whose deadline moved leaves a stale heap entry that the sweep skips.
    let expire = StoreOp::Expire {
        key: "b".into(),
        ttl_ms: Some(10_000),
    };
    assert_eq!(s.apply(expire, Instant::now()), StoreReply::Done(true));
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(s.sweep(Instant::now()), 0);
    assert_eq!(s.apply(get("b"), Instant::now()), value(b"2"));
    tokio::time::advance(Duration::from_secs(10)).await;
    // By the sweep, untouched: the key and its bytes are gone.
    assert_eq!(s.sweep(Instant::now()), 1);
    assert_eq!(s.len(), 1);
    assert_eq!(s.bytes(), ("forever".len() + 1) as u64);
    assert_eq!(s.next_deadline(), None);
    // An incr keeps the deadline; `expire(None)` removes it.
    let now = Instant::now();
    s.apply(set("n", b"5", Some(1000)), now);
    assert_eq!(
        s.apply(
            StoreOp::Incr {
                key: "n".into(),
                by: 2
            },
            now
        ),
        StoreReply::Int(7)
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(s.apply(get("n"), Instant::now()), StoreReply::Value(None));
}

#[tokio::test(start_paused = true)]
async fn the_store_task_sweeps_expired_keys_with_one_timer() {
    let violations = Arc::new(Violations::default());
    let config = StoreConfig {
        limits: Limits {
            max_keys: 1,
            max_bytes: 1 << 20,
        },
        max_subscriptions: 4,
        queue: 4,
        snapshot: None,
        snapshot_interval: None,
    };
    let (handle, _task) = start(config, violations).unwrap();
    let store = Store::for_master(handle);
    store
        .set("short", b"x".to_vec(), Some(Duration::from_millis(50)))
        .await
        .unwrap();
    // The store is full: one key.
    let full = store.set("other", b"y".to_vec(), None).await.unwrap_err();
    assert_eq!(full.kind(), crate::ErrorKind::Store);
    assert!(full.to_string().contains("store_max_keys"), "{full}");
    tokio::time::sleep(Duration::from_millis(60)).await;
    // The deadline passed: room again.
    store.set("other", b"y".to_vec(), None).await.unwrap();
    assert_eq!(store.get("short").await.unwrap(), None);
}

#[tokio::test]
async fn bounds_refuse_new_keys_and_bytes_past_the_limits_and_let_overwrites_through() {
    let mut s = StoreState::new(Limits {
        max_keys: 2,
        max_bytes: 10,
    });
    let now = Instant::now();
    assert_eq!(s.apply(set("a", b"1", None), now), StoreReply::Done(true));
    assert_eq!(s.apply(set("b", b"2", None), now), StoreReply::Done(true));
    assert_eq!(
        s.apply(set("c", b"3", None), now),
        StoreReply::Failed(StoreFailure::TooManyKeys(2))
    );
    // An existing key may change within the bytes: "a" with 9 bytes and "b2" would be 12.
    assert_eq!(
        s.apply(set("a", b"123456789", None), now),
        StoreReply::Failed(StoreFailure::TooManyBytes(10))
    );
    assert_eq!(
        s.apply(set("a", b"1234567", None), now),
        StoreReply::Done(true)
    );
    assert_eq!(s.bytes(), 10);
    assert_eq!(
        s.apply(StoreOp::Del { key: "b".into() }, now),
        StoreReply::Done(true)
    );
    assert_eq!(s.apply(set("c", b"", None), now), StoreReply::Done(true));
    // Incr's own failures.
    let mut s = StoreState::new(ROOMY);
    s.apply(set("a", b"x", None), now);
    assert_eq!(
        s.apply(
            StoreOp::Incr {
                key: "a".into(),
                by: 1
            },
            now
        ),
        StoreReply::Failed(StoreFailure::NotAnInteger)
    );
    s.apply(set("a", i64::MAX.to_string().as_bytes(), None), now);
    assert_eq!(
        s.apply(
            StoreOp::Incr {
                key: "a".into(),
                by: 1
            },
            now
        ),
        StoreReply::Failed(StoreFailure::Overflow)
    );
}

fn worker(slot: usize) -> Client {
    Client::Worker(WorkerId {
        group: "worker".into(),
        slot,
        generation: 1,
    })
}

fn message(v: u8) -> Push {
    Push::Message {
        topic: "t".into(),
        value: vec![v],
    }
}

#[test]
fn a_publication_reaches_every_subscriber_and_a_slow_one_loses_values_and_is_told() {
    let violations = Violations::default();
    let mut subs = Subscribers::default();
    let (fast_tx, mut fast) = mpsc::channel(100);
    let (slow_tx, mut slow) = mpsc::channel(2);
    assert_eq!(
        subs.subscribe(&worker(0), "t".into(), fast_tx, 8),
        StoreReply::Done(true)
    );
    assert_eq!(
        subs.subscribe(&worker(1), "t".into(), slow_tx, 8),
        StoreReply::Done(true)
    );
    for v in 0..5 {
        assert_eq!(subs.publish("t", &[v], &violations), 2);
    }
    for v in 0..5 {
        assert_eq!(fast.try_recv().unwrap(), message(v));
    }
    // The slow one got what fit, lost the rest, and the publisher never waited.
    assert_eq!(slow.try_recv().unwrap(), message(0));
    assert_eq!(slow.try_recv().unwrap(), message(1));
    assert!(slow.try_recv().is_err());
    let lagged = |v: &Violations| {
        v.snapshot()
            .into_iter()
            .find(|(k, _)| *k == "store_lagged")
            .map(|(_, n)| n)
    };
    assert_eq!(lagged(&violations), Some(3));
    // Once it has room, it hears how many it lost before the next value.
    subs.publish("t", &[5], &violations);
    assert_eq!(
        slow.try_recv().unwrap(),
        Push::Lagged {
            topic: "t".into(),
            lost: 3
        }
    );
    assert_eq!(slow.try_recv().unwrap(), message(5));
    // Another topic reaches nobody; a client that is gone is unsubscribed everywhere.
    assert_eq!(subs.publish("other", &[1], &violations), 0);
    subs.forget(&worker(1));
    assert_eq!(subs.count(&worker(1)), 0);
    assert_eq!(subs.publish("t", &[6], &violations), 1);
}

#[test]
fn subscriptions_are_bounded_per_client() {
    let mut subs = Subscribers::default();
    let (tx, _rx) = mpsc::channel(1);
    for topic in ["a", "b"] {
        assert_eq!(
            subs.subscribe(&worker(0), topic.into(), tx.clone(), 2),
            StoreReply::Done(true)
        );
    }
    // Again the same topic: nothing new, and no refusal.
    assert_eq!(
        subs.subscribe(&worker(0), "a".into(), tx.clone(), 2),
        StoreReply::Done(false)
    );
    assert_eq!(
        subs.subscribe(&worker(0), "c".into(), tx.clone(), 2),
        StoreReply::Failed(StoreFailure::TooManySubscriptions(2))
    );
    // Another client has its own bound.
    assert_eq!(
        subs.subscribe(&worker(1), "c".into(), tx.clone(), 2),
        StoreReply::Done(true)
    );
    assert_eq!(subs.unsubscribe(&worker(0), "a"), StoreReply::Done(true));
    assert_eq!(
        subs.subscribe(&worker(0), "c".into(), tx, 2),
        StoreReply::Done(true)
    );
}

fn config(snapshot: Option<std::path::PathBuf>) -> StoreConfig {
    StoreConfig {
        limits: ROOMY,
        max_subscriptions: 4,
        queue: 4,
        snapshot,
        snapshot_interval: None,
    }
}

#[tokio::test]
async fn the_masters_own_subscription_receives_and_concurrent_increments_are_exact() {
    let (handle, _task) = start(config(None), Arc::default()).unwrap();
    let store = Store::for_master(handle);
    let mut sub = store.subscribe("news").await.unwrap();
    assert_eq!(store.publish("news", b"a".to_vec()).await.unwrap(), 1);
    assert_eq!(sub.recv().await, Some(StoreEvent::Message(b"a".to_vec())));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..250 {
                    store.incr("n", 1).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(store.get("n").await.unwrap(), Some(b"2000".to_vec()));
    // The last local subscription gone, the store has no subscriber left.
    drop(sub);
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.publish("news", b"b".to_vec()).await.unwrap() != 0 {
        assert!(Instant::now() < deadline, "the dropped subscription stayed");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_snapshot_keeps_values_and_deadlines_and_a_damaged_one_is_refused() {
    let dir = std::env::temp_dir().join(format!("cluster-store-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("store.snap");
    let _ = std::fs::remove_file(&path);
    let (handle, _task) = start(config(Some(path.clone())), Arc::default()).unwrap();
    let store = Store::for_master(handle.clone());
    store.set("keep", b"v".to_vec(), None).await.unwrap();
    store
        .set("ttl", b"w".to_vec(), Some(Duration::from_secs(600)))
        .await
        .unwrap();
    store
        .set("short", b"x".to_vec(), Some(Duration::from_millis(1)))
        .await
        .unwrap();
    store.incr("n", 41).await.unwrap();
    handle.stop().await.unwrap();
    assert!(
        !dir.join("store.snap.tmp").exists(),
        "the temporary file was renamed"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;

    let (handle, _task) = start(config(Some(path.clone())), Arc::default()).unwrap();
    let store = Store::for_master(handle.clone());
    assert_eq!(store.get("keep").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(store.get("ttl").await.unwrap(), Some(b"w".to_vec()));
    assert_eq!(store.get("short").await.unwrap(), None);
    assert_eq!(store.incr("n", 1).await.unwrap(), 42);
    handle.stop().await.unwrap();

    std::fs::write(&path, b"not a snapshot").unwrap();
    let error = start(config(Some(path.clone())), Arc::default())
        .err()
        .unwrap();
    assert_eq!(error.kind(), crate::ErrorKind::Store);
    assert!(error.to_string().contains("move it away"), "{error}");
    let _ = std::fs::remove_dir_all(&dir);
}
