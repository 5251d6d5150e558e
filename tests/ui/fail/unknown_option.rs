// A misspelt option is reported on its name, with the list of valid ones.
#[cluster::main(cout = 4)]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}
