// A timeout no longer than the interval would find every worker hung: reported on the
// timeout, wherever it is written. Zero and a misspelt "off" are reported on the value.
#[cluster::main(heartbeat_interval = "2s", heartbeat_timeout = 2000)]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(heartbeat_timeout = "500ms", heartbeat_interval = "1s")]
fn reversed() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(heartbeat_timeout = 0)]
fn zero() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(heartbeat_timeout = "of")]
fn misspelt() {
    #[cluster::worker]
    async fn worker() {}
}
