// A statement in `main` would run in every worker before dispatch.
#[cluster::main]
fn main() {
    println!("starting");

    #[cluster::worker]
    async fn worker() {}
}
