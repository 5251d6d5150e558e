// `reload_signals` follows the rules of `signals` (an empty list is allowed: it turns reload
// by signal off): an uncatchable signal, a repeated one, a single name instead of a list.
#[cluster::main(reload_signals = [SIGUSR2, SIGKILL, USR2])]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(reload_signals = SIGUSR2)]
fn other() {
    #[cluster::worker]
    async fn worker() {}
}
