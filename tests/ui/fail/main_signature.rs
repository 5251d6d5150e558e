// `main` is not async and returns nothing: the generated one returns the cluster's exit code.
#[cluster::main]
async fn main() -> std::process::ExitCode {
    #[cluster::worker]
    async fn worker() {}
}
