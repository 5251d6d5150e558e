#[cluster::main]
fn main() {
    #[cluster::worker]
    fn worker(_ctx: cluster::WorkerContext) {}

    #[cluster::before_fork]
    fn before_fork() {}
}
