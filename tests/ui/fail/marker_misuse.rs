// Markers take no arguments, go on functions, and a function has one role.
#[cluster::main]
fn main() {
    #[cluster::worker(count = 2)]
    async fn worker() {}

    #[cluster::master]
    struct NotAFunction;

    #[cluster::master]
    #[cluster::before_fork]
    async fn both() {}
}
