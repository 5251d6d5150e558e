// The address is parsed at compile time: a host name, an address without a port and a port
// out of range are each reported on the value.
#[cluster::main(status_addr = "localhost:8001")]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(status_addr = "127.0.0.1")]
fn no_port() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(status_addr = 65536)]
fn bare_port_out_of_range() {
    #[cluster::worker]
    async fn worker() {}
}
