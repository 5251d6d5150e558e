use super::*;
use cluster_ipc::{Channel, Config};
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::protocol::ToMaster;

/// Bound on any wait that should be quick.
const STEP: Duration = Duration::from_secs(5);

/// A round-robin listener with one member, whose end of the channel the test reads as
/// the worker would.
async fn one_member(
    coalescing: Duration,
) -> (MasterListeners, SocketAddr, cluster_ipc::Receiver<ToWorker>) {
    let (master, worker) = Channel::<ToWorker, ToMaster>::pair(Config::default())
        .await
        .unwrap();
    let (sender, _) = master.split();
    let (_, receiver) = worker.split();
    let mut listeners = MasterListeners::new(
        coalescing,
        Duration::ZERO,
        KeyRules::default(),
        Arc::default(),
    );
    let addr = ListenAddr::Tcp("127.0.0.1:0".parse().unwrap());
    let id = WorkerId {
        group: "default".into(),
        slot: 0,
        generation: 1,
    };
    let (info, _) = listeners.listen(&id, addr, Balance::RoundRobin).unwrap();
    listeners.join(info.listener, &id, &sender);
    (listeners, info.local.unwrap(), receiver)
}

/// The connections one message hands over.
async fn next_handed(rx: &mut cluster_ipc::Receiver<ToWorker>) -> usize {
    let (msg, fds) = tokio::time::timeout(STEP, rx.recv_with_fds())
        .await
        .expect("a message within the bound")
        .unwrap()
        .expect("the channel is open");
    let conns = match msg {
        ToWorker::Connection { .. } => 1,
        ToWorker::Connections { conns, .. } => conns.len(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(fds.len(), conns);
    conns
}

#[tokio::test]
async fn an_idle_listener_hands_out_at_once_and_a_busy_one_in_rounds() {
    let window = Duration::from_millis(100);
    let (_listeners, addr, mut rx) = one_member(window).await;
    let mut clients = Vec::new();

    let start = Instant::now();
    clients.push(TcpStream::connect(addr).await.unwrap());
    assert_eq!(next_handed(&mut rx).await, 1);
    assert!(
        start.elapsed() < window / 2,
        "a connection to an idle listener waited {:?}",
        start.elapsed()
    );

    // Within the window of that round: the next ones wait for the next round, together.
    for _ in 0..5 {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    assert_eq!(next_handed(&mut rx).await, 5);
    assert!(start.elapsed() >= window, "{:?}", start.elapsed());
}

#[tokio::test]
async fn without_coalescing_a_connection_never_waits_for_a_round() {
    let (_listeners, addr, mut rx) = one_member(Duration::ZERO).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        clients.push(TcpStream::connect(addr).await.unwrap());
        assert_eq!(next_handed(&mut rx).await, 1);
        assert!(
            start.elapsed() < Duration::from_millis(50),
            "{:?}",
            start.elapsed()
        );
    }
}

fn worker(slot: usize) -> WorkerId {
    WorkerId {
        group: "default".into(),
        slot,
        generation: 1,
    }
}

/// A listener of `balance` with two members (slots 0 and 1), each with the end of its
/// channel the test reads as that worker would, and no coalescing.
async fn two_members(
    balance: Balance,
    ack_timeout: Duration,
) -> (
    MasterListeners,
    SocketAddr,
    Vec<cluster_ipc::Receiver<ToWorker>>,
) {
    let mut listeners = MasterListeners::new(
        Duration::ZERO,
        ack_timeout,
        KeyRules::default(),
        Arc::default(),
    );
    let addr = ListenAddr::Tcp("127.0.0.1:0".parse().unwrap());
    let (info, _) = listeners.listen(&worker(0), addr, balance).unwrap();
    let mut receivers = Vec::new();
    for slot in 0..2 {
        let (master, end) = Channel::<ToWorker, ToMaster>::pair(Config::default())
            .await
            .unwrap();
        let (sender, _) = master.split();
        let (_, receiver) = end.split();
        // The sender must outlive the test's use of the channel: the member keeps a clone.
        listeners.join(info.listener, &worker(slot), &sender);
        receivers.push(receiver);
    }
    (listeners, info.local.unwrap(), receivers)
}

/// The ids of the connections one message hands over.
async fn handed_ids(rx: &mut cluster_ipc::Receiver<ToWorker>) -> Vec<u64> {
    let (msg, _fds) = tokio::time::timeout(STEP, rx.recv_with_fds())
        .await
        .expect("a message within the bound")
        .unwrap()
        .expect("the channel is open");
    match msg {
        ToWorker::Connection { conn, .. } => vec![conn],
        ToWorker::Connections { conns, .. } => conns.into_iter().map(|(c, _)| c).collect(),
        other => panic!("unexpected {other:?}"),
    }
}

/// The connections the next message to either worker hands over, and to which.
async fn either(rx: &mut [cluster_ipc::Receiver<ToWorker>]) -> (usize, Vec<u64>) {
    let (a, b) = rx.split_at_mut(1);
    tokio::select! {
        ids = handed_ids(&mut a[0]) => (0, ids),
        ids = handed_ids(&mut b[0]) => (1, ids),
    }
}

/// Whether a message arrives within `wait` (it should not).
async fn nothing_within(rx: &mut cluster_ipc::Receiver<ToWorker>, wait: Duration) -> bool {
    tokio::time::timeout(wait, rx.recv_with_fds())
        .await
        .is_err()
}

#[tokio::test]
async fn a_worker_that_left_a_connection_unacknowledged_gets_no_new_ones_until_it_acks() {
    for balance in [
        Balance::RoundRobin,
        Balance::LeastConnections,
        Balance::Sticky,
    ] {
        let ack_timeout = Duration::from_millis(50);
        let (listeners, addr, mut rx) = two_members(balance, ack_timeout).await;
        let in_flight = listeners.in_flight();
        let mut clients = Vec::new();

        // The first connection goes to whichever worker the policy picks; that worker
        // does not acknowledge it.
        clients.push(TcpStream::connect(addr).await.unwrap());
        let (stalled, first) = either(&mut rx).await;
        let healthy = 1 - stalled;
        // Past the bound (the passage of time is what is tested here).
        tokio::time::sleep(ack_timeout * 2).await;

        // Every new connection goes to the other worker, whatever the policy prefers
        // (with Sticky, every client here has the same IP, so it would prefer `stalled`
        // half the time or all the time).
        for _ in 0..6 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            for conn in handed_ids(&mut rx[healthy]).await {
                in_flight.ack(conn, &worker(healthy));
            }
        }
        assert!(
            nothing_within(&mut rx[stalled], Duration::from_millis(20)).await,
            "{balance:?}: the stalled worker was handed a new connection"
        );
        let skipped = in_flight
            .violations
            .snapshot()
            .into_iter()
            .find(|(kind, _)| *kind == "ack_timeout")
            .map_or(0, |(_, n)| n);
        if balance != Balance::Sticky {
            assert!(skipped >= 1, "{balance:?}: no skip was counted");
        }

        // A stray acknowledgement (by the healthy worker) is ignored: the connection
        // stays the stalled worker's, and the stalled worker still gets nothing.
        in_flight.ack(first[0], &worker(healthy));
        assert!(in_flight.oldest_of(&worker(stalled)).is_some());
        // Its own acknowledgement puts it back in the rotation.
        in_flight.ack(first[0], &worker(stalled));
        assert!(in_flight.oldest_of(&worker(stalled)).is_none());
        let mut got = [0, 0];
        for _ in 0..8 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (slot, ids) = either(&mut rx).await;
            for conn in &ids {
                in_flight.ack(*conn, &worker(slot));
            }
            got[slot] += ids.len();
        }
        if balance != Balance::Sticky {
            assert!(got[stalled] > 0, "{balance:?}: it never came back: {got:?}");
        }
    }
}

