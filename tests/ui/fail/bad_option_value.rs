// Values of the wrong kind: a flag written as a string, a negative count, a fractional one.
#[cluster::main(worker_prefix_logs = "yes", min_ready = -1, memory_samples = 1.5, reload_parallelism = "2")]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}
