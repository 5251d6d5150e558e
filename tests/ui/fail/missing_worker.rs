// A master but no worker.
#[cluster::main(count = 2)]
fn main() {
    #[cluster::master]
    async fn master() {}
}
