//! The new master's side of an upgrade against fake processes: the old master's state taken
//! on before any worker starts, `Ready` at `min_ready`, the servers started only at
//! `TakeOver`, and a worker's crash before `Ready` reported as `Failed` with the master
//! stopping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cluster_ipc::{Channel, Config};

use super::*;
use crate::handover::{GroupState, State, ToNew, ToOld};
use crate::supervisor::upgrade::{HandedServers, Incoming, Servers, StartServers};

/// Makes a supervisor the new master of an upgrade from an old master with `state`.
type Prepare = Box<dyn FnOnce(&mut Supervisor<Fake>) + Send>;

/// The old master's end of the channel, a flag set when the servers were started, and what
/// makes the supervisor the new master.
async fn incoming(state: State) -> (Channel<ToNew, ToOld>, Arc<AtomicBool>, Prepare) {
    let (new_end, old_end) = Channel::<ToOld, ToNew>::pair(Config::default())
        .await
        .unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let flag = started.clone();
    let start: StartServers = Box::new(move |_handed| {
        Box::pin(async move {
            flag.store(true, Ordering::SeqCst);
            Ok(Servers {
                stop: tokio_util::sync::CancellationToken::new(),
                tasks: tokio_util::task::TaskTracker::new(),
                control: None,
                status: None,
            })
        })
    });
    let prepare: Prepare = Box::new(move |supervisor: &mut Supervisor<Fake>| {
        supervisor.apply_state(&state);
        let (incoming, rx) = Incoming::new(
            99,
            new_end,
            HandedServers::default(),
            start,
            (Duration::from_secs(60), None),
        );
        supervisor.set_incoming(incoming, rx);
    });
    (old_end, started, prepare)
}

fn old_state() -> State {
    State {
        upgrades: 2,
        reloads: 5,
        groups: vec![GroupState {
            name: "worker".into(),
            configured: 2,
            // Scaled to 3 at run time: kept.
            live: 3,
            exits_ago_ms: vec![1000, 500],
            generations: vec![(0, 7), (1, 4), (2, 1)],
        }],
        restarts: Vec::new(),
        recycles: Vec::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn the_new_master_takes_on_the_state_says_ready_and_serves_only_at_take_over() {
    let (mut old, started, prepare) = incoming(old_state()).await;
    let mut h = Harness::start_with(options(), vec![group(2)], &[], prepare);
    // Generations go on from the old master's; the size it was scaled to is kept.
    h.expect("ready worker/0#8").await;
    h.expect("ready worker/1#5").await;
    h.expect("ready worker/2#2").await;
    match old.recv().await.unwrap() {
        Some(ToOld::Ready { pid, ready }) => {
            assert_eq!(pid, std::process::id());
            assert!(ready >= 1);
        }
        other => panic!("expected Ready, got {other:?}"),
    }
    assert!(!started.load(Ordering::SeqCst), "served before TakeOver");
    old.send(&ToNew::TakeOver).await.unwrap();
    old.flush().await.unwrap();
    h.settle().await;
    assert!(started.load(Ordering::SeqCst));
    let status = h.status().await;
    assert_eq!(status.master.reloads_total, 5);
    assert_eq!(status.master.upgrades_total, 3);
    h.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_before_ready_is_reported_to_the_old_master_and_the_new_one_stops() {
    let (mut old, started, prepare) = incoming(State::default()).await;
    let never = [Behaviour::NEVER_READY, Behaviour::NEVER_READY];
    let mut h = Harness::start_with(options(), vec![group(2)], &never, prepare);
    h.expect("online worker/0#1").await;
    h.act(&wid(0, 1), Act::Exit(3));
    match old.recv().await.unwrap() {
        Some(ToOld::Failed { reason, .. }) => {
            assert!(
                reason.contains("worker worker/0#1 of the new master exited with code 3"),
                "{reason}"
            );
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let (code, error) = h.finished().await;
    assert_eq!(code, 1);
    assert!(error.unwrap().to_string().contains("the upgrade failed"));
    assert!(!started.load(Ordering::SeqCst));
}
