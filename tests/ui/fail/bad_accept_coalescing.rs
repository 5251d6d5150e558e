// An `accept_coalescing` window over 100 ms would hold new connections that long under load
// (cluster-core refuses it at start-up): reported on the value, however it is written.
#[cluster::main(accept_coalescing = 250)]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(accept_coalescing = "1s")]
fn as_string() {
    #[cluster::worker]
    async fn worker() {}
}
