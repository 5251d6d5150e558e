// The master sends `String` and expects `u64`; the worker expects `u32` and sends `u64`.
#[cluster::main]
fn main() {
    #[cluster::master]
    async fn master(_ctx: cluster::MasterContext<String, u64>) {}

    #[cluster::worker]
    async fn worker(_ctx: cluster::WorkerContext<u32, u64>) {}
}
