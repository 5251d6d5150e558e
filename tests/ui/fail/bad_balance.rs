// An unknown strategy (the underscore spelling is not one of them) and a value of the wrong
// kind, each reported on the value.
#[cluster::main(balance = "round_robin")]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(balance = 3)]
fn other() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(balance = LeastConnection)]
fn third() {
    #[cluster::worker]
    async fn worker() {}
}
