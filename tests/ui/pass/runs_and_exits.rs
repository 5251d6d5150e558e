// A real `main`, run by trybuild: the master stops the cluster as soon as it starts, so the
// program spawns its workers, shuts them down and exits 0.
#[cluster::main(count = 1, grace = 5000)]
fn main() {
    #[cluster::master]
    async fn master(ctx: cluster::MasterContext) {
        ctx.shutdown();
    }

    #[cluster::worker]
    async fn worker(ctx: cluster::WorkerContext) {
        ctx.shutdown_requested().await;
    }
}
