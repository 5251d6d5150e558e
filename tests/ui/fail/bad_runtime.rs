#[cluster::main(runtime = "multi-thread")]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}
