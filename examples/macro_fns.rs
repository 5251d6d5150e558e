//! The origin helper's example written with `#[cluster::main]` and marked functions: the
//! master prints `Master process running`, each worker prints `Worker process running` every
//! second and reports to the master over the typed channel; shut down by SIGINT, SIGTERM or
//! SIGHUP. (The origin ran 4 workers; 2 keep `tests/macro_run.rs` light.)
//!
//! Run it with `cargo run --example macro_fns` and stop it with Ctrl-C.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the master sends to workers (nothing in this example).
#[derive(Debug, Serialize, Deserialize)]
enum Cmd {}

/// What workers send to the master.
#[derive(Debug, Serialize, Deserialize)]
enum Report {
    /// The worker in this slot is running.
    Up(usize),
}

#[cluster::main(count = 2, max_restarts = 5, max_restarts_interval = 15000, grace = 3000, signals = [SIGINT, SIGTERM, SIGHUP])]
fn main() {
    #[cluster::master]
    async fn master(ctx: cluster::MasterContext<Cmd, Report>) {
        println!("Master process running");
        while let Some(event) = ctx.next_event().await {
            if let cluster::Event::Message {
                msg: Report::Up(slot),
                ..
            } = event
            {
                println!("master: worker {slot} is up");
            }
        }
    }

    #[cluster::worker]
    async fn worker(ctx: cluster::WorkerContext<Cmd, Report>) -> Result<(), cluster::Error> {
        ctx.send(&Report::Up(ctx.slot())).await?;
        // A worker lives as long as this function, so the loop ends when the master asks.
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = every_second.tick() => println!("Worker process running"),
                () = ctx.shutdown_requested() => return Ok(()),
            }
        }
    }

    #[cluster::before_fork]
    async fn before_fork() -> Result<(), std::io::Error> {
        println!("master: about to start the workers");
        Ok(())
    }
}
