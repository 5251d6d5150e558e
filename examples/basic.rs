//! The origin's first scenario: every worker prints, the master prints.
//!
//! `cargo run --example basic`, then Ctrl-C: one graceful shutdown, coordinated by the master.

use std::time::Duration;

use cluster::{Cluster, Event};

fn main() -> std::process::ExitCode {
    Cluster::<(), ()>::new()
        .master(|ctx| async move {
            println!("master {} running", std::process::id());
            while let Some(event) = ctx.next_event().await {
                if let Event::Ready { id } = event {
                    println!("master: worker {id} is ready");
                }
            }
        })
        .worker(|ctx| async move {
            println!("worker {} (pid {}) started", ctx.id(), std::process::id());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => println!("worker {} running", ctx.slot()),
                    () = ctx.shutdown_requested() => break,
                }
            }
            println!("worker {} stopping", ctx.slot());
        })
        .run()
}
