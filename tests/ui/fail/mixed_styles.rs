// An app written as types cannot also mark functions.
struct App;

#[cluster::main(worker = App)]
fn main() {
    #[cluster::master]
    async fn master() {}
}
