#[cluster::main]
fn main() {
    #[cluster::worker]
    async fn web(_ctx: cluster::WorkerContext) {}

    #[cluster::worker]
    async fn jobs(_ctx: cluster::WorkerContext) {}
}
