// A worker takes its context and nothing else.
#[cluster::main]
fn main() {
    #[cluster::worker]
    async fn worker(port: u16) {
        let _ = port;
    }
}

#[cluster::main]
fn second() {
    #[cluster::worker]
    async fn worker(ctx: cluster::WorkerContext, port: u16) {
        let _ = (ctx, port);
    }
}