#[tokio::test]
async fn a_stopping_worker_keeps_its_unacknowledged_connections_until_it_exits() {
    let (mut listeners, addr, mut rx) = two_members(Balance::RoundRobin, Duration::ZERO).await;
    let _client = TcpStream::connect(addr).await.unwrap();
    let (owner, _) = either(&mut rx).await;
    let other = 1 - owner;
    // Asked to stop: it still reads its channel and will serve what it was handed, so
    // the connection must not go to the other worker too.
    listeners.leave(&worker(owner));
    assert!(
        nothing_within(&mut rx[other], Duration::from_millis(100)).await,
        "a stopping worker's connection was handed to another worker as well"
    );
    // It exited without taking it: now, and only now, the connection goes elsewhere.
    listeners.gone(&worker(owner));
    assert_eq!(handed_ids(&mut rx[other]).await.len(), 1);
}

#[tokio::test]
async fn a_worker_asking_for_ever_new_addresses_meets_the_bound() {
    let mut listeners = MasterListeners::new(
        Duration::ZERO,
        Duration::ZERO,
        KeyRules::default(),
        Arc::default(),
    );
    let dir = std::env::temp_dir().join(format!("cluster-listen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unix = |name: String| ListenAddr::Unix(dir.join(name));
    // One worker gets its share, and not one address more.
    for i in 0..MAX_BINDS_PER_WORKER {
        listeners
            .listen(&worker(0), unix(format!("w0-{i}.sock")), Balance::Shared)
            .unwrap();
    }
    let error = listeners
        .listen(&worker(0), unix("w0-over.sock".into()), Balance::Shared)
        .unwrap_err();
    assert!(error.contains("the most one worker may"), "{error}");
    assert!(!dir.join("w0-over.sock").exists());
    // Its siblings still listen, on its addresses and on new ones, up to the cluster's
    // bound.
    listeners
        .listen(&worker(1), unix("w0-0.sock".into()), Balance::Shared)
        .unwrap();
    let mut slot = 1;
    while listeners.bound.len() < MAX_LISTENERS {
        let name = format!("w{slot}-{}.sock", listeners.bound.len());
        match listeners.listen(&worker(slot), unix(name), Balance::Shared) {
            Ok(_) => {}
            Err(_) => slot += 1,
        }
    }
    let error = listeners
        .listen(&worker(slot + 1), unix("over.sock".into()), Balance::Shared)
        .unwrap_err();
    assert!(error.contains("64 addresses"), "{error}");
    let listeners_hit = listeners
        .in_flight
        .violations
        .snapshot()
        .into_iter()
        .find(|(kind, _)| *kind == "listeners")
        .map_or(0, |(_, n)| n);
    assert!(listeners_hit >= 2);
    // The socket files go with the master's listeners.
    drop(listeners);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn past_the_in_flight_bound_connections_wait_in_the_kernels_queue() {
    let mut listeners = MasterListeners::new(
        Duration::ZERO,
        Duration::ZERO,
        KeyRules::default(),
        Arc::default(),
    );
    listeners.in_flight = Arc::new(InFlightTable::with_max(Arc::default(), 4));
    let addr = ListenAddr::Tcp("127.0.0.1:0".parse().unwrap());
    let (info, _) = listeners
        .listen(&worker(0), addr, Balance::RoundRobin)
        .unwrap();
    let (master, end) = Channel::<ToWorker, ToMaster>::pair(Config::default())
        .await
        .unwrap();
    let (sender, _) = master.split();
    let (_, mut rx) = end.split();
    listeners.join(info.listener, &worker(0), &sender);
    let addr = info.local.unwrap();
    let in_flight = listeners.in_flight();

    let mut clients = Vec::new();
    let mut handed = Vec::new();
    for _ in 0..10 {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    while handed.len() < 4 {
        handed.extend(handed_ids(&mut rx).await);
    }
    assert!(
        nothing_within(&mut rx, Duration::from_millis(150)).await,
        "a connection was handed out past the bound"
    );
    // Two acknowledgements make room for two more.
    for conn in handed.drain(..2) {
        in_flight.ack(conn, &worker(0));
    }
    let mut more = 0;
    while more < 2 {
        more += handed_ids(&mut rx).await.len();
    }
    assert_eq!(more, 2);
    assert!(nothing_within(&mut rx, Duration::from_millis(150)).await);
}
