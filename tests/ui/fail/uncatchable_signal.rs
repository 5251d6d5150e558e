// SIGKILL and SIGSTOP cannot be caught; the fault signals cannot be handled asynchronously.
#[cluster::main(signals = [SIGINT, SIGKILL, STOP, "SIGSEGV", SIGILL, FPE, SIGBUS, SIGTRAP])]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}
