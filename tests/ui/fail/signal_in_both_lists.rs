// A signal cannot both stop and reload the cluster: the error is on its second occurrence,
// in whichever list comes second.
#[cluster::main(signals = [SIGINT, SIGHUP], reload_signals = [SIGUSR2, HUP])]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(reload_signals = [SIGUSR1, SIGHUP], signals = [SIGTERM, "sighup", USR1])]
fn other() {
    #[cluster::worker]
    async fn worker() {}
}
