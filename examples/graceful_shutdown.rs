//! Graceful shutdown, the origin's "Graceful Shutdown" scenario: workers that drain.
//!
//! Each worker keeps taking jobs (simulated, 0.5 to 2.5 s each, up to 3 at a time). When the
//! master asks it to stop, it takes no new job, finishes the ones in flight, and exits.
//!
//! Run it with `cargo run --example graceful_shutdown`, then:
//!
//! - **Ctrl-C once**: the master asks every worker to stop and gives them the grace period
//!   (5 s here) to do so. Each worker prints how many jobs it is draining, finishes them and
//!   exits; the master prints each exit and exits 0. A worker still running when the grace
//!   period ends is killed (SIGKILL) and the master exits 1, so a supervisor such as systemd
//!   can tell a clean stop from a forced one.
//! - **Ctrl-C a second time** while they drain: the master stops waiting and kills the
//!   remaining workers at once (SIGKILL); their in-flight jobs are lost and the master exits 1.
//!
//! The origin wires its own timers for all this (a 10 s force-exit in each worker, 15 s per
//! worker and 30 s overall in the master); here the master enforces one `grace` for all.

use std::time::Duration;

use cluster::{Cluster, Event, MasterContext, WorkerContext};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

/// Longer than the longest job, so that a normal drain always ends in time.
const GRACE: Duration = Duration::from_secs(5);
/// Jobs a worker runs at once: bounds how much work a shutdown has to wait for.
const MAX_IN_FLIGHT: usize = 3;

fn main() -> std::process::ExitCode {
    Cluster::<(), ()>::new()
        .master(master)
        .worker(worker)
        .count(2)
        .grace(GRACE)
        .run()
}

async fn master(ctx: MasterContext) -> std::io::Result<()> {
    println!("Master {} is running", std::process::id());
    // The cluster itself acts on the signals; the master listens too, only to say what is
    // happening.
    let mut interrupts = signal(SignalKind::interrupt())?;
    let mut terms = signal(SignalKind::terminate())?;
    let mut signals_seen = 0;
    loop {
        tokio::select! {
            event = ctx.next_event() => match event {
                Some(Event::Exit { id, exit, .. }) => println!("Master: worker {id} {exit}"),
                Some(_) => {}
                None => break, // every worker has exited
            },
            Some(()) = interrupts.recv() => announce(&mut signals_seen),
            Some(()) = terms.recv() => announce(&mut signals_seen),
        }
    }
    Ok(())
}

fn announce(signals_seen: &mut u32) {
    *signals_seen += 1;
    match *signals_seen {
        1 => println!(
            "Master: shutting down, the workers have {} s to finish their jobs (signal again to kill them now)",
            GRACE.as_secs()
        ),
        2 => println!("Master: signalled again, killing the remaining workers"),
        _ => {}
    }
}

async fn worker(ctx: WorkerContext) {
    println!("Worker {} (pid {}) started", ctx.id(), std::process::id());
    let mut in_flight = JoinSet::new();
    let mut next_job = tokio::time::interval(Duration::from_millis(400));
    // While the worker is full, skip the ticks it missed instead of catching up in a burst.
    next_job.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut job = 0u64;
    loop {
        tokio::select! {
            () = ctx.shutdown_requested() => break,
            _ = next_job.tick(), if in_flight.len() < MAX_IN_FLIGHT => {
                job += 1;
                in_flight.spawn(run_job(ctx.slot(), job));
            }
            Some(done) = in_flight.join_next() => report(&ctx, done),
        }
    }

    // Draining: no new job is taken from here on, the ones in flight run to the end.
    println!(
        "Worker {}: asked to stop, finishing {} job(s) in flight",
        ctx.id(),
        in_flight.len()
    );
    while let Some(done) = in_flight.join_next().await {
        report(&ctx, done);
    }
    println!("Worker {}: drained, exiting", ctx.id());
}

/// A job: here a sleep; in an app, a request, an upload, a database transaction...
async fn run_job(slot: usize, job: u64) -> u64 {
    // Deterministic but varied durations, 0.5 to 2.5 s.
    let millis = 500 + (job * 700 + slot as u64 * 300) % 2000;
    tokio::time::sleep(Duration::from_millis(millis)).await;
    job
}

fn report(ctx: &WorkerContext, done: Result<u64, tokio::task::JoinError>) {
    match done {
        Ok(job) => println!("Worker {}: job {job} done", ctx.id()),
        // A job that panicked is lost, but the worker and its other jobs carry on.
        Err(e) => eprintln!("Worker {}: a job failed: {e}", ctx.id()),
    }
}
