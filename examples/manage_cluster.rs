//! The origin helper's own example, `manage_cluster({ ... })`, option for option: the master
//! prints `Master process running`, each of 4 workers prints `Worker process running` every
//! second; up to 5 restarts within 15 s, 3 s of grace, shut down by SIGINT, SIGTERM or SIGHUP.
//!
//! ```text
//! manage_cluster({
//!   master: () => console.log('Master process running'),
//!   worker: () => setInterval(() => console.log('Worker process running'), 1000),
//!   count: 4,
//!   max_restarts: 5,
//!   max_restarts_interval: 15000,
//!   grace: 3000,
//!   signals: ['SIGINT', 'SIGTERM', 'SIGHUP'],
//! });
//! ```
//!
//! Run it with `cargo run --example manage_cluster` and stop it with Ctrl-C (or
//! `kill -TERM`/`kill -HUP` on the master's pid): the workers stop at once, the master exits 0.

use std::time::Duration;

use cluster::{Cluster, Signal};

fn main() -> std::process::ExitCode {
    Cluster::<(), ()>::new()
        .master(|_ctx| async { println!("Master process running") })
        .worker(|ctx| async move {
            // Unlike a Node process, a worker does not stay alive just because a timer is
            // pending: it lives as long as this function, so the loop also has to end when
            // the master asks it to stop.
            let mut every_second = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = every_second.tick() => println!("Worker process running"),
                    () = ctx.shutdown_requested() => break,
                }
            }
        })
        .count(4)
        .max_restarts(5)
        .max_restarts_interval_ms(15000)
        .grace_ms(3000)
        .signals([Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP])
        .run()
}
