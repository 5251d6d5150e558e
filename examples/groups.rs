//! Worker-specific tasks, the origin's "Worker-Specific Tasks" scenario: web workers plus one
//! background worker, as two groups of one cluster.
//!
//! Where the origin forks every worker with `{ WORKER_TYPE: ... }` and, on each exit, reads the
//! type back to fork the right replacement, here each kind of worker is a [`GroupOptions`]
//! group with its own count, environment, restart policy and function. A replacement is
//! always started in the same group, with the same settings, by the master itself.
//!
//! What it shows, in a few seconds:
//! - 3 web workers and 1 background worker start, each reading its group's environment;
//! - the background worker fails on its second task (once, on purpose) and is restarted
//!   under the background group's restart policy, with the same environment;
//! - the master scales the web group up to 5 workers, then down to 2: removed workers are
//!   asked to stop and finish like in a shutdown.
//!
//! Run it with `cargo run --example groups` and stop it with Ctrl-C: every worker of both
//! groups stops, the master exits 0.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cluster::options::RestartPolicy;
use cluster::{Cluster, Event, GroupOptions, MasterContext, WorkerContext};

fn main() -> std::process::ExitCode {
    let web = GroupOptions::new("web")
        .with_count(3)
        .with_env("WORKER_TYPE", "web")
        .with_env("GREETING", "Hello from Web Worker");
    let background = GroupOptions::new("background")
        .with_count(1)
        .with_env("WORKER_TYPE", "background")
        // The origin runs its task every 5 s; shorter here so that it shows in a short run.
        .with_env("TASK_INTERVAL_MS", "1500")
        // Background jobs talk to flaky outside systems (mail, queues): tolerate more failures
        // there than in the web group, which keeps the cluster's default (3 within 10 s).
        .with_restart(
            RestartPolicy::new()
                .with_max_restarts(10)
                .with_max_restarts_interval(Duration::from_secs(60)),
        );

    Cluster::<(), ()>::new()
        .master(master)
        .group(web, web_worker)
        .group(background, background_worker)
        .run()
}

async fn master(ctx: MasterContext) {
    println!("Master {} is running", std::process::id());
    // Scaling waits on timers; running it beside the event loop keeps events flowing.
    tokio::spawn(scale_web(ctx.clone()));
    while let Some(event) = ctx.next_event().await {
        match event {
            Event::Spawned { id, pid } => {
                println!("Master: started {} worker {id} (pid {pid})", id.group)
            }
            Event::Exit {
                id,
                exit,
                expected,
                restarting,
            } => {
                let why = if expected { "as asked" } else { "unexpectedly" };
                let next = if restarting {
                    ", restarting it with the group's settings"
                } else {
                    ""
                };
                println!("Master: {} worker {id} {exit} {why}{next}", id.group);
            }
            _ => {}
        }
    }
}

/// Scales the web group up, then back down, as an operator or an autoscaler would.
async fn scale_web(ctx: MasterContext) {
    for (after, count) in [(Duration::from_secs(2), 5), (Duration::from_secs(3), 2)] {
        tokio::time::sleep(after).await;
        println!("Master: scaling the web group to {count}");
        if let Err(e) = ctx.scale("web", count).await {
            // The cluster is stopping (Ctrl-C came first): nothing left to scale.
            eprintln!("Master: cannot scale: {e}");
            return;
        }
    }
}

async fn web_worker(ctx: WorkerContext) {
    // The group's environment is the process's own, set by the master at spawn.
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
    let kind = std::env::var("WORKER_TYPE").unwrap_or_default();
    println!(
        "Web worker {} (pid {}, WORKER_TYPE={kind}) started: {greeting}",
        ctx.id(),
        std::process::id()
    );
    // A real web worker would serve requests here until asked to stop.
    ctx.shutdown_requested().await;
    println!("Web worker {} stopping", ctx.id());
}

async fn background_worker(ctx: WorkerContext) -> Result<(), String> {
    let interval_ms: u64 = match std::env::var("TASK_INTERVAL_MS") {
        Ok(value) => value
            .parse()
            .map_err(|e| format!("TASK_INTERVAL_MS={value:?}: {e}"))?,
        Err(_) => 5000,
    };
    let kind = std::env::var("WORKER_TYPE").unwrap_or_default();
    println!(
        "Background worker {} (pid {}, WORKER_TYPE={kind}) started, one task every {interval_ms} ms",
        ctx.id(),
        std::process::id()
    );
    let mut every = tokio::time::interval(Duration::from_millis(interval_ms));
    for task in 1.. {
        tokio::select! {
            _ = every.tick() => {}
            () = ctx.shutdown_requested() => break,
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        println!(
            "Background worker {} running task {task} at {} s since the epoch",
            ctx.id(),
            now.as_secs()
        );
        // e.g. clean up the database, send emails, process a queue...
        // Only the first process of the slot fails, so the demo shows one restart, not a loop.
        if task == 2 && ctx.id().generation == 1 {
            return Err("task 2 failed: the mail server refused the connection (simulated)".into());
        }
    }
    println!("Background worker {} stopping", ctx.id());
    Ok(())
}
