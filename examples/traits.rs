//! The same kind of app as `communication`, written as types: a [`cluster::Master`] and a
//! [`cluster::Worker`], put together with [`Cluster::from_app`].
//!
//! Types suit an app whose master and workers carry state and configuration: here the master
//! owns a queue of jobs (filled in `before_fork`, before any worker exists) and its options;
//! the worker type holds its settings. Workers ask the master for a job (request/response
//! with a timeout), compute it, and report the result (a message); the master prints it and,
//! once every job is done, tells all workers (a broadcast), which then idle until stopped.
//!
//! Run it with `cargo run --example traits` and stop it with Ctrl-C: the workers stop, the
//! master prints how many jobs were done and exits 0.

use std::collections::VecDeque;
use std::time::Duration;

use cluster::{
    BoxError, Cluster, Event, Incoming, Master, MasterContext, Options, Worker, WorkerContext,
};
use serde::{Deserialize, Serialize};

/// Messages from workers to the master.
#[derive(Debug, Serialize, Deserialize)]
enum Up {
    /// A request: "give me a job", answered with [`Down::Job`] or [`Down::NoJob`].
    NextJob,
    /// A job's result.
    Done { n: u64, steps: u32 },
}

/// Messages from the master to workers.
#[derive(Debug, Serialize, Deserialize)]
enum Down {
    /// The answer to [`Up::NextJob`]: find how many Collatz steps take `n` to 1.
    Job { n: u64 },
    /// The answer to [`Up::NextJob`] when the queue is empty.
    NoJob,
    /// Broadcast once every job is done.
    AllDone { total: usize },
}

/// The master's side: the job queue and the cluster's options.
struct Coordinator {
    jobs: VecDeque<u64>,
    total: usize,
    done: usize,
}

#[cluster::async_trait]
impl Master for Coordinator {
    type Down = Down;
    type Up = Up;

    fn options(&self) -> Options {
        Options::new().with_count(3).with_grace_ms(2000)
    }

    // Runs in the master only, before any worker is spawned: the place to load what the
    // workers will need (here, the queue; in an app, a config file or a database).
    async fn before_fork(&mut self) -> Result<(), BoxError> {
        self.jobs = (1_000_001..=1_000_030).collect();
        self.total = self.jobs.len();
        println!("Master {}: loaded {} jobs", std::process::id(), self.total);
        Ok(())
    }

    async fn run(mut self, ctx: MasterContext<Down, Up>) -> Result<(), BoxError> {
        while let Some(event) = ctx.next_event().await {
            match event {
                Event::Request { from, request } => {
                    let answer = match self.jobs.pop_front() {
                        Some(n) => Down::Job { n },
                        None => Down::NoJob,
                    };
                    // A worker that gave up waiting (or died) does not stop the master.
                    if let Err(e) = request.respond(&answer).await {
                        eprintln!("Master: cannot answer worker {from}: {e}");
                    }
                }
                Event::Message {
                    from,
                    msg: Up::Done { n, steps },
                } => {
                    self.done += 1;
                    println!("Master: worker {from} found {n} takes {steps} steps");
                    if self.done == self.total {
                        let total = self.total;
                        if let Err(e) = ctx.broadcast(&Down::AllDone { total }).await {
                            eprintln!("Master: cannot tell the workers: {e}");
                        }
                    }
                }
                _ => {}
            }
        }
        // `next_event` returned None: the cluster has stopped.
        println!(
            "Master: {} jobs done, {} left in the queue",
            self.done,
            self.jobs.len()
        );
        Ok(())
    }
}

/// The worker's side: its settings. One value per worker process.
struct Calculator {
    /// How long to wait before asking again when there is no job.
    idle: Duration,
    request_timeout: Duration,
}

#[cluster::async_trait]
impl Worker for Calculator {
    type Down = Down;
    type Up = Up;

    async fn run(&self, ctx: WorkerContext<Down, Up>) -> Result<(), BoxError> {
        println!("Worker {} (pid {}) started", ctx.id(), std::process::id());
        while !ctx.is_shutting_down() {
            let answer = match ctx.request(&Up::NextJob, self.request_timeout).await {
                Ok(answer) => answer,
                // A busy master: idle a little and ask again. Any other error means the master
                // is gone, and ends this worker.
                Err(e) if e.kind() == cluster::ErrorKind::Timeout => {
                    eprintln!("Worker {}: no answer from the master in time", ctx.id());
                    Down::NoJob
                }
                Err(e) => return Err(e.into()),
            };
            if let Down::Job { n } = answer {
                let steps = collatz_steps(n);
                // Slow down the demo so that its output can be followed.
                tokio::time::sleep(Duration::from_millis(300)).await;
                ctx.send(&Up::Done { n, steps }).await?;
                continue;
            }
            // Nothing to do: idle, but wake up at once for a shutdown or the master's news.
            tokio::select! {
                () = tokio::time::sleep(self.idle) => {}
                () = ctx.shutdown_requested() => {}
                Some(Incoming::Message(Down::AllDone { total })) = ctx.recv() => {
                    println!("Worker {}: all {total} jobs are done, idling until stopped", ctx.id());
                    ctx.shutdown_requested().await;
                }
            }
        }
        println!("Worker {} stopping", ctx.id());
        Ok(())
    }
}

fn collatz_steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n != 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

fn main() -> std::process::ExitCode {
    let coordinator = Coordinator {
        jobs: VecDeque::new(),
        total: 0,
        done: 0,
    };
    let calculator = Calculator {
        idle: Duration::from_secs(1),
        request_timeout: Duration::from_millis(500),
    };
    Cluster::from_app(coordinator, calculator).run()
}
