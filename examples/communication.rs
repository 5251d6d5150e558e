//! Worker communication with broadcast, the origin's "Worker Communication" scenario, with
//! the app's own message types.
//!
//! - Each worker simulates serving HTTP requests and reports every one to the master
//!   (`Up::Handled`, a plain message); the master prints it and broadcasts it to all workers
//!   (`Down::Announcement`), which print what they hear.
//! - Worker to master, request/response: before serving a request a worker asks the master for
//!   a cluster-wide request number (`Up::NextNumber` answered by `Down::Number`). Workers share
//!   no memory, so a counter that must be unique across them lives in the master.
//! - Master to worker, request/response: every 2 s the master asks each worker for its
//!   statistics (`Down::GetStats` answered by `Up::Stats`) and prints the total.
//!
//! Every request has a timeout, so a busy or dead peer costs a log line, not a hang.
//!
//! Run it with `cargo run --example communication` and stop it with Ctrl-C: the master asks
//! the workers to stop, each prints how many requests it served, the master exits 0.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster::{Cluster, Event, Incoming, MasterContext, WorkerContext};
use serde::{Deserialize, Serialize};

/// How long either side waits for an answer. Both ends are local processes that answer at
/// once, so a slow answer means something is wrong: better to log it and go on.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

/// One request a worker served: what the origin's workers `process.send` to the master.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RequestInfo {
    number: u64,
    method: String,
    url: String,
    timestamp_ms: u128,
}

/// Messages from workers to the master.
#[derive(Debug, Serialize, Deserialize)]
enum Up {
    /// "I served this request" (a plain message).
    Handled(RequestInfo),
    /// A request: "give me the next request number", answered with [`Down::Number`].
    NextNumber,
    /// The answer to [`Down::GetStats`].
    Stats { served: u64 },
}

/// Messages from the master to workers.
#[derive(Debug, Serialize, Deserialize)]
enum Down {
    /// The broadcast of a worker's report: `{ from: "master", to: "all-workers", data }`.
    Announcement {
        from_worker: String,
        data: RequestInfo,
    },
    /// The answer to [`Up::NextNumber`].
    Number(u64),
    /// A request: "how many requests have you served?", answered with [`Up::Stats`].
    GetStats,
}

fn main() -> std::process::ExitCode {
    Cluster::<Down, Up>::new()
        .master(master)
        .worker(worker)
        .count(3)
        .run()
}

async fn master(ctx: MasterContext<Down, Up>) {
    println!("Master {} is running", std::process::id());
    // Polling runs beside the event loop, so a slow worker never delays routing.
    tokio::spawn(poll_stats(ctx.clone()));

    let mut next_number = 1;
    // `next_event` returns None once the cluster has stopped: the loop ends by itself.
    while let Some(event) = ctx.next_event().await {
        match event {
            Event::Message {
                from,
                msg: Up::Handled(data),
            } => {
                println!(
                    "Master received #{} {} {} (at {} ms) from worker {from}",
                    data.number, data.method, data.url, data.timestamp_ms
                );
                let announcement = Down::Announcement {
                    from_worker: from.to_string(),
                    data,
                };
                if let Err(e) = ctx.broadcast(&announcement).await {
                    eprintln!("Master: broadcast failed: {e}");
                }
            }
            Event::Request { from, request } => match request.message() {
                Up::NextNumber => {
                    let number = next_number;
                    next_number += 1;
                    // The worker may have timed out and gone on; nothing more to do then.
                    if let Err(e) = request.respond(&Down::Number(number)).await {
                        eprintln!("Master: cannot answer worker {from}: {e}");
                    }
                }
                other => eprintln!("Master: worker {from} asked {other:?}, which is not a request"),
            },
            Event::Exit {
                id,
                exit,
                expected: false,
                ..
            } => {
                println!("Worker {id} {exit}; it will be restarted");
            }
            _ => {}
        }
    }
}

/// Asks every worker for its statistics every 2 s.
async fn poll_stats(ctx: MasterContext<Down, Up>) {
    let mut every = tokio::time::interval(Duration::from_secs(2));
    every.tick().await; // the first tick is immediate: give the workers time to start
    loop {
        every.tick().await;
        let Ok(workers) = ctx.workers().await else {
            return; // the cluster has stopped
        };
        let mut total = 0;
        for info in &workers {
            match ctx
                .request(&info.id.key(), &Down::GetStats, REQUEST_TIMEOUT)
                .await
            {
                Ok(Up::Stats { served }) => total += served,
                Ok(other) => eprintln!("Master: worker {} answered {other:?} to GetStats", info.id),
                // A worker that is starting, stopping or stuck: skip it this round.
                Err(e) => eprintln!("Master: no stats from worker {}: {e}", info.id),
            }
        }
        println!(
            "Master: {} workers have served {total} requests",
            workers.len()
        );
    }
}

async fn worker(ctx: WorkerContext<Down, Up>) -> Result<(), cluster::Error> {
    println!("Worker {} (pid {}) started", ctx.id(), std::process::id());
    let pages = ["/", "/orders", "/users/42", "/health"];
    let mut served = 0u64;
    // Workers start within a few ms of each other: stagger them so their output interleaves.
    let period = Duration::from_millis(1500 + 250 * ctx.slot() as u64);
    let mut incoming_request = tokio::time::interval(period);
    loop {
        tokio::select! {
            () = ctx.shutdown_requested() => break,
            _ = incoming_request.tick() => {
                let number = match ctx.request(&Up::NextNumber, REQUEST_TIMEOUT).await {
                    Ok(Down::Number(n)) => n,
                    Ok(other) => {
                        eprintln!("Worker {}: master answered {other:?} to NextNumber", ctx.id());
                        continue;
                    }
                    // Serve the request anyway: the number is for reporting only.
                    Err(e) => {
                        eprintln!("Worker {}: no request number: {e}", ctx.id());
                        0
                    }
                };
                let url = pages[served as usize % pages.len()].to_owned();
                served += 1;
                let timestamp_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                let data = RequestInfo { number, method: "GET".into(), url, timestamp_ms };
                // A failed send means the master is gone; the worker exits then anyway.
                ctx.send(&Up::Handled(data)).await?;
            }
            incoming = ctx.recv() => match incoming {
                Some(Incoming::Message(Down::Announcement { from_worker, data })) => {
                    println!("Worker {} heard: {from_worker} served #{} {} {}", ctx.id(), data.number, data.method, data.url);
                }
                Some(Incoming::Request(request)) => match request.message() {
                    Down::GetStats => request.respond(&Up::Stats { served }).await?,
                    other => eprintln!("Worker {}: {other:?} is not a request", ctx.id()),
                },
                Some(Incoming::Message(other)) => eprintln!("Worker {}: unexpected {other:?}", ctx.id()),
                // The master asked us to stop and every message before that was read.
                None => break,
            },
        }
    }
    println!(
        "Worker {} stopping after serving {served} requests",
        ctx.id()
    );
    Ok(())
}
