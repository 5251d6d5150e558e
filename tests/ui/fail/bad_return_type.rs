// Hooks return `()` or `Result<(), E>`.
#[cluster::main]
fn main() {
    #[cluster::worker]
    async fn worker() -> u32 {
        0
    }

    #[cluster::before_fork]
    async fn before_fork() -> Result<bool, std::io::Error> {
        Ok(true)
    }
}
