#[cluster::main]
fn main() {
    #[cluster::worker]
    async fn worker() {}

    #[cluster::before_fork]
    async fn before_fork(config: String) {
        let _ = config;
    }
}
