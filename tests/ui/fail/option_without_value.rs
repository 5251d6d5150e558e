#[cluster::main(count)]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}
