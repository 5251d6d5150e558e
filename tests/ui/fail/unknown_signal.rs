#[cluster::main(signals = [SIGINT, SIGFOO, "TERMINATE"])]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}
