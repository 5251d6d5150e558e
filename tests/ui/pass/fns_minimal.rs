// The least there is: a worker with no context (messages default to `()`), no options.
// Other spellings: `cpus`, durations with units, signal names without SIG and as strings,
// bare markers, a master without context, an alias `Result<()>`.
#[cluster::main]
fn minimal() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(count = cpus, grace = "500ms", max_restarts_interval = "1m", signals = [INT, "sigterm", SIGUSR1], runtime = "multi_thread")]
fn spellings() {
    #[worker]
    async fn work(_ctx: cluster::WorkerContext) -> std::io::Result<()> {
        Ok(())
    }

    #[master]
    async fn boss() {}
}

// The context's generics are checked against each other only when both are written.
#[cluster::main]
fn one_context() {
    #[cluster::worker]
    async fn worker() {}

    #[cluster::master]
    async fn master(_ctx: cluster::MasterContext<String, u8>) {}
}

fn main() {
    let _: [fn() -> std::process::ExitCode; 3] = [minimal, spellings, one_context];
}
