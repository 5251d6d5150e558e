// An app written as types: with a master, and without.
use cluster::{BoxError, Master, MasterContext, Options, Worker, WorkerContext};

struct App {
    name: &'static str,
}

#[cluster::async_trait]
impl Worker for App {
    type Down = u32;
    type Up = String;
    async fn run(&self, ctx: WorkerContext<u32, String>) -> Result<(), BoxError> {
        ctx.send(&self.name.to_owned()).await?;
        Ok(())
    }
}

struct Boss;

#[cluster::async_trait]
impl Master for Boss {
    type Down = u32;
    type Up = String;
    fn options(&self) -> Options {
        Options::new().with_count(3)
    }
    async fn run(self, ctx: MasterContext<u32, String>) -> Result<(), BoxError> {
        ctx.broadcast(&1).await?;
        Ok(())
    }
}

#[cluster::main(master = Boss, worker = App { name: "app" }, count = 2, max_restarts = 1, grace = "2s", signals = [SIGTERM])]
fn with_master() {}

#[cluster::main(worker = App { name: "alone" })]
fn without_master() {
    // Items are allowed in the body of either style.
    #[allow(dead_code)]
    const UNUSED: u8 = 0;
}

fn main() {
    let _: [fn() -> std::process::ExitCode; 2] = [with_master, without_master];
}
