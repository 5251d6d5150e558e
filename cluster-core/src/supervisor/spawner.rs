//! Spawns worker processes from one thread that lives as long as the master.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
//! tokio's threads come and go (blocking-pool threads time out when idle), so a worker spawned
//! from one of them could be killed while the master is fine. This thread never exits before
//! the master does.

use std::io;
use std::sync::mpsc;

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

struct Job {
    cmd: Command,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// A handle to the spawner thread.
pub(crate) struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts the thread; `handle` is the runtime that will wait for the children.
    pub(crate) fn start(handle: tokio::runtime::Handle) -> io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("cluster-spawner".into())
            .spawn(move || {
                // tokio's Command registers the child with the runtime that reaps it.
                let _runtime = handle.enter();
                while let Ok(mut job) = rx.recv() {
                    let _ = job.reply.send(job.cmd.spawn());
                }
                // Every handle is gone: the master is exiting. Stay alive until the process ends so
                // that no worker still being reaped is killed by the parent-death signal early.
                loop {
                    std::thread::park();
                }
            })?;
        Ok(Spawner { jobs })
    }

    /// Spawns `cmd` on the spawner thread.
    pub(crate) async fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job { cmd, reply })
            .map_err(|_| io::Error::other("the cluster spawner thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("the cluster spawner thread is gone"))?
    }
}
