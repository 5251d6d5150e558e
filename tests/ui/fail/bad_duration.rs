// Each bad duration is reported on its own value: an unknown unit, a fraction, a negative
// number, and one beyond the engine's limit of 365 days.
#[cluster::main(grace = "3x", max_restarts_interval = 1.5)]
fn main() {
    #[cluster::worker]
    async fn worker() {}
}

#[cluster::main(grace = -1, max_restarts_interval = "9000h")]
fn other() {
    #[cluster::worker]
    async fn worker() {}
}
