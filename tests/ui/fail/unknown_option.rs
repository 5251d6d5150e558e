// A misspelt option is reported on its name, with the nearest valid one.
#[cluster::main(cout = 4)]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}
