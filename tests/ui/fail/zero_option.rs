// Options that cannot be zero, each reported on its value.
#[cluster::main(
    reload_parallelism = 0,
    memory_samples = 0,
    ready_timeout = 0,
    heartbeat_interval = "0s",
    sample_interval = "0ms"
)]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}
