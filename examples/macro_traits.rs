//! An app written as `cluster::Master` and `cluster::Worker` types, started by
//! `#[cluster::main(master = ..., worker = ...)]`: each worker reports to the master, which
//! prints what it hears. Stop it with Ctrl-C.

use cluster::{BoxError, Event, Master, MasterContext, Worker, WorkerContext};

/// The workers: report, then wait for the master's stop.
struct Greeter {
    greeting: &'static str,
}

#[cluster::async_trait]
impl Worker for Greeter {
    type Down = ();
    type Up = String;

    async fn run(&self, ctx: WorkerContext<(), String>) -> Result<(), BoxError> {
        ctx.send(&format!("{} from worker {}", self.greeting, ctx.slot()))
            .await?;
        ctx.shutdown_requested().await;
        Ok(())
    }
}

/// The master: print every report.
struct Listener;

#[cluster::async_trait]
impl Master for Listener {
    type Down = ();
    type Up = String;

    async fn before_fork(&mut self) -> Result<(), BoxError> {
        println!("master: about to start the workers");
        Ok(())
    }

    async fn run(self, ctx: MasterContext<(), String>) -> Result<(), BoxError> {
        while let Some(event) = ctx.next_event().await {
            if let Event::Message { msg, .. } = event {
                println!("master: {msg}");
            }
        }
        Ok(())
    }
}

#[cluster::main(master = Listener, worker = Greeter { greeting: "hello" }, count = 2, grace = "3s")]
fn main() {}
