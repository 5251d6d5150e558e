// A repeated signal, an empty list, and a single name instead of a list.
#[cluster::main(signals = [SIGINT, INT])]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(signals = [])]
fn second() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(signals = SIGTERM)]
fn third() {
    #[cluster::worker]
    async fn worker() {}
}
