// Every option, all three marked functions, typed messages, set-up items beside them.
// The cluster is built as `app` and not run here (tests/macro_run.rs runs one).
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub enum Cmd {
    Stop,
}

#[derive(Serialize, Deserialize)]
pub enum Report {
    Up(usize),
}

#[cluster::main(
    count = 4,
    max_restarts = 5,
    max_restarts_interval = 15000,
    grace = 3000,
    signals = [SIGINT, SIGTERM, SIGHUP],
    runtime = "current_thread",
    balance = "round-robin",
    accept_coalescing = "2ms",
    reload_signals = [SIGUSR2, USR1],
    reload_parallelism = 2,
    ready_timeout = "10s",
    heartbeat_interval = 500,
    heartbeat_timeout = "5s",
    max_memory = "512MiB",
    memory_samples = 5,
    sample_interval = "2s",
    status_addr = "127.0.0.1:8001",
    min_ready = 2,
    worker_prefix_logs = false,
)]
fn app() {
    use std::time::Duration;

    const TICK: Duration = Duration::from_millis(10);

    #[cluster::master]
    async fn master(ctx: cluster::MasterContext<Cmd, Report>) -> Result<(), cluster::Error> {
        ctx.broadcast(&Cmd::Stop).await?;
        Ok(())
    }

    #[cluster::worker]
    async fn worker(ctx: cluster::WorkerContext<Cmd, Report>) -> Result<(), cluster::Error> {
        ctx.send(&Report::Up(ctx.slot())).await?;
        tokio::time::sleep(TICK).await;
        Ok(())
    }

    #[cluster::before_fork]
    async fn before_fork() -> Result<(), std::io::Error> {
        Ok(())
    }
}

fn main() {
    let _: fn() -> std::process::ExitCode = app;
}
