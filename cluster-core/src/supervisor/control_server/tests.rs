//! The control socket at the hand-over of an upgrade: what the old master accepted is
//! answered, then closed; nothing new is accepted.

use std::time::Duration;

use super::*;
use crate::control::client::Client;

const BOUND: Duration = Duration::from_secs(10);

/// A control socket in a directory of its own, answered by a fake supervisor.
async fn serve(logs: Option<Arc<RecentLogs>>) -> (Parts, ControlSocket, PathBuf, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("ctl.sock");
    let (commands, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(command) = rx.recv().await {
            if let Command::Status { reply } = command {
                let _ = reply.send(crate::observe::metrics::tests::status());
            }
        }
    });
    let parts = Parts {
        commands,
        stop: CancellationToken::new(),
        logs,
        tasks: TaskTracker::new(),
    };
    let options = Options::new().with_control_path(path.clone());
    let socket = start(&options, &parts)
        .await
        .unwrap()
        .expect("a control path is set");
    (parts, socket, path, dir)
}

async fn list(client: &mut Client) -> Result<Response, crate::control::client::ClientError> {
    tokio::time::timeout(BOUND, client.request(&Request::List))
        .await
        .expect("no answer nor close")
}

#[tokio::test]
async fn a_client_accepted_before_the_stop_is_answered_then_closed() {
    let (parts, socket, path, _dir) = serve(None).await;
    // One that has been answered already, and one that has only said hello.
    let mut answered = Client::connect(&path).await.unwrap();
    assert!(matches!(
        list(&mut answered).await,
        Ok(Response::Workers(_))
    ));
    let mut late = Client::connect(&path).await.unwrap();
    parts.stop.cancel();
    parts.tasks.close();
    // Its request comes after the stop (the hand-over): it is still answered.
    assert!(matches!(list(&mut late).await, Ok(Response::Workers(_))));
    // Then both connections end: each client asks the new master next time.
    assert!(list(&mut late).await.is_err());
    assert!(list(&mut answered).await.is_err());
    // And the master's wait for its clients ends.
    tokio::time::timeout(BOUND, parts.tasks.wait())
        .await
        .expect("the tasks serving clients did not end");
    // A client connecting now queues on the socket, for the master after this one: this
    // one does not take it.
    let queued = tokio::time::timeout(Duration::from_millis(300), Client::connect(&path)).await;
    assert!(
        queued.is_err(),
        "a stopped control socket answered a new client"
    );
    drop(socket);
}

#[tokio::test]
async fn a_follow_does_not_hold_the_master() {
    let (parts, _socket, path, _dir) = serve(RecentLogs::new(10)).await;
    let mut client = Client::connect(&path).await.unwrap();
    client
        .send(&Request::Logs {
            group: None,
            slot: None,
            lines: 10,
            follow: true,
        })
        .await
        .unwrap();
    // The backlog is served: the follow is under way.
    let first = tokio::time::timeout(BOUND, client.next()).await.unwrap();
    assert!(
        matches!(first, Ok(Some(Response::LogsUpToDate))),
        "{first:?}"
    );
    parts.stop.cancel();
    parts.tasks.close();
    tokio::time::timeout(BOUND, parts.tasks.wait())
        .await
        .expect("a follow held the master's wait for its clients");
}

/// A directory removed when dropped.
mod tempdir {
    pub(super) struct Dir(pub(super) std::path::PathBuf);

    impl Dir {
        pub(super) fn new() -> Dir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "cluster-control-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
