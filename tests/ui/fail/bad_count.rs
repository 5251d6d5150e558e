// Zero workers, and a count that is neither a number nor `cpus`.
#[cluster::main(count = 0)]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(count = "four")]
fn other() {
    #[cluster::worker]
    async fn worker() {}
}
