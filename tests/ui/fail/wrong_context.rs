// The worker takes its context by reference; the master takes a worker's context.
#[cluster::main]
fn main() {
    #[cluster::worker]
    async fn worker(_ctx: &cluster::WorkerContext) {}

    #[cluster::master]
    async fn master(_ctx: cluster::WorkerContext) {}
}
